//! The small files beside a model's weights that planning reads: the tokenizer files a
//! vocabulary alignment or a chat template needs. They are read when the model directory is
//! opened (locally here, on S3 by `storage::open_model_dir`), only when present and up to
//! [`MAX_SIDE_FILE_LEN`], so the planner reads them the same way from any storage. Problems
//! are recorded, not raised: a merge that never needs a tokenizer does not fail on one.

use std::collections::BTreeMap;
use std::path::Path;

/// The Hugging Face tokenizer (vocabulary, added tokens, pipeline).
pub const TOKENIZER_JSON: &str = "tokenizer.json";
/// The tokenizer's settings (special tokens, chat template).
pub const TOKENIZER_CONFIG: &str = "tokenizer_config.json";
/// A chat template saved as its own file (transformers 5).
pub const CHAT_TEMPLATE: &str = "chat_template.jinja";
/// A SentencePiece model: only its presence is recorded (it is not read).
pub const SENTENCEPIECE_MODEL: &str = "tokenizer.model";
/// Text side files read at open time.
pub const TEXT_SIDE_FILES: [&str; 3] = [TOKENIZER_JSON, TOKENIZER_CONFIG, CHAT_TEMPLATE];
/// Largest side file read (tokenizers of real models are a few MB to ~35 MB).
pub const MAX_SIDE_FILE_LEN: u64 = 256 << 20;

/// One side file that exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SideFile {
    /// Its text.
    Text(String),
    /// Present, not read (a binary file such as [`SENTENCEPIECE_MODEL`]).
    Present,
    /// Present but not readable as text: why (too large, not UTF-8, an I/O error).
    Unreadable(String),
}

/// The side files of a model directory that exist, by file name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SideFiles(BTreeMap<String, SideFile>);

impl SideFiles {
    /// The file `name`, if the directory has it.
    pub fn get(&self, name: &str) -> Option<&SideFile> {
        self.0.get(name)
    }

    /// The text of `name`: `Ok(None)` when absent or not a text file, `Err(why)` when present
    /// but unreadable.
    pub fn text(&self, name: &str) -> Result<Option<&str>, &str> {
        match self.0.get(name) {
            Some(SideFile::Text(t)) => Ok(Some(t)),
            Some(SideFile::Unreadable(why)) => Err(why),
            Some(SideFile::Present) | None => Ok(None),
        }
    }

    /// Records `name`.
    pub fn insert(&mut self, name: &str, file: SideFile) {
        self.0.insert(name.to_owned(), file);
    }

    /// Reads the side files of the local directory `root`.
    pub fn read_local(root: &Path) -> SideFiles {
        let mut files = SideFiles::default();
        for name in TEXT_SIDE_FILES {
            let path = root.join(name);
            if !path.is_file() {
                continue;
            }
            let file = match std::fs::metadata(&path).map(|m| m.len()) {
                Ok(len) if len > MAX_SIDE_FILE_LEN => SideFile::too_large(len),
                Ok(_) => match std::fs::read(&path) {
                    Ok(bytes) => SideFile::from_bytes(bytes),
                    Err(e) => SideFile::Unreadable(e.to_string()),
                },
                Err(e) => SideFile::Unreadable(e.to_string()),
            };
            files.insert(name, file);
        }
        if root.join(SENTENCEPIECE_MODEL).is_file() {
            files.insert(SENTENCEPIECE_MODEL, SideFile::Present);
        }
        files
    }
}

impl SideFile {
    /// A side file over the size cap.
    pub fn too_large(len: u64) -> SideFile {
        SideFile::Unreadable(format!(
            "it is {len} bytes, more than the {MAX_SIDE_FILE_LEN}-byte limit"
        ))
    }

    /// A side file's bytes as text.
    pub fn from_bytes(bytes: Vec<u8>) -> SideFile {
        match String::from_utf8(bytes) {
            Ok(t) => SideFile::Text(t),
            Err(e) => SideFile::Unreadable(format!("it is not UTF-8 text ({e})")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn present_files_are_read_absent_ones_left_out_and_problems_recorded() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(TOKENIZER_JSON), "{\"model\": {}}").unwrap();
        std::fs::write(dir.path().join(CHAT_TEMPLATE), b"\xff\xfe").unwrap();
        std::fs::write(dir.path().join(SENTENCEPIECE_MODEL), b"\x0a\x05").unwrap();
        let files = SideFiles::read_local(dir.path());
        assert_eq!(files.text(TOKENIZER_JSON), Ok(Some("{\"model\": {}}")));
        assert_eq!(files.get(TOKENIZER_CONFIG), None);
        assert_eq!(files.get(SENTENCEPIECE_MODEL), Some(&SideFile::Present));
        assert!(files.text(CHAT_TEMPLATE).unwrap_err().contains("not UTF-8"));
        assert!(matches!(SideFile::too_large(MAX_SIDE_FILE_LEN + 1), SideFile::Unreadable(w) if w.contains("limit")));
    }
}
