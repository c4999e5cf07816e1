//! A validating JSON reader that captures the values at a few paths of an object.
//!
//! It answers only for a message it is sure orjson reads the same way, and gives up (`Unsure`)
//! on anything else, so the caller hands that message to the Python path, which decides. Its
//! language is a subset of orjson's: RFC 8259 JSON in valid UTF-8 with at most MAX_DEPTH levels,
//! no number orjson would read as infinity, no lone surrogate escape. Within it the values it
//! returns are the ones orjson builds: integers that fit an int64 (larger ones are `Unsure`),
//! floats parsed with correct rounding (orjson's are too), strings unescaped. A relevant key
//! that appears twice in one object is `Unsure` (orjson keeps the last; the reader does not
//! decide which of the two nested readings that means).
//!
//! Paths follow `bucket_app.counting.buckets.lookup`: a dotted path walks nested objects,
//! a top-level key spelled with the dots wins over the walk, and a step through anything but
//! an object gives None (`Missing`).

use std::borrow::Cow;

/// Deepest nesting read; deeper messages go to the Python path (orjson allows 1024).
const MAX_DEPTH: u32 = 64;

#[derive(Debug)]
pub struct Unsure;

type R<T> = Result<T, Unsure>;

#[derive(Debug, Clone, PartialEq)]
pub enum Val<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Cow<'a, str>),
    /// an object or an array (never returned as a value: its record is Unsure)
    Compound,
}

/// One key of an object the paths care about.
struct Entry {
    key: Box<[u8]>,
    /// (slot, whether this is the literal dotted key at the top level)
    terminals: Vec<(usize, bool)>,
    child: Option<usize>,
}

#[derive(Default)]
struct Node {
    entries: Vec<Entry>,
}

/// The paths to capture, as a tree of object keys.
pub struct Paths {
    nodes: Vec<Node>,
    slots: usize,
}

/// What a message holds at each slot's path: `None` where it holds nothing.
pub struct Captures<'a> {
    literal: Vec<Option<Val<'a>>>,
    nested: Vec<Option<Val<'a>>>,
}

impl<'a> Captures<'a> {
    pub fn new(slots: usize) -> Self {
        Captures { literal: vec![None; slots], nested: vec![None; slots] }
    }
    pub fn clear(&mut self) {
        self.literal.iter_mut().for_each(|v| *v = None);
        self.nested.iter_mut().for_each(|v| *v = None);
    }
    /// Set a slot's value as a walk through nested objects finds it (Avro's records).
    pub fn set(&mut self, slot: usize, value: Val<'a>) {
        self.nested[slot] = Some(value);
    }
    /// The value at slot `slot` as lookup() reads it; `None` when missing.
    pub fn get(&self, slot: usize) -> Option<&Val<'a>> {
        self.literal[slot].as_ref().or(self.nested[slot].as_ref())
    }
}

impl Paths {
    /// `paths` as settings validated them: non-empty, dotted segments non-empty. More than 64
    /// keys under one object is refused (a bit set tracks the keys seen).
    pub fn new(paths: &[String]) -> Result<Paths, String> {
        let mut tree = Paths { nodes: vec![Node::default()], slots: paths.len() };
        for (slot, path) in paths.iter().enumerate() {
            if path.is_empty() || path.split('.').any(str::is_empty) {
                return Err(format!("bad field path {path:?}"));
            }
            let parts: Vec<&str> = path.split('.').collect();
            if parts.len() > 1 {
                let entry = tree.entry(0, path.as_bytes());
                tree.nodes[0].entries[entry].terminals.push((slot, true));
            }
            let mut node = 0;
            for (depth, part) in parts.iter().enumerate() {
                let entry = tree.entry(node, part.as_bytes());
                if depth + 1 == parts.len() {
                    tree.nodes[node].entries[entry].terminals.push((slot, false));
                } else {
                    node = match tree.nodes[node].entries[entry].child {
                        Some(child) => child,
                        None => {
                            tree.nodes.push(Node::default());
                            let child = tree.nodes.len() - 1;
                            tree.nodes[node].entries[entry].child = Some(child);
                            child
                        }
                    };
                }
            }
        }
        if tree.nodes.iter().any(|node| node.entries.len() > 64) {
            return Err("more than 64 mapped keys in one object".to_string());
        }
        Ok(tree)
    }

