//! The S3 backend of [`super::Storage`]: one `object_store` client per bucket, built on first
//! use and cached, and the mapping of S3 failures to [`StorageError`]s that name the URI.
//!
//! S3 answers 404 both for a missing object and for a missing bucket, and a HEAD response has
//! no body to tell them apart; on a 404 the bucket is probed once with a one-key listing, and
//! remembered once it is known to exist.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use object_store::ClientConfigKey;
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::list::{PaginatedListOptions, PaginatedListStore};
use object_store::path::Path as KeyPath;
use object_store::{Error as OsError, RetryConfig};

use super::error::StorageError;

/// Request timeout of a multipart completion (other requests keep object_store's 30 s).
const COMPLETE_TIMEOUT: &str = "900s";

/// Explicit S3 connection settings (instead of the `AWS_*` environment variables).
///
/// Requests are always path-style (`http://endpoint/bucket/key`), which every
/// S3-compatible server accepts. The `Debug` form hides the secret.
#[derive(Clone, Default)]
pub struct S3Options {
    /// Endpoint URL of an S3-compatible server, e.g. `http://127.0.0.1:9000`; `None` for AWS.
    pub endpoint: Option<String>,
    /// Access key id.
    pub access_key_id: Option<String>,
    /// Secret access key.
    pub secret_access_key: Option<String>,
    /// Region; object_store's default (`us-east-1`) when `None`.
    pub region: Option<String>,
    /// Whether plain `http://` endpoints are allowed.
    pub allow_http: bool,
    /// Retries of failed requests (object_store's default: 10 retries within 3 minutes).
    pub retry: RetryConfig,
}

impl fmt::Debug for S3Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Options")
            .field("endpoint", &self.endpoint)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .field("region", &self.region)
            .field("allow_http", &self.allow_http)
            .field("retry", &self.retry)
            .finish()
    }
}

/// Where S3 clients take their settings from.
#[derive(Debug, Clone)]
pub(super) enum S3Settings {
    /// `AmazonS3Builder::from_env()`: `AWS_ENDPOINT`, `AWS_ACCESS_KEY_ID`, ...
    Env,
    /// Endpoint, credentials and region given in code (tests, the test server).
    Explicit(S3Options),
}

/// The cached per-bucket clients of one [`super::Storage`].
#[derive(Debug)]
pub(super) struct S3Clients {
    settings: S3Settings,
    buckets: Mutex<HashMap<String, Arc<Bucket>>>,
}

