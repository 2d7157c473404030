//! Error types of the safetensors layer.
//!
//! [`HeaderError`] describes what is wrong with header bytes; it knows nothing of where the
//! bytes came from, so a caller reading over the network can use it too. [`SafetensorsError`]
//! adds the file: its message places the path where a reader looks for it, e.g.
//! `truncated safetensors header in /m/model.safetensors: header claims 1234 bytes but file
//! has 100`.

use std::fmt;
use std::path::{Path, PathBuf};

use safetensors::Dtype;
use thiserror::Error;

/// Largest accepted JSON header, in bytes (the `safetensors` crate's cap).
pub const MAX_HEADER_LEN: u64 = 100_000_000;

/// What is wrong with the bytes of a safetensors header (parsing) or with a tensor list
/// (building). Displayed without a file name; see [`HeaderError::in_file`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeaderError {
    /// The prefix given to the parser is too short: read `needed` bytes and parse again.
    NeedMore {
        /// Bytes needed from the start of the file (8, then 8 + header length).
        needed: u64,
        /// Bytes that were given.
        available: u64,
    },
    /// The file is shorter than the 8-byte length prefix.
    FileTooSmall {
        /// Length of the whole file.
        file_len: u64,
    },
    /// The length prefix points past the end of the file.
    Truncated {
        /// Header length claimed by the prefix.
        claimed: u64,
        /// Length of the whole file.
        file_len: u64,
    },
    /// The length prefix (or a header being built) exceeds [`MAX_HEADER_LEN`].
    TooLarge {
        /// Header length claimed or produced.
        len: u64,
    },
    /// The header bytes are not UTF-8.
    InvalidUtf8 {
        /// Offset of the first bad byte within the JSON header.
        offset: u64,
    },
    /// The header is not valid JSON, or not shaped like a safetensors header.
    InvalidJson {
        /// 1-based line of the problem.
        line: u64,
        /// 1-based column of the problem.
        column: u64,
        /// serde_json's description.
        message: String,
    },
    /// The same tensor name appears twice.
    DuplicateTensor {
        /// The repeated name.
        tensor: String,
    },
    /// A tensor is named `__metadata__`, which the format reserves.
    ReservedName,
    /// A dtype string the `safetensors` crate does not know.
    UnknownDtype {
        /// Tensor name.
        tensor: String,
        /// The dtype as written.
        dtype: String,
    },
    /// The byte size of a shape overflows `u64`.
    SizeOverflow {
        /// Tensor name.
        tensor: String,
        /// Its dtype.
        dtype: Dtype,
        /// Its shape.
        shape: Vec<u64>,
    },
    /// A sub-byte dtype whose elements do not fill whole bytes.
    PartialByte {
        /// Tensor name.
        tensor: String,
        /// Its dtype.
        dtype: Dtype,
        /// Its shape.
        shape: Vec<u64>,
    },
    /// `data_offsets` start after they end.
    ReversedOffsets {
        /// Tensor name.
        tensor: String,
        /// Start offset, relative to the data section.
        start: u64,
        /// End offset, relative to the data section.
        end: u64,
    },
    /// `data_offsets` do not span exactly the bytes the dtype and shape need.
    SizeMismatch {
        /// Tensor name.
        tensor: String,
        /// Start offset, relative to the data section.
        start: u64,
        /// End offset, relative to the data section.
        end: u64,
        /// Its dtype.
        dtype: Dtype,
        /// Its shape.
        shape: Vec<u64>,
        /// Bytes the dtype and shape need.
        needed: u64,
    },
    /// Two tensors share bytes.
    Overlap {
        /// Tensor name.
        tensor: String,
        /// Its start offset.
        start: u64,
        /// Its end offset.
        end: u64,
        /// The tensor before it in offset order.
        previous: String,
        /// Where the previous tensor ends.
        previous_end: u64,
    },
    /// Bytes between two tensors (or before the first) belong to no tensor.
    Gap {
        /// Tensor name.
        tensor: String,
        /// Its start offset.
        start: u64,
        /// Where it should start: the end of the previous tensor, or 0.
        expected: u64,
    },
    /// A tensor ends beyond the end of the file.
    BeyondEnd {
        /// Tensor name.
        tensor: String,
        /// Start offset, relative to the data section.
        start: u64,
        /// End offset, relative to the data section.
        end: u64,
        /// Size of the data section of the file.
        data_len: u64,
    },
    /// The file has bytes after the last tensor.
    TrailingBytes {
        /// Size of the data section of the file.
        data_len: u64,
        /// Bytes the tensors cover.
        covered: u64,
    },
}

