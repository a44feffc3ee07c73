//! versions: dotted version vector sets (DVV sets) and plain version vectors over canonical bytes.
//!
//! Plain Rust, no Python types: the bindings live in lib.rs. This is the twin of
//! python/dynacore/core/versions.py, whose module docstring is the reference for the model and the
//! canonical encoding; both must give the same bytes and reject the same inputs.
//!
//! Decoding borrows: a decoded set holds slices of the input buffer (node ids, values), so a merge
//! copies bytes exactly once, into the encoded result.

use std::cmp::Ordering;
use std::fmt;

/// First byte of an encoded set (kind 1, format version 1).
pub const SET_TAG: u8 = 0x11;
/// First byte of an encoded version vector (kind 2, format version 1).
pub const VV_TAG: u8 = 0x21;
/// Longest node id, in UTF-8 bytes.
pub const MAX_NODE_BYTES: usize = 255;
/// Longest LEB128 varint of a u64.
const MAX_VARINT_BYTES: usize = 10;

const EMPTY_SET: &[u8] = &[SET_TAG, 0, 0];
const EMPTY_VV: &[u8] = &[VV_TAG, 0];

/// A malformed encoding or argument; raised as dynacore.errors.VersionError by the bindings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionError(pub String);

impl fmt::Display for VersionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for VersionError {}

pub type Result<T> = std::result::Result<T, VersionError>;

fn err<T>(msg: &str) -> Result<T> {
    Err(VersionError(msg.to_owned()))
}

// -- reading ---------------------------------------------------------------------------------------

/// What a low-level read found wrong: one byte, so that the readers' results stay in registers
/// (a String-carrying error on every varint costs the decoder about a third of its time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Malformed {
    Truncated,
    VarintTooLong,
    VarintOverflow,
    VarintNotMinimal,
    NodeLength,
    NodeUtf8,
}

impl From<Malformed> for VersionError {
    fn from(m: Malformed) -> Self {
        VersionError(
            match m {
                Malformed::Truncated => "truncated: a length or count runs past the end",
                Malformed::VarintTooLong => "varint longer than 10 bytes",
                Malformed::VarintOverflow => "varint exceeds 64 bits",
                Malformed::VarintNotMinimal => "varint not minimal",
                Malformed::NodeLength => "node id length outside 1..255",
                Malformed::NodeUtf8 => "node id is not UTF-8",
            }
            .to_owned(),
        )
    }
}

type Read<T> = std::result::Result<T, Malformed>;

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    #[inline]
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    #[inline]
    fn varint(&mut self) -> Read<u64> {
        let mut result: u64 = 0;
        for i in 0..MAX_VARINT_BYTES {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(Malformed::Truncated);
            };
            self.pos += 1;
            let low = u64::from(b & 0x7F);
            if i == MAX_VARINT_BYTES - 1 && (b & 0x80 == 0) && low > 1 {
                return Err(Malformed::VarintOverflow);
            }
            result |= low << (7 * i as u32);
            if b & 0x80 == 0 {
                if b == 0 && i > 0 {
                    return Err(Malformed::VarintNotMinimal);
                }
                return Ok(result);
            }
        }
        Err(Malformed::VarintTooLong)
    }

    /// `len` bytes from the current position.
    #[inline]
    fn take(&mut self, len: u64) -> Read<&'a [u8]> {
        if len > self.remaining() as u64 {
            return Err(Malformed::Truncated);
        }
        let start = self.pos;
        self.pos += len as usize;
        Ok(&self.buf[start..self.pos])
    }

    #[inline]
    fn bytes(&mut self) -> Read<&'a [u8]> {
        let len = self.varint()?;
        self.take(len)
    }

    #[inline]
    fn node(&mut self) -> Read<&'a str> {
        let len = self.varint()?;
        if len == 0 || len > MAX_NODE_BYTES as u64 {
            return Err(Malformed::NodeLength);
        }
        std::str::from_utf8(self.take(len)?).map_err(|_| Malformed::NodeUtf8)
    }

    /// A count of items that each take at least one byte.
    #[inline]
    fn count(&mut self) -> Read<usize> {
        let n = self.varint()?;
        if n > self.remaining() as u64 {
            return Err(Malformed::Truncated);
        }
        Ok(n as usize)
    }

    fn finish(&self, what: &str) -> Result<()> {
        if self.pos != self.buf.len() {
            return Err(VersionError(format!("trailing bytes after the {what}")));
        }
        Ok(())
    }
}

