//! What a chaos round left at its output, read back on the fault-free S3 endpoint or from the
//! local directory, and the two acceptable end states: exactly the embedded merge's files, or
//! nothing at all.

use shardmerge_worker::storage::test_server::TestS3;
use shardmerge_worker::storage::{Location, Storage};
use std::path::{Path, PathBuf};

/// Where a round writes its model.
#[derive(Debug, Clone)]
pub enum Output {
    /// `s3://bucket/prefix`.
    S3 { bucket: String, prefix: String },
    /// A local directory.
    Local(PathBuf),
}

/// One entry at the output: its path relative to the output, and its bytes (`None` for a
/// directory).
pub type Entry = (String, Option<Vec<u8>>);

impl Output {
    /// The URI given to `submit`.
    pub fn uri(&self) -> String {
        match self {
            Output::S3 { bucket, prefix } => format!("s3://{bucket}/{prefix}"),
            Output::Local(p) => p.display().to_string(),
        }
    }

    /// Everything at the output, sorted by name: every object under the prefix (read through
    /// the S3 API), or every file and directory under the local directory.
    pub fn entries(&self, s3: &TestS3, rt: &tokio::runtime::Runtime) -> Result<Vec<Entry>, String> {
        match self {
            Output::Local(dir) => Ok(local_entries(dir)),
            Output::S3 { bucket, prefix } => {
                let storage: Storage = s3.storage();
                let root = Location::parse(&self.uri()).map_err(|e| e.to_string())?;
                rt.block_on(async {
                    let mut out = Vec::new();
                    let listed = storage.list(&root).await.map_err(|e| format!("list {bucket}: {e}"))?;
                    for (loc, size) in listed {
                        let bytes = storage
                            .read_range_vec(&loc, 0, size)
                            .await
                            .map_err(|e| format!("read {}: {e}", loc.to_uri()))?;
                        let uri = loc.to_uri();
                        let name = uri.strip_prefix(&format!("s3://{bucket}/{prefix}/")).unwrap_or(&uri);
                        out.push((name.to_string(), Some(bytes)));
                    }
                    out.sort();
                    Ok(out)
                })
            }
        }
    }
}

/// Every file and directory under `dir` (none if it does not exist), sorted by relative name.
pub fn local_entries(dir: &Path) -> Vec<Entry> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<Entry>) {
        let Ok(rd) = std::fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let path = e.path();
            let name = path.strip_prefix(root).unwrap_or(&path).display().to_string();
            if path.is_dir() {
                out.push((format!("{name}/"), None));
                walk(root, &path, out);
            } else {
                out.push((name, std::fs::read(&path).ok()));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Whether a file is compared byte for byte with the reference.
fn is_model_file(name: &str) -> bool {
    name.ends_with(".safetensors") || name.ends_with(".index.json")
}

/// A succeeded round: the same files as the embedded merge (names), the model files byte for
/// byte, and no temp or staging leftovers.
pub fn check_same_model(got: &[Entry], reference: &[Entry]) -> Result<(), String> {
    let leftovers: Vec<&str> = got
        .iter()
        .map(|e| e.0.as_str())
        .filter(|n| n.contains(".shardmerge-"))
        .collect();
    if !leftovers.is_empty() {
        return Err(format!(
            "succeeded, but temp/staging leftovers at the output: {leftovers:?}"
        ));
    }
    let names = |v: &[Entry]| v.iter().map(|e| e.0.clone()).collect::<Vec<_>>();
    if names(got) != names(reference) {
        return Err(format!(
            "succeeded, but the output holds {:?}; the embedded merge wrote {:?}",
            names(got),
            names(reference)
        ));
    }
    let mut compared = 0;
    for ((name, g), (_, r)) in got.iter().zip(reference) {
        if !is_model_file(name) {
            continue;
        }
        let (g, r) = (g.as_deref().unwrap_or_default(), r.as_deref().unwrap_or_default());
        if g != r {
            let at = g
                .iter()
                .zip(r)
                .position(|(a, b)| a != b)
                .unwrap_or(g.len().min(r.len()));
            return Err(format!(
                "succeeded, but {name} differs from the embedded merge from byte {at} \
                 ({} bytes, expected {})",
                g.len(),
                r.len()
            ));
        }
        compared += 1;
    }
    if compared == 0 {
        return Err("the reference holds no model file to compare".into());
    }
    Ok(())
}

/// A failed or cancelled round: nothing at the output (an empty local directory is allowed).
pub fn check_nothing(got: &[Entry], outcome: &str) -> Result<(), String> {
    if got.is_empty() {
        Ok(())
    } else {
        let names: Vec<&str> = got.iter().map(|e| e.0.as_str()).collect();
        Err(format!("{outcome}, but the output holds {names:?}"))
    }
}

/// A failure chaos may cause (attempts used up under faults or lost workers, no live worker
/// for too long), not one whose cause no fault explains: the plan or the inputs changing on a
/// restart, or a pass's chunk statistics that do not combine.
pub fn legitimate_failure(error: &str) -> Result<(), String> {
    const NEVER: [&str; 4] = [
        "plan changed since it was journaled",
        "changed while the job ran",
        "chunk statistics",
        "reported wrong parts",
    ];
    match NEVER.iter().find(|n| error.contains(*n)) {
        Some(n) => Err(format!(
            "failed for a reason no injected fault explains (`{n}`): {error}"
        )),
        None => Ok(()),
    }
}
