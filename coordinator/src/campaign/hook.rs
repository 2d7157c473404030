//! `--then CMD`: a command run after each committed merge (for example an evaluation harness).
//! It runs under `sh -c` with the merge in its environment, and the last line of its standard
//! output that is a JSON object becomes the merge's `scores`.

use super::record::Record;
use std::process::Command;

/// Runs `cmd` for the committed merge `r`: returns the JSON object it printed, or why not.
pub fn run(cmd: &str, r: &Record) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .env("SHARDMERGE_MERGE_OUTPUT", &r.output)
        .env("SHARDMERGE_MERGE_NAME", &r.name)
        .env("SHARDMERGE_MERGE_METHOD", &r.method)
        .env("SHARDMERGE_MERGE_INDEX", r.index.to_string())
        .env("SHARDMERGE_MERGE_MODELS", r.models.join("\n"))
        .output()
        .map_err(|e| format!("cannot run `{cmd}`: {e}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(format!("`{cmd}` exited with {}: {}", out.status, tail.join(" / ")));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('{'))
        .ok_or_else(|| format!("`{cmd}` printed no JSON object"))
        .and_then(|l| match serde_json::from_str::<serde_json::Value>(l) {
            Ok(serde_json::Value::Object(m)) => Ok(m),
            Ok(_) => Err(format!("`{cmd}` printed JSON that is not an object")),
            Err(e) => Err(format!("`{cmd}` printed invalid JSON: {e}")),
        })
}
