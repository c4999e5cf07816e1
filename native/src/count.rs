//! Counting a fetch's JSON or Avro records by (mapped values, bucket start), for the records
//! the kernel is sure of; every other record's index is returned for the Python path.
//!
//! A record is answered here only when `Classifier.locate` would count it and the kernel can
//! say exactly where: the value is a JSON object the reader accepts (or Avro a plan reads
//! exactly, `crate::avro`), the time field is a number in range, a numeric string or an ISO
//! time in the spellings `time` reads (or missing or null, when the record's Kafka time stands
//! in), not past `now + max_future_skew`, and no mapped
//! value is an object or array. Everything else, every record Python would skip included, is
//! `unsure`: Python says what it means, and is the one place that names skip reasons.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::batch::{Fetch, Record};
use crate::json::{Captures, Paths, Val};
use crate::time;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum TimeKind {
    Epoch,
    Iso,
}

pub struct Mapping {
    pub paths: Paths,
    /// slot of each mapped column, in column order
    pub columns: Vec<usize>,
    pub time_slot: usize,
    pub time_kind: TimeKind,
    pub interval_s: i64,
    pub max_future_skew_s: f64,
    /// how values are read when they are Avro (None: JSON)
    pub avro: Option<crate::avro::Avro>,
}

/// A group value as Python sees it: type and value (`true`, `1` and `1.0` differ).
#[derive(Debug, Clone)]
pub enum Owned {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

impl Owned {
    fn same(&self, other: &Val<'_>) -> bool {
        match (self, other) {
            (Owned::Null, Val::Null) => true,
            (Owned::Bool(a), Val::Bool(b)) => a == b,
            (Owned::Int(a), Val::Int(b)) => a == b,
            // == as Python compares floats: 0.0 and -0.0 are one key (no NaN in JSON)
            (Owned::Float(a), Val::Float(b)) => a == b,
            (Owned::Str(a), Val::Str(b)) => a.as_str() == b.as_ref(),
            _ => false,
        }
    }
    fn of(value: &Val<'_>) -> Owned {
        match value {
            Val::Null | Val::Compound => Owned::Null,
            Val::Bool(b) => Owned::Bool(*b),
            Val::Int(i) => Owned::Int(*i),
            Val::Float(f) => Owned::Float(*f),
            Val::Str(s) => Owned::Str(s.to_string()),
        }
    }
}

pub struct Group {
    pub values: Vec<Owned>,
    pub start: i64,
    pub count: u64,
    pub last_offset: i64,
}

pub struct Counted {
    pub groups: Vec<Group>,
    /// indexes (in the fetch's records) of the records left to Python
    pub unsure: Vec<u32>,
    pub min_start: Option<i64>,
    pub max_time: Option<f64>,
    /// per record: its group, or -1 when unsure (only when asked for)
    pub trace: Option<Vec<i64>>,
}

/// A word-at-a-time multiplicative hash of the value's type and bytes (FxHash's mixing): group
/// keys are short, and a table lookup per record must not allocate. Collisions only cost a
/// comparison: groups with equal hashes are chained and compared in full.
#[derive(Default)]
struct Fx(u64);

impl Fx {
    #[inline]
    fn mix(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for Fx {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.mix(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.mix(u64::from_le_bytes(word) ^ ((rest.len() as u64) << 59));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.mix(n);
    }
}

/// The group table's own hash: `u64 -> first group` is a map keyed by a hash already.
#[derive(Default)]
struct Identity(u64);

impl Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

fn hash_key<'v>(values: impl Iterator<Item = Option<&'v Val<'v>>>, start: i64) -> u64 {
    let mut h = Fx::default();
    for value in values {
        match value {
            None | Some(Val::Null) | Some(Val::Compound) => h.write_u64(0),
            Some(Val::Bool(b)) => h.write_u64(1 + u64::from(*b)),
            Some(Val::Int(i)) => {
                h.write_u64(3);
                h.write_u64(*i as u64);
            }
            Some(Val::Float(f)) => {
                h.write_u64(4);
                // 0.0 and -0.0 are one key, as in Python
                h.write_u64(if *f == 0.0 { 0 } else { f.to_bits() });
            }
            Some(Val::Str(s)) => {
                h.write_u64(5 ^ ((s.len() as u64) << 8));
                h.write(s.as_bytes());
            }
        }
    }
    h.write_u64(start as u64);
    h.finish()
}

impl Mapping {
    /// The event time of a record whose time slot holds `value`, or None when unsure.
    fn event_time(&self, value: Option<&Val<'_>>, record: &Record) -> Option<f64> {
        let ts = match value {
            // missing or null: the Kafka record time, `ts_ms / 1000.0`, in range
            None | Some(Val::Null) => {
                let ts = record.timestamp as f64 / 1000.0;
                if time::in_range(ts) {
                    ts
                } else {
                    return None;
                }
            }
            Some(Val::Int(i)) if self.time_kind == TimeKind::Epoch && time::int_in_range(*i) => *i as f64,
            Some(Val::Float(f)) if self.time_kind == TimeKind::Epoch && time::in_range(*f) => *f,
            Some(Val::Str(s)) => match self.time_kind {
                TimeKind::Epoch => time::epoch_string(s)?,
                TimeKind::Iso => time::iso(s)?,
            },
            _ => return None, // bool, compound, a number for an ISO field: Python refuses
        };
        Some(ts)
    }

