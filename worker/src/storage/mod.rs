//! Storage: where models are read from and outputs written to, on local disk or S3.
//!
//! * [`Location`] parses `s3://bucket/key`, `file:///path` and plain paths.
//! * [`Storage`] reads (HEAD, ranged reads split into concurrent ranged GETs, small whole
//!   files, listings) and writes (small files, create-if-absent, cross-process multipart
//!   uploads) through one async API for both kinds of location.
//! * [`open_model_dir`] reads a model directory's config and safetensors headers, never its
//!   tensor data, into the same [`crate::safetensors_io::ModelDir`] as a local open.
//! * [`LocalInputs`] / [`LocalOutputs`] are the synchronous task I/O on local files: memory-mapped
//!   input ranges and `pwrite` into pre-sized output shards.
//!
//! Storage moves bytes only; it never interprets tensor data.

mod error;
mod local;
mod local_fs;
mod location;
mod model;
mod s3;
mod store;

#[cfg(any(test, feature = "test-server"))]
pub mod test_faults;
#[cfg(any(test, feature = "test-server"))]
pub mod test_server;
#[cfg(test)]
mod tests;

pub use error::StorageError;
pub use local::{LocalInputs, LocalOutputs, local_path};
pub use location::Location;
pub use model::{open_model_dir, read_header};
/// object_store's retry settings, as used in [`S3Options::retry`].
pub use object_store::RetryConfig;
pub use s3::S3Options;
pub use store::{DEFAULT_READ_CHUNK, DEFAULT_READ_CONCURRENCY, Storage};
