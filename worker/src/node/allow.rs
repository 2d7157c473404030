//! Where a process may read models and write outputs: the `--allow-location` allowlist of the
//! coordinator (checked at submit) and of each worker (checked on every leased unit before any
//! byte is read or written).
//!
//! A prefix is `s3://bucket` (the whole bucket), `s3://bucket/prefix` (keys under it, matched by
//! whole `/` segments) or a local directory (paths under it, matched by whole components;
//! relative prefixes are taken from the current directory). Matching is lexical: [`Location`]
//! refuses `..` components, so a path cannot climb out of an allowed directory by itself
//! (symbolic links inside an allowed directory are followed: keep them out of shared volumes).
//!
//! Without any prefix the default applies: every S3 location is allowed, local paths only when
//! the process is confined to loopback (a coordinator listening on a loopback address; a worker
//! whose coordinator URL names a loopback host). On anything wider a local path must be listed.

use crate::storage::{Location, StorageError};
use shardmerge_proto::v1::WorkUnit;
use std::collections::BTreeSet;
use std::path::Path;

/// Locations a process may read models from and write outputs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowList {
    /// No `--allow-location` given: any S3 location; local paths only when `local`.
    Default {
        /// Whether local paths are allowed (the process is confined to loopback).
        local: bool,
    },
    /// Exactly these prefixes (S3 prefixes and absolute local directories).
    Prefixes(Vec<Location>),
}

/// Why a location is refused.
#[derive(Debug, thiserror::Error)]
pub enum AllowError {
    /// An `--allow-location` value that is not a location.
    #[error("invalid --allow-location `{given}`: {reason}")]
    BadPrefix {
        /// What was given.
        given: String,
        /// Why it is refused.
        reason: String,
    },
    /// A location that does not parse (path tricks, unsupported scheme).
    #[error(transparent)]
    Invalid(#[from] StorageError),
    /// A location outside the allowlist.
    #[error("location `{location}` is not allowed: {why}")]
    Denied {
        /// The location, as checked (relative paths made absolute).
        location: String,
        /// Which rule refused it.
        why: String,
    },
}

impl AllowList {
    /// The allowlist of `prefixes` (`--allow-location` values; empty strings are skipped, so a
    /// trailing comma in the environment variable is harmless), or the default when there are
    /// none: any S3 location, and local paths when `local_by_default`.
    pub fn new<S: AsRef<str>>(prefixes: &[S], local_by_default: bool) -> Result<AllowList, AllowError> {
        let mut list = Vec::new();
        for given in prefixes.iter().map(|p| p.as_ref().trim()).filter(|p| !p.is_empty()) {
            let bad = |reason: String| AllowError::BadPrefix {
                given: given.to_string(),
                reason,
            };
            let loc = Location::parse(given).map_err(|e| bad(e.to_string()))?;
            list.push(absolute(loc).map_err(|e| bad(e.to_string()))?);
        }
        Ok(if list.is_empty() {
            AllowList::Default {
                local: local_by_default,
            }
        } else {
            AllowList::Prefixes(list)
        })
    }

    /// Whether `loc` may be read or written; relative local paths are taken from the current
    /// directory.
    pub fn check(&self, loc: &Location) -> Result<(), AllowError> {
        let loc = absolute(loc.clone())?;
        let denied = |why: String| AllowError::Denied {
            location: loc.to_uri(),
            why,
        };
        match self {
            AllowList::Default { local: false } if loc.is_local() => Err(denied(
                "local paths must be listed with --allow-location (SHARDMERGE_ALLOW_LOCATION) on a cluster \
                 that is not confined to loopback"
                    .into(),
            )),
            AllowList::Default { .. } => Ok(()),
            AllowList::Prefixes(list) if list.iter().any(|p| is_under(&loc, p)) => Ok(()),
            AllowList::Prefixes(list) => Err(denied(format!(
                "it is under none of the allowed locations ({})",
                list.iter().map(Location::to_uri).collect::<Vec<_>>().join(", ")
            ))),
        }
    }

