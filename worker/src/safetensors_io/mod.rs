//! Safetensors I/O: header parsing and writing, model directories, memory-mapped reads and
//! dtype conversion.
//!
//! * [`parse_header`] / [`read_header`] read headers from untrusted bytes, never panicking.
//! * [`build_header`] writes headers byte-identical to the `safetensors` crate (and so to
//!   Python `safetensors`, which mergekit uses).
//! * [`ModelDir`] locates every tensor of a Hugging Face model directory.
//! * [`MappedFile`] gives bounds-checked access to a file's bytes.
//! * [`decode_to_f32`] / [`encode_from_f32`] convert BF16, F16 and F32 element bytes.

mod convert;
mod error;
mod header;
mod header_writer;
mod mapped;
mod model_dir;
mod side_files;

#[cfg(test)]
mod tests;

pub use convert::{decode_to_f32, dtype_size, encode_from_f32};
pub use error::{ConvertError, HeaderError, MAX_HEADER_LEN, SafetensorsError};
pub use header::{Header, LEN_PREFIX, TensorInfo, parse_header, read_header};
pub use header_writer::{OutputHeader, build_header, pt_metadata};
pub use mapped::MappedFile;
pub use model_dir::{CONFIG_FILE, INDEX_FILE, LocatedTensor, ModelDir, PICKLE_FILES, SINGLE_FILE, ShardIndex};
/// Element types, as the `safetensors` crate defines and orders them.
pub use safetensors::Dtype;
pub use side_files::{
    CHAT_TEMPLATE, MAX_SIDE_FILE_LEN, SENTENCEPIECE_MODEL, SideFile, SideFiles, TEXT_SIDE_FILES, TOKENIZER_CONFIG,
    TOKENIZER_JSON,
};