    pub fn count(&self, fetch: &Fetch<'_>, now_s: f64, trace: bool) -> Counted {
        let mut groups: Vec<Group> = Vec::new();
        let mut chain: Vec<u32> = Vec::new(); // next group with the same hash
        let mut first: HashMap<u64, u32, BuildHasherDefault<Identity>> = HashMap::default();
        let mut unsure = Vec::new();
        let mut traced = if trace { Some(Vec::with_capacity(fetch.records.len())) } else { None };
        let mut min_start: Option<i64> = None;
        let mut max_time: Option<f64> = None;
        let latest = now_s + self.max_future_skew_s;
        let mut captures = Captures::new(self.paths.slots());
        let avro = self.avro.as_ref().map(crate::avro::Avro::reading);
        for (index, record) in fetch.records.iter().enumerate() {
            let answer = self.locate(fetch, record, latest, &mut captures, avro.as_ref());
            let Some((ts, start)) = answer else {
                unsure.push(index as u32);
                if let Some(t) = traced.as_mut() {
                    t.push(-1);
                }
                continue;
            };
            let value = |slot: &usize| captures.get(*slot);
            let hash = hash_key(self.columns.iter().map(value), start);
            let mut found = first.get(&hash).copied();
            while let Some(g) = found {
                let group = &groups[g as usize];
                if group.start == start
                    && group.values.iter().zip(self.columns.iter().map(value)).all(|(o, v)| o.same(v.unwrap_or(&Val::Null)))
                {
                    break;
                }
                found = chain[g as usize].checked_sub(1);
            }
            let g = match found {
                Some(g) => g,
                None => {
                    let g = groups.len() as u32;
                    groups.push(Group {
                        values: self.columns.iter().map(value).map(|v| Owned::of(v.unwrap_or(&Val::Null))).collect(),
                        start,
                        count: 0,
                        last_offset: record.offset,
                    });
                    // chain stores group + 1 (0: end of chain)
                    chain.push(first.insert(hash, g).map_or(0, |older| older + 1));
                    g
                }
            };
            let group = &mut groups[g as usize];
            group.count += 1;
            group.last_offset = group.last_offset.max(record.offset);
            min_start = Some(min_start.map_or(start, |m| m.min(start)));
            max_time = Some(max_time.map_or(ts, |m| m.max(ts)));
            if let Some(t) = traced.as_mut() {
                t.push(i64::from(g));
            }
        }
        Counted { groups, unsure, min_start, max_time, trace: traced }
    }

    /// (event time, bucket start) of a record the kernel is sure of, its mapped values in
    /// `values`; None when Python must decide.
    fn locate<'f>(
        &self,
        fetch: &'f Fetch<'_>,
        record: &Record,
        latest: f64,
        captures: &mut Captures<'f>,
        avro: Option<&crate::avro::Reading<'_>>,
    ) -> Option<(f64, i64)> {
        let raw = fetch.bytes(record.value?);
        if raw.is_empty() {
            return None;
        }
        if let Some(avro) = avro {
            avro.read(raw, captures).ok()?;
        } else {
            let text = std::str::from_utf8(raw).ok()?;
            self.paths.read(text, captures).ok()?;
        }
        let ts = self.event_time(captures.get(self.time_slot), record)?;
        if ts > latest {
            return None; // future_time is Python's to report
        }
        Some((ts, time::bucket_start(ts, self.interval_s)))
    }
}
