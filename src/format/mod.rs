//! Model file formats: an index of every tensor (name, storage type, shape, byte range) read from
//! the file header alone, and a `ByteSource` to read one tensor at a time. Nothing here holds a
//! whole model file in memory, so the same code serves a 2.5 GB file on disk or over the network.

pub mod gguf;
pub mod gguf_write;
pub mod safetensors;

use crate::error::{Error, Result};
use candle_core::quantized::GgmlDType;
use std::collections::BTreeMap;

/// Random access to the bytes of one file. Native code reads a `File`; tests read memory; the
/// browser reads fetched or cached chunks. Loading is written once against this trait.
pub trait ByteSource {
    /// Total length in bytes.
    fn len(&self) -> u64;
    /// Fill `buf` with the bytes at `offset`; an error if the range runs past the end.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()>;
    /// A name for error messages (a path or a URL).
    fn name(&self) -> &str;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn read_vec(&mut self, offset: u64, len: u64) -> Result<Vec<u8>> {
        let end = offset.checked_add(len).filter(|&end| end <= self.len()).ok_or_else(|| {
            Error::format(
                self.name(),
                format!(
                    "range {offset}..{} is past the end of the file ({} bytes): truncated?",
                    offset.saturating_add(len),
                    self.len()
                ),
            )
        })?;
        let size = usize::try_from(end - offset)
            .map_err(|_| Error::format(self.name(), "tensor too large for this platform"))?;
        let mut buf = crate::error::try_zeroed(size, || format!("reading {size} bytes of {}", self.name()))?;
        self.read_at(offset, &mut buf)?;
        Ok(buf)
    }
}

/// The one bounds check every `ByteSource::read_at` makes before reading.
pub(crate) fn check_read(name: &str, file_len: u64, offset: u64, len: usize) -> Result<()> {
    if offset.checked_add(len as u64).is_none_or(|end| end > file_len) {
        return Err(Error::format(
            name,
            format!("read of {len} bytes at {offset} is past the end ({file_len} bytes): truncated?"),
        ));
    }
    Ok(())
}

/// A whole file in memory (tests, small files picked in the browser).
pub struct MemorySource {
    name: String,
    bytes: Vec<u8>,
}

impl MemorySource {
    pub fn new(name: impl Into<String>, bytes: Vec<u8>) -> Self {
        Self { name: name.into(), bytes }
    }
}

impl ByteSource for MemorySource {
    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_read(&self.name, self.len(), offset, buf.len())?;
        let start = offset as usize; // < bytes.len() after the check
        buf.copy_from_slice(&self.bytes[start..start + buf.len()]);
        Ok(())
    }
    fn name(&self) -> &str {
        &self.name
    }
}

#[cfg(not(target_arch = "wasm32"))]
pub use native::FileSource;

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use super::ByteSource;
    use crate::error::{Error, Result};
    use std::fs::File;
    use std::os::unix::fs::FileExt;
    use std::path::Path;

    /// A file on disk, read with positioned reads (no seeking state, no memory map).
    pub struct FileSource {
        name: String,
        file: File,
        len: u64,
    }

    impl FileSource {
        pub fn open(path: &Path) -> Result<Self> {
            let name = path.display().to_string();
            let file = File::open(path).map_err(|e| Error::io(format!("cannot open {name}"), e))?;
            let len = file.metadata().map_err(|e| Error::io(format!("cannot stat {name}"), e))?.len();
            Ok(Self { name, file, len })
        }
    }

    impl ByteSource for FileSource {
        fn len(&self) -> u64 {
            self.len
        }
        fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
            super::check_read(&self.name, self.len, offset, buf.len())?;
            self.file.read_exact_at(buf, offset).map_err(|e| Error::io(format!("reading {}", self.name), e))
        }
        fn name(&self) -> &str {
            &self.name
        }
    }
}

