//! Storage locations: local paths, `file://` URIs and `s3://bucket/key` URIs.

use std::fmt;
use std::path::{Path, PathBuf};

use super::error::StorageError;

/// A parsed storage location: a local path or an S3 object (or key prefix).
///
/// Accepted forms: `s3://bucket/key/...` (the key may be empty, meaning the bucket root; a
/// trailing `/` is dropped), `file:///absolute/path` (also `file://localhost/...`), and plain
/// paths, relative or absolute. Other schemes (`gs://`, `https://`, ...) are refused rather
/// than read as relative paths. So are path tricks that could escape an allowed prefix (see
/// [`crate::node::allow`]): `..` components in local paths and S3 keys, empty or `.` key
/// segments, and control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Location {
    /// A file or directory on local disk.
    Local(PathBuf),
    /// An S3 object, or a key prefix used as a directory.
    S3 {
        /// The bucket.
        bucket: String,
        /// The key, without leading or trailing `/`; empty for the bucket root.
        key: String,
    },
}

impl Location {
    /// Parses a URI or local path.
    pub fn parse(uri: &str) -> Result<Location, StorageError> {
        let invalid = |reason: &str| StorageError::InvalidUri {
            uri: uri.to_owned(),
            reason: reason.to_owned(),
        };
        if uri.is_empty() {
            return Err(invalid("empty location"));
        }
        if let Some(rest) = uri.strip_prefix("s3://") {
            let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
            if !valid_bucket(bucket) {
                return Err(invalid(
                    "bucket names are 3 to 63 characters of lowercase letters, digits, `.` and `-`",
                ));
            }
            let key = key.strip_suffix('/').unwrap_or(key);
            if !key.is_empty() && key.split('/').any(|seg| seg.is_empty() || seg == "." || seg == "..") {
                return Err(invalid("the key has an empty, `.` or `..` path segment"));
            }
            if key.chars().any(|c| c.is_ascii_control()) {
                return Err(invalid("the key has a control character"));
            }
            return Ok(Location::S3 {
                bucket: bucket.to_owned(),
                key: key.to_owned(),
            });
        }
        if let Some(rest) = uri.strip_prefix("file://") {
            let path = rest.strip_prefix("localhost").unwrap_or(rest);
            if !path.starts_with('/') {
                return Err(invalid(
                    "a file:// uri needs an absolute path, as in file:///data/model",
                ));
            }
            check_local_path(path).map_err(invalid)?;
            return Ok(Location::Local(PathBuf::from(path)));
        }
        if let Some((scheme, _)) = uri.split_once("://")
            && !scheme.is_empty()
            && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c))
        {
            return Err(invalid(&format!(
                "unsupported scheme `{scheme}://` (supported: s3://, file://, local paths)"
            )));
        }
        check_local_path(uri).map_err(invalid)?;
        Ok(Location::Local(PathBuf::from(uri)))
    }

    /// The location of a local path (which may itself hold a URI, as
    /// [`crate::safetensors_io::ModelDir`] paths of remote models do).
    pub fn from_path(path: &Path) -> Result<Location, StorageError> {
        match path.to_str() {
            Some(s) => Location::parse(s),
            None => Err(StorageError::InvalidUri {
                uri: path.display().to_string(),
                reason: "the path is not valid UTF-8".to_owned(),
            }),
        }
    }

    /// The entry `name` (one or more `/`-separated segments) inside this location.
    pub fn join(&self, name: &str) -> Location {
        match self {
            Location::Local(path) => Location::Local(path.join(name)),
            Location::S3 { bucket, key } => {
                let name = name.trim_matches('/');
                let key = match (key.is_empty(), name.is_empty()) {
                    (_, true) => key.clone(),
                    (true, false) => name.to_owned(),
                    (false, false) => format!("{key}/{name}"),
                };
                Location::S3 {
                    bucket: bucket.clone(),
                    key,
                }
            }
        }
    }

    /// The last segment of the path or key (empty for a bucket root).
    pub fn file_name(&self) -> &str {
        match self {
            Location::Local(path) => path.file_name().and_then(|n| n.to_str()).unwrap_or(""),
            Location::S3 { key, .. } => key.rsplit('/').next().unwrap_or(""),
        }
    }

    /// The URI form: `s3://bucket/key` for S3, the path as given for local files (so that
    /// `Location::parse(&loc.to_uri()) == Ok(loc)` for any parsed location).
    pub fn to_uri(&self) -> String {
        self.to_string()
    }

    /// The URI as a path, the form [`crate::safetensors_io::ModelDir`] stores files in.
    pub fn to_path_buf(&self) -> PathBuf {
        match self {
            Location::Local(path) => path.clone(),
            Location::S3 { .. } => PathBuf::from(self.to_uri()),
        }
    }

    /// Whether this is a local path.
    pub fn is_local(&self) -> bool {
        matches!(self, Location::Local(_))
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Local(path) => write!(f, "{}", path.display()),
            Location::S3 { bucket, key } if key.is_empty() => write!(f, "s3://{bucket}"),
            Location::S3 { bucket, key } => write!(f, "s3://{bucket}/{key}"),
        }
    }
}

