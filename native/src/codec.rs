//! Decompression of a record batch's records, as aiokafka's `codec` module reads each codec,
//! with a ceiling on the bytes a batch may decompress to.
//!
//! Every decoder is fed through `Read::take(limit + 1)`, so a batch that claims (or turns out)
//! to be larger than the limit costs at most `limit + 1` bytes of memory before it is refused:
//! a decompression bomb is a `Refusal`, never an allocation the size of its claim.

use std::io::Read;

use crate::batch::Refusal;

pub const NONE: u8 = 0;
pub const GZIP: u8 = 1;
pub const SNAPPY: u8 = 2;
pub const LZ4: u8 = 3;
pub const ZSTD: u8 = 4;

/// The xerial snappy-java stream header (aiokafka `_XERIAL_V1_HEADER`): marker 0x82,
/// "SNAPPY", a NUL pad, then version 1 and compatible version 1 as big-endian int32.
const XERIAL_HEADER: [u8; 16] = [
    0x82, b'S', b'N', b'A', b'P', b'P', b'Y', 0, 0, 0, 0, 1, 0, 0, 0, 1,
];

/// `data` decompressed with `codec` (1..=4), at most `limit` bytes.
pub fn decompress(codec: u8, data: &[u8], limit: usize) -> Result<Vec<u8>, Refusal> {
    match codec {
        GZIP => read_limited(flate2::read::MultiGzDecoder::new(data), limit, "gzip"),
        SNAPPY => snappy(data, limit),
        LZ4 => read_limited(lz4_flex::frame::FrameDecoder::new(data), limit, "lz4"),
        ZSTD => {
            let decoder = zstd::stream::read::Decoder::with_buffer(data)
                .map_err(|e| Refusal::bad_compressed("zstd", &e.to_string()))?;
            read_limited(decoder, limit, "zstd")
        }
        other => Err(Refusal::new("unknown_codec", format!("unknown compression codec {other:#04x}"))),
    }
}

fn read_limited<R: Read>(reader: R, limit: usize, name: &str) -> Result<Vec<u8>, Refusal> {
    let mut out = Vec::new();
    let ceiling = (limit as u64).saturating_add(1);
    reader
        .take(ceiling)
        .read_to_end(&mut out)
        .map_err(|e| Refusal::bad_compressed(name, &e.to_string()))?;
    if out.len() > limit {
        return Err(Refusal::too_large(limit));
    }
    Ok(out)
}

/// aiokafka's `snappy_decode`: a xerial block stream when the header says so, else one raw
/// snappy block.
fn snappy(data: &[u8], limit: usize) -> Result<Vec<u8>, Refusal> {
    if data.len() > 16 && data[..16] == XERIAL_HEADER {
        let mut out = Vec::new();
        let mut rest = &data[16..];
        while !rest.is_empty() {
            if rest.len() < 4 {
                return Err(Refusal::bad_compressed("snappy", "truncated xerial block length"));
            }
            let size = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
            rest = &rest[4..];
            let size = usize::try_from(size)
                .ok()
                .filter(|size| *size <= rest.len())
                .ok_or_else(|| Refusal::bad_compressed("snappy", "xerial block length out of bounds"))?;
            let (block, tail) = rest.split_at(size);
            raw_snappy(block, limit, &mut out)?;
            rest = tail;
        }
        Ok(out)
    } else {
        let mut out = Vec::new();
        raw_snappy(data, limit, &mut out)?;
        Ok(out)
    }
}

/// One raw snappy block appended to `out`; its stated length is checked against what is left
/// of `limit` before anything is allocated for it.
fn raw_snappy(block: &[u8], limit: usize, out: &mut Vec<u8>) -> Result<(), Refusal> {
    let size = snap::raw::decompress_len(block)
        .map_err(|e| Refusal::bad_compressed("snappy", &e.to_string()))?;
    if size > limit.saturating_sub(out.len()) {
        return Err(Refusal::too_large(limit));
    }
    let start = out.len();
    out.resize(start + size, 0);
    let written = snap::raw::Decoder::new()
        .decompress(block, &mut out[start..])
        .map_err(|e| Refusal::bad_compressed("snappy", &e.to_string()))?;
    out.truncate(start + written);
    Ok(())
}
