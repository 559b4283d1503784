//! Writing GGUF v3 files (spec: ggml-org/ggml `docs/gguf.md`) as a stream: the header (metadata,
//! then every tensor's name, shape, type and offset) first, then each tensor's data as the caller
//! makes it, a chunk at a time, so a converter never holds more than a piece of one tensor. The
//! layout is gguf-py's (llama.cpp's converter): data aligned to 32 bytes, each tensor padded to
//! the alignment with zeros.

use crate::error::{Error, Result};
use candle_core::quantized::GgmlDType;
use candle_core::quantized::gguf_file::Value;
use std::io::Write;

/// Where each tensor's data starts, and the data section itself (gguf's default alignment).
pub const ALIGNMENT: u64 = 32;

/// A tensor the file will hold: its name, its shape row-major (outermost first, as PyTorch and
/// `TensorEntry` give it), and its type.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorPlan {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: GgmlDType,
}

impl TensorPlan {
    /// Bytes of its data; an error when the innermost dimension does not fill whole blocks.
    pub fn byte_len(&self) -> Result<u64> {
        let elements: u64 = self.shape.iter().map(|&d| d as u64).product();
        let block = self.dtype.block_size() as u64;
        let cols = self.shape.last().copied().unwrap_or(1) as u64;
        if !cols.is_multiple_of(block) {
            return Err(Error::Other(format!(
                "tensor {}: rows of {cols} values do not fill whole {:?} blocks of {block}",
                self.name, self.dtype
            )));
        }
        Ok(elements / block * self.dtype.type_size() as u64)
    }
}

/// The type id GGUF stores for a ggml type.
fn type_id(dtype: GgmlDType) -> u32 {
    match dtype {
        GgmlDType::F32 => 0,
        GgmlDType::F16 => 1,
        GgmlDType::Q4_0 => 2,
        GgmlDType::Q4_1 => 3,
        GgmlDType::Q5_0 => 6,
        GgmlDType::Q5_1 => 7,
        GgmlDType::Q8_0 => 8,
        GgmlDType::Q8_1 => 9,
        GgmlDType::Q2K => 10,
        GgmlDType::Q3K => 11,
        GgmlDType::Q4K => 12,
        GgmlDType::Q5K => 13,
        GgmlDType::Q6K => 14,
        GgmlDType::Q8K => 15,
        GgmlDType::BF16 => 30,
    }
}

/// The type id of a metadata value (gguf's `gguf_type`).
fn value_type(value: &Value) -> u32 {
    match value {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

fn put_string(buf: &mut Vec<u8>, s: &str) {
    buf.extend((s.len() as u64).to_le_bytes());
    buf.extend(s.as_bytes());
}

fn put_value(buf: &mut Vec<u8>, value: &Value) -> Result<()> {
    match value {
        Value::U8(v) => buf.push(*v),
        Value::I8(v) => buf.extend(v.to_le_bytes()),
        Value::U16(v) => buf.extend(v.to_le_bytes()),
        Value::I16(v) => buf.extend(v.to_le_bytes()),
        Value::U32(v) => buf.extend(v.to_le_bytes()),
        Value::I32(v) => buf.extend(v.to_le_bytes()),
        Value::U64(v) => buf.extend(v.to_le_bytes()),
        Value::I64(v) => buf.extend(v.to_le_bytes()),
        Value::F32(v) => buf.extend(v.to_le_bytes()),
        Value::F64(v) => buf.extend(v.to_le_bytes()),
        Value::Bool(v) => buf.push(u8::from(*v)),
        Value::String(s) => put_string(buf, s),
        Value::Array(items) => {
            let element = items.first().map_or(value_type(&Value::U8(0)), value_type);
            if items.iter().any(|v| value_type(v) != element) {
                return Err(Error::Other("a GGUF array mixes value types".into()));
            }
            buf.extend(element.to_le_bytes());
            buf.extend((items.len() as u64).to_le_bytes());
            for item in items {
                put_value(buf, item)?;
            }
        }
    }
    Ok(())
}

/// The bytes of one metadata key/value pair as the file holds them.
pub fn metadata_bytes(key: &str, value: &Value) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    put_string(&mut buf, key);
    buf.extend(value_type(value).to_le_bytes());
    put_value(&mut buf, value)?;
    Ok(buf)
}

fn padding(at: u64) -> usize {
    (at.next_multiple_of(ALIGNMENT) - at) as usize
}

/// A GGUF file being written: `new` writes the header, `write` each tensor's data in the planned
/// order, in as many pieces as the caller likes, and `finish` checks that every byte came.
pub struct GgufWriter<W: Write> {
    out: W,
    /// Each planned tensor's name and byte length.
    tensors: Vec<(String, u64)>,
    /// The tensor being written and its bytes so far.
    current: usize,
    written: u64,
}

impl<W: Write> GgufWriter<W> {
    pub fn new(mut out: W, metadata: &[(String, Value)], tensors: &[TensorPlan]) -> Result<Self> {
        let mut header = Vec::new();
        header.extend(b"GGUF");
        header.extend(3u32.to_le_bytes());
        header.extend((tensors.len() as u64).to_le_bytes());
        header.extend((metadata.len() as u64).to_le_bytes());
        for (key, value) in metadata {
            header.extend(metadata_bytes(key, value)?);
        }
        let mut offset = 0u64;
        let mut sizes = Vec::with_capacity(tensors.len());
        for plan in tensors {
            let bytes = plan.byte_len()?;
            put_string(&mut header, &plan.name);
            header.extend((plan.shape.len() as u32).to_le_bytes());
            // GGUF lists dimensions innermost first (ggml's ne[0] is a row's length).
            for &d in plan.shape.iter().rev() {
                header.extend((d as u64).to_le_bytes());
            }
            header.extend(type_id(plan.dtype).to_le_bytes());
            header.extend(offset.to_le_bytes());
            offset = (offset + bytes).next_multiple_of(ALIGNMENT);
            sizes.push((plan.name.clone(), bytes));
        }
        header.resize(header.len() + padding(header.len() as u64), 0);
        out.write_all(&header).map_err(|e| Error::io("writing the GGUF header", e))?;
        Ok(Self { out, tensors: sizes, current: 0, written: 0 })
    }

    /// The next bytes of the current tensor; a tensor complete, the next one starts.
    pub fn write(&mut self, mut bytes: &[u8]) -> Result<()> {
        while !bytes.is_empty() {
            let Some((name, len)) = self.tensors.get(self.current) else {
                return Err(Error::Other("GGUF writer: more data than the planned tensors hold".into()));
            };
            let take = (len - self.written).min(bytes.len() as u64) as usize;
            self.out.write_all(&bytes[..take]).map_err(|e| Error::io(format!("writing tensor {name}"), e))?;
            self.written += take as u64;
            bytes = &bytes[take..];
            if self.written == *len {
                let pad = padding(*len);
                self.out.write_all(&[0u8; ALIGNMENT as usize][..pad]).map_err(|e| Error::io("writing padding", e))?;
                self.current += 1;
                self.written = 0;
            }
        }
        Ok(())
    }

    /// The writer back, once every planned tensor is complete.
    pub fn finish(self) -> Result<W> {
        if let Some((name, len)) = self.tensors.get(self.current) {
            return Err(Error::Other(format!("GGUF writer: tensor {name} has {} of its {len} bytes", self.written)));
        }
        Ok(self.out)
    }
}