// -- writing ---------------------------------------------------------------------------------------

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7F) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

// -- node ids --------------------------------------------------------------------------------------

/// Check a node id given as an argument: 1..=255 UTF-8 bytes.
pub fn check_node(node: &str) -> Result<()> {
    if node.is_empty() || node.len() > MAX_NODE_BYTES {
        return Err(VersionError(format!(
            "node id must be 1..{MAX_NODE_BYTES} UTF-8 bytes, got {}",
            node.len()
        )));
    }
    Ok(())
}

/// Byte order of node ids. Node ids are short (a few bytes), where an inline loop beats a call
/// to libc's memcmp several times over.
fn cmp_node(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    for (x, y) in a.iter().zip(b) {
        if x != y {
            return x.cmp(y);
        }
    }
    a.len().cmp(&b.len())
}

// -- version vectors -------------------------------------------------------------------------------

/// A decoded version vector: (node, counter >= 1), strictly sorted by node bytes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Vv<'a> {
    pub entries: Vec<(&'a str, u64)>,
}

impl<'a> Vv<'a> {
    /// Decode and validate; b"" is the empty vv.
    pub fn decode(buf: &'a [u8]) -> Result<Self> {
        if buf.is_empty() {
            return Ok(Vv::default());
        }
        if buf[0] != VV_TAG {
            return err("not an encoded version vector (bad tag or version)");
        }
        let mut r = Reader { buf, pos: 1 };
        let n = r.count()?;
        let mut entries = Vec::with_capacity(n);
        let mut prev: &str = "";
        for _ in 0..n {
            let node = r.node()?;
            if cmp_node(node, prev) != Ordering::Greater {
                return err("entries not strictly sorted by node id");
            }
            prev = node;
            let counter = r.varint()?;
            if counter == 0 {
                return err("entry counter is 0");
            }
            entries.push((node, counter));
        }
        r.finish("version vector")?;
        Ok(Vv { entries })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 + self.entries.len() * 12);
        out.push(VV_TAG);
        put_varint(&mut out, self.entries.len() as u64);
        for &(node, counter) in &self.entries {
            put_bytes(&mut out, node.as_bytes());
            put_varint(&mut out, counter);
        }
        out
    }

    /// The counter of node (0 when absent).
    pub fn get(&self, node: &str) -> u64 {
        self.entries
            .binary_search_by(|(n, _)| cmp_node(n, node))
            .map_or(0, |i| self.entries[i].1)
    }

    /// self >= other pointwise.
    pub fn descends(&self, other: &Vv<'_>) -> bool {
        let mut i = 0;
        for &(node, counter) in &other.entries {
            while i < self.entries.len() && cmp_node(self.entries[i].0, node) == Ordering::Less {
                i += 1;
            }
            match self.entries.get(i) {
                Some(&(n, c)) if n == node && c >= counter => {}
                _ => return false,
            }
        }
        true
    }

    /// The pointwise max.
    pub fn merge(&self, other: &Vv<'a>) -> Vv<'a> {
        let (a, b) = (&self.entries, &other.entries);
        let mut out = Vec::with_capacity(a.len() + b.len());
        let (mut i, mut j) = (0, 0);
        while i < a.len() && j < b.len() {
            match cmp_node(a[i].0, b[j].0) {
                Ordering::Less => {
                    out.push(a[i]);
                    i += 1;
                }
                Ordering::Greater => {
                    out.push(b[j]);
                    j += 1;
                }
                Ordering::Equal => {
                    out.push((a[i].0, a[i].1.max(b[j].1)));
                    i += 1;
                    j += 1;
                }
            }
        }
        out.extend_from_slice(&a[i..]);
        out.extend_from_slice(&b[j..]);
        Vv { entries: out }
    }
}

// -- sets ------------------------------------------------------------------------------------------

