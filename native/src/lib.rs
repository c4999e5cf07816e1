//! `bucket_app_kernel._kernel`: a fetched partition's Kafka bytes in, bucket counts out.
//!
//! The Python API is two calls. `unpack` reads a fetch's record batches as aiokafka's
//! consumer does and returns its records; `Kernel.count` reads them too and counts the JSON
//! or Avro records it is sure of by (mapped values, bucket start), returning every other record for
//! `bucket_app.counting.classify.Classifier.locate`, which stays the definition of what a record
//! means. Both work without the interpreter lock, on the bytes the caller keeps alive, and build
//! Python objects only once done: one per group and per record left to Python.
//!
//! At the boundary: a fetch the kernel does not read (a bad CRC, a malformed batch, message
//! format v0/v1, a batch decompressing past the limit) raises `Refused(reason, offset,
//! message)`; a panic, which would be a bug here, raises `KernelError`, never unwinds into
//! Python. No `unsafe` in this crate.

#![forbid(unsafe_code)]

mod avro;
mod batch;
mod codec;
mod count;
mod json;
mod time;

use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::exceptions::{PyException, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};
use pyo3::IntoPyObjectExt;

use batch::{Fetch, Reading, Record, Refusal};
use count::{Mapping, Owned, TimeKind};

pyo3::create_exception!(
    _kernel,
    Refused,
    PyException,
    "The kernel does not read this fetch: args are (reason, batch base offset or None, message)."
);
pyo3::create_exception!(
    _kernel,
    KernelError,
    PyRuntimeError,
    "A bug in the kernel (a Rust panic), raised instead of crashing the process."
);

/// Run `work` without the interpreter lock; a panic in it becomes `KernelError`.
fn detached<T: Send>(py: Python<'_>, work: impl FnOnce() -> T + Send) -> PyResult<T> {
    py.detach(|| catch_unwind(AssertUnwindSafe(work))).map_err(|payload| {
        let why = payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".to_string());
        KernelError::new_err(format!("kernel panic: {why}"))
    })
}

fn refused(r: Refusal) -> PyErr {
    Refused::new_err((r.reason, r.offset, r.message))
}

fn record_tuple<'py>(
    py: Python<'py>,
    fetch: &Fetch<'_>,
    index: usize,
    r: &Record,
) -> PyResult<Bound<'py, PyTuple>> {
    let key = r.key.map(|span| PyBytes::new(py, fetch.bytes(span)));
    let value = r.value.map(|span| PyBytes::new(py, fetch.bytes(span)));
    let headers = PyList::new(
        py,
        fetch.headers(r).into_iter().map(|(k, v)| (k, v.map(|v| PyBytes::new(py, v)))),
    )?;
    (index, r.offset, r.timestamp, r.timestamp_type, key, value, headers).into_pyobject(py)
}

fn owned_value<'py>(py: Python<'py>, value: &Owned) -> PyResult<Bound<'py, PyAny>> {
    match value {
        Owned::Null => Ok(py.None().into_bound(py)),
        Owned::Bool(b) => b.into_bound_py_any(py),
        Owned::Int(i) => i.into_bound_py_any(py),
        Owned::Float(f) => f.into_bound_py_any(py),
        Owned::Str(s) => s.as_str().into_bound_py_any(py),
    }
}

/// A fetched partition's records as aiokafka's consumer sees them: a list of `(index, offset,
/// timestamp, timestamp_type, key, value, headers)` and `(next fetch offset, bytes at the end
/// holding no whole batch)`.
#[pyfunction]
#[pyo3(signature = (data, fetch_offset, *, aborted=None, read_committed=false, check_crcs=true, max_batch_bytes))]
fn unpack<'py>(
    py: Python<'py>,
    data: &Bound<'py, PyBytes>,
    fetch_offset: i64,
    aborted: Option<Vec<(i64, i64)>>,
    read_committed: bool,
    check_crcs: bool,
    max_batch_bytes: usize,
) -> PyResult<(Bound<'py, PyList>, i128, usize)> {
    let bytes = data.as_bytes();
    let reading = Reading { fetch_offset, aborted: aborted.unwrap_or_default(), read_committed, check_crcs, max_batch_bytes };
    let fetch = detached(py, || batch::read_fetch(bytes, &reading))?.map_err(refused)?;
    let records = fetch
        .records
        .iter()
        .enumerate()
        .map(|(i, r)| record_tuple(py, &fetch, i, r))
        .collect::<PyResult<Vec<_>>>()?;
    Ok((PyList::new(py, records)?, fetch.next_offset, fetch.partial_bytes))
}

/// Raise a panic inside the boundary (tests check that it arrives as KernelError).
#[pyfunction]
fn _panic(py: Python<'_>) -> PyResult<()> {
    detached(py, || panic!("on purpose"))
}