impl std::str::FromStr for Location {
    type Err = StorageError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Location::parse(s)
    }
}

/// Refuses path tricks in a local path: a `..` component (which could climb out of an allowed
/// directory; `.` and repeated `/` are harmless and kept), and NUL or other control characters.
fn check_local_path(path: &str) -> Result<(), &'static str> {
    if path.split('/').any(|seg| seg == "..") {
        return Err("the path has a `..` component");
    }
    if path.chars().any(|c| c.is_control()) {
        return Err("the path has a control character");
    }
    Ok(())
}

/// S3 bucket naming rules (the path-style subset every S3-compatible server accepts).
fn valid_bucket(bucket: &str) -> bool {
    (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && bucket.as_bytes()[0].is_ascii_alphanumeric()
        && bucket.as_bytes()[bucket.len() - 1].is_ascii_alphanumeric()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s3(bucket: &str, key: &str) -> Location {
        Location::S3 {
            bucket: bucket.into(),
            key: key.into(),
        }
    }

    #[test]
    fn parses_and_round_trips() {
        let cases = [
            ("s3://bucket/k/x", s3("bucket", "k/x")),
            ("s3://bucket", s3("bucket", "")),
            (
                "s3://my.bucket-1/model.safetensors",
                s3("my.bucket-1", "model.safetensors"),
            ),
            ("/abs/dir", Location::Local("/abs/dir".into())),
            ("relative/dir", Location::Local("relative/dir".into())),
            ("./here", Location::Local("./here".into())),
            ("model", Location::Local("model".into())),
            ("/abs/..dir/x..y/...", Location::Local("/abs/..dir/x..y/...".into())),
        ];
        for (uri, expected) in cases {
            let loc = Location::parse(uri).unwrap();
            assert_eq!(loc, expected, "{uri}");
            assert_eq!(loc.to_uri(), uri);
            assert_eq!(Location::parse(&loc.to_uri()).unwrap(), loc);
            assert_eq!(Location::from_path(&loc.to_path_buf()).unwrap(), loc);
        }
    }

    #[test]
    fn normalises_file_uris_and_trailing_slashes() {
        assert_eq!(Location::parse("file:///a").unwrap(), Location::Local("/a".into()));
        assert_eq!(
            Location::parse("file://localhost/a/b").unwrap(),
            Location::Local("/a/b".into())
        );
        assert_eq!(Location::parse("file:///a").unwrap().to_uri(), "/a");
        assert_eq!(Location::parse("s3://bucket/dir/").unwrap(), s3("bucket", "dir"));
        assert_eq!(Location::parse("s3://bucket/").unwrap(), s3("bucket", ""));
    }

    #[test]
    fn refuses_bad_uris() {
        let cases = [
            ("", "empty location"),
            ("s3://", "bucket names"),
            ("s3://Upper/k", "bucket names"),
            ("s3://ab/k", "bucket names"),
            ("s3://bucket//k", "empty, `.` or `..`"),
            ("s3://bucket/a/../k", "empty, `.` or `..`"),
            ("s3://bucket/a\tb", "control character"),
            ("s3://bucket/..", "empty, `.` or `..`"),
            ("s3://bucket/a/./b", "empty, `.` or `..`"),
            ("/data/../etc/passwd", "`..` component"),
            ("..", "`..` component"),
            ("../models/base", "`..` component"),
            ("models/..", "`..` component"),
            ("file:///data/../etc", "`..` component"),
            ("file://localhost/data/..", "`..` component"),
            ("/data/a\0b", "control character"),
            ("/data/a\nb", "control character"),
            ("file://relative/x", "absolute path"),
            ("gs://bucket/k", "unsupported scheme `gs://`"),
            ("https://host/k", "unsupported scheme `https://`"),
        ];
        for (uri, expected) in cases {
            let err = Location::parse(uri).unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, StorageError::InvalidUri { .. }), "{uri}: {msg}");
            assert!(
                msg.contains(expected) && msg.contains(&format!("`{uri}`")),
                "{uri}: {msg}"
            );
        }
    }

    #[test]
    fn joins_and_names() {
        let root = Location::parse("s3://bucket/models/base").unwrap();
        let file = root.join("model.safetensors");
        assert_eq!(file.to_uri(), "s3://bucket/models/base/model.safetensors");
        assert_eq!(file.file_name(), "model.safetensors");
        assert_eq!(
            Location::parse("s3://bucket").unwrap().join("a/b").to_uri(),
            "s3://bucket/a/b"
        );
        let local = Location::parse("/m").unwrap().join("config.json");
        assert_eq!(local, Location::Local("/m/config.json".into()));
        assert_eq!(local.file_name(), "config.json");
        assert!(local.is_local() && !file.is_local());
    }
}
