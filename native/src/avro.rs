//! Avro values read by a plan: the mapped fields and the time field captured, the rest skipped
//! by type.
//!
//! The kernel does not resolve schemas. `bucket_app.counting.avro_plan` compiles each (writer,
//! reader) pair, as fastavro would resolve it, into a flat plan of operations on the writer's
//! bytes: read or skip a value of a writer type, store what the reader would see (promoted,
//! defaulted, an enum symbol renamed) into a slot, or give up (`Unsure`). The plan decides nothing
//! about a record's meaning: a record whose bytes it does not read exactly - truncated, a lying or
//! negative length, a negative block count, a varint past 64 bits, a union or enum index out of
//! range, a string that is not UTF-8, a boolean byte other than 0 or 1, a NaN where a value is
//! kept, bytes left over - is `Unsure`, and Python (`Classifier.locate`, fastavro) says what it
//! means. Every loop is bounded by the bytes left: a block count larger than them is `Unsure`, and
//! an item that takes no bytes stops the reading.
//!
//! Framing follows `bucket_app.counting.decode`. Without a registry (`AvroDecoder`) a value
//! starting with byte 0 and longer than the 5-byte Confluent header is read after the header
//! first; only when that reading provably fails as fastavro's would (it ends before the last
//! byte) is the whole value read. With a registry (`RegistryDecoder`) a framed value is read
//! with the plan of its schema id, and an id without a plan (not fetched yet, unknown, not
//! Avro, a schema the plan cannot express) is `Unsure`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::json::{Captures, Unsure, Val};

/// A value a plan stores as it is (a reader default).
#[derive(Debug, Clone)]
pub enum Constant {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

/// One operation on the writer's bytes; `slot` is where the reader's value goes, if anywhere.
#[derive(Debug)]
pub enum Op {
    Null,
    Bool(Option<usize>),
    /// int or long; `float`: promoted to float/double by the reader
    Long { slot: Option<usize>, float: bool },
    Float(Option<usize>),
    Double(Option<usize>),
    /// string, or bytes read as string (UTF-8 checked either way)
    Str(Option<usize>),
    Bytes,
    Fixed(usize),
    /// each writer index's reader symbol; None: Python decides (a default or an error)
    Enum { slot: Option<usize>, symbols: Vec<Option<String>> },
    /// each writer branch's plan
    Union(Vec<Vec<Op>>),
    Array(Vec<Op>),
    Map(Vec<Op>),
    Const { slot: usize, value: Constant },
    Unsure,
}

pub type Plan = Arc<Vec<Op>>;
type Plans = HashMap<u32, Option<Plan>>;

/// How a mapping's values are read when they are Avro.
pub struct Avro {
    /// the plan of a value without a registry frame (the reader schema alone); None: Python
    plain: Option<Plan>,
    /// with a schema registry: each schema id's plan, added as the registry answers
    registry: Option<RwLock<Arc<Plans>>>,
}

/// An `Avro` as one fetch reads it: the registry's plans as they were when it started.
pub struct Reading<'k> {
    avro: &'k Avro,
    plans: Option<Arc<Plans>>,
}

/// Why a plan did not read a value: `Invalid` only where fastavro fails too (bytes left over
/// after a reading both make the same way).
enum Fail {
    Invalid,
    Unsure,
}

impl From<Unsure> for Fail {
    fn from(_: Unsure) -> Fail {
        Fail::Unsure
    }
}

const HEADER: usize = 5;

impl Avro {
    pub fn new(plain: Option<Vec<Op>>, registry: bool) -> Avro {
        Avro { plain: plain.map(Arc::new), registry: registry.then(|| RwLock::new(Arc::new(Plans::new()))) }
    }

    /// Add (or replace) the plan of a registry schema id; None: its values go to Python.
    pub fn add_writer(&self, id: u32, plan: Option<Vec<Op>>) {
        if let Some(lock) = &self.registry {
            let mut plans = lock.write().unwrap_or_else(|poisoned| poisoned.into_inner());
            let mut next = Plans::clone(&plans);
            next.insert(id, plan.map(Arc::new));
            *plans = Arc::new(next);
        }
    }

    pub fn reading(&self) -> Reading<'_> {
        let plans = self
            .registry
            .as_ref()
            .map(|lock| Arc::clone(&lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())));
        Reading { avro: self, plans }
    }
}

impl Reading<'_> {
    /// Read one non-empty value, capturing each slot's value into `out`.
    pub fn read<'a>(&self, raw: &'a [u8], out: &mut Captures<'a>) -> Result<(), Unsure> {
        out.clear();
        let framed = raw.first() == Some(&0);
        if let Some(plans) = &self.plans {
            if framed && raw.len() >= HEADER {
                let id = u32::from_be_bytes([raw[1], raw[2], raw[3], raw[4]]);
                let plan = plans.get(&id).ok_or(Unsure)?.as_ref().ok_or(Unsure)?;
                return exact(plan, &raw[HEADER..], out).map_err(|_| Unsure);
            }
        }
        let plain = self.avro.plain.as_ref().ok_or(Unsure)?;
        if framed && raw.len() > HEADER {
            match exact(plain, &raw[HEADER..], out) {
                Ok(()) => return Ok(()),
                Err(Fail::Unsure) => return Err(Unsure),
                Err(Fail::Invalid) => out.clear(), // fastavro then reads the whole value
            }
        }
        exact(plain, raw, out).map_err(|_| Unsure)
    }
}

