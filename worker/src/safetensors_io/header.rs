//! Parsing safetensors headers from untrusted bytes.
//!
//! A safetensors file is an 8-byte little-endian length `n`, `n` bytes of JSON, then the data
//! section. [`parse_header`] works on a prefix of the file so that a caller reading over the
//! network can fetch exactly `8 + n` bytes; [`read_header`] reads only those bytes from disk.
//!
//! Validation matches what the `safetensors` crate (and so Python `safetensors`, and so
//! mergekit) accepts: the header is at most [`MAX_HEADER_LEN`] bytes, every dtype is known,
//! every tensor's offsets span exactly `numel × dtype size` bytes, tensors tile the data
//! section from 0 to the end of the file with no gap or overlap. It is stricter in one place:
//! a tensor name given twice is an error rather than "last one wins". All arithmetic is
//! checked; no input makes it panic.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use safetensors::Dtype;
use serde::de::{self, IntoDeserializer, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::error::{HeaderError, MAX_HEADER_LEN, SafetensorsError};

/// Length of the little-endian header-length prefix.
pub const LEN_PREFIX: u64 = 8;

/// One tensor of a safetensors file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Tensor name.
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Shape; `[]` is a scalar.
    pub shape: Vec<u64>,
    /// Absolute offset of the first data byte in the file.
    pub data_start: u64,
    /// Number of data bytes.
    pub data_len: u64,
}

impl TensorInfo {
    /// Number of elements (1 for a scalar). Saturates at `u64::MAX`, which cannot happen for
    /// infos produced by this module (their byte size fits in `u64`).
    pub fn numel(&self) -> u64 {
        if self.shape.contains(&0) {
            return 0;
        }
        self.shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .unwrap_or(u64::MAX)
    }

    /// Absolute offset one past the last data byte.
    pub fn data_end(&self) -> u64 {
        self.data_start.saturating_add(self.data_len)
    }
}

/// A parsed safetensors header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Tensors in data-offset order.
    pub tensors: Vec<TensorInfo>,
    /// The `__metadata__` map, if present.
    pub metadata: Option<BTreeMap<String, String>>,
    /// Absolute offset of the data section: `8 + n`.
    pub data_start: u64,
}

impl Header {
    /// The tensor called `name`, if any (linear search).
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Length of a file holding exactly this header and its data.
    pub fn file_len(&self) -> u64 {
        self.tensors.last().map_or(self.data_start, TensorInfo::data_end)
    }
}

/// Why a dtype and shape have no byte size.
pub(crate) enum ByteLenError {
    Overflow,
    PartialByte,
}

/// Bytes needed by `shape` elements of `dtype`, with checked arithmetic.
pub(crate) fn byte_len(dtype: Dtype, shape: &[u64]) -> Result<u64, ByteLenError> {
    if shape.contains(&0) {
        return Ok(0);
    }
    let bits = shape
        .iter()
        .try_fold(dtype.bitsize() as u64, |acc, &d| acc.checked_mul(d))
        .ok_or(ByteLenError::Overflow)?;
    if !bits.is_multiple_of(8) {
        return Err(ByteLenError::PartialByte);
    }
    Ok(bits / 8)
}

/// Parses a safetensors header from the first bytes of a file.
///
/// `prefix` may be any prefix of the file (or the whole file). If it is too short, returns
/// [`HeaderError::NeedMore`] with the number of bytes to fetch: first 8, then `8 + n`.
/// `file_len`, when known, is used to reject a length prefix pointing past the end of the file
/// (checked before asking for more bytes, so `needed` never exceeds it) and to check that the
/// tensors exactly cover the data section. Without it those two checks are skipped.
pub fn parse_header(prefix: &[u8], file_len: Option<u64>) -> Result<Header, HeaderError> {
    let available = prefix.len() as u64;
    if let Some(file_len) = file_len
        && file_len < LEN_PREFIX
    {
        return Err(HeaderError::FileTooSmall { file_len });
    }
    let Some((len_bytes, rest)) = prefix.split_first_chunk::<8>() else {
        return Err(HeaderError::NeedMore {
            needed: LEN_PREFIX,
            available,
        });
    };
    let n = u64::from_le_bytes(*len_bytes);
    if n > MAX_HEADER_LEN {
        return Err(HeaderError::TooLarge { len: n });
    }
    let data_start = LEN_PREFIX + n; // cannot overflow: n is capped
    if let Some(file_len) = file_len
        && data_start > file_len
    {
        return Err(HeaderError::Truncated { claimed: n, file_len });
    }
    let Some(json) = usize::try_from(n).ok().and_then(|n| rest.get(..n)) else {
        return Err(HeaderError::NeedMore {
            needed: data_start,
            available,
        });
    };
    let text = std::str::from_utf8(json).map_err(|e| HeaderError::InvalidUtf8 {
        offset: e.valid_up_to() as u64,
    })?;
    let raw: RawHeader = serde_json::from_str(text).map_err(json_error)?;
    let data_len = file_len.map(|l| l - data_start);
    validate(raw, data_start, data_len)
}

