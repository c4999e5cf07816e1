//! Kafka record batches (message format v2) of one fetched partition, read as aiokafka reads
//! them for a consumer: `MemoryRecords` slicing, `DefaultRecordBatch` decoding, and
//! `PartitionRecords._unpack_records` deciding which records a consumer sees (CRC check,
//! aborted transactions under read_committed, control batches, records below the fetch
//! offset) and where the next fetch starts.
//!
//! Every length read from the bytes is checked against what is there before it is used, and
//! no allocation is sized by a length the bytes claim. Where aiokafka would raise (a bad CRC,
//! a malformed record, a control batch without records) this returns a `Refusal` naming the
//! reason and the batch's base offset, and nothing else of the fetch: the caller then reads
//! the fetch the way it does without the kernel, which raises as before. A refusal is also
//! what the kernel answers for what it does not read at all (message format v0/v1).

use std::collections::HashSet;

use crate::codec;

const LOG_OVERHEAD: usize = 12; // base offset (int64) + batch length (int32)
const HEADER: usize = 61; // the v2 batch header, up to and including the record count
const MAGIC_AT: usize = 16;
const CRC_AT: usize = 17;
const ATTRIBUTES_AT: usize = 21;

const TIMESTAMP_TYPE_MASK: i16 = 0x08;
const TRANSACTIONAL_MASK: i16 = 0x10;
const CONTROL_MASK: i16 = 0x20;
const LOG_APPEND_TIME: u8 = 1;

/// Why the kernel does not answer for a fetch.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub reason: &'static str,
    pub message: String,
    /// base offset of the batch it concerns, when one is known
    pub offset: Option<i64>,
}

impl Refusal {
    pub fn new(reason: &'static str, message: String) -> Self {
        Refusal { reason, message, offset: None }
    }
    pub fn corrupt(message: &str) -> Self {
        Refusal::new("corrupt", message.to_string())
    }
    pub fn bad_compressed(codec: &str, why: &str) -> Self {
        Refusal::new("bad_compressed", format!("cannot decompress {codec}: {why}"))
    }
    pub fn too_large(limit: usize) -> Self {
        Refusal::new("too_large", format!("batch decompresses to more than {limit} bytes"))
    }
    fn at(mut self, offset: i64) -> Self {
        self.offset.get_or_insert(offset);
        self
    }
}

/// Where a record's bytes are: `buf` 0 is the fetch itself, `n` the n-th decompressed batch.
#[derive(Debug, Clone, Copy)]
pub struct Span {
    pub buf: u32,
    pub start: u32,
    pub end: u32,
}

#[derive(Debug, Clone)]
pub struct Record {
    pub offset: i64,
    pub timestamp: i64,
    pub timestamp_type: u8,
    pub key: Option<Span>,
    pub value: Option<Span>,
    /// the record's headers, already checked (`headers` reads them again)
    pub headers: Span,
    pub header_count: u32,
}

/// The records a consumer sees in a fetch, and where its next fetch starts.
pub struct Fetch<'a> {
    pub data: &'a [u8],
    pub decompressed: Vec<Vec<u8>>,
    pub records: Vec<Record>,
    /// (Python's int: one past an offset of i64::MAX is 2**63)
    pub next_offset: i128,
    /// bytes at the end of the fetch that hold no whole batch (the broker cut it at its size)
    pub partial_bytes: usize,
}

impl<'a> Fetch<'a> {
    pub fn bytes(&self, span: Span) -> &[u8] {
        let buf = if span.buf == 0 { self.data } else { &self.decompressed[span.buf as usize - 1][..] };
        &buf[span.start as usize..span.end as usize]
    }

    /// A record's headers as (key, value) pairs; they were checked when the record was read.
    pub fn headers(&self, record: &Record) -> Vec<(String, Option<&[u8]>)> {
        let mut cursor = Cursor { buf: self.bytes(record.headers), pos: 0 };
        let mut out = Vec::with_capacity(record.header_count as usize);
        for _ in 0..record.header_count {
            match read_header(&mut cursor) {
                Ok((key, value)) => out.push((key.to_string(), value)),
                Err(_) => break, // not reached: read_record checked these bytes
            }
        }
        out
    }
}

/// How a fetch is read: the consumer's settings and what the fetch response said.
pub struct Reading {
    pub fetch_offset: i64,
    /// (producer id, first offset) of each aborted transaction in the fetch response
    pub aborted: Vec<(i64, i64)>,
    pub read_committed: bool,
    pub check_crcs: bool,
    pub max_batch_bytes: usize,
}

struct Cursor<'b> {
    buf: &'b [u8],
    pos: usize,
}