/// One node's entry; its values are `set.values[first..first + count]`, newest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<'a> {
    pub node: &'a str,
    pub counter: u64,
    pub first: usize,
    pub count: usize,
}

/// A decoded set. All byte slices borrow from the inputs of the operation.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DvvSet<'a> {
    pub entries: Vec<Entry<'a>>,
    pub values: Vec<&'a [u8]>,
    pub anon: Vec<&'a [u8]>,
}

impl<'a> DvvSet<'a> {
    /// Decode and validate an encoded set.
    pub fn decode(buf: &'a [u8]) -> Result<Self> {
        if buf.first() != Some(&SET_TAG) {
            return err("not an encoded version set (bad tag or version)");
        }
        let mut r = Reader { buf, pos: 1 };
        let n = r.count()?;
        let mut set = DvvSet {
            entries: Vec::with_capacity(n),
            values: Vec::with_capacity(n),
            anon: Vec::new(),
        };
        let mut prev: &str = "";
        for _ in 0..n {
            let node = r.node()?;
            if cmp_node(node, prev) != Ordering::Greater {
                return err("entries not strictly sorted by node id");
            }
            prev = node;
            let counter = r.varint()?;
            if counter == 0 {
                return err("entry counter is 0");
            }
            let n_values = r.varint()?;
            if n_values > counter {
                return err("entry has more values than its counter");
            }
            if n_values > r.remaining() as u64 {
                return err("truncated: more values announced than bytes left");
            }
            let first = set.values.len();
            for _ in 0..n_values {
                set.values.push(r.bytes()?);
            }
            let count = n_values as usize;
            set.entries.push(Entry {
                node,
                counter,
                first,
                count,
            });
        }
        let n_anon = r.count()?;
        set.anon.reserve(n_anon);
        for _ in 0..n_anon {
            let value = r.bytes()?;
            if set.anon.last().is_some_and(|last| *last >= value) {
                return err("anonymous values not strictly sorted");
            }
            set.anon.push(value);
        }
        r.finish("version set")?;
        Ok(set)
    }

    /// The values of one entry, newest first.
    pub fn values_of(&self, e: &Entry<'a>) -> &[&'a [u8]] {
        &self.values[e.first..e.first + e.count]
    }