/// Reads and parses the header of the safetensors file at `path`, reading only the first
/// `8 + n` bytes.
pub fn read_header(path: &Path) -> Result<Header, SafetensorsError> {
    let io = |error| SafetensorsError::Io {
        path: path.to_owned(),
        error,
    };
    let mut file = File::open(path).map_err(io)?;
    let file_len = file.metadata().map_err(io)?.len();
    let mut buf = Vec::new();
    let mut want = file_len.min(LEN_PREFIX);
    loop {
        let old = buf.len();
        let want_usize = usize::try_from(want).map_err(|_| HeaderError::TooLarge { len: want }.in_file(path))?;
        buf.resize(want_usize, 0);
        file.read_exact(&mut buf[old..]).map_err(io)?;
        match parse_header(&buf, Some(file_len)) {
            Err(HeaderError::NeedMore { needed, .. }) if needed > want && needed <= file_len => {
                want = needed;
            }
            other => return other.map_err(|e| e.in_file(path)),
        }
    }
}

fn json_error(e: serde_json::Error) -> HeaderError {
    let (line, column) = (e.line() as u64, e.column() as u64);
    let full = e.to_string();
    let suffix = format!(" at line {line} column {column}");
    let message = full.strip_suffix(&suffix).unwrap_or(&full).to_owned();
    HeaderError::InvalidJson { line, column, message }
}

/// Turns the raw JSON entries into a validated [`Header`]. `data_len` is the size of the
/// data section when the file length is known.
fn validate(raw: RawHeader, data_start: u64, data_len: Option<u64>) -> Result<Header, HeaderError> {
    let mut seen = HashSet::with_capacity(raw.tensors.len());
    let mut entries = Vec::with_capacity(raw.tensors.len());
    for (name, t) in raw.tensors {
        if !seen.insert(name.clone()) {
            return Err(HeaderError::DuplicateTensor { tensor: name });
        }
        let Ok(dtype) = Dtype::deserialize(t.dtype.as_str().into_deserializer()).map_err(|_: de::value::Error| ())
        else {
            return Err(HeaderError::UnknownDtype {
                tensor: name,
                dtype: t.dtype,
            });
        };
        let (start, end) = t.data_offsets;
        if end < start {
            return Err(HeaderError::ReversedOffsets {
                tensor: name,
                start,
                end,
            });
        }
        let needed = match byte_len(dtype, &t.shape) {
            Ok(needed) => needed,
            Err(ByteLenError::Overflow) => {
                return Err(HeaderError::SizeOverflow {
                    tensor: name,
                    dtype,
                    shape: t.shape,
                });
            }
            Err(ByteLenError::PartialByte) => {
                return Err(HeaderError::PartialByte {
                    tensor: name,
                    dtype,
                    shape: t.shape,
                });
            }
        };
        if end - start != needed {
            return Err(HeaderError::SizeMismatch {
                tensor: name,
                start,
                end,
                dtype,
                shape: t.shape,
                needed,
            });
        }
        entries.push((name, dtype, t.shape, start, end));
    }
    // Stable: tensors with equal offsets (zero-size ones) keep their JSON order.
    entries.sort_by_key(|e| (e.3, e.4));

    let mut tensors = Vec::with_capacity(entries.len());
    let mut covered = 0u64;
    for (name, dtype, shape, start, end) in entries {
        if start < covered {
            let previous = tensors.last().map_or_else(String::new, |t: &TensorInfo| t.name.clone());
            return Err(HeaderError::Overlap {
                tensor: name,
                start,
                end,
                previous,
                previous_end: covered,
            });
        }
        if start > covered {
            return Err(HeaderError::Gap {
                tensor: name,
                start,
                expected: covered,
            });
        }
        if let Some(data_len) = data_len
            && end > data_len
        {
            return Err(HeaderError::BeyondEnd {
                tensor: name,
                start,
                end,
                data_len,
            });
        }
        // Without a file length, `end` is unbounded: keep absolute offsets representable.
        if data_start.checked_add(end).is_none() {
            return Err(HeaderError::SizeOverflow {
                tensor: name,
                dtype,
                shape,
            });
        }
        covered = end;
        tensors.push(TensorInfo {
            name,
            dtype,
            shape,
            data_start: data_start + start,
            data_len: end - start,
        });
    }
    if let Some(data_len) = data_len
        && covered != data_len
    {
        return Err(HeaderError::TrailingBytes { data_len, covered });
    }
    Ok(Header {
        tensors,
        metadata: raw.metadata,
        data_start,
    })
}

