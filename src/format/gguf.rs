//! GGUF v2/v3 files (spec: ggml-org/ggml `docs/gguf.md`): metadata key/values, a tensor index
//! with ggml types, and aligned tensor data. The header parser is candle's (bounds-checked against
//! the file length); this module adapts it to a `ByteSource` and to our `TensorIndex`.

use super::{ByteSource, StorageType, TensorEntry, TensorIndex};
use crate::error::{Error, Result};
use candle_core::quantized::GgmlDType;
use candle_core::quantized::gguf_file::{Content, Value};
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};

const GGUF_MAGIC: &[u8; 4] = b"GGUF";
/// Header reads go through a buffer of this size: the tokenizer arrays are ~400k tiny reads.
const READ_BUFFER_BYTES: usize = 1 << 16;

/// A parsed GGUF header: metadata and where every tensor is.
pub struct GgufFile {
    pub metadata: HashMap<String, Value>,
    pub index: TensorIndex,
}

impl GgufFile {
    pub fn read(source: &mut dyn ByteSource) -> Result<Self> {
        let file = source.name().to_string();
        let mut magic = [0u8; 4];
        if source.len() < 8 {
            return Err(Error::format(&file, "too short to be a GGUF file"));
        }
        source.read_at(0, &mut magic)?;
        if &magic != GGUF_MAGIC {
            return Err(Error::format(&file, format!("not a GGUF file (magic {magic:02x?}, expected \"GGUF\")")));
        }
        let file_len = source.len();
        let content = {
            let mut reader = SourceReader { source: &mut *source, pos: 0, buf: Vec::new(), buf_start: 0 };
            Content::read(&mut reader).map_err(|e| Error::format(&file, crate::error::candle_message(&e)))?
        };
        let mut index = TensorIndex::default();
        for (name, info) in &content.tensor_infos {
            let storage = match info.ggml_dtype {
                GgmlDType::F32 => StorageType::F32,
                GgmlDType::F16 => StorageType::F16,
                GgmlDType::BF16 => StorageType::BF16,
                other => StorageType::Ggml(other),
            };
            let shape = info.shape.dims().to_vec();
            let elements = shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d as u64)).ok_or_else(|| {
                Error::format(&file, format!("tensor {name}: shape {shape:?} has more elements than can exist"))
            })?;
            let byte_len = storage.byte_len(elements).ok_or_else(|| {
                Error::format(
                    &file,
                    format!("tensor {name}: {elements} elements do not fill whole {:?} blocks", info.ggml_dtype),
                )
            })?;
            let offset = content
                .tensor_data_offset
                .checked_add(info.offset)
                .ok_or_else(|| Error::format(&file, format!("tensor {name} has an impossible offset")))?;
            index.insert_checked(
                &file,
                file_len,
                TensorEntry { name: name.clone(), storage, shape, shard: 0, offset, byte_len },
            )?;
        }
        Ok(Self { metadata: content.metadata, index })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    pub fn get_u64(&self, key: &str) -> Option<u64> {
        value_u64(self.metadata.get(key)?)
    }

    pub fn get_f32(&self, key: &str) -> Option<f32> {
        match self.metadata.get(key)? {
            Value::F32(v) => Some(*v),
            Value::F64(v) => Some(*v as f32),
            other => value_u64(other).map(|v| v as f32),
        }
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        match self.metadata.get(key)? {
            Value::String(s) => Some(s.as_str()),
            _ => None,
        }
    }

    pub fn get_bool(&self, key: &str) -> Option<bool> {
        match self.metadata.get(key)? {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn get_array(&self, key: &str) -> Option<&[Value]> {
        match self.metadata.get(key)? {
            Value::Array(a) => Some(a.as_slice()),
            _ => None,
        }
    }
}

pub fn value_u64(v: &Value) -> Option<u64> {
    Some(match v {
        Value::U8(v) => *v as u64,
        Value::U16(v) => *v as u64,
        Value::U32(v) => *v as u64,
        Value::U64(v) => *v,
        Value::I8(v) => u64::try_from(*v).ok()?,
        Value::I16(v) => u64::try_from(*v).ok()?,
        Value::I32(v) => u64::try_from(*v).ok()?,
        Value::I64(v) => u64::try_from(*v).ok()?,
        _ => return None,
    })
}

/// `Read + Seek` over a `ByteSource`, buffered, for candle's header parser.
struct SourceReader<'a> {
    source: &'a mut dyn ByteSource,
    pos: u64,
    buf: Vec<u8>,
    buf_start: u64,
}

impl Read for SourceReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let len = self.source.len();
        if self.pos >= len || out.is_empty() {
            return Ok(0);
        }
        let in_buf = self.pos >= self.buf_start && self.pos < self.buf_start + self.buf.len() as u64;
        if !in_buf {
            let n = (len - self.pos).min(READ_BUFFER_BYTES as u64) as usize;
            self.buf.resize(n, 0);
            self.source.read_at(self.pos, &mut self.buf).map_err(|e| std::io::Error::other(e.to_string()))?;
            self.buf_start = self.pos;
        }
        let at = (self.pos - self.buf_start) as usize;
        let n = out.len().min(self.buf.len() - at);
        out[..n].copy_from_slice(&self.buf[at..at + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for SourceReader<'_> {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let len = self.source.len() as i128;
        let target = match to {
            SeekFrom::Start(p) => p as i128,
            SeekFrom::End(d) => len + d as i128,
            SeekFrom::Current(d) => self.pos as i128 + d as i128,
        };
        if target < 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek before start"));
        }
        self.pos = target as u64;
        Ok(self.pos)
    }
}