/// Run `plan` over all of `bytes`.
fn exact<'a>(plan: &[Op], bytes: &'a [u8], out: &mut Captures<'a>) -> Result<(), Fail> {
    let mut cursor = Cursor { b: bytes, i: 0 };
    run(plan, &mut cursor, out)?;
    if cursor.i != bytes.len() {
        return Err(Fail::Invalid);
    }
    Ok(())
}

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    fn left(&self) -> usize {
        self.b.len() - self.i
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Unsure> {
        let end = self.i.checked_add(n).ok_or(Unsure)?;
        let out = self.b.get(self.i..end).ok_or(Unsure)?;
        self.i = end;
        Ok(out)
    }

    /// A zig-zag varint of at most 64 bits.
    fn long(&mut self) -> Result<i64, Unsure> {
        let mut n: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = *self.b.get(self.i).ok_or(Unsure)?;
            self.i += 1;
            if shift == 63 && b > 1 {
                return Err(Unsure); // past 64 bits
            }
            n |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok((n >> 1) as i64 ^ -((n & 1) as i64));
            }
        }
        Err(Unsure)
    }

    /// A length-prefixed run of bytes.
    fn sized(&mut self) -> Result<&'a [u8], Unsure> {
        let n = usize::try_from(self.long()?).map_err(|_| Unsure)?;
        self.take(n)
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N], Unsure> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// The item count of the next block of an array or map (0 at the end).
    ///
    /// A negative count (a block that also states its size in bytes) is `Unsure`: fastavro
    /// reads such a block item by item but skips one by its stated size, so when the size
    /// lies the two disagree, and which applies depends on the reader schema; Python decides.
    fn block(&mut self) -> Result<usize, Unsure> {
        let n = self.long()?;
        let n = usize::try_from(n).map_err(|_| Unsure)?;
        if n > self.left() {
            return Err(Unsure); // every item takes a byte at least
        }
        Ok(n)
    }
}

fn keep<'a>(out: &mut Captures<'a>, slot: Option<usize>, value: Val<'a>) -> Result<(), Unsure> {
    if let Some(slot) = slot {
        if matches!(value, Val::Float(f) if f.is_nan()) {
            return Err(Unsure); // NaN is no key Python and the kernel agree on
        }
        out.set(slot, value);
    }
    Ok(())
}

fn run<'a>(plan: &[Op], c: &mut Cursor<'a>, out: &mut Captures<'a>) -> Result<(), Unsure> {
    for op in plan {
        match op {
            Op::Null => keep(out, None, Val::Null)?,
            Op::Bool(slot) => {
                let value = match c.take(1)?[0] {
                    0 => false,
                    1 => true,
                    _ => return Err(Unsure),
                };
                keep(out, *slot, Val::Bool(value))?;
            }
            Op::Long { slot, float } => {
                let n = c.long()?;
                keep(out, *slot, if *float { Val::Float(n as f64) } else { Val::Int(n) })?;
            }
            Op::Float(slot) => {
                let value = f32::from_le_bytes(c.fixed::<4>()?);
                keep(out, *slot, Val::Float(f64::from(value)))?;
            }
            Op::Double(slot) => {
                let value = f64::from_le_bytes(c.fixed::<8>()?);
                keep(out, *slot, Val::Float(value))?;
            }
            Op::Str(slot) => {
                let text = std::str::from_utf8(c.sized()?).map_err(|_| Unsure)?;
                keep(out, *slot, Val::Str(Cow::Borrowed(text)))?;
            }
            Op::Bytes => {
                c.sized()?;
            }
            Op::Fixed(size) => {
                c.take(*size)?;
            }
            Op::Enum { slot, symbols } => {
                let index = usize::try_from(c.long()?).map_err(|_| Unsure)?;
                let symbol = symbols.get(index).ok_or(Unsure)?.as_ref().ok_or(Unsure)?;
                keep(out, *slot, Val::Str(Cow::Owned(symbol.clone())))?;
            }
            Op::Union(branches) => {
                let index = usize::try_from(c.long()?).map_err(|_| Unsure)?;
                run(branches.get(index).ok_or(Unsure)?, c, out)?;
            }
            Op::Array(items) => loop {
                let n = c.block()?;
                if n == 0 {
                    break;
                }
                for _ in 0..n {
                    let before = c.i;
                    run(items, c, out)?;
                    if c.i == before {
                        return Err(Unsure); // an item of no bytes: a bomb, not data
                    }
                }
            },
            Op::Map(values) => loop {
                let n = c.block()?;
                if n == 0 {
                    break;
                }
                for _ in 0..n {
                    std::str::from_utf8(c.sized()?).map_err(|_| Unsure)?;
                    run(values, c, out)?;
                }
            },
            Op::Const { slot, value } => {
                let value = match value {
                    Constant::Null => Val::Null,
                    Constant::Bool(b) => Val::Bool(*b),
                    Constant::Int(i) => Val::Int(*i),
                    Constant::Float(f) => Val::Float(*f),
                    Constant::Str(s) => Val::Str(Cow::Owned(s.clone())),
                };
                keep(out, Some(*slot), value)?;
            }
            Op::Unsure => return Err(Unsure),
        }
    }
    Ok(())
}