/// How a tensor's elements are stored in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageType {
    F32,
    F16,
    BF16,
    /// A GGML block-quantized type (Q8_0, Q4_0, Q4_1, Q4_K, Q6_K, ...).
    Ggml(GgmlDType),
}

impl StorageType {
    /// Bytes needed for `elements` values; None if the count does not fill whole blocks.
    pub fn byte_len(self, elements: u64) -> Option<u64> {
        match self {
            StorageType::F32 => elements.checked_mul(4),
            StorageType::F16 | StorageType::BF16 => elements.checked_mul(2),
            StorageType::Ggml(t) => {
                let block = t.block_size() as u64;
                elements.is_multiple_of(block).then(|| elements / block * t.type_size() as u64)
            }
        }
    }
}

/// Where one tensor lives in the file. `shape` is row-major, outermost first, as PyTorch writes
/// it: a linear layer's weight is `(out_features, in_features)` in both formats after indexing.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorEntry {
    pub name: String,
    pub storage: StorageType,
    pub shape: Vec<usize>,
    /// Which file of a sharded checkpoint holds it (0 for single-file models).
    pub shard: usize,
    /// Absolute byte offset of the tensor data in its file.
    pub offset: u64,
    pub byte_len: u64,
}

impl TensorEntry {
    pub fn elements(&self) -> u64 {
        // Saturating: a corrupt header's shape must fail the size checks, not overflow.
        self.shape.iter().fold(1u64, |n, &d| n.saturating_mul(d as u64))
    }
}

/// Every tensor of a model file, found from the header alone.
#[derive(Debug, Clone, Default)]
pub struct TensorIndex {
    pub tensors: BTreeMap<String, TensorEntry>,
}

impl TensorIndex {
    pub fn get(&self, name: &str) -> Option<&TensorEntry> {
        self.tensors.get(name)
    }

    /// Check an entry against the file length and its own shape: the checks that keep a corrupt
    /// header from turning into a huge allocation or an out-of-range read later.
    pub(crate) fn insert_checked(&mut self, file: &str, file_len: u64, entry: TensorEntry) -> Result<()> {
        let expected = entry.storage.byte_len(entry.elements()).ok_or_else(|| {
            Error::format(
                file,
                format!(
                    "tensor {} has shape {:?} that does not fit its {:?} blocks",
                    entry.name, entry.shape, entry.storage
                ),
            )
        })?;
        if expected != entry.byte_len {
            return Err(Error::format(
                file,
                format!(
                    "tensor {} declares {} bytes but shape {:?} of {:?} needs {expected}",
                    entry.name, entry.byte_len, entry.shape, entry.storage
                ),
            ));
        }
        if entry.offset.checked_add(entry.byte_len).is_none_or(|end| end > file_len) {
            return Err(Error::format(
                file,
                format!(
                    "tensor {} (bytes {}..{}) runs past the end of the file ({file_len} bytes): truncated download?",
                    entry.name,
                    entry.offset,
                    entry.offset.saturating_add(entry.byte_len)
                ),
            ));
        }
        self.tensors.insert(entry.name.clone(), entry);
        Ok(())
    }
}

/// One tensor's bytes as read from the file, with its storage type and shape.
pub struct HostTensor {
    pub name: String,
    pub storage: StorageType,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

impl HostTensor {
    pub fn read(source: &mut dyn ByteSource, entry: &TensorEntry) -> Result<Self> {
        let bytes = source.read_vec(entry.offset, entry.byte_len)?;
        Ok(Self { name: entry.name.clone(), storage: entry.storage, shape: entry.shape.clone(), bytes })
    }

    /// The values as f32 (only for plain float storage; quantized tensors are kept as blocks).
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        let chunks = |n: usize| self.bytes.chunks_exact(n);
        Ok(match self.storage {
            StorageType::F32 => chunks(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            StorageType::F16 => chunks(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            StorageType::BF16 => chunks(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            StorageType::Ggml(t) => {
                return Err(Error::Other(format!("tensor {} is {t:?}-quantized, not plain floats", self.name)));
            }
        })
    }
}