impl HeaderError {
    /// Wraps the error with the file it came from.
    pub fn in_file(self, path: impl Into<PathBuf>) -> SafetensorsError {
        SafetensorsError::Header {
            path: path.into(),
            error: self,
        }
    }

    /// Displays the message with ` in <path>` at its natural place.
    pub fn display_in<'a>(&'a self, path: &'a Path) -> impl fmt::Display + 'a {
        InFile(self, Some(path))
    }

    fn fmt_in(&self, f: &mut fmt::Formatter<'_>, path: Option<&Path>) -> fmt::Result {
        let at = At(path);
        match self {
            Self::NeedMore { needed, available } => write!(
                f,
                "need the first {needed} bytes{at} to parse the safetensors header, got {available}"
            ),
            Self::FileTooSmall { file_len } => write!(
                f,
                "truncated safetensors header{at}: file has {file_len} bytes, fewer than the 8-byte length prefix"
            ),
            Self::Truncated { claimed, file_len } => write!(
                f,
                "truncated safetensors header{at}: header claims {claimed} bytes but file has {file_len}"
            ),
            Self::TooLarge { len } => write!(
                f,
                "safetensors header{at} is {len} bytes, over the {MAX_HEADER_LEN}-byte cap"
            ),
            Self::InvalidUtf8 { offset } => write!(f, "corrupt safetensors header{at}: invalid UTF-8 at byte {offset}"),
            Self::InvalidJson { line, column, message } => write!(
                f,
                "corrupt safetensors header{at}: invalid JSON at line {line} column {column}: {message}"
            ),
            Self::DuplicateTensor { tensor } => {
                write!(f, "duplicate tensor `{tensor}` in safetensors header{at}")
            }
            Self::ReservedName => write!(
                f,
                "tensor name `__metadata__`{at} is reserved by the safetensors format"
            ),
            Self::UnknownDtype { tensor, dtype } => {
                write!(f, "tensor `{tensor}`{at} has unknown dtype `{dtype}`")
            }
            Self::SizeOverflow { tensor, dtype, shape } => write!(
                f,
                "tensor `{tensor}`{at} has dtype {dtype} shape {shape:?} whose byte size overflows"
            ),
            Self::PartialByte { tensor, dtype, shape } => write!(
                f,
                "tensor `{tensor}`{at} has dtype {dtype} shape {shape:?} that does not fill whole bytes"
            ),
            Self::ReversedOffsets { tensor, start, end } => write!(
                f,
                "tensor `{tensor}`{at} has data_offsets [{start}, {end}] that end before they start"
            ),
            Self::SizeMismatch {
                tensor,
                start,
                end,
                dtype,
                shape,
                needed,
            } => write!(
                f,
                "tensor `{tensor}`{at} has data_offsets [{start}, {end}] but dtype {dtype} shape {shape:?} needs {needed} bytes"
            ),
            Self::Overlap {
                tensor,
                start,
                end,
                previous,
                previous_end,
            } => write!(
                f,
                "tensor `{tensor}`{at} has data_offsets [{start}, {end}] overlapping tensor `{previous}`, which ends at {previous_end}"
            ),
            Self::Gap {
                tensor,
                start,
                expected,
            } => write!(
                f,
                "tensor `{tensor}`{at} starts at data offset {start} but should start at {expected}: gaps between tensors are not allowed"
            ),
            Self::BeyondEnd {
                tensor,
                start,
                end,
                data_len,
            } => write!(
                f,
                "tensor `{tensor}`{at} has data_offsets [{start}, {end}] beyond the end of the file (data section has {data_len} bytes)"
            ),
            Self::TrailingBytes { data_len, covered } => write!(
                f,
                "safetensors file{at} has a {data_len}-byte data section but its tensors cover only {covered} bytes"
            ),
        }
    }
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.fmt_in(f, None)
    }
}