/// The counting of one mapping (the settings' field paths, time field and bucket interval).
#[pyclass(frozen, module = "bucket_app_kernel._kernel")]
struct Kernel {
    mapping: Mapping,
    max_batch_bytes: usize,
}

#[pymethods]
impl Kernel {
    /// `columns`: the mapped field paths in column order; `time_field` and `time_type`
    /// (`"epoch"` or `"iso"`) the bucket field; `max_batch_bytes` the most a compressed batch
    /// may decompress to.
    ///
    /// Avro: `avro` is the plan of values without a registry frame (None: JSON values, or with
    /// `registry` Avro values all left to Python until plans are added); `registry`: framed
    /// values are read with the plan of their schema id (`add_writer`). Plans are compiled by
    /// `bucket_app.counting.avro_plan`.
    #[new]
    #[pyo3(signature = (columns, time_field, time_type, interval_s, max_future_skew_s, max_batch_bytes, *, avro=None, registry=false))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        columns: Vec<String>,
        time_field: String,
        time_type: &str,
        interval_s: i64,
        max_future_skew_s: f64,
        max_batch_bytes: usize,
        avro: Option<Bound<'_, PyAny>>,
        registry: bool,
    ) -> PyResult<Self> {
        let avro_mode = avro.as_ref().is_some_and(|plan| !plan.is_none()) || registry;
        let time_kind = match time_type {
            "epoch" => TimeKind::Epoch,
            "iso" => TimeKind::Iso,
            other => return Err(PyValueError::new_err(format!("time_type must be epoch or iso, not {other:?}"))),
        };
        if interval_s <= 0 {
            return Err(PyValueError::new_err("interval_s must be positive"));
        }
        let mut paths: Vec<String> = Vec::new();
        let mut slot_of = |path: &String| match paths.iter().position(|p| p == path) {
            Some(at) => at,
            None => {
                paths.push(path.clone());
                paths.len() - 1
            }
        };
        let column_slots: Vec<usize> = columns.iter().map(&mut slot_of).collect();
        let time_slot = slot_of(&time_field);
        let tree = json::Paths::new(&paths).map_err(PyValueError::new_err)?;
        let avro = match avro {
            Some(plan) if !plan.is_none() => Some(plan_ops(&plan, paths.len())?),
            _ => None,
        };
        Ok(Kernel {
            mapping: Mapping {
                paths: tree,
                columns: column_slots,
                time_slot,
                time_kind,
                interval_s,
                max_future_skew_s,
                avro: avro_mode.then(|| avro::Avro::new(avro, registry)),
            },
            max_batch_bytes,
        })
    }

    /// The plan of registry schema id `id` (None: its values are left to Python).
    #[pyo3(signature = (id, plan))]
    fn add_writer(&self, id: u32, plan: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        let ops = match plan {
            Some(plan) if !plan.is_none() => Some(plan_ops(&plan, self.mapping.paths.slots())?),
            _ => None,
        };
        match &self.mapping.avro {
            Some(avro) => {
                avro.add_writer(id, ops);
                Ok(())
            }
            None => Err(PyValueError::new_err("this kernel reads JSON: no writer schemas")),
        }
    }

    /// Read a fetched partition's bytes and count its records: a tuple of
    ///
    /// - groups: `[(values, bucket_start, count, highest offset)]`, in order of first record;
    /// - unsure: the records left to Python, as `unpack` gives them;
    /// - records: how many records the consumer sees in the fetch;
    /// - first and last offset of those (None without one), next fetch offset, partial bytes;
    /// - earliest bucket start and latest event time of a counted record (None without one);
    /// - with `trace`, each record's group index (-1: left to Python), else None;
    /// - with `offsets`, each record's offset, else None; with `offset_gaps`, the same only
    ///   when the records' offsets are not first..=last without a hole (else first and last
    ///   say them all).
    #[pyo3(signature = (data, fetch_offset, now_s, *, aborted=None, read_committed=false, check_crcs=true, trace=false, offsets=false, offset_gaps=false))]
    #[allow(clippy::too_many_arguments)]
    fn count<'py>(
        &self,
        py: Python<'py>,
        data: &Bound<'py, PyBytes>,
        fetch_offset: i64,
        now_s: f64,
        aborted: Option<Vec<(i64, i64)>>,
        read_committed: bool,
        check_crcs: bool,
        trace: bool,
        offsets: bool,
        offset_gaps: bool,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let bytes = data.as_bytes();
        let reading = Reading {
            fetch_offset,
            aborted: aborted.unwrap_or_default(),
            read_committed,
            check_crcs,
            max_batch_bytes: self.max_batch_bytes,
        };
        let mapping = &self.mapping;
        let (fetch, counted) = detached(py, || {
            batch::read_fetch(bytes, &reading).map(|fetch| {
                let counted = mapping.count(&fetch, now_s, trace);
                (fetch, counted)
            })
        })?
        .map_err(refused)?;
        let groups = counted
            .groups
            .iter()
            .map(|g| {
                let values = PyTuple::new(py, g.values.iter().map(|v| owned_value(py, v)).collect::<PyResult<Vec<_>>>()?)?;
                (values, g.start, g.count, g.last_offset).into_pyobject(py)
            })
            .collect::<PyResult<Vec<_>>>()?;
        let unsure = counted
            .unsure
            .iter()
            .map(|&i| record_tuple(py, &fetch, i as usize, &fetch.records[i as usize]))
            .collect::<PyResult<Vec<_>>>()?;
        let first = fetch.records.first().map(|r| r.offset);
        let last = fetch.records.last().map(|r| r.offset);
        let whole = match (first, last) {
            (Some(first), Some(last)) => {
                last.checked_sub(first).and_then(|d| d.checked_add(1)) == i64::try_from(fetch.records.len()).ok()
            }
            _ => true,
        };
        let offsets = offsets || (offset_gaps && !whole);
        (
            PyList::new(py, groups)?,
            PyList::new(py, unsure)?,
            fetch.records.len(),
            first,
            last,
            fetch.next_offset,
            fetch.partial_bytes,
            counted.min_start,
            counted.max_time,
            counted.trace,
            offsets.then(|| fetch.records.iter().map(|r| r.offset).collect::<Vec<i64>>()),
        )
            .into_pyobject(py)
    }
}