impl S3Clients {
    pub(super) fn new(settings: S3Settings) -> Self {
        Self {
            settings,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// The client for `bucket`, built on first use.
    pub(super) fn bucket(&self, bucket: &str) -> Result<Arc<Bucket>, StorageError> {
        let mut buckets = self.buckets.lock();
        if let Some(b) = buckets.get(bucket) {
            return Ok(b.clone());
        }
        let builder = match &self.settings {
            S3Settings::Env => AmazonS3Builder::from_env(),
            S3Settings::Explicit(o) => {
                let mut b = AmazonS3Builder::new()
                    .with_allow_http(o.allow_http)
                    .with_retry(o.retry.clone());
                if let Some(v) = &o.endpoint {
                    b = b.with_endpoint(v);
                }
                if let Some(v) = &o.access_key_id {
                    b = b.with_access_key_id(v);
                }
                if let Some(v) = &o.secret_access_key {
                    b = b.with_secret_access_key(v);
                }
                if let Some(v) = &o.region {
                    b = b.with_region(v);
                }
                b
            }
        };
        let builder = builder
            .with_bucket_name(bucket)
            .with_virtual_hosted_style_request(false);
        let config_err = |error| StorageError::Config {
            bucket: bucket.to_owned(),
            error,
        };
        let store = builder.clone().build().map_err(config_err)?;
        // A server assembles a multipart object before it answers the completion, which takes
        // minutes for a shard of many GB; cut off at the default 30 s, the retry would find the
        // upload already gone (s3s-fs: 403) and a good commit would fail.
        let completer = builder
            .with_config(AmazonS3ConfigKey::Client(ClientConfigKey::Timeout), COMPLETE_TIMEOUT)
            .build()
            .map_err(config_err)?;
        tracing::debug!(bucket, "s3 client created");
        let client = Arc::new(Bucket {
            name: bucket.to_owned(),
            store,
            completer,
            known_to_exist: AtomicBool::new(false),
        });
        buckets.insert(bucket.to_owned(), client.clone());
        Ok(client)
    }
}

/// One bucket's client.
pub(super) struct Bucket {
    name: String,
    pub(super) store: AmazonS3,
    /// The same client with [`COMPLETE_TIMEOUT`], for multipart completions.
    pub(super) completer: AmazonS3,
    known_to_exist: AtomicBool,
}

impl fmt::Debug for Bucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bucket")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// What a 404 means for the operation that got it.
#[derive(Debug, Clone, Copy)]
pub(super) enum Missing<'a> {
    /// The object is missing.
    Object,
    /// The multipart upload with this id is missing.
    Upload(&'a str),
}

impl Bucket {
    /// The object_store path of `key`.
    pub(super) fn key_path(&self, key: &str) -> Result<KeyPath, StorageError> {
        KeyPath::parse(key).map_err(|e| StorageError::InvalidUri {
            uri: self.uri(key),
            reason: e.to_string(),
        })
    }

    /// `s3://bucket/key`.
    pub(super) fn uri(&self, key: &str) -> String {
        if key.is_empty() {
            format!("s3://{}", self.name)
        } else {
            format!("s3://{}/{key}", self.name)
        }
    }

    /// Whether the bucket exists; `true` when the probe itself fails (so that the original
    /// error is reported rather than a guess).
    async fn exists(&self) -> bool {
        if self.known_to_exist.load(Ordering::Relaxed) {
            return true;
        }
        let opts = PaginatedListOptions {
            max_keys: Some(1),
            ..Default::default()
        };
        match self.store.list_paginated(None, opts).await {
            Ok(_) => {
                self.known_to_exist.store(true, Ordering::Relaxed);
                true
            }
            Err(e) => !(matches!(e, OsError::NotFound { .. }) || says_no_such_bucket(&e)),
        }
    }

    /// Passes `result` through, converting an error as [`Bucket::error`] does.
    pub(super) async fn check<T>(
        &self,
        key: &str,
        missing: Missing<'_>,
        result: Result<T, OsError>,
    ) -> Result<T, StorageError> {
        match result {
            Ok(v) => Ok(v),
            Err(e) => Err(self.error(key, missing, e).await),
        }
    }

    /// Converts an object_store error on `key` into a [`StorageError`] naming its URI.
    pub(super) async fn error(&self, key: &str, missing: Missing<'_>, error: OsError) -> StorageError {
        let uri = self.uri(key);
        match error {
            _ if says_no_such_bucket(&error) => StorageError::NoSuchBucket {
                bucket: self.name.clone(),
                uri,
            },
            OsError::NotFound { .. } if !self.exists().await => StorageError::NoSuchBucket {
                bucket: self.name.clone(),
                uri,
            },
            OsError::NotFound { .. } => match missing {
                Missing::Object => StorageError::NotFound { uri },
                Missing::Upload(id) => StorageError::NoSuchUpload {
                    uri,
                    upload_id: id.to_owned(),
                },
            },
            OsError::AlreadyExists { .. } | OsError::Precondition { .. } => StorageError::AlreadyExists { uri },
            error => StorageError::S3 { uri, error },
        }
    }
}

/// Whether the error carries S3's `NoSuchBucket` error code. object_store reports some
/// failures (listings) as generic errors whose message includes the response body.
fn says_no_such_bucket(error: &OsError) -> bool {
    error.to_string().contains("<Code>NoSuchBucket</Code>")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_secret() {
        let opts = S3Options {
            access_key_id: Some("AKIDEXAMPLE".into()),
            secret_access_key: Some("wJalrXUtnFEMI-very-secret".into()),
            ..Default::default()
        };
        let shown = format!("{opts:?}");
        assert!(shown.contains("AKIDEXAMPLE") && shown.contains("<redacted>"), "{shown}");
        assert!(!shown.contains("very-secret"), "{shown}");
    }
}