    /// Append an entry whose values are `vals`.
    fn push_entry(&mut self, node: &'a str, counter: u64, vals: &[&'a [u8]]) {
        let first = self.values.len();
        self.values.extend_from_slice(vals);
        self.entries.push(Entry {
            node,
            counter,
            first,
            count: vals.len(),
        });
    }

    pub fn encode(&self) -> Vec<u8> {
        let payload: usize = self
            .values
            .iter()
            .chain(&self.anon)
            .map(|v| v.len() + 2)
            .sum();
        let mut out = Vec::with_capacity(4 + self.entries.len() * 16 + payload);
        out.push(SET_TAG);
        put_varint(&mut out, self.entries.len() as u64);
        for e in &self.entries {
            put_bytes(&mut out, e.node.as_bytes());
            put_varint(&mut out, e.counter);
            put_varint(&mut out, e.count as u64);
            for v in self.values_of(e) {
                put_bytes(&mut out, v);
            }
        }
        put_varint(&mut out, self.anon.len() as u64);
        for v in &self.anon {
            put_bytes(&mut out, v);
        }
        out
    }

    /// The number of values (siblings).
    pub fn size(&self) -> usize {
        self.values.len() + self.anon.len()
    }

    /// The context: node -> counter.
    pub fn join(&self) -> Vv<'a> {
        Vv {
            entries: self.entries.iter().map(|e| (e.node, e.counter)).collect(),
        }
    }

    /// Every value: entries by node, newest first; then the anonymous values.
    pub fn all_values(&self) -> Vec<&'a [u8]> {
        let mut out = Vec::with_capacity(self.size());
        for e in &self.entries {
            out.extend_from_slice(self.values_of(e));
        }
        out.extend_from_slice(&self.anon);
        out
    }

    /// The same clock with no values at all.
    fn clock_only(&self) -> DvvSet<'a> {
        let entries = self
            .entries
            .iter()
            .map(|e| Entry {
                node: e.node,
                counter: e.counter,
                first: 0,
                count: 0,
            })
            .collect();
        DvvSet {
            entries,
            values: Vec::new(),
            anon: Vec::new(),
        }
    }

    /// The merge of two replicas' sets.
    pub fn sync(&self, other: &DvvSet<'a>) -> DvvSet<'a> {
        let mut out = DvvSet {
            entries: Vec::with_capacity(self.entries.len() + other.entries.len()),
            values: Vec::with_capacity(self.values.len() + other.values.len()),
            anon: union_sorted(&self.anon, &other.anon),
        };
        let (a, b) = (&self.entries, &other.entries);
        let (mut i, mut j) = (0, 0);
        while i < a.len() || j < b.len() {
            let order = match (a.get(i), b.get(j)) {
                (Some(x), Some(y)) => cmp_node(x.node, y.node),
                (Some(_), None) => Ordering::Less,
                _ => Ordering::Greater,
            };
            match order {
                Ordering::Less => {
                    out.push_entry(a[i].node, a[i].counter, self.values_of(&a[i]));
                    i += 1;
                }
                Ordering::Greater => {
                    out.push_entry(b[j].node, b[j].counter, other.values_of(&b[j]));
                    j += 1;
                }
                Ordering::Equal => {
                    let (la, lb) = (self.values_of(&a[i]), other.values_of(&b[j]));
                    let (counter, vals) = merge_entry(a[i].counter, la, b[j].counter, lb);
                    out.push_entry(a[i].node, counter, vals);
                    i += 1;
                    j += 1;
                }
            }
        }
        out
    }

    /// stored ∨ context, without the stored values that the context covers.
    fn apply_context(&self, ctx: &Vv<'a>) -> DvvSet<'a> {
        let mut out = DvvSet {
            entries: Vec::with_capacity(self.entries.len() + ctx.entries.len() + 1),
            values: Vec::with_capacity(self.values.len() + 1),
            anon: self.anon.clone(),
        };
        let (a, c) = (&self.entries, &ctx.entries);
        let (mut i, mut j) = (0, 0);
        while i < a.len() || j < c.len() {
            let order = match (a.get(i), c.get(j)) {
                (Some(x), Some(y)) => cmp_node(x.node, y.0),
                (Some(_), None) => Ordering::Less,
                _ => Ordering::Greater,
            };
            match order {
                Ordering::Less => {
                    out.push_entry(a[i].node, a[i].counter, self.values_of(&a[i]));
                    i += 1;
                }
                Ordering::Greater => {
                    out.push_entry(c[j].0, c[j].1, &[]);
                    j += 1;
                }
                Ordering::Equal => {
                    let (counter, seen) = (a[i].counter, c[j].1);
                    let vals = self.values_of(&a[i]);
                    if seen >= counter {
                        out.push_entry(a[i].node, seen, &[]);
                    } else {
                        let keep = ((counter - seen) as usize).min(vals.len());
                        out.push_entry(a[i].node, counter, &vals[..keep]);
                    }
                    i += 1;
                    j += 1;
                }
            }
        }
        out
    }

    /// Add value under node's next counter (the entries already hold the context).
    fn add_event(&self, node: &'a str, value: &'a [u8]) -> Result<DvvSet<'a>> {
        let pos = self.entries.binary_search_by(|e| cmp_node(e.node, node));
        let mut out = DvvSet {
            entries: Vec::with_capacity(self.entries.len() + 1),
            values: Vec::with_capacity(self.values.len() + 1),
            anon: self.anon.clone(),
        };
        let split = match pos {
            Ok(i) | Err(i) => i,
        };
        for e in &self.entries[..split] {
            out.push_entry(e.node, e.counter, self.values_of(e));
        }
        let (counter, older): (u64, &[&'a [u8]]) = match pos {
            Ok(i) => {
                let e = &self.entries[i];
                let next = e.counter.checked_add(1).ok_or_else(|| {
                    VersionError("counter overflow: node's counter is at 2**64-1".to_owned())
                })?;
                (next, self.values_of(e))
            }
            Err(_) => (1, &[]),
        };
        let first = out.values.len();
        out.values.push(value);
        out.values.extend_from_slice(older);
        out.entries.push(Entry {
            node,
            counter,
            first,
            count: older.len() + 1,
        });
        let rest = match pos {
            Ok(i) => i + 1,
            Err(i) => i,
        };
        for e in &self.entries[rest..] {
            out.push_entry(e.node, e.counter, self.values_of(e));
        }
        Ok(out)
    }
}

/// sync of one node's entries from both sides: the counter and the surviving values.
fn merge_entry<'v, 'a>(
    ca: u64,
    la: &'v [&'a [u8]],
    cb: u64,
    lb: &'v [&'a [u8]],
) -> (u64, &'v [&'a [u8]]) {
    match ca.cmp(&cb) {
        Ordering::Greater => (ca, &la[..keep_count(ca - cb, lb.len(), la.len())]),
        Ordering::Less => (cb, &lb[..keep_count(cb - ca, la.len(), lb.len())]),
        Ordering::Equal => {
            let k = la.len().min(lb.len());
            let (ta, tb) = (&la[..k], &lb[..k]);
            (ca, if ta >= tb { ta } else { tb })
        }
    }
}