/// A plan as `bucket_app.counting.avro_plan` writes it: a list of `(kind, slot or -1, arg)`.
fn plan_ops(plan: &Bound<'_, PyAny>, slots: usize) -> PyResult<Vec<avro::Op>> {
    plan_at(plan, slots, 0)
}

fn plan_at(plan: &Bound<'_, PyAny>, slots: usize, depth: u32) -> PyResult<Vec<avro::Op>> {
    use avro::{Constant, Op};
    if depth > 256 {
        return Err(PyValueError::new_err("Avro plan nested too deep"));
    }
    let items: Vec<(String, i64, Bound<'_, PyAny>)> = plan.extract()?;
    let mut ops = Vec::with_capacity(items.len());
    for (kind, slot, arg) in items {
        let slot = usize::try_from(slot).ok();
        if slot.is_some_and(|slot| slot >= slots) {
            return Err(PyValueError::new_err(format!("Avro plan slot {slot:?} past {slots} slots")));
        }
        let op = match kind.as_str() {
            "null" => Op::Null,
            "bool" => Op::Bool(slot),
            "long" => Op::Long { slot, float: arg.extract()? },
            "float" => Op::Float(slot),
            "double" => Op::Double(slot),
            "string" => Op::Str(slot),
            "bytes" => Op::Bytes,
            "fixed" => Op::Fixed(arg.extract()?),
            "enum" => Op::Enum { slot, symbols: arg.extract()? },
            "union" => {
                let branches: Vec<Bound<'_, PyAny>> = arg.extract()?;
                Op::Union(branches.iter().map(|b| plan_at(b, slots, depth + 1)).collect::<PyResult<_>>()?)
            }
            "array" => Op::Array(plan_at(&arg, slots, depth + 1)?),
            "map" => Op::Map(plan_at(&arg, slots, depth + 1)?),
            "const" => {
                let slot = slot.ok_or_else(|| PyValueError::new_err("a constant needs a slot"))?;
                let (tag, value): (String, Bound<'_, PyAny>) = arg.extract()?;
                let value = match tag.as_str() {
                    "null" => Constant::Null,
                    "bool" => Constant::Bool(value.extract()?),
                    "int" => Constant::Int(value.extract()?),
                    "float" => Constant::Float(value.extract()?),
                    "str" => Constant::Str(value.extract()?),
                    other => return Err(PyValueError::new_err(format!("bad constant tag {other:?}"))),
                };
                Op::Const { slot, value }
            }
            "unsure" => Op::Unsure,
            other => return Err(PyValueError::new_err(format!("bad Avro plan op {other:?}"))),
        };
        ops.push(op);
    }
    Ok(ops)
}

#[pymodule]
fn _kernel(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Kernel>()?;
    m.add_function(wrap_pyfunction!(unpack, m)?)?;
    m.add_function(wrap_pyfunction!(_panic, m)?)?;
    m.add("Refused", m.py().get_type::<Refused>())?;
    m.add("KernelError", m.py().get_type::<KernelError>())?;
    Ok(())
}
