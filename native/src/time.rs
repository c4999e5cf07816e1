//! Event times as `bucket_app.counting.buckets` reads them, for the spellings the kernel is
//! sure of; every other value is `None`, and its record goes to the Python path.
//!
//! Each accepted spelling gives the float Python computes, bit for bit: an epoch number is
//! the float orjson or `float()` makes of it (both correctly rounded, as is Rust's parse); an
//! ISO time is `timedelta.total_seconds()` of its distance from the epoch, an exact count of
//! microseconds divided by 10**6 with one rounding (done here only below 2**53 microseconds,
//! where the division of two exact doubles rounds the same way).

/// `bucket_app.counting.buckets.MIN_TS_S` / `MAX_TS_S`
pub const MIN_TS_S: f64 = -62135596800.0;
pub const MAX_TS_S: f64 = 253402300799.999999;
const MIN_TS_INT: i64 = -62135596800;
const MAX_TS_INT: i64 = 253402300799;

pub fn in_range(ts: f64) -> bool {
    (MIN_TS_S..=MAX_TS_S).contains(&ts)
}

pub fn int_in_range(value: i64) -> bool {
    (MIN_TS_INT..=MAX_TS_INT).contains(&value)
}

/// An epoch time written as a string: only the plain decimal spelling JSON uses for numbers
/// (`float()` takes more: blanks, `+`, `1.`, `inf`, other scripts' digits; those are Python's).
pub fn epoch_string(text: &str) -> Option<f64> {
    let b = text.as_bytes();
    let mut i = 0;
    if b.first() == Some(&b'-') {
        i += 1;
    }
    let int_start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    if i == int_start || (b[int_start] == b'0' && i - int_start > 1) {
        return None;
    }
    if i < b.len() && b[i] == b'.' {
        i += 1;
        let frac = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == frac {
            return None;
        }
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
            i += 1;
        }
        let exp = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == exp {
            return None;
        }
    }
    if i != b.len() {
        return None;
    }
    text.parse::<f64>().ok().filter(|ts| in_range(*ts))
}

fn digits(b: &[u8], at: usize, n: usize) -> Option<i64> {
    let part = b.get(at..at + n)?;
    let mut value = 0i64;
    for &d in part {
        if !d.is_ascii_digit() {
            return None;
        }
        value = value * 10 + i64::from(d - b'0');
    }
    Some(value)
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ => {
            if is_leap(year) {
                29
            } else {
                28
            }
        }
    }
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's days_from_civil).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// An ISO-8601 time in the spelling the kernel reads: `YYYY-MM-DD`, optionally followed by
/// `T` or a blank and `HH:MM`, `HH:MM:SS` or `HH:MM:SS.fff…` (any number of fraction digits,
/// truncated to microseconds as fromisoformat does), then optionally `Z` or `±HH:MM`. A time
/// without a zone is UTC. Every other spelling fromisoformat or the lenient reading may take is
/// left to Python.
pub fn iso(text: &str) -> Option<f64> {
    let b = text.as_bytes();
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let year = digits(b, 0, 4)?;
    let month = digits(b, 5, 2)?;
    let day = digits(b, 8, 2)?;
    if year < 1 || !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    let (mut hour, mut minute, mut second, mut micros, mut offset_s) = (0i64, 0i64, 0i64, 0i64, 0i64);
    let mut i = 10;
    if i < b.len() {
        if b[i] != b'T' && b[i] != b' ' {
            return None;
        }
        i += 1;
        hour = digits(b, i, 2)?;
        if b.get(i + 2) != Some(&b':') {
            return None;
        }
        minute = digits(b, i + 3, 2)?;
        i += 5;
        if b.get(i) == Some(&b':') {
            second = digits(b, i + 1, 2)?;
            i += 3;
            if b.get(i) == Some(&b'.') {
                i += 1;
                let start = i;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                let count = i - start;
                if count == 0 {
                    return None;
                }
                let kept = count.min(6);
                micros = digits(b, start, kept)? * 10i64.pow((6 - kept) as u32);
            }
        }
        if hour > 23 || minute > 59 || second > 59 {
            return None;
        }
        if i < b.len() {
            match b[i] {
                b'Z' if i + 1 == b.len() => {}
                b'+' | b'-' if i + 6 == b.len() => {
                    let oh = digits(b, i + 1, 2)?;
                    if b[i + 3] != b':' {
                        return None;
                    }
                    let om = digits(b, i + 4, 2)?;
                    if oh > 23 || om > 59 {
                        return None;
                    }
                    offset_s = (oh * 3600 + om * 60) * if b[i] == b'-' { -1 } else { 1 };
                }
                _ => return None,
            }
        }
    }
    let seconds = days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second - offset_s;
    let total_us = seconds * 1_000_000 + micros;
    if total_us.unsigned_abs() > (1u64 << 53) {
        return None;
    }
    let ts = total_us as f64 / 1e6;
    if in_range(ts) {
        Some(ts)
    } else {
        None
    }
}

/// `bucket_app.counting.buckets.bucket_start`: `int(ts // interval) * interval`, for a time in
/// MIN_TS_S..=MAX_TS_S (every time the kernel answers for).
///
/// Python's float floor division (CPython `_float_div_mod`) is exact there: below 2**53 the
/// remainder `fmod(ts, interval)` is exact, `ts - remainder` is an integer multiple of the
/// interval and so is its quotient, and the result is the mathematical floor of
/// `ts / interval`, which is the integer floor of `floor(ts) / interval`.
pub fn bucket_start(ts: f64, interval: i64) -> i64 {
    debug_assert!(in_range(ts) && interval > 0);
    (ts.floor() as i64).div_euclid(interval) * interval
}