/// How many of the higher side's values survive: those newer than the lower side's oldest value.
fn keep_count(gap: u64, lower_len: usize, higher_len: usize) -> usize {
    let keep = gap.saturating_add(lower_len as u64);
    if keep >= higher_len as u64 {
        higher_len
    } else {
        keep as usize
    }
}

/// The sorted union (no duplicates) of two strictly sorted lists.
fn union_sorted<'a>(a: &[&'a [u8]], b: &[&'a [u8]]) -> Vec<&'a [u8]> {
    if b.is_empty() || a == b {
        return a.to_vec();
    }
    if a.is_empty() {
        return b.to_vec();
    }
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(b[j]) {
            Ordering::Less => {
                out.push(a[i]);
                i += 1;
            }
            Ordering::Greater => {
                out.push(b[j]);
                j += 1;
            }
            Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}

// -- the operations over encoded bytes (the API of the Python twin) -------------------------------

/// The set with no entries and no values.
pub fn empty() -> Vec<u8> {
    EMPTY_SET.to_vec()
}

/// A set holding one anonymous value.
pub fn new(value: &[u8]) -> Vec<u8> {
    DvvSet {
        anon: vec![value],
        ..DvvSet::default()
    }
    .encode()
}

/// Drop the stored values the context covers; add value under node's next counter.
pub fn update(stored: &[u8], context: &[u8], value: &[u8], node: &str) -> Result<Vec<u8>> {
    let set = DvvSet::decode(stored)?;
    let ctx = Vv::decode(context)?;
    check_node(node)?;
    Ok(set.apply_context(&ctx).add_event(node, value)?.encode())
}

/// The merge of two sets: commutative, associative, idempotent.
pub fn sync(a: &[u8], b: &[u8]) -> Result<Vec<u8>> {
    let sa = DvvSet::decode(a)?;
    let sb = DvvSet::decode(b)?;
    if a == b {
        return Ok(a.to_vec());
    }
    Ok(sa.sync(&sb).encode())
}

/// sync over any number of sets (the empty set for none).
pub fn sync_many(sets: &[&[u8]]) -> Result<Vec<u8>> {
    let Some((head, rest)) = sets.split_first() else {
        return Ok(empty());
    };
    let mut acc = DvvSet::decode(head)?;
    for s in rest {
        acc = acc.sync(&DvvSet::decode(s)?);
    }
    Ok(acc.encode())
}

/// The causal context of a set, as an encoded version vector.
pub fn join(s: &[u8]) -> Result<Vec<u8>> {
    Ok(DvvSet::decode(s)?.join().encode())
}

/// Every value: entries by node, newest first; then the anonymous values.
pub fn values(s: &[u8]) -> Result<Vec<&[u8]>> {
    Ok(DvvSet::decode(s)?.all_values())
}

/// The number of values.
pub fn size(s: &[u8]) -> Result<usize> {
    Ok(DvvSet::decode(s)?.size())
}

/// The node ids of the entries, sorted.
pub fn ids(s: &[u8]) -> Result<Vec<&str>> {
    Ok(DvvSet::decode(s)?.entries.iter().map(|e| e.node).collect())
}

/// Keep the clock and only the value that sorts last (the first such in values() order).
pub fn lww(s: &[u8]) -> Result<Vec<u8>> {
    let set = DvvSet::decode(s)?;
    // (value, entry index or None for anonymous)
    let mut best: Option<(&[u8], Option<usize>)> = None;
    for (i, e) in set.entries.iter().enumerate() {
        for &v in set.values_of(e) {
            if best.is_none_or(|(b, _)| v > b) {
                best = Some((v, Some(i)));
            }
        }
    }
    for &v in &set.anon {
        if best.is_none_or(|(b, _)| v > b) {
            best = Some((v, None));
        }
    }
    let Some((winner, at)) = best else {
        return Ok(set.encode());
    };
    let mut out = set.clock_only();
    match at {
        Some(i) => {
            out.values.push(winner);
            out.entries[i].count = 1;
        }
        None => out.anon.push(winner),
    }
    Ok(out.encode())
}

/// The clock of s, every value dropped, and `merged` as a new event of node.
pub fn reconcile_with_value<'a>(
    set: &DvvSet<'a>,
    merged: &'a [u8],
    node: &'a str,
) -> Result<Vec<u8>> {
    check_node(node)?;
    Ok(set.clock_only().add_event(node, merged)?.encode())
}

/// Replace every value by merge(values(s)), written as a new event of node.
pub fn reconcile(s: &[u8], merge: impl FnOnce(&[&[u8]]) -> Vec<u8>, node: &str) -> Result<Vec<u8>> {
    let set = DvvSet::decode(s)?;
    check_node(node)?;
    let merged = merge(&set.all_values());
    reconcile_with_value(&set, &merged, node)
}

/// a is strictly dominated by b in the sync lattice: sync(a, b) == b and a != b.
pub fn less(a: &[u8], b: &[u8]) -> Result<bool> {
    let sa = DvvSet::decode(a)?;
    let sb = DvvSet::decode(b)?;
    Ok(a != b && sa.sync(&sb).encode() == b)
}

/// a and b are the same set.
pub fn equal(a: &[u8], b: &[u8]) -> Result<bool> {
    DvvSet::decode(a)?;
    DvvSet::decode(b)?;
    Ok(a == b)
}

/// The context covers the dot of every value of s (never an anonymous value).
pub fn covers(context: &[u8], s: &[u8]) -> Result<bool> {
    let ctx = Vv::decode(context)?;
    let set = DvvSet::decode(s)?;
    if !set.anon.is_empty() {
        return Ok(false);
    }
    Ok(set
        .entries
        .iter()
        .all(|e| e.count == 0 || ctx.get(e.node) >= e.counter))
}

/// The version vector with no entries.
pub fn vv_empty() -> Vec<u8> {
    EMPTY_VV.to_vec()
}

/// A version vector from (node, counter) pairs; zero counters are left out.
pub fn vv_from(pairs: &[(&str, u64)]) -> Result<Vec<u8>> {
    for &(node, _) in pairs {
        check_node(node)?;
    }
    let mut entries = pairs.to_vec();
    entries.sort_by(|x, y| cmp_node(x.0, y.0).then(x.1.cmp(&y.1)));
    if let Some(w) = entries.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(VersionError(format!("node id {:?} appears twice", w[0].0)));
    }
    entries.retain(|&(_, c)| c > 0);
    Ok(Vv { entries }.encode())
}

