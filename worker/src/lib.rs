//! shardmerge worker library: storage access, safetensors I/O, merge kernels and task execution.
//!
//! A worker receives [`shardmerge_proto::v1::MergeTask`]s, reads the input byte ranges they
//! name, runs the kernel for the method and writes the result into the output shard at the
//! planned offset. The same library runs inside the single-machine `shardmerge merge` and in
//! the cluster worker process.
#![warn(missing_docs)]

pub mod buffers;
pub mod chunk;
pub mod dtypes;
pub mod error;
pub mod execute;
pub mod kernels;
pub mod methods;
pub mod node;
pub mod rng;
pub mod safetensors_io;
pub mod storage;

pub use error::{KernelError, TaskError};
pub use execute::{TaskOutcome, execute_task};
