//! The coordinator's location allowlist (`--allow-location`), enforced at submit: every model
//! a config references and the output location must be allowed before the coordinator reads a
//! header or creates an upload. The rules themselves ([`AllowList`]) are shared with workers,
//! which check every leased unit again.

use super::service::{CoordinatorOptions, ServiceError, Submission};
use crate::config::{MergeConfig, ModelRef, parse_config};
use shardmerge_worker::storage::Location;
use std::path::{Path, PathBuf};

pub use shardmerge_worker::node::allow::{AllowError, AllowList, is_loopback_url};

/// Checks a submission against `opts.allow`: its models (relative paths resolved against
/// `opts.model_root`, as the planner does) and its output. The error names the location. A
/// config that does not parse is refused with the parser's error (file and line).
pub fn check_submission(opts: &CoordinatorOptions, s: &Submission) -> Result<(), ServiceError> {
    let config =
        parse_config(&s.config_yaml, Path::new(&s.config_name)).map_err(|e| ServiceError::Invalid(e.to_string()))?;
    check(&opts.allow, &opts.model_root, &config, &s.output_uri).map_err(ServiceError::Invalid)
}

/// The check behind [`check_submission`]; the message names the model or the output.
fn check(allow: &AllowList, model_root: &Path, config: &MergeConfig, output_uri: &str) -> Result<(), String> {
    for r in model_refs(config) {
        model_location(r, model_root)
            .and_then(|loc| allow.check(&loc))
            .map_err(|e| format!("model `{r}`: {e}"))?;
    }
    allow
        .check_uri(output_uri)
        .map(|_| ())
        .map_err(|e| format!("output: {e}"))
}

/// Every model reference of a config, once each, in config order: `models`, `base_model`, and
/// each slice's sources and base model.
fn model_refs(config: &MergeConfig) -> Vec<&ModelRef> {
    let mut all: Vec<&ModelRef> = config.models.iter().map(|m| &m.model).collect();
    all.extend(&config.base_model);
    for slice in &config.slices {
        all.extend(slice.sources.iter().map(|s| &s.model));
        all.extend(&slice.base_model);
    }
    let mut refs = Vec::with_capacity(all.len());
    for r in all {
        if !refs.contains(&r) {
            refs.push(r);
        }
    }
    refs
}

/// Where the planner will read model `r` (see `plan::sources`): a URI with a scheme other than
/// `file://` as is, else a local path, relative ones under `model_root`.
fn model_location(r: &ModelRef, model_root: &Path) -> Result<Location, AllowError> {
    if r.path.contains("://") && !r.path.starts_with("file://") {
        return Ok(Location::parse(&r.path)?);
    }
    let raw = r.path.strip_prefix("file://").unwrap_or(&r.path);
    let path = if Path::new(raw).is_absolute() {
        PathBuf::from(raw)
    } else {
        model_root.join(raw)
    };
    Ok(Location::from_path(&path)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(models: &[&str], base: Option<&str>) -> MergeConfig {
        let mut yaml = String::from("merge_method: linear\nmodels:\n");
        for m in models {
            yaml.push_str(&format!("  - model: {m}\n    parameters:\n      weight: 1.0\n"));
        }
        if let Some(b) = base {
            yaml.push_str(&format!("base_model: {b}\n"));
        }
        parse_config(&yaml, Path::new("c.yml")).unwrap()
    }

    fn root() -> PathBuf {
        PathBuf::from("/srv/models")
    }

    #[test]
    fn models_and_output_must_be_allowed() {
        let allow = AllowList::new(&["s3://models", "s3://out/merged", "/srv/models"], false).unwrap();
        let c = config(
            &["s3://models/a", "./local-b", "file:///srv/models/c"],
            Some("s3://models/base"),
        );
        check(&allow, &root(), &c, "s3://out/merged/x").unwrap();
        let err = check(&allow, &root(), &c, "s3://out/other").unwrap_err();
        assert!(
            err.starts_with("output: location `s3://out/other` is not allowed"),
            "{err}"
        );
        let c = config(&["s3://models/a", "s3://secrets/b"], None);
        let err = check(&allow, &root(), &c, "s3://out/merged/x").unwrap_err();
        assert!(
            err.contains("model `s3://secrets/b`: location `s3://secrets/b` is not allowed"),
            "{err}"
        );
        let c = config(&["s3://models/a"], Some("/etc"));
        let err = check(&allow, &root(), &c, "s3://out/merged/x").unwrap_err();
        assert!(err.contains("model `/etc`"), "{err}");
    }

    #[test]
    fn relative_models_resolve_against_the_model_root_and_cannot_climb_out() {
        let allow = AllowList::new(&["/srv/models"], false).unwrap();
        let c = config(&["base", "team/ft"], None);
        check(&allow, &root(), &c, "/srv/models/out").unwrap();
        let c = config(&["base", "../../etc"], None);
        let err = check(&allow, &root(), &c, "/srv/models/out").unwrap_err();
        assert!(err.contains("model `../../etc`") && err.contains("`..`"), "{err}");
        // `file://localhost/x` is read by the planner as a path under the model root.
        let c = config(&["file://localhost/x"], None);
        check(&allow, &root(), &c, "/srv/models/out").unwrap();
    }

    #[test]
    fn default_refuses_local_paths_off_loopback() {
        let c = config(&["s3://models/a", "base"], None);
        let closed = AllowList::new::<&str>(&[], false).unwrap();
        let err = check(&closed, &root(), &c, "s3://out/x").unwrap_err();
        assert!(err.contains("model `base`: location `/srv/models/base`"), "{err}");
        let err = check(&closed, &root(), &config(&["s3://models/a"], None), "/tmp/out").unwrap_err();
        assert!(err.contains("output: location `/tmp/out`"), "{err}");
        let open = AllowList::new::<&str>(&[], true).unwrap();
        check(&open, &root(), &c, "/tmp/out").unwrap();
    }

    #[test]
    fn slices_are_checked() {
        let yaml = "merge_method: slerp\nslices:\n  - sources:\n      - model: s3://models/a\n        layer_range: [0, 2]\n      - model: /elsewhere/b\n        layer_range: [0, 2]\nbase_model: s3://models/a\nparameters:\n  t: 0.5\n";
        let c = parse_config(yaml, Path::new("s.yml")).unwrap();
        let allow = AllowList::new(&["s3://models"], false).unwrap();
        let err = check(&allow, &root(), &c, "s3://models/out").unwrap_err();
        assert!(err.contains("model `/elsewhere/b`"), "{err}");
    }
}
