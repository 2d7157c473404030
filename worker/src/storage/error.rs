//! Errors of the storage layer, each naming the URI it is about.

use thiserror::Error;

use crate::safetensors_io::SafetensorsError;

/// Errors reading or writing local or S3 storage.
///
/// Credentials never appear in these messages: S3 requests are signed in headers, and the
/// URIs named are the user's own `s3://bucket/key` or local paths.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StorageError {
    /// A string that is not a usable storage location.
    #[error("invalid storage uri `{uri}`: {reason}")]
    InvalidUri {
        /// What was given.
        uri: String,
        /// Why it is refused.
        reason: String,
    },
    /// The S3 bucket does not exist.
    #[error("bucket `{bucket}` does not exist (accessing {uri})")]
    NoSuchBucket {
        /// The bucket.
        bucket: String,
        /// The location being accessed.
        uri: String,
    },
    /// The object or file does not exist.
    #[error("{uri} does not exist")]
    NotFound {
        /// The location.
        uri: String,
    },
    /// A create-only write found the object already there.
    #[error("{uri} already exists")]
    AlreadyExists {
        /// The location.
        uri: String,
    },
    /// A multipart upload id that the store does not know (never created, completed or aborted).
    #[error("multipart upload `{upload_id}` for {uri} does not exist")]
    NoSuchUpload {
        /// The destination of the upload.
        uri: String,
        /// The upload id.
        upload_id: String,
    },
    /// A read past the end of an object.
    #[error("byte range [{start}, +{len}) is outside {uri} ({size} bytes)")]
    OutOfRange {
        /// The location.
        uri: String,
        /// Requested start.
        start: u64,
        /// Requested length.
        len: u64,
        /// Size of the object.
        size: u64,
    },
    /// A file read whole that is over the caller's limit.
    #[error("{uri} is {size} bytes, over the {max}-byte limit")]
    TooLarge {
        /// The location.
        uri: String,
        /// Its size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// An S3 client could not be built from the configuration.
    #[error("invalid s3 configuration for bucket `{bucket}`: {error}")]
    Config {
        /// The bucket the client was for.
        bucket: String,
        /// object_store's description.
        error: object_store::Error,
    },
    /// Any other S3 failure (after object_store's retries).
    #[error("s3 request for {uri} failed: {error}")]
    S3 {
        /// The location.
        uri: String,
        /// The underlying error.
        error: object_store::Error,
    },
    /// An operating-system error on a local file.
    #[error("cannot {op} {uri}: {error}")]
    Io {
        /// What was being done: `read`, `write`, `list`, ...
        op: &'static str,
        /// The path.
        uri: String,
        /// The underlying error.
        error: std::io::Error,
    },
    /// A model directory that cannot be used (corrupt header, bad index, missing shard, ...).
    /// Paths inside are the URIs of remote files.
    #[error(transparent)]
    Model(#[from] SafetensorsError),
}

impl StorageError {
    /// Whether retrying the same operation may succeed: network and I/O failures, as opposed to
    /// missing objects, bad input and configuration errors.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::S3 { error, .. } => !matches!(
                error,
                object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. }
            ),
            Self::Io { error, .. } => !matches!(
                error.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
            ),
            Self::Model(SafetensorsError::Io { .. }) => true,
            _ => false,
        }
    }

    /// Whether the object, bucket or upload does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            Self::NotFound { .. } | Self::NoSuchBucket { .. } | Self::NoSuchUpload { .. }
        )
    }

    pub(crate) fn io(op: &'static str, uri: impl Into<String>, error: std::io::Error) -> Self {
        let uri = uri.into();
        if error.kind() == std::io::ErrorKind::NotFound {
            Self::NotFound { uri }
        } else {
            Self::Io { op, uri, error }
        }
    }
}