/// The header JSON as written, before validation.
struct RawHeader {
    metadata: Option<BTreeMap<String, String>>,
    tensors: Vec<(String, RawTensor)>,
}

#[derive(Deserialize)]
struct RawTensor {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: (u64, u64),
}

impl<'de> Deserialize<'de> for RawHeader {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(RawHeaderVisitor)
    }
}

struct RawHeaderVisitor;

impl<'de> Visitor<'de> for RawHeaderVisitor {
    type Value = RawHeader;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object mapping tensor names to {dtype, shape, data_offsets}")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawHeader, A::Error> {
        let mut metadata = None;
        let mut seen_metadata = false;
        let mut tensors = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            if key == "__metadata__" {
                if seen_metadata {
                    return Err(de::Error::custom("duplicate `__metadata__` entry"));
                }
                seen_metadata = true;
                metadata = map.next_value()?;
            } else {
                tensors.push((key, map.next_value()?));
            }
        }
        Ok(RawHeader { metadata, tensors })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::safetensors_io::tests::{image, parse};

    #[test]
    fn parses_tensors_in_offset_order_with_absolute_offsets() {
        let json = r#"{"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]},"__metadata__":{"format":"pt"},"a":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]},"s":{"dtype":"I64","shape":[],"data_offsets":[12,20]},"z":{"dtype":"F16","shape":[0,3],"data_offsets":[20,20]}}"#;
        let h = parse(json, 20).unwrap();
        let names: Vec<_> = h.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "s", "z"]);
        let base = 8 + json.len() as u64;
        assert_eq!(h.data_start, base);
        assert_eq!(h.tensors[1].data_start, base + 4);
        assert_eq!(h.tensors[1].data_len, 8);
        assert_eq!(h.tensors[2].numel(), 1);
        assert_eq!(h.tensors[3].numel(), 0);
        assert_eq!(h.metadata.as_ref().unwrap()["format"], "pt");
        assert_eq!(h.file_len(), base + 20);
        assert_eq!(h.tensor("s").unwrap().dtype, Dtype::I64);
    }

    #[test]
    fn empty_header_and_null_metadata() {
        let h = parse("{}", 0).unwrap();
        assert!(h.tensors.is_empty() && h.metadata.is_none());
        let h = parse(r#"{"__metadata__":null}  "#, 0).unwrap();
        assert!(h.metadata.is_none());
    }

    #[test]
    fn asks_for_exactly_the_header_bytes() {
        let bytes = image(r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#, 1);
        let len = Some(bytes.len() as u64);
        let need = |prefix: &[u8]| match parse_header(prefix, len) {
            Err(HeaderError::NeedMore { needed, .. }) => needed,
            other => panic!("{other:?}"),
        };
        assert_eq!(need(&[]), 8);
        assert_eq!(need(&bytes[..5]), 8);
        assert_eq!(need(&bytes[..8]), bytes.len() as u64 - 1);
        assert_eq!(need(&bytes[..bytes.len() - 2]), bytes.len() as u64 - 1);
        assert!(parse_header(&bytes[..bytes.len() - 1], len).is_ok());
        // Without a file length the tensors are not checked against the data section.
        assert!(parse_header(&bytes[..bytes.len() - 1], None).is_ok());
    }

    #[test]
    fn read_header_reads_only_the_header() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.safetensors");
        // An 8 GiB sparse tensor: reading it whole would be slow and would fail in memory.
        let data = 1u64 << 33;
        let json = format!(r#"{{"big":{{"dtype":"U8","shape":[{data}],"data_offsets":[0,{data}]}}}}"#);
        let bytes = image(&json, 0);
        std::fs::write(&path, &bytes).unwrap();
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(bytes.len() as u64 + data).unwrap();
        let h = read_header(&path).unwrap();
        assert_eq!(h.tensors[0].data_len, data);
        assert_eq!(h.file_len(), bytes.len() as u64 + data);

        file.set_len(bytes.len() as u64 + data - 1).unwrap();
        let msg = read_header(&path).unwrap_err().to_string();
        assert!(msg.contains("beyond the end of the file") && msg.contains("big.safetensors"));
    }

    #[test]
    fn read_header_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.safetensors");
        let msg = read_header(&missing).unwrap_err().to_string();
        assert!(msg.starts_with("cannot read ") && msg.contains("missing.safetensors"));
        let short = dir.path().join("short.safetensors");
        std::fs::write(&short, b"abc").unwrap();
        let msg = read_header(&short).unwrap_err().to_string();
        assert!(msg.contains("short.safetensors: file has 3 bytes"), "{msg}");
    }
}
