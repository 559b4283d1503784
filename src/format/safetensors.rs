//! safetensors headers: an 8-byte little-endian header length, then a JSON map of
//! `name -> {dtype, shape, data_offsets}` (spec: huggingface/safetensors README). We parse the
//! header ourselves because the `safetensors` crate validates against the whole file in memory,
//! which a 2.5 GB checkpoint in a browser cannot afford.

use super::{ByteSource, StorageType, TensorEntry, TensorIndex};
use crate::error::{Error, Result};
use serde::Deserialize;
use std::collections::BTreeMap;

/// Headers larger than this are refused (the real 1B header is about 20 KB).
const MAX_HEADER_BYTES: u64 = 100 << 20;

#[derive(Deserialize)]
struct RawEntry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: (u64, u64),
}

/// Index every tensor of one safetensors file, tagging entries with `shard`.
pub fn read_index(source: &mut dyn ByteSource, shard: usize, index: &mut TensorIndex) -> Result<()> {
    let file = source.name().to_string();
    if source.len() < 8 {
        return Err(Error::format(&file, "too short to be a safetensors file"));
    }
    let mut len_bytes = [0u8; 8];
    source.read_at(0, &mut len_bytes)?;
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > MAX_HEADER_BYTES || 8 + header_len > source.len() {
        return Err(Error::format(
            &file,
            format!(
                "header length {header_len} does not fit a {}-byte file: not safetensors, or truncated",
                source.len()
            ),
        ));
    }
    let header = source.read_vec(8, header_len)?;
    let mut raw: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| Error::format(&file, format!("header is not valid JSON: {e}")))?;
    raw.remove("__metadata__");
    let data_start = 8 + header_len;
    // The data section ends where the last tensor does (the format indexes all of it).
    let mut data_end = 0;
    for (name, value) in raw {
        let entry: RawEntry =
            serde_json::from_value(value).map_err(|e| Error::format(&file, format!("tensor {name}: {e}")))?;
        let storage = match entry.dtype.as_str() {
            "F32" => StorageType::F32,
            "F16" => StorageType::F16,
            "BF16" => StorageType::BF16,
            other => {
                return Err(Error::format(
                    &file,
                    format!("tensor {name} has dtype {other}; only F32, F16 and BF16 are supported"),
                ));
            }
        };
        let (begin, end) = entry.data_offsets;
        if end < begin {
            return Err(Error::format(
                &file,
                format!("tensor {name} has data_offsets ({begin}, {end}) that end before they begin"),
            ));
        }
        index.insert_checked(
            &file,
            source.len(),
            TensorEntry { name, storage, shape: entry.shape, shard, offset: data_start + begin, byte_len: end - begin },
        )?;
        data_end = data_end.max(end);
    }
    // Bytes after the last tensor: a download that went wrong (a resume answered with the whole
    // file is appended to the part it had), whose tensors may then hold the wrong bytes.
    if data_start + data_end < source.len() {
        return Err(Error::format(
            &file,
            format!(
                "the file has {} bytes, but its tensors end at byte {}: corrupt (a broken download?); fetch it again",
                source.len(),
                data_start + data_end
            ),
        ));
    }
    Ok(())
}

/// The `weight_map` of a sharded checkpoint's `model.safetensors.index.json`: tensor -> file.
pub fn read_shard_map(json: &str, file: &str) -> Result<BTreeMap<String, String>> {
    #[derive(Deserialize)]
    struct ShardIndex {
        weight_map: BTreeMap<String, String>,
    }
    let parsed: ShardIndex = serde_json::from_str(json).map_err(|e| Error::format(file, e))?;
    Ok(parsed.weight_map)
}