    fn entry(&mut self, node: usize, key: &[u8]) -> usize {
        let entries = &mut self.nodes[node].entries;
        if let Some(at) = entries.iter().position(|e| &*e.key == key) {
            return at;
        }
        entries.push(Entry { key: key.into(), terminals: Vec::new(), child: None });
        entries.len() - 1
    }

    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Read `text`, which must be one JSON object, capturing each slot's value into `out`.
    pub fn read<'a>(&self, text: &'a str, out: &mut Captures<'a>) -> R<()> {
        out.clear();
        let mut reader = Reader { text, b: text.as_bytes(), i: 0 };
        reader.ws();
        if reader.peek()? != b'{' {
            return Err(Unsure);
        }
        reader.object(self, 0, 1, out)?;
        reader.ws();
        if reader.i != reader.b.len() {
            return Err(Unsure);
        }
        Ok(())
    }
}

struct Reader<'a> {
    text: &'a str,
    b: &'a [u8],
    i: usize,
}

fn hex(c: u8) -> R<u32> {
    match c {
        b'0'..=b'9' => Ok(u32::from(c - b'0')),
        b'a'..=b'f' => Ok(u32::from(c - b'a' + 10)),
        b'A'..=b'F' => Ok(u32::from(c - b'A' + 10)),
        _ => Err(Unsure),
    }
}

impl<'a> Reader<'a> {
    #[inline]
    fn ws(&mut self) {
        while let Some(&c) = self.b.get(self.i) {
            if c == b' ' || c == b'\n' || c == b'\r' || c == b'\t' {
                self.i += 1;
            } else {
                break;
            }
        }
    }

    #[inline]
    fn peek(&self) -> R<u8> {
        self.b.get(self.i).copied().ok_or(Unsure)
    }

    fn expect(&mut self, c: u8) -> R<()> {
        if self.peek()? != c {
            return Err(Unsure);
        }
        self.i += 1;
        Ok(())
    }

    fn literal(&mut self, word: &[u8]) -> R<()> {
        let end = self.i.checked_add(word.len()).ok_or(Unsure)?;
        if self.b.get(self.i..end) != Some(word) {
            return Err(Unsure);
        }
        self.i = end;
        Ok(())
    }

    /// Four hex digits after `\u`; the code point, surrogate pairs joined.
    fn unicode_escape(&mut self) -> R<char> {
        let first = self.hex4()?;
        let code = if (0xD800..0xDC00).contains(&first) {
            if self.b.get(self.i..self.i + 2) != Some(b"\\u") {
                return Err(Unsure); // a lone high surrogate: orjson refuses it
            }
            self.i += 2;
            let low = self.hex4()?;
            if !(0xDC00..0xE000).contains(&low) {
                return Err(Unsure);
            }
            0x10000 + ((first - 0xD800) << 10) + (low - 0xDC00)
        } else if (0xDC00..0xE000).contains(&first) {
            return Err(Unsure); // a lone low surrogate
        } else {
            first
        };
        char::from_u32(code).ok_or(Unsure)
    }

    fn hex4(&mut self) -> R<u32> {
        let digits = self.b.get(self.i..self.i + 4).ok_or(Unsure)?;
        let mut code = 0;
        for &d in digits {
            code = code * 16 + hex(d)?;
        }
        self.i += 4;
        Ok(code)
    }

