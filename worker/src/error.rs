//! Error types of the worker library.

/// Errors from kernel dispatch.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// A dtype the kernels cannot work in.
    #[error("unsupported working dtype {0}")]
    UnsupportedDType(String),
    /// The method name is not registered.
    #[error("unknown merge method `{0}`")]
    UnknownMethod(String),
    /// Inputs do not fit the method's contract.
    #[error("{0}")]
    Contract(String),
    /// A parameter is missing or has the wrong type.
    #[error("parameter `{name}`: {reason}")]
    Param {
        /// Parameter name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// Failure inside the task-arithmetic kernel.
    #[error(transparent)]
    Gta(#[from] crate::kernels::gta::GtaError),
}

/// Why a task failed. `retryable()` tells a scheduler whether another attempt may succeed.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// Reading an input failed (I/O; may be transient).
    #[error("reading tensor `{tensor}` from {uri}: {source}")]
    Read {
        /// Input location.
        uri: String,
        /// Tensor name in the input.
        tensor: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Input bytes are malformed or do not match the plan (deterministic).
    #[error("input tensor `{tensor}` in {uri}: {reason}")]
    BadInput {
        /// Input location.
        uri: String,
        /// Tensor name in the input.
        tensor: String,
        /// What is wrong.
        reason: String,
    },
    /// The kernel rejected the task (deterministic).
    #[error("merging tensor `{tensor}`: {source}")]
    Kernel {
        /// Output tensor.
        tensor: String,
        /// Cause.
        #[source]
        source: KernelError,
    },
    /// Writing the output failed (I/O; may be transient).
    #[error("writing tensor `{tensor}` to {uri}: {source}")]
    Write {
        /// Output location.
        uri: String,
        /// Output tensor.
        tensor: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The task message itself is inconsistent (deterministic).
    #[error("invalid task for tensor `{tensor}`: {reason}")]
    InvalidTask {
        /// Output tensor.
        tensor: String,
        /// What is wrong.
        reason: String,
    },
}

impl TaskError {
    /// Whether retrying the same task elsewhere could succeed.
    pub fn retryable(&self) -> bool {
        matches!(self, TaskError::Read { .. } | TaskError::Write { .. })
    }
}