    /// Parses `uri` and checks it.
    pub fn check_uri(&self, uri: &str) -> Result<Location, AllowError> {
        let loc = Location::parse(uri)?;
        self.check(&loc)?;
        Ok(loc)
    }

    /// Checks every location a unit reads (its tasks' inputs), then every one it writes (its
    /// shard, its tasks' destinations), each distinct URI once.
    pub fn check_unit(&self, unit: &WorkUnit) -> Result<(), AllowError> {
        let mut reads = BTreeSet::new();
        let mut writes = BTreeSet::new();
        for task in &unit.tasks {
            reads.extend(
                task.inputs
                    .iter()
                    .filter_map(|i| i.source.as_ref())
                    .map(|s| s.uri.as_str()),
            );
            writes.extend(task.output.as_ref().map(|o| o.uri.as_str()));
        }
        writes.extend(unit.output.as_ref().map(|o| o.shard_uri.as_str()));
        for uri in reads.into_iter().chain(writes).filter(|u| !u.is_empty()) {
            self.check_uri(uri)?;
        }
        Ok(())
    }
}

/// Whether a coordinator URL (`http://HOST:PORT`, `https://...`) names a loopback host:
/// `localhost`, 127.0.0.0/8 or `::1`.
pub fn is_loopback_url(url: &str) -> bool {
    let Ok(uri) = url.parse::<tonic::codegen::http::Uri>() else {
        return false;
    };
    let Some(host) = uri.host() else { return false };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `loc` with a relative local path made absolute against the current directory (lexically:
/// `..` never gets here, [`Location::parse`] refuses it).
fn absolute(loc: Location) -> Result<Location, StorageError> {
    match loc {
        Location::Local(p) if p.is_relative() => {
            let abs = std::path::absolute(&p).map_err(|e| StorageError::InvalidUri {
                uri: p.display().to_string(),
                reason: format!("cannot make the path absolute: {e}"),
            })?;
            Ok(Location::Local(abs))
        }
        other => Ok(other),
    }
}

/// Whether `loc` is `prefix` or inside it, by whole path components or key segments.
fn is_under(loc: &Location, prefix: &Location) -> bool {
    match (loc, prefix) {
        (Location::Local(p), Location::Local(dir)) => Path::new(p).starts_with(dir),
        (Location::S3 { bucket, key }, Location::S3 { bucket: b, key: k }) => {
            bucket == b
                && (k.is_empty() || key == k || key.strip_prefix(k.as_str()).is_some_and(|rest| rest.starts_with('/')))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardmerge_proto::v1::{MergeTask, TaskInput, TensorDestination, TensorSource, UnitOutput};

    fn list(prefixes: &[&str]) -> AllowList {
        AllowList::new(prefixes, false).unwrap()
    }

    fn allowed(a: &AllowList, uri: &str) -> bool {
        a.check_uri(uri).is_ok()
    }

    #[test]
    fn default_allows_s3_and_local_only_on_loopback() {
        let open = AllowList::new::<&str>(&[], true).unwrap();
        let closed = AllowList::new(&["", " "], false).unwrap();
        assert_eq!(closed, AllowList::Default { local: false });
        for a in [&open, &closed] {
            assert!(allowed(a, "s3://any-bucket/any/key"));
        }
        assert!(allowed(&open, "/data/models/base"));
        assert!(allowed(&open, "relative/out"));
        let err = closed.check_uri("/data/models/base").unwrap_err().to_string();
        assert!(
            err.contains("`/data/models/base`") && err.contains("--allow-location"),
            "{err}"
        );
        assert!(!allowed(&closed, "file:///data/x"));
    }

    #[test]
    fn prefixes_match_whole_segments() {
        let a = list(&["s3://models/team-a", "s3://out", "/srv/models/"]);
        for ok in [
            "s3://models/team-a",
            "s3://models/team-a/base/model.safetensors",
            "s3://out/anything/at/all",
            "s3://out",
            "/srv/models",
            "/srv/models/base/config.json",
            "file:///srv/models/x",
            "/srv//models/./x",
        ] {
            assert!(allowed(&a, ok), "{ok}");
        }
        for no in [
            "s3://models/team-ab/x",
            "s3://models/team",
            "s3://models",
            "s3://outputs/x",
            "/srv/models2/x",
            "/srv",
            "/etc/passwd",
        ] {
            let err = a.check_uri(no).unwrap_err().to_string();
            assert!(
                err.contains("not allowed") && err.contains("s3://models/team-a"),
                "{no}: {err}"
            );
        }
        // Path tricks never reach the prefix match.
        for trick in ["/srv/models/../../etc/passwd", "s3://models/team-a/../team-b"] {
            let err = a.check_uri(trick).unwrap_err();
            assert!(matches!(err, AllowError::Invalid(_)), "{trick}: {err}");
        }
        // S3 prefixes never allow local paths and the reverse.
        assert!(!allowed(&list(&["s3://srv"]), "/srv/x"));
        assert!(!allowed(&list(&["/srv"]), "s3://srv/x"));
    }

    #[test]
    fn relative_prefixes_and_paths_are_taken_from_the_current_directory() {
        let cwd = std::env::current_dir().unwrap();
        let a = list(&["models"]);
        assert_eq!(a, AllowList::Prefixes(vec![Location::Local(cwd.join("models"))]));
        assert!(allowed(&a, "models/base"));
        assert!(allowed(&a, &cwd.join("models/base").display().to_string()));
        assert!(!allowed(&a, "other"));
    }

    #[test]
    fn bad_prefixes_are_refused() {
        for bad in ["gs://bucket", "/data/../etc", "s3://Bad"] {
            let err = AllowList::new(&[bad], true).unwrap_err().to_string();
            assert!(err.contains(&format!("invalid --allow-location `{bad}`")), "{err}");
        }
    }

    #[test]
    fn loopback_urls() {
        for url in [
            "http://127.0.0.1:7070",
            "https://localhost:7070",
            "http://LOCALHOST",
            "http://127.1.2.3:1",
            "http://[::1]:7070",
        ] {
            assert!(is_loopback_url(url), "{url}");
        }
        for url in [
            "http://10.0.0.1:7070",
            "https://coordinator.merge.svc:7070",
            "http://0.0.0.0:7070",
            "http://[::]:1",
            "not a url",
        ] {
            assert!(!is_loopback_url(url), "{url}");
        }
    }

    fn unit(input: &str, shard: &str) -> WorkUnit {
        WorkUnit {
            tasks: vec![MergeTask {
                inputs: vec![TaskInput {
                    source: Some(TensorSource {
                        uri: input.into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                output: Some(TensorDestination {
                    uri: shard.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            output: Some(UnitOutput {
                shard_uri: shard.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn units_are_checked_on_inputs_and_outputs() {
        let a = list(&["s3://models", "s3://out/merged"]);
        a.check_unit(&unit(
            "s3://models/base/model.safetensors",
            "s3://out/merged/model.safetensors",
        ))
        .unwrap();
        let err = a
            .check_unit(&unit("/etc/shadow", "s3://out/merged/model.safetensors"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`/etc/shadow`"), "{err}");
        let err = a
            .check_unit(&unit(
                "s3://models/base/model.safetensors",
                "s3://elsewhere/model.safetensors",
            ))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`s3://elsewhere/model.safetensors`"), "{err}");
        let err = AllowList::new::<&str>(&[], false)
            .unwrap()
            .check_unit(&unit("/data/m/model.safetensors", "s3://out/x"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`/data/m/model.safetensors`"), "{err}");
    }
}