    /// A string at `"`, unescaped; borrowed from the message when it has no escape.
    fn string(&mut self) -> R<Cow<'a, str>> {
        self.i += 1;
        let start = self.i;
        loop {
            let c = self.peek()?;
            if c == b'"' {
                let s = self.text.get(start..self.i).ok_or(Unsure)?;
                self.i += 1;
                return Ok(Cow::Borrowed(s));
            }
            if c == b'\\' {
                break;
            }
            if c < 0x20 {
                return Err(Unsure);
            }
            self.i += 1;
        }
        let mut out = String::from(self.text.get(start..self.i).ok_or(Unsure)?);
        loop {
            let c = self.peek()?;
            match c {
                b'"' => {
                    self.i += 1;
                    return Ok(Cow::Owned(out));
                }
                b'\\' => {
                    self.i += 1;
                    let e = self.peek()?;
                    self.i += 1;
                    match e {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => out.push(self.unicode_escape()?),
                        _ => return Err(Unsure),
                    }
                }
                c if c < 0x20 => return Err(Unsure),
                _ => {
                    let run = self.i;
                    while let Some(&c) = self.b.get(self.i) {
                        if c == b'"' || c == b'\\' || c < 0x20 {
                            break;
                        }
                        self.i += 1;
                    }
                    out.push_str(self.text.get(run..self.i).ok_or(Unsure)?);
                }
            }
        }
    }

    /// A number, as orjson reads it: an int when it has no fraction or exponent.
    fn number(&mut self) -> R<Val<'a>> {
        let start = self.i;
        if self.peek()? == b'-' {
            self.i += 1;
        }
        match self.peek()? {
            b'0' => self.i += 1,
            b'1'..=b'9' => self.digits(),
            _ => return Err(Unsure),
        }
        let mut float = false;
        if self.b.get(self.i) == Some(&b'.') {
            self.i += 1;
            if !self.peek()?.is_ascii_digit() {
                return Err(Unsure);
            }
            self.digits();
            float = true;
        }
        if matches!(self.b.get(self.i), Some(b'e') | Some(b'E')) {
            self.i += 1;
            if matches!(self.peek()?, b'+' | b'-') {
                self.i += 1;
            }
            if !self.peek()?.is_ascii_digit() {
                return Err(Unsure);
            }
            self.digits();
            float = true;
        }
        let token = &self.text[start..self.i];
        if float {
            let value: f64 = token.parse().map_err(|_| Unsure)?;
            if !value.is_finite() {
                return Err(Unsure); // orjson: "number is infinity when parsed as double"
            }
            Ok(Val::Float(value))
        } else {
            // beyond int64 orjson gives a uint64 or a float: the Python path decides
            token.parse::<i64>().map(Val::Int).map_err(|_| Unsure)
        }
    }

    #[inline]
    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    /// A value that is not an object or array.
    fn scalar(&mut self) -> R<Val<'a>> {
        match self.peek()? {
            b'"' => Ok(Val::Str(self.string()?)),
            b't' => self.literal(b"true").map(|_| Val::Bool(true)),
            b'f' => self.literal(b"false").map(|_| Val::Bool(false)),
            b'n' => self.literal(b"null").map(|_| Val::Null),
            _ => self.number(),
        }
    }

    /// Any value, checked and dropped.
    fn skip(&mut self, depth: u32) -> R<()> {
        match self.peek()? {
            b'{' => {
                if self.opened(b'}', depth)? {
                    return Ok(());
                }
                loop {
                    self.ws();
                    if self.peek()? != b'"' {
                        return Err(Unsure);
                    }
                    self.string()?;
                    self.ws();
                    self.expect(b':')?;
                    self.ws();
                    self.skip(depth + 1)?;
                    if self.closed(b'}')? {
                        return Ok(());
                    }
                }
            }
            b'[' => {
                if self.opened(b']', depth)? {
                    return Ok(());
                }
                loop {
                    self.ws();
                    self.skip(depth + 1)?;
                    if self.closed(b']')? {
                        return Ok(());
                    }
                }
            }
            b'"' => {
                // the same checks as string(), without keeping the text
                self.string().map(|_| ())
            }
            _ => self.scalar().map(|_| ()),
        }
    }

    /// An object at `{`: the keys `node` names are captured (or followed), the rest skipped.
    fn object(&mut self, paths: &Paths, node: usize, depth: u32, out: &mut Captures<'a>) -> R<()> {
        if self.opened(b'}', depth - 1)? {
            return Ok(());
        }
        let entries = &paths.nodes[node].entries;
        let mut seen: u64 = 0;
        loop {
            self.ws();
            if self.peek()? != b'"' {
                return Err(Unsure);
            }
            let key = self.string()?;
            self.ws();
            self.expect(b':')?;
            self.ws();
            match entries.iter().position(|e| *e.key == *key.as_bytes()) {
                None => self.skip(depth)?,
                Some(at) => {
                    if seen & (1 << at) != 0 {
                        return Err(Unsure); // the same key twice
                    }
                    seen |= 1 << at;
                    let entry = &entries[at];
                    let c = self.peek()?;
                    let value = if c == b'{' || c == b'[' {
                        match entry.child {
                            Some(child) if c == b'{' => self.object(paths, child, depth + 1, out)?,
                            _ => self.skip(depth)?,
                        }
                        Val::Compound
                    } else {
                        self.scalar()?
                    };
                    for &(slot, literal) in &entry.terminals {
                        if value == Val::Compound {
                            return Err(Unsure); // an object or array as a value: Python's
                        }
                        let target = if literal { &mut out.literal[slot] } else { &mut out.nested[slot] };
                        *target = Some(value.clone());
                    }
                }
            }
            if self.closed(b'}')? {
                return Ok(());
            }
        }
    }

    /// Past the `{` or `[` of a value at `depth`: true when it closes at once.
    fn opened(&mut self, close: u8, depth: u32) -> R<bool> {
        if depth >= MAX_DEPTH {
            return Err(Unsure);
        }
        self.i += 1;
        self.ws();
        if self.peek()? == close {
            self.i += 1;
            return Ok(true);
        }
        Ok(false)
    }

    /// After a member of an object or array: true at its `close`, false after a `,`.
    fn closed(&mut self, close: u8) -> R<bool> {
        self.ws();
        let c = self.peek()?;
        self.i += 1;
        if c == close {
            Ok(true)
        } else if c == b',' {
            Ok(false)
        } else {
            Err(Unsure)
        }
    }
}
