//! Cross-module tests and their fixtures: tensors written by the `safetensors` crate itself.

mod crate_parity;
mod fuzz;
mod malformed;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use proptest::prelude::*;
use safetensors::tensor::{SafeTensors, View, serialize, serialize_to_file};

use super::*;

/// A tensor for the `safetensors` crate's writer.
#[derive(Debug, Clone)]
pub(super) struct Fixture {
    pub(super) dtype: Dtype,
    pub(super) shape: Vec<usize>,
    pub(super) data: Vec<u8>,
}

impl Fixture {
    /// A tensor of `dtype` and `shape` whose bytes count up from `seed`.
    pub(super) fn new(dtype: Dtype, shape: &[usize], seed: u8) -> Self {
        let len = shape.iter().product::<usize>() * dtype_size(dtype).unwrap();
        let data = (0..len).map(|i| seed.wrapping_add(i as u8)).collect();
        Self {
            dtype,
            shape: shape.to_vec(),
            data,
        }
    }
}

impl View for &Fixture {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// A file image: length prefix, `json`, then `data_len` zero bytes.
pub(super) fn image(json: &str, data_len: usize) -> Vec<u8> {
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(json.as_bytes());
    out.resize(out.len() + data_len, 0);
    out
}

/// Parses the header of [`image`]`(json, data_len)`, with the image's length as the file size.
pub(super) fn parse(json: &str, data_len: usize) -> Result<Header, HeaderError> {
    let bytes = image(json, data_len);
    parse_header(&bytes, Some(bytes.len() as u64))
}

/// Writes `tensors` with the crate's own writer and `{"format":"pt"}` metadata.
pub(super) fn write_with_crate(path: &Path, tensors: &[(&str, &Fixture)]) {
    let meta = HashMap::from([("format".to_owned(), "pt".to_owned())]);
    serialize_to_file(tensors.iter().map(|(n, t)| (*n, *t)), Some(meta), path).unwrap();
}

fn dtype_strategy() -> impl Strategy<Value = Dtype> {
    prop_oneof![
        Just(Dtype::BF16),
        Just(Dtype::F16),
        Just(Dtype::F32),
        Just(Dtype::I64),
        Just(Dtype::U8),
        Just(Dtype::F64),
    ]
}

fn shape_strategy() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(0usize..5, 0..4)
}

/// Unique names drawn from characters that exercise JSON escaping and byte ordering.
fn tensors_strategy() -> impl Strategy<Value = Vec<(String, Fixture)>> {
    let name = "[a-zA-Z0-9._é\"\\\\/\u{1}\n]{0,10}";
    prop::collection::btree_map(name, (dtype_strategy(), shape_strategy(), any::<u8>()), 0..10).prop_map(|m| {
        m.into_iter()
            .filter(|(n, _)| n != "__metadata__")
            .map(|(n, (d, s, seed))| (n, Fixture::new(d, &s, seed)))
            .collect()
    })
}

fn crate_bytes(tensors: &[(String, Fixture)], meta: Option<&BTreeMap<String, String>>) -> Vec<u8> {
    let meta = meta.map(|m| m.clone().into_iter().collect::<HashMap<_, _>>());
    serialize(tensors.iter().map(|(n, t)| (n.as_str(), t)), meta).unwrap()
}

fn spec(tensors: &[(String, Fixture)]) -> Vec<(String, Dtype, Vec<u64>)> {
    tensors
        .iter()
        .map(|(n, t)| {
            let shape = t.shape.iter().map(|&d| d as u64).collect();
            (n.clone(), t.dtype, shape)
        })
        .collect()
}

/// The crate's view of a file.
/// name -> (dtype, shape, absolute data start, data bytes).
type FileView = BTreeMap<String, (Dtype, Vec<u64>, u64, Vec<u8>)>;

fn crate_view(bytes: &[u8]) -> Option<FileView> {
    let (n, _) = SafeTensors::read_metadata(bytes).ok()?;
    let st = SafeTensors::deserialize(bytes).ok()?;
    let base = bytes.as_ptr() as u64;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let start = view.data().as_ptr() as u64 - base;
        let shape = view.shape().iter().map(|&d| d as u64).collect();
        out.insert(name, (view.dtype(), shape, start, view.data().to_vec()));
    }
    assert!(out.values().all(|v| v.2 >= 8 + n as u64));
    Some(out)
}

fn our_view(bytes: &[u8], header: &Header) -> FileView {
    header
        .tensors
        .iter()
        .map(|t| {
            let data = bytes[t.data_start as usize..t.data_end() as usize].to_vec();
            (t.name.clone(), (t.dtype, t.shape.clone(), t.data_start, data))
        })
        .collect()
}
