//! Read-only memory maps of safetensors files with bounds-checked access.

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::error::SafetensorsError;
use super::header::TensorInfo;

/// A file mapped read-only into memory.
///
/// The map assumes nobody truncates or rewrites the file while it is open (model inputs are
/// read-only to us; outputs are written to a temporary name and renamed). Truncation by
/// another process would make reads of the lost pages fault, as with any mmap.
#[derive(Debug)]
pub struct MappedFile {
    path: PathBuf,
    map: Mmap,
}

impl MappedFile {
    /// Maps the file at `path`.
    pub fn open(path: &Path) -> Result<Self, SafetensorsError> {
        let io = |error| SafetensorsError::Io {
            path: path.to_owned(),
            error,
        };
        let file = File::open(path).map_err(io)?;
        // SAFETY: the map is read-only and private to this process; the invariant that the
        // file is not modified while mapped is documented on the type (see above). An empty
        // file yields an empty map.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        Ok(Self {
            path: path.to_owned(),
            map,
        })
    }

    /// The mapped file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Length of the file in bytes.
    pub fn len(&self) -> u64 {
        self.map.len() as u64
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The `len` bytes starting at absolute offset `start`.
    pub fn bytes(&self, start: u64, len: u64) -> Result<&[u8], SafetensorsError> {
        let range = usize::try_from(start)
            .ok()
            .zip(usize::try_from(len).ok())
            .and_then(|(s, l)| Some(s..s.checked_add(l)?));
        range
            .and_then(|r| self.map.get(r))
            .ok_or_else(|| SafetensorsError::OutOfBounds {
                path: self.path.clone(),
                start,
                len,
                file_len: self.len(),
            })
    }

    /// The data bytes of `tensor`.
    pub fn tensor_bytes(&self, tensor: &TensorInfo) -> Result<&[u8], SafetensorsError> {
        self.bytes(tensor.data_start, tensor.data_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.bin");
        std::fs::write(&path, b"0123456789").unwrap();
        let m = MappedFile::open(&path).unwrap();
        assert_eq!(m.len(), 10);
        assert_eq!(m.bytes(2, 3).unwrap(), b"234");
        assert_eq!(m.bytes(10, 0).unwrap(), b"");
        assert_eq!(m.bytes(0, 10).unwrap(), b"0123456789");
        for (start, len) in [(0, 11), (10, 1), (11, 0), (u64::MAX, 1), (1, u64::MAX)] {
            let err = m.bytes(start, len).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains("f.bin") && msg.contains("10 bytes"), "{msg}");
        }
    }

    #[test]
    fn empty_file_maps_to_empty_slice() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty");
        std::fs::write(&path, b"").unwrap();
        let m = MappedFile::open(&path).unwrap();
        assert!(m.is_empty());
        assert_eq!(m.bytes(0, 0).unwrap(), b"");
        assert!(m.bytes(0, 1).is_err());
    }

    #[test]
    fn missing_file_names_path() {
        let err = MappedFile::open(Path::new("/nonexistent/x.safetensors")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/x.safetensors"));
    }
}