impl std::error::Error for HeaderError {}

struct At<'a>(Option<&'a Path>);

impl fmt::Display for At<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(path) => write!(f, " in {}", path.display()),
            None => Ok(()),
        }
    }
}

struct InFile<'a>(&'a HeaderError, Option<&'a Path>);

impl fmt::Display for InFile<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt_in(f, self.1)
    }
}

/// Errors reading safetensors files and model directories, each naming the file.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SafetensorsError {
    /// An operating-system error on a file.
    #[error("cannot read {}: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        error: std::io::Error,
    },
    /// A malformed safetensors header.
    #[error("{}", error.display_in(path))]
    Header {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        error: HeaderError,
    },
    /// A byte range outside a mapped file.
    #[error(
        "byte range [{start}, +{len}) is outside {} ({file_len} bytes)",
        path.display()
    )]
    OutOfBounds {
        /// The file.
        path: PathBuf,
        /// Requested start.
        start: u64,
        /// Requested length.
        len: u64,
        /// Length of the file.
        file_len: u64,
    },
    /// The model directory does not exist or is not a directory.
    #[error("model directory {} does not exist or is not a directory", path.display())]
    NotADirectory {
        /// The path given.
        path: PathBuf,
    },
    /// No weights of any known layout.
    #[error(
        "no model weights in {}: looked for model.safetensors, model.safetensors.index.json, \
         pytorch_model.bin and pytorch_model.bin.index.json",
        dir.display()
    )]
    NoWeights {
        /// The model directory.
        dir: PathBuf,
    },
    /// Only pickle (`pytorch_model.bin`) weights.
    #[error(
        "pickle checkpoints are not supported; convert to safetensors (found {})",
        path.display()
    )]
    PickleCheckpoint {
        /// The pickle file or its index.
        path: PathBuf,
    },
    /// A JSON file (index or config) that cannot be used.
    #[error("invalid {}: {message}", path.display())]
    InvalidJsonFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A shard named by an index does not exist.
    #[error("shard {} listed in {} does not exist", shard.display(), index.display())]
    MissingShard {
        /// The index file.
        index: PathBuf,
        /// The shard file it names.
        shard: PathBuf,
    },
    /// A tensor listed in an index is absent from its shard.
    #[error(
        "tensor `{tensor}` is mapped to {} by {}, but that shard has no such tensor",
        shard.display(),
        index.display()
    )]
    TensorNotInShard {
        /// The tensor name.
        tensor: String,
        /// The index file.
        index: PathBuf,
        /// The shard file.
        shard: PathBuf,
    },
}

/// Errors converting between on-disk dtypes and `f32`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ConvertError {
    /// The dtype is not converted to or from `f32` (only BF16, F16 and F32 are).
    #[error("dtype {dtype} cannot be converted to or from f32 (supported: BF16, F16, F32)")]
    UnsupportedDtype {
        /// The dtype.
        dtype: Dtype,
    },
    /// The byte buffer does not hold exactly as many elements as the `f32` buffer.
    #[error("{bytes} bytes of {dtype} do not hold exactly {values} values")]
    LengthMismatch {
        /// The dtype.
        dtype: Dtype,
        /// Length of the byte buffer.
        bytes: usize,
        /// Length of the `f32` buffer.
        values: usize,
    },
}