impl<'b> Cursor<'b> {
    /// aiokafka's `decode_varint`: a zigzag varint of up to 64 bits (10 bytes).
    fn varint(&mut self) -> Result<i64, Refusal> {
        let mut value: u64 = 0;
        let mut shift = 0u32;
        loop {
            let byte = *self.buf.get(self.pos).ok_or_else(|| Refusal::corrupt("varint past the end"))?;
            self.pos += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                break;
            }
            shift += 7;
            if shift >= 64 {
                return Err(Refusal::corrupt("varint out of int64 range"));
            }
        }
        Ok(((value >> 1) as i64) ^ -((value & 1) as i64))
    }

    fn take(&mut self, len: usize) -> Result<&'b [u8], Refusal> {
        let end = self.pos.checked_add(len).filter(|end| *end <= self.buf.len());
        let end = end.ok_or_else(|| Refusal::corrupt("length past the end of the batch"))?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    /// A varint length then that many bytes; a negative length is null.
    fn bytes_or_null(&mut self) -> Result<Option<(usize, usize)>, Refusal> {
        let len = self.varint()?;
        if len == -1 {
            return Ok(None);
        }
        let len = usize::try_from(len).map_err(|_| Refusal::corrupt("negative length"))?;
        let start = self.pos;
        self.take(len)?;
        Ok(Some((start, self.pos)))
    }
}

fn read_header<'b>(cursor: &mut Cursor<'b>) -> Result<(&'b str, Option<&'b [u8]>), Refusal> {
    let len = cursor.varint()?;
    let len = usize::try_from(len).map_err(|_| Refusal::corrupt("negative header key size"))?;
    let key = std::str::from_utf8(cursor.take(len)?)
        .map_err(|_| Refusal::corrupt("header key is not UTF-8"))?;
    let value = match cursor.bytes_or_null()? {
        Some((start, end)) => Some(&cursor.buf[start..end]),
        None => None,
    };
    Ok((key, value))
}

fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}
fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be_i64(b: &[u8], at: usize) -> i64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(word)
}

struct Header {
    base_offset: i64,
    attributes: i16,
    last_offset_delta: i32,
    first_timestamp: i64,
    max_timestamp: i64,
    producer_id: i64,
    count: i32,
}

impl Header {
    fn read(b: &[u8]) -> Header {
        Header {
            base_offset: be_i64(b, 0),
            attributes: be_i16(b, ATTRIBUTES_AT),
            last_offset_delta: be_i32(b, 23),
            first_timestamp: be_i64(b, 27),
            max_timestamp: be_i64(b, 35),
            producer_id: be_i64(b, 43),
            count: be_i32(b, 57),
        }
    }
    fn next_offset(&self) -> i128 {
        // aiokafka's C batch: `base_offset + last_offset_delta + 1` in int64, wrapping
        i128::from(self.base_offset.wrapping_add(i64::from(self.last_offset_delta)).wrapping_add(1))
    }
}

/// The batch's records (decompressed when they are), read as aiokafka's DefaultRecordBatch
/// iterates them: exactly `count` records that fill the records section to its end.
fn read_records(
    header: &Header,
    section: &[u8],
    section_start: usize,
    buf: u32,
    out: &mut Vec<Record>,
) -> Result<(), Refusal> {
    if header.count < 0 {
        return Err(Refusal::corrupt("negative record count"));
    }
    let timestamp_type = u8::from(header.attributes & TIMESTAMP_TYPE_MASK != 0);
    let mut cursor = Cursor { buf: section, pos: 0 };
    for _ in 0..header.count {
        let length = cursor.varint()?;
        let begin = cursor.pos;
        cursor.varint()?; // record attributes, unused (aiokafka reads them as a varint)
        let ts_delta = cursor.varint()?;
        let timestamp = if timestamp_type == LOG_APPEND_TIME {
            header.max_timestamp
        } else {
            // int64 arithmetic that wraps, as aiokafka's C extension (the one installed) does
            header.first_timestamp.wrapping_add(ts_delta)
        };
        let offset_delta = cursor.varint()?;
        let offset = header.base_offset.wrapping_add(offset_delta);
        let key = cursor.bytes_or_null()?;
        let value = cursor.bytes_or_null()?;
        let header_count = cursor.varint()?;
        if header_count < 0 {
            return Err(Refusal::corrupt("negative number of record headers"));
        }
        let headers_start = cursor.pos;
        let mut left = header_count;
        while left > 0 {
            read_header(&mut cursor)?;
            left -= 1;
        }
        if i64::try_from(cursor.pos - begin).ok() != Some(length) {
            return Err(Refusal::corrupt("record length does not match its fields"));
        }
        let span = |(start, end): (usize, usize)| Span {
            buf,
            start: (section_start + start) as u32,
            end: (section_start + end) as u32,
        };
        out.push(Record {
            offset,
            timestamp,
            timestamp_type,
            key: key.map(span),
            value: value.map(span),
            headers: span((headers_start, cursor.pos)),
            header_count: u32::try_from(header_count).map_err(|_| Refusal::corrupt("too many headers"))?,
        });
    }
    if cursor.pos != section.len() {
        return Err(Refusal::corrupt("unconsumed bytes after all records"));
    }
    Ok(())
}