/// The (node, counter) pairs, sorted by node.
pub fn vv_to(vv: &[u8]) -> Result<Vec<(&str, u64)>> {
    Ok(Vv::decode(vv)?.entries)
}

/// a >= b pointwise.
pub fn vv_descends(a: &[u8], b: &[u8]) -> Result<bool> {
    Ok(Vv::decode(a)?.descends(&Vv::decode(b)?))
}

/// Neither descends from the other.
pub fn vv_concurrent(a: &[u8], b: &[u8]) -> Result<bool> {
    let (va, vb) = (Vv::decode(a)?, Vv::decode(b)?);
    Ok(!va.descends(&vb) && !vb.descends(&va))
}

/// Same version vector (b"" equals the empty vv).
pub fn vv_equal(a: &[u8], b: &[u8]) -> Result<bool> {
    Ok(Vv::decode(a)? == Vv::decode(b)?)
}

/// The pointwise max.
pub fn vv_merge(a: &[u8], b: &[u8]) -> Result<Vec<u8>> {
    Ok(Vv::decode(a)?.merge(&Vv::decode(b)?).encode())
}

/// vv with node's counter one higher.
pub fn vv_increment(vv: &[u8], node: &str) -> Result<Vec<u8>> {
    let mut v = Vv::decode(vv)?;
    check_node(node)?;
    match v.entries.binary_search_by(|(n, _)| cmp_node(n, node)) {
        Ok(i) => {
            v.entries[i].1 = v.entries[i].1.checked_add(1).ok_or_else(|| {
                VersionError("counter overflow: node's counter is at 2**64-1".to_owned())
            })?;
        }
        Err(i) => v.entries.insert(i, (node, 1)),
    }
    Ok(v.encode())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vals(s: &[u8]) -> Vec<Vec<u8>> {
        values(s).unwrap().into_iter().map(<[u8]>::to_vec).collect()
    }

    #[test]
    fn empty_and_new_encode_canonically() {
        assert_eq!(empty(), vec![0x11, 0, 0]);
        assert_eq!(vv_empty(), vec![0x21, 0]);
        assert_eq!(new(b"x"), vec![0x11, 0, 1, 1, b'x']);
        assert_eq!(size(&new(b"x")).unwrap(), 1);
        assert_eq!(join(&new(b"x")).unwrap(), vv_empty());
    }

    #[test]
    fn update_makes_dots_and_replaces_what_the_context_covers() {
        let s1 = update(&empty(), b"", b"x", "a").unwrap();
        assert_eq!(vv_to(&join(&s1).unwrap()).unwrap(), vec![("a", 1)]);
        let s2 = update(&s1, b"", b"y", "a").unwrap();
        assert_eq!(vals(&s2), vec![b"y".to_vec(), b"x".to_vec()]);
        let s3 = update(&s2, &join(&s2).unwrap(), b"z", "b").unwrap();
        assert_eq!(vals(&s3), vec![b"z".to_vec()]);
        assert_eq!(
            vv_to(&join(&s3).unwrap()).unwrap(),
            vec![("a", 2), ("b", 1)]
        );
        assert!(covers(&join(&s2).unwrap(), &s2).unwrap());
        assert!(!covers(b"", &s2).unwrap());
    }

    #[test]
    fn update_takes_the_context_counters_into_the_clock() {
        let ctx = vv_from(&[("a", 5), ("c", 2)]).unwrap();
        let s = update(&empty(), &ctx, b"v", "a").unwrap();
        assert_eq!(vv_to(&join(&s).unwrap()).unwrap(), vec![("a", 6), ("c", 2)]);
    }

    #[test]
    fn sync_keeps_concurrent_values_and_drops_overwritten_ones() {
        let base = update(&empty(), b"", b"x", "a").unwrap();
        let left = update(&base, &join(&base).unwrap(), b"l", "a").unwrap();
        let right = update(&base, &join(&base).unwrap(), b"r", "b").unwrap();
        let merged = sync(&left, &right).unwrap();
        assert_eq!(vals(&merged), vec![b"l".to_vec(), b"r".to_vec()]);
        assert_eq!(sync(&right, &left).unwrap(), merged);
        assert!(less(&base, &merged).unwrap());
        assert!(!less(&merged, &merged).unwrap());
        assert_eq!(sync(&merged, &empty()).unwrap(), merged);
    }

    #[test]
    fn sync_breaks_ties_on_the_larger_value_list() {
        let p = update(&empty(), b"", b"p", "a").unwrap();
        let q = update(&empty(), b"", b"q", "a").unwrap();
        assert_eq!(sync(&p, &q).unwrap(), q);
        assert_eq!(sync(&q, &p).unwrap(), q);
    }

    #[test]
    fn anonymous_values_are_kept_by_sync_and_update() {
        let s = sync(&new(b"b"), &new(b"a")).unwrap();
        assert_eq!(vals(&s), vec![b"a".to_vec(), b"b".to_vec()]);
        let u = update(&s, &join(&s).unwrap(), b"c", "n").unwrap();
        assert_eq!(size(&u).unwrap(), 3);
        assert!(!covers(&join(&u).unwrap(), &u).unwrap());
    }

    #[test]
    fn lww_and_reconcile_leave_one_value() {
        let a = update(&empty(), b"", b"1", "a").unwrap();
        let s = sync(&a, &update(&empty(), b"", b"9", "b").unwrap()).unwrap();
        let w = lww(&s).unwrap();
        assert_eq!(vals(&w), vec![b"9".to_vec()]);
        assert_eq!(join(&w).unwrap(), join(&s).unwrap());
        let r = reconcile(&s, |vs| vs.concat(), "c").unwrap();
        assert_eq!(vals(&r), vec![b"19".to_vec()]);
        assert_eq!(
            vv_to(&join(&r).unwrap()).unwrap(),
            vec![("a", 1), ("b", 1), ("c", 1)]
        );
    }

    #[test]
    fn version_vectors_compare_and_merge() {
        let a = vv_from(&[("b", 2), ("a", 1)]).unwrap();
        let b = vv_from(&[("a", 3)]).unwrap();
        assert!(vv_concurrent(&a, &b).unwrap());
        let m = vv_merge(&a, &b).unwrap();
        assert_eq!(vv_to(&m).unwrap(), vec![("a", 3), ("b", 2)]);
        assert!(vv_descends(&m, &a).unwrap() && vv_descends(&m, &b).unwrap());
        assert!(vv_equal(b"", &vv_empty()).unwrap());
        assert!(vv_from(&[("a", 1), ("a", 2)]).is_err());
        assert_eq!(vv_from(&[("a", 0)]).unwrap(), vv_empty());
        let inc = vv_increment(&a, "c").unwrap();
        assert_eq!(vv_to(&inc).unwrap(), vec![("a", 1), ("b", 2), ("c", 1)]);
        let top = vv_from(&[("a", u64::MAX)]).unwrap();
        assert!(vv_increment(&top, "a").is_err());
    }

    #[test]
    fn decoding_rejects_every_non_canonical_form() {
        let bad: &[&[u8]] = &[
            b"",
            &[0x12, 0, 0],
            &[0x11, 0],
            &[0x11, 0, 0, 0],
            &[0x11, 0x80, 0, 0],
            &[0x11, 1, 1, b'a', 0, 0, 0],
            &[0x11, 1, 1, b'a', 1, 2, 0, 0, 0],
            &[0x11, 2, 1, b'b', 1, 0, 1, b'a', 1, 0, 0],
            &[0x11, 1, 1, 0xFF, 1, 0, 0],
            &[0x11, 0, 2, 1, b'b', 1, b'a'],
            &[0x11, 0, 2, 1, b'a', 1, b'a'],
            &[0x11, 0, 1, 5, b'a'],
            &[
                0x11, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01,
            ],
        ];
        for b in bad {
            assert!(DvvSet::decode(b).is_err(), "{b:?}");
        }
        let mut huge = vec![0x21, 1, 1, b'a'];
        huge.extend_from_slice(&[0xFF; 9]);
        huge.push(0x02);
        assert!(Vv::decode(&huge).is_err());
        let mut max = vec![0x21, 1, 1, b'a'];
        max.extend_from_slice(&[0xFF; 9]);
        max.push(0x01);
        assert_eq!(Vv::decode(&max).unwrap().entries, vec![("a", u64::MAX)]);
    }

    #[test]
    fn decoding_random_prefixes_never_panics() {
        let s = update(
            &sync(&new(b"q"), &update(&empty(), b"", b"v", "n").unwrap()).unwrap(),
            b"",
            b"w",
            "m",
        )
        .unwrap();
        for cut in 0..s.len() {
            assert!(DvvSet::decode(&s[..cut]).is_err());
        }
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..2000 {
            let mut buf = vec![if state & 1 == 0 { SET_TAG } else { VV_TAG }];
            for _ in 0..(state % 24) {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1);
                buf.push((state >> 56) as u8);
            }
            let _ = DvvSet::decode(&buf);
            let _ = Vv::decode(&buf);
        }
    }
}