/// Read a fetched partition's bytes as aiokafka's PartitionRecords does for a consumer.
pub fn read_fetch<'a>(data: &'a [u8], reading: &Reading) -> Result<Fetch<'a>, Refusal> {
    if u32::try_from(data.len()).is_err() {
        return Err(Refusal::new("too_large", "a fetch of 4 GiB or more".to_string()));
    }
    let mut aborted = reading.aborted.clone();
    aborted.sort_by_key(|(_, first_offset)| *first_offset); // stable, as Python's sorted
    let mut aborted = aborted.into_iter().peekable();
    let mut aborted_producers: HashSet<i64> = HashSet::new();
    let mut fetch = Fetch { data, decompressed: Vec::new(), records: Vec::new(), next_offset: i128::from(reading.fetch_offset), partial_bytes: 0 };
    let mut batch_records: Vec<Record> = Vec::new();
    let mut pos = 0usize;
    loop {
        let remaining = data.len() - pos;
        if remaining < LOG_OVERHEAD {
            fetch.partial_bytes = remaining;
            break;
        }
        let length = be_i32(data, pos + 8);
        // MemoryRecords: a batch that does not fit is the broker's cut, not an error
        let size = i64::from(length) + LOG_OVERHEAD as i64;
        if size > remaining as i64 {
            fetch.partial_bytes = remaining;
            break;
        }
        let base_offset = be_i64(data, pos);
        if size <= MAGIC_AT as i64 {
            // aiokafka: "Record size is less than the minimum record overhead"
            return Err(Refusal::corrupt("batch shorter than a batch header").at(base_offset));
        }
        let magic = data[pos + MAGIC_AT];
        if magic != 2 {
            return Err(Refusal::new("unsupported_magic", format!("message format v{}", magic as i8)).at(base_offset));
        }
        if size < HEADER as i64 {
            return Err(Refusal::corrupt("batch shorter than a v2 batch header").at(base_offset));
        }
        let size = size as usize;
        let batch = &data[pos..pos + size];
        let batch_start = pos;
        pos += size;
        if reading.check_crcs && crc32c::crc32c(&batch[ATTRIBUTES_AT..]) != be_u32(batch, CRC_AT) {
            return Err(Refusal::new("bad_crc", "invalid CRC".to_string()).at(base_offset));
        }
        let header = Header::read(batch);
        let is_control = header.attributes & CONTROL_MASK != 0;
        let is_transactional = header.attributes & TRANSACTIONAL_MASK != 0;
        let codec_id = (header.attributes & 0x07) as u8;
        // the records, read only when someone looks at them, as aiokafka's batch iterator does
        let read = |fetch: &mut Fetch<'a>, into: &mut Vec<Record>| -> Result<(), Refusal> {
            let section = &batch[HEADER..];
            if codec_id == codec::NONE {
                read_records(&header, section, batch_start + HEADER, 0, into)
            } else {
                let plain = codec::decompress(codec_id, section, reading.max_batch_bytes)?;
                if u32::try_from(plain.len()).is_err() {
                    return Err(Refusal::too_large(u32::MAX as usize));
                }
                let buf = u32::try_from(fetch.decompressed.len() + 1).map_err(|_| Refusal::corrupt("too many batches"))?;
                read_records(&header, &plain, 0, buf, into)?;
                fetch.decompressed.push(plain);
                Ok(())
            }
        };
        if reading.read_committed {
            // aiokafka's C batch reports every producer id, -1 included, so this runs for
            // every batch; _consume_aborted_up_to:
            while let Some(&(producer_id, first_offset)) = aborted.peek() {
                if first_offset <= header.base_offset {
                    aborted_producers.insert(producer_id);
                    aborted.next();
                } else {
                    break;
                }
            }
            if is_control {
                // _contains_abort_marker: the first record's key is (version, type) as two
                // big-endian uint16; (0, 0) is an abort marker
                let mut control = Vec::new();
                let saved = fetch.decompressed.len();
                read(&mut fetch, &mut control).map_err(|e| e.at(base_offset))?;
                let abort = {
                    let first = control
                        .first()
                        .ok_or_else(|| Refusal::corrupt("control batch without records").at(base_offset))?;
                    let key = first
                        .key
                        .map(|span| fetch.bytes(span))
                        .ok_or_else(|| Refusal::corrupt("control record without key").at(base_offset))?;
                    if key.len() < 4 {
                        return Err(Refusal::corrupt("control record key shorter than 4 bytes").at(base_offset));
                    }
                    key[..4] == [0, 0, 0, 0]
                };
                fetch.decompressed.truncate(saved);
                if abort {
                    // discard, not remove: Kafka may write an abort marker for a partition
                    // that holds nothing of the transaction
                    aborted_producers.remove(&header.producer_id);
                }
            }
            if is_transactional && aborted_producers.contains(&header.producer_id) {
                fetch.next_offset = header.next_offset();
                continue;
            }
        }
        if is_control {
            fetch.next_offset = header.next_offset();
            continue;
        }
        batch_records.clear();
        read(&mut fetch, &mut batch_records).map_err(|e| e.at(base_offset))?;
        for record in batch_records.drain(..) {
            // below the fetch offset: the start of a batch fetched again, skipped
            if i128::from(record.offset) < fetch.next_offset {
                continue;
            }
            fetch.next_offset = i128::from(record.offset) + 1;
            fetch.records.push(record);
        }
        fetch.next_offset = header.next_offset();
    }
    Ok(fetch)
}
