//! merkle: the per-partition Merkle tree over key segments (BLAKE3), in plain Rust.
//!
//! This module owns the Rust twin of python/dynacore/core/merkle.py: the segment rule, the hash
//! layout and the lazy (dirty-tracked) hashing. It knows nothing of Python; lib.rs binds it as
//! `dynacore._native.merkle`.
//!
//! Layout (docs/contracts.md): segments = fanout^depth leaves; a key falls in segment
//! `xxh3_64(key) & (segments - 1)`. A segment hashes to BLAKE3 over its (key, digest) pairs sorted
//! by key, each encoded as `len(key) as u32 BE ‖ key ‖ digest`, or to 32 zero bytes when empty. An
//! inner node hashes to BLAKE3 over its children's hashes concatenated, or to 32 zero bytes when
//! every child is zero.
//!
//! Each segment is stored as exactly those encoded records, sorted by key, in one buffer: hashing
//! a segment is one BLAKE3 call over its buffer, and replacing a digest is a 32-byte copy.

use std::cmp::Ordering;
use std::fmt;

use xxhash_rust::xxh3::xxh3_64;

/// Size of a digest and of every node hash.
pub const DIGEST_SIZE_BYTES: usize = 32;
pub const MIN_FANOUT: u64 = 2;
pub const MAX_FANOUT: u64 = 256;
pub const MIN_DEPTH: u64 = 1;
pub const MAX_DEPTH: u64 = 6;
pub const MAX_SEGMENTS: u64 = 1 << 20;
/// The longest key the `u32` length prefix can encode.
pub const MAX_KEY_SIZE_BYTES: usize = u32::MAX as usize;
/// The hash of an empty segment, and of an inner node whose children are all zero.
pub const ZERO_HASH: Hash = [0; DIGEST_SIZE_BYTES];

/// A digest or node hash.
pub type Hash = [u8; DIGEST_SIZE_BYTES];

/// Bytes of the `len(key)` prefix of a record.
const LEN_PREFIX_BYTES: usize = 4;

/// Bad arguments to a tree operation (the Python MerkleError).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MerkleError(pub String);

impl fmt::Display for MerkleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for MerkleError {}

fn error<T>(message: String) -> Result<T, MerkleError> {
    Err(MerkleError(message))
}

/// BLAKE3-256 of `data`.
pub fn digest(data: &[u8]) -> Hash {
    *blake3::hash(data).as_bytes()
}

/// Checks that `key` fits the record layout.
pub fn check_key(key: &[u8]) -> Result<(), MerkleError> {
    if key.len() > MAX_KEY_SIZE_BYTES {
        return error(format!("a key must be at most {MAX_KEY_SIZE_BYTES} bytes"));
    }
    Ok(())
}

/// A borrowed (key, digest) pair, as handed to the batch operations.
pub type Pair<'a> = (&'a [u8], &'a Hash);

/// The record at `offset` of a segment buffer.
fn record_at(buf: &[u8], offset: usize) -> Record<'_> {
    let mut len_bytes = [0u8; LEN_PREFIX_BYTES];
    len_bytes.copy_from_slice(&buf[offset..offset + LEN_PREFIX_BYTES]);
    let key_len = u32::from_be_bytes(len_bytes) as usize;
    let key_start = offset + LEN_PREFIX_BYTES;
    let digest_start = key_start + key_len;
    let end = digest_start + DIGEST_SIZE_BYTES;
    Record {
        key: &buf[key_start..digest_start],
        digest: &buf[digest_start..end],
        encoded: &buf[offset..end],
    }
}

fn record_len(key: &[u8]) -> usize {
    LEN_PREFIX_BYTES + key.len() + DIGEST_SIZE_BYTES
}

/// Appends the record of (key, digest).
fn push_record(buf: &mut Vec<u8>, key: &[u8], digest: &Hash) {
    debug_assert!(key.len() <= MAX_KEY_SIZE_BYTES);
    buf.extend_from_slice(&(key.len() as u32).to_be_bytes());
    buf.extend_from_slice(key);
    buf.extend_from_slice(digest);
}

/// Where `key` is in a segment buffer: Ok(offset of its record) or Err(offset to insert at).
fn find(buf: &[u8], key: &[u8]) -> Result<usize, usize> {
    let mut offset = 0;
    while offset < buf.len() {
        let record = record_at(buf, offset);
        match record.key.cmp(key) {
            Ordering::Less => offset += record.encoded.len(),
            Ordering::Equal => return Ok(offset),
            Ordering::Greater => return Err(offset),
        }
    }
    Err(offset)
}

/// One encoded record: `len(key) u32 BE ‖ key ‖ digest`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub key: &'a [u8],
    pub digest: &'a [u8],
    pub encoded: &'a [u8],
}

/// The records of one segment, in key order.
pub struct Records<'a> {
    buf: &'a [u8],
    offset: usize,
}

impl<'a> Iterator for Records<'a> {
    type Item = Record<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.offset >= self.buf.len() {
            return None;
        }
        let record = record_at(self.buf, self.offset);
        self.offset += record.encoded.len();
        Some(record)
    }
}

/// A segment touched by a `Loader`: its records before the load end at `old_len`, the records
/// appended by the load follow, unsorted.
#[derive(Clone, Copy)]
struct Touched {
    segment: u32,
    old_len: usize,
}

/// One record of a segment buffer, for sorting: its key's first 16 bytes (big-endian, zero
/// padded), which order most keys without reading them, and where the record is.
#[derive(Clone, Copy)]
struct Entry {
    head: u64,
    tail: u64,
    offset: usize,
}

fn key_words(key: &[u8]) -> (u64, u64) {
    let mut bytes = [0u8; 16];
    let n = key.len().min(16);
    bytes[..n].copy_from_slice(&key[..n]);
    let (head, tail) = bytes.split_at(8);
    (
        u64::from_be_bytes(head.try_into().expect("8 bytes")),
        u64::from_be_bytes(tail.try_into().expect("8 bytes")),
    )
}

impl Entry {
    fn record<'a>(&self, buf: &'a [u8]) -> Record<'a> {
        record_at(buf, self.offset)
    }
}

/// Loads many pairs into a tree (update_many, rebuild): each pair's record is appended to its
/// segment's buffer as it comes (no per-batch copies), and `commit` then sorts, deduplicates
/// (the later pair of a key wins) and merges each touched segment once. Dropped without
/// `commit` (a bad pair), it truncates every touched segment back: the tree is unchanged.
pub struct Loader<'t> {
    tree: &'t mut MerkleTree,
    replace: bool,
    /// Records on their way to their segment, oldest first (see `Pending`).
    pending: Pending,
    /// Records a touched segment is expected to receive (room is made for them up front).
    per_segment: usize,
    touched: Vec<Touched>,
    touched_bits: Vec<u64>,
    committed: bool,
}

impl Loader<'_> {
    /// Appends a pair; a later pair with the same key wins.
    pub fn push(&mut self, key: &[u8], digest: &Hash) -> Result<(), MerkleError> {
        check_key(key)?;
        let segment = self.tree.segment_of(key);
        let (word, bit) = (segment / 64, 1u64 << (segment % 64));
        let buf = &mut self.tree.segs[segment];
        if self.touched_bits[word] & bit == 0 {
            self.touched_bits[word] |= bit;
            self.touched.push(Touched {
                segment: segment as u32,
                old_len: buf.len(),
            });
            buf.reserve(self.per_segment * record_len(key));
        }
        if record_len(key) > PENDING_RECORD_BYTES {
            self.pending.drain(&mut self.tree.segs);
            push_record(&mut self.tree.segs[segment], key, digest);
        } else {
            self.pending.push(&mut self.tree.segs, segment, key, digest);
        }
        Ok(())
    }

    /// Applies every pushed pair (and, for a rebuild, drops every other key).
    pub fn commit(mut self) {
        self.committed = true;
        self.pending.drain(&mut self.tree.segs);
        let tree = &mut *self.tree;
        if self.replace {
            tree.size = 0;
            for segment in 0..tree.segments {
                let touched = self.touched_bits[segment / 64] & (1u64 << (segment % 64)) != 0;
                if !touched && !tree.segs[segment].is_empty() {
                    tree.segs[segment] = Vec::new();
                    tree.mark_dirty(segment);
                }
            }
        }
        let mut scratch = Settle::default();
        for touched in &self.touched {
            scratch.settle(tree, *touched, self.replace);
        }
    }
}

impl Drop for Loader<'_> {
    fn drop(&mut self) {
        if !self.committed {
            for touched in &self.touched {
                self.tree.segs[touched.segment as usize].truncate(touched.old_len);
            }
        }
    }
}

/// Records waiting before they are appended to their segment: a record is encoded here, the end
/// of its segment's buffer is prefetched, and the record is appended PENDING_RECORDS pushes
/// later, when that memory is in the cache (segments are scattered over megabytes, and a
/// write miss per pair was a third of a rebuild). First in, first out, so that the later of
/// two pairs of a key stays later.
struct Pending {
    records: [[u8; PENDING_RECORD_BYTES]; PENDING_RECORDS],
    lens: [usize; PENDING_RECORDS],
    segments: [usize; PENDING_RECORDS],
    oldest: usize,
    count: usize,
}

const PENDING_RECORDS: usize = 8;
const PENDING_RECORD_BYTES: usize = 128;

impl Pending {
    fn new() -> Self {
        Pending {
            records: [[0; PENDING_RECORD_BYTES]; PENDING_RECORDS],
            lens: [0; PENDING_RECORDS],
            segments: [0; PENDING_RECORDS],
            oldest: 0,
            count: 0,
        }
    }

    fn push(&mut self, segs: &mut [Vec<u8>], segment: usize, key: &[u8], digest: &Hash) {
        let len = record_len(key);
        debug_assert!(len <= PENDING_RECORD_BYTES);
        prefetch(&segs[segment]);
        if self.count == PENDING_RECORDS {
            self.pop(segs);
        }
        let slot = (self.oldest + self.count) % PENDING_RECORDS;
        let record = &mut self.records[slot];
        record[..LEN_PREFIX_BYTES].copy_from_slice(&(key.len() as u32).to_be_bytes());
        record[LEN_PREFIX_BYTES..LEN_PREFIX_BYTES + key.len()].copy_from_slice(key);
        record[LEN_PREFIX_BYTES + key.len()..len].copy_from_slice(digest);
        self.lens[slot] = len;
        self.segments[slot] = segment;
        self.count += 1;
    }

    fn pop(&mut self, segs: &mut [Vec<u8>]) {
        debug_assert!(self.count > 0);
        let slot = self.oldest;
        segs[self.segments[slot]].extend_from_slice(&self.records[slot][..self.lens[slot]]);
        self.oldest = (self.oldest + 1) % PENDING_RECORDS;
        self.count -= 1;
    }

    fn drain(&mut self, segs: &mut [Vec<u8>]) {
        while self.count > 0 {
            self.pop(segs);
        }
    }
}

/// Asks the CPU to bring the end of `buf` (where the next record goes) into the cache.
fn prefetch(buf: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let end = buf.as_ptr().wrapping_add(buf.len());
        // SAFETY: a prefetch is a hint: it never faults and reads nothing into the program,
        // whatever the address.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(end.cast()) };
    }
}

/// The scratch space of `Loader::commit`, reused from segment to segment.
#[derive(Default)]
struct Settle {
    entries: Vec<Entry>,
    merged: Vec<u8>,
}

impl Settle {
    /// Sorts a touched segment's appended records, keeps the last of each key, and merges them
    /// over the old records (or, replacing, instead of them).
    fn settle(&mut self, tree: &mut MerkleTree, touched: Touched, replace: bool) {
        let segment = touched.segment as usize;
        let buf = &tree.segs[segment];
        let old = &buf[..touched.old_len];
        self.entries.clear();
        let mut offset = touched.old_len;
        while offset < buf.len() {
            let record = record_at(buf, offset);
            let (head, tail) = key_words(record.key);
            self.entries.push(Entry { head, tail, offset });
            offset += record.encoded.len();
        }
        let key_order = |a: &Entry, b: &Entry| {
            (a.head, a.tail)
                .cmp(&(b.head, b.tail))
                .then_with(|| a.record(buf).key.cmp(b.record(buf).key))
        };
        // Pairs read from storage come in key order: then there is nothing to sort.
        if !self
            .entries
            .is_sorted_by(|a, b| key_order(a, b) == Ordering::Less)
        {
            self.entries.sort_by(key_order);
        }
        let same_key = |a: &Entry, b: &Entry| {
            a.head == b.head && a.tail == b.tail && a.record(buf).key == b.record(buf).key
        };
        let entries = &self.entries;
        let winners = entries
            .iter()
            .enumerate()
            .filter(|&(i, e)| entries.get(i + 1).is_none_or(|next| !same_key(e, next)))
            .map(|(_, e)| e.record(buf));
        self.merged.clear();
        let mut added = 0;
        if replace {
            for record in winners {
                self.merged.extend_from_slice(record.encoded);
                added += 1;
            }
        } else {
            let mut kept = Records {
                buf: old,
                offset: 0,
            }
            .peekable();
            for record in winners {
                while let Some(older) = kept.next_if(|r| r.key < record.key) {
                    self.merged.extend_from_slice(older.encoded);
                }
                if kept.next_if(|r| r.key == record.key).is_none() {
                    added += 1;
                }
                self.merged.extend_from_slice(record.encoded);
            }
            for older in kept {
                self.merged.extend_from_slice(older.encoded);
            }
        }
        let changed = self.merged != old;
        // The segment takes the merged buffer; its old buffer is the next segment's scratch.
        std::mem::swap(&mut tree.segs[segment], &mut self.merged);
        tree.size += added;
        if changed {
            tree.mark_dirty(segment);
        }
    }
}

/// A Merkle tree over fanout^depth key segments, hashed lazily.
#[derive(Clone, Debug)]
pub struct MerkleTree {
    fanout: usize,
    depth: usize,
    bits: u32,
    segments: usize,
    /// The encoded records of each segment, sorted by key.
    segs: Vec<Vec<u8>>,
    size: usize,
    /// levels[d] holds the fanout^d hashes at depth d; exact except for the dirty segments and
    /// their ancestors, which flush() recomputes.
    levels: Vec<Vec<Hash>>,
    dirty: Vec<u32>,
    dirty_bits: Vec<u64>,
}

impl MerkleTree {
    /// A tree of fanout^depth empty segments; fanout a power of two in 2..=256, depth in 1..=6,
    /// at most 2^20 segments.
    pub fn new(fanout: u64, depth: u64) -> Result<Self, MerkleError> {
        if !(MIN_FANOUT..=MAX_FANOUT).contains(&fanout) || !fanout.is_power_of_two() {
            return error(format!(
                "fanout must be a power of two in [{MIN_FANOUT}, {MAX_FANOUT}], got {fanout}"
            ));
        }
        if !(MIN_DEPTH..=MAX_DEPTH).contains(&depth) {
            return error(format!(
                "depth must be in [{MIN_DEPTH}, {MAX_DEPTH}], got {depth}"
            ));
        }
        let bits = fanout.trailing_zeros();
        let total_bits = bits as u64 * depth;
        if total_bits > MAX_SEGMENTS.trailing_zeros() as u64 {
            return error(format!(
                "fanout ** depth = 2**{total_bits} exceeds {MAX_SEGMENTS} segments"
            ));
        }
        let segments = 1usize << total_bits;
        let depth = depth as usize;
        let levels = (0..=depth)
            .map(|d| vec![ZERO_HASH; 1usize << (bits as usize * d)])
            .collect();
        Ok(MerkleTree {
            fanout: fanout as usize,
            depth,
            bits,
            segments,
            segs: vec![Vec::new(); segments],
            size: 0,
            levels,
            dirty: Vec::new(),
            dirty_bits: vec![0; segments.div_ceil(64)],
        })
    }

    pub fn fanout(&self) -> usize {
        self.fanout
    }

    pub fn depth(&self) -> usize {
        self.depth
    }

    pub fn segments(&self) -> usize {
        self.segments
    }

    /// The number of keys.
    pub fn size(&self) -> usize {
        self.size
    }

    pub fn segment_of(&self, key: &[u8]) -> usize {
        (xxh3_64(key) & (self.segments as u64 - 1)) as usize
    }

    fn mark_dirty(&mut self, segment: usize) {
        let (word, bit) = (segment / 64, 1u64 << (segment % 64));
        if self.dirty_bits[word] & bit == 0 {
            self.dirty_bits[word] |= bit;
            self.dirty.push(segment as u32);
        }
    }

    /// Inserts or replaces the digest of `key`.
    pub fn update(&mut self, key: &[u8], digest: &Hash) -> Result<(), MerkleError> {
        check_key(key)?;
        let segment = self.segment_of(key);
        let buf = &mut self.segs[segment];
        match find(buf, key) {
            Ok(offset) => {
                let start = offset + LEN_PREFIX_BYTES + key.len();
                let stored = &mut buf[start..start + DIGEST_SIZE_BYTES];
                if stored == digest {
                    return Ok(());
                }
                stored.copy_from_slice(digest);
            }
            Err(offset) => {
                // Append, then rotate the new record into its place.
                let old_len = buf.len();
                push_record(buf, key, digest);
                buf[offset..].rotate_right(record_len(key));
                debug_assert_eq!(buf.len(), old_len + record_len(key));
                self.size += 1;
            }
        }
        self.mark_dirty(segment);
        Ok(())
    }

    /// Forgets `key`; an absent key is a no-op.
    pub fn remove(&mut self, key: &[u8]) -> Result<(), MerkleError> {
        check_key(key)?;
        let segment = self.segment_of(key);
        let buf = &mut self.segs[segment];
        let Ok(offset) = find(buf, key) else {
            return Ok(());
        };
        buf.drain(offset..offset + record_len(key));
        if buf.is_empty() {
            *buf = Vec::new();
        }
        self.size -= 1;
        self.mark_dirty(segment);
        Ok(())
    }

    /// A loader of about `expected_pairs` pairs: for update_many (`replace` false) or rebuild
    /// (`replace` true).
    pub fn loader(&mut self, replace: bool, expected_pairs: usize) -> Loader<'_> {
        let words = self.segments.div_ceil(64);
        // A segment gets expected_pairs / segments pairs on average; room for a few more.
        let per_segment = (expected_pairs / self.segments) * 5 / 4 + 1;
        Loader {
            tree: self,
            replace,
            pending: Pending::new(),
            per_segment,
            touched: Vec::new(),
            touched_bits: vec![0; words],
            committed: false,
        }
    }

    /// update() of every pair in order (a later duplicate key wins); a bad pair changes nothing.
    pub fn update_many(&mut self, pairs: &[Pair<'_>]) -> Result<(), MerkleError> {
        self.load(pairs, false)
    }

    /// Replaces the whole content by `pairs` (a later duplicate key wins); a bad pair changes
    /// nothing.
    pub fn rebuild(&mut self, pairs: &[Pair<'_>]) -> Result<(), MerkleError> {
        self.load(pairs, true)
    }

    fn load(&mut self, pairs: &[Pair<'_>], replace: bool) -> Result<(), MerkleError> {
        let mut loader = self.loader(replace, pairs.len());
        for &(key, digest) in pairs {
            loader.push(key, digest)?;
        }
        loader.commit();
        Ok(())
    }

    /// The hash of the root.
    pub fn root(&mut self) -> Hash {
        self.flush();
        self.levels[0][0]
    }

    /// All fanout^depth hashes at `depth` (0 is the root, self.depth() the segments).
    pub fn level(&mut self, depth: usize) -> Result<&[Hash], MerkleError> {
        self.check_depth(depth)?;
        self.flush();
        Ok(&self.levels[depth])
    }

    /// The hashes at `depth` of the nodes `indexes`, in the order asked.
    pub fn hashes(&mut self, depth: usize, indexes: &[usize]) -> Result<Vec<Hash>, MerkleError> {
        self.check_depth(depth)?;
        let width = self.levels[depth].len();
        if let Some(bad) = indexes.iter().find(|&&i| i >= width) {
            return error(format!("index must be in [0, {}], got {bad}", width - 1));
        }
        self.flush();
        Ok(indexes.iter().map(|&i| self.levels[depth][i]).collect())
    }

    /// The (key, digest) records of segment `index`, in key order.
    pub fn segment(&self, index: usize) -> Result<Records<'_>, MerkleError> {
        if index >= self.segments {
            return error(format!(
                "index must be in [0, {}], got {index}",
                self.segments - 1
            ));
        }
        Ok(Records {
            buf: &self.segs[index],
            offset: 0,
        })
    }

    /// The sorted indexes of the segments whose contents differ between the two trees.
    pub fn diff(&mut self, other: &mut MerkleTree) -> Result<Vec<usize>, MerkleError> {
        if self.fanout != other.fanout || self.depth != other.depth {
            return error(format!(
                "trees of different shape: fanout/depth {}/{} vs {}/{}",
                self.fanout, self.depth, other.fanout, other.depth
            ));
        }
        self.flush();
        other.flush();
        let mut nodes: Vec<usize> = Vec::new();
        if self.levels[0][0] != other.levels[0][0] {
            nodes.push(0);
        }
        for depth in 1..=self.depth {
            let (mine, theirs) = (&self.levels[depth], &other.levels[depth]);
            nodes = nodes
                .iter()
                .flat_map(|&node| node * self.fanout..(node + 1) * self.fanout)
                .filter(|&child| mine[child] != theirs[child])
                .collect();
        }
        Ok(nodes)
    }

    /// Same shape and the same (key, digest) pairs.
    pub fn same_contents(&self, other: &MerkleTree) -> bool {
        self.fanout == other.fanout
            && self.depth == other.depth
            && self.size == other.size
            && self.segs == other.segs
    }

    fn check_depth(&self, depth: usize) -> Result<(), MerkleError> {
        if depth > self.depth {
            return error(format!("depth must be in [0, {}], got {depth}", self.depth));
        }
        Ok(())
    }

    /// Rehashes the dirty segments and their ancestors, level by level up to the root.
    fn flush(&mut self) {
        if self.dirty.is_empty() {
            return;
        }
        let mut nodes = std::mem::take(&mut self.dirty);
        nodes.sort_unstable();
        for &segment in &nodes {
            self.dirty_bits[segment as usize / 64] = 0;
        }
        let leaves = &mut self.levels[self.depth];
        let mut hashed: Vec<u32> = Vec::with_capacity(nodes.len());
        for &segment in &nodes {
            if self.segs[segment as usize].is_empty() {
                leaves[segment as usize] = ZERO_HASH;
            } else {
                hashed.push(segment);
            }
        }
        let messages: Vec<&[u8]> = hashed
            .iter()
            .map(|&s| self.segs[s as usize].as_slice())
            .collect();
        hash_each(&messages, |i, hash| leaves[hashed[i] as usize] = hash);
        for depth in (0..self.depth).rev() {
            nodes.dedup_by_key(|node| *node >> self.bits);
            for node in nodes.iter_mut() {
                *node >>= self.bits;
            }
            let (upper, lower) = self.levels.split_at_mut(depth + 1);
            let (level, children) = (&mut upper[depth], &lower[0]);
            let fanout = self.fanout;
            let block = |node: u32| children[node as usize * fanout..][..fanout].as_flattened();
            hashed.clear();
            for &node in &nodes {
                if block(node).iter().all(|&b| b == 0) {
                    level[node as usize] = ZERO_HASH;
                } else {
                    hashed.push(node);
                }
            }
            let messages: Vec<&[u8]> = hashed.iter().map(|&n| block(n)).collect();
            hash_each(&messages, |i, hash| level[hashed[i] as usize] = hash);
        }
        debug_assert!(self.dirty.is_empty());
    }
}

/// BLAKE3 of each message, in order, handed to `store` with its index. One call of the blake3
/// crate per message: the crate picks the SIMD kernel for this CPU.
fn hash_each(messages: &[&[u8]], mut store: impl FnMut(usize, Hash)) {
    for (index, message) in messages.iter().enumerate() {
        store(index, *blake3::hash(message).as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A slow, obviously right model: the contract's layout computed from scratch.
    fn model_root(fanout: usize, depth: usize, pairs: &[(Vec<u8>, Hash)]) -> Vec<Vec<Hash>> {
        let segments = fanout.pow(depth as u32);
        let mut segs: Vec<std::collections::BTreeMap<Vec<u8>, Hash>> =
            vec![Default::default(); segments];
        for (key, digest) in pairs {
            segs[(xxh3_64(key) % segments as u64) as usize].insert(key.clone(), *digest);
        }
        let mut levels = vec![Vec::new(); depth + 1];
        levels[depth] = segs
            .iter()
            .map(|seg| {
                if seg.is_empty() {
                    return ZERO_HASH;
                }
                let mut bytes = Vec::new();
                for (key, digest) in seg {
                    bytes.extend_from_slice(&(key.len() as u32).to_be_bytes());
                    bytes.extend_from_slice(key);
                    bytes.extend_from_slice(digest);
                }
                digest_of(&bytes)
            })
            .collect();
        for d in (0..depth).rev() {
            levels[d] = levels[d + 1]
                .chunks(fanout)
                .map(|children| {
                    if children.iter().all(|c| *c == ZERO_HASH) {
                        ZERO_HASH
                    } else {
                        digest_of(children.as_flattened())
                    }
                })
                .collect();
        }
        levels
    }

    fn digest_of(data: &[u8]) -> Hash {
        *blake3::hash(data).as_bytes()
    }

    fn pairs(n: usize, salt: u8) -> Vec<(Vec<u8>, Hash)> {
        (0..n)
            .map(|i| {
                let key = format!("key-{i}").into_bytes();
                (key, digest_of(&[salt, i as u8, (i >> 8) as u8]))
            })
            .collect()
    }

    fn borrowed(pairs: &[(Vec<u8>, Hash)]) -> Vec<Pair<'_>> {
        pairs.iter().map(|(k, d)| (k.as_slice(), d)).collect()
    }

    #[test]
    fn shapes_are_validated() {
        assert!(MerkleTree::new(16, 3).is_ok());
        assert!(MerkleTree::new(2, 6).is_ok());
        assert!(MerkleTree::new(256, 2).is_ok());
        for (fanout, depth) in [(0, 3), (1, 3), (3, 2), (512, 1), (16, 0), (16, 7), (256, 3)] {
            assert!(MerkleTree::new(fanout, depth).is_err(), "{fanout}/{depth}");
        }
        assert!(MerkleTree::new(32, 4).is_ok()); // exactly 2^20 segments
        assert!(MerkleTree::new(64, 4).is_err());
    }

    #[test]
    fn empty_tree_is_all_zero() {
        let mut tree = MerkleTree::new(16, 3).unwrap();
        assert_eq!(tree.root(), ZERO_HASH);
        assert!(tree.level(3).unwrap().iter().all(|h| *h == ZERO_HASH));
    }

    #[test]
    fn matches_the_model_for_every_shape() {
        for (fanout, depth) in [(2, 1), (2, 5), (4, 3), (16, 2), (16, 3), (256, 1), (32, 2)] {
            let data = pairs(300, 7);
            let mut tree = MerkleTree::new(fanout as u64, depth as u64).unwrap();
            tree.update_many(&borrowed(&data)).unwrap();
            let model = model_root(fanout, depth, &data);
            for (d, hashes) in model.iter().enumerate() {
                assert_eq!(
                    tree.level(d).unwrap(),
                    hashes.as_slice(),
                    "{fanout}/{depth} level {d}"
                );
            }
            assert_eq!(tree.size(), 300);
        }
    }

    #[test]
    fn update_then_remove_restores_the_root() {
        let data = pairs(500, 1);
        let mut tree = MerkleTree::new(4, 3).unwrap();
        tree.rebuild(&borrowed(&data)).unwrap();
        let before = tree.root();
        tree.update(b"new key", &[9; 32]).unwrap();
        assert_ne!(tree.root(), before);
        tree.remove(b"new key").unwrap();
        assert_eq!(tree.root(), before);
        tree.remove(b"absent").unwrap();
        assert_eq!(tree.root(), before);
        assert_eq!(tree.size(), 500);
    }

    #[test]
    fn single_updates_equal_batches_and_rebuild() {
        let data = pairs(400, 3);
        let mut one_by_one = MerkleTree::new(8, 2).unwrap();
        for (key, digest) in data.iter().rev() {
            one_by_one.update(key, digest).unwrap();
        }
        let mut batch = MerkleTree::new(8, 2).unwrap();
        batch.update_many(&borrowed(&data)).unwrap();
        let mut rebuilt = MerkleTree::new(8, 2).unwrap();
        rebuilt.update_many(&borrowed(&pairs(50, 9))).unwrap();
        rebuilt.rebuild(&borrowed(&data)).unwrap();
        assert_eq!(one_by_one.root(), batch.root());
        assert_eq!(batch.root(), rebuilt.root());
        assert!(one_by_one.same_contents(&rebuilt));
        assert_eq!(rebuilt.size(), 400);
    }

    #[test]
    fn later_duplicates_win() {
        let key = b"k".as_slice();
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let mut tree = MerkleTree::new(2, 1).unwrap();
        tree.update_many(&[(key, &a), (key, &b)]).unwrap();
        assert_eq!(tree.size(), 1);
        let segment = tree.segment_of(key);
        let records: Vec<_> = tree
            .segment(segment)
            .unwrap()
            .map(|r| (r.key, r.digest))
            .collect();
        assert_eq!(records, vec![(key, b.as_slice())]);
        tree.rebuild(&[(key, &b), (key, &a)]).unwrap();
        let records: Vec<_> = tree
            .segment(segment)
            .unwrap()
            .map(|r| (r.key, r.digest))
            .collect();
        assert_eq!(records, vec![(key, a.as_slice())]);
    }

    #[test]
    fn diff_names_changed_segments() {
        let data = pairs(200, 5);
        let mut a = MerkleTree::new(4, 3).unwrap();
        let mut b = MerkleTree::new(4, 3).unwrap();
        a.rebuild(&borrowed(&data)).unwrap();
        b.rebuild(&borrowed(&data)).unwrap();
        assert!(a.diff(&mut b).unwrap().is_empty());
        b.update(b"key-3", &[0xAB; 32]).unwrap();
        b.remove(b"key-17").unwrap();
        let mut expected = vec![a.segment_of(b"key-3"), a.segment_of(b"key-17")];
        expected.sort_unstable();
        expected.dedup();
        assert_eq!(a.diff(&mut b).unwrap(), expected);
        let mut other_shape = MerkleTree::new(2, 3).unwrap();
        assert!(a.diff(&mut other_shape).is_err());
    }

    #[test]
    fn bad_depth_and_index_are_errors() {
        let mut tree = MerkleTree::new(4, 2).unwrap();
        assert!(tree.level(3).is_err());
        assert!(tree.hashes(2, &[15]).is_ok());
        assert!(tree.hashes(2, &[16]).is_err());
        assert!(tree.hashes(3, &[0]).is_err());
        assert!(tree.segment(16).is_err());
    }

    #[test]
    fn a_loader_dropped_without_commit_changes_nothing() {
        let data = pairs(300, 2);
        for replace in [false, true] {
            let mut tree = MerkleTree::new(4, 2).unwrap();
            tree.rebuild(&borrowed(&data)).unwrap();
            let before = (tree.clone(), tree.root());
            {
                let mut loader = tree.loader(replace, 10);
                for (key, digest) in pairs(40, 9).iter() {
                    loader.push(key, digest).unwrap();
                }
            }
            assert!(tree.same_contents(&before.0));
            assert_eq!(tree.root(), before.1);
            assert_eq!(tree.size(), 300);
        }
    }

    #[test]
    fn update_many_merges_into_existing_segments() {
        let old = pairs(200, 1);
        let new = pairs(300, 2); // replaces the 200 and adds 100
        let mut tree = MerkleTree::new(2, 2).unwrap();
        tree.update_many(&borrowed(&old)).unwrap();
        tree.root();
        tree.update_many(&borrowed(&new)).unwrap();
        assert_eq!(tree.size(), 300);
        let model = model_root(2, 2, &[old, new].concat());
        assert_eq!(tree.level(0).unwrap(), model[0].as_slice());
        assert_eq!(tree.level(2).unwrap(), model[2].as_slice());
    }

    #[test]
    fn an_unchanged_rebuild_rehashes_nothing() {
        let data = pairs(300, 4);
        let mut tree = MerkleTree::new(16, 2).unwrap();
        tree.rebuild(&borrowed(&data)).unwrap();
        let root = tree.root();
        tree.rebuild(&borrowed(&data)).unwrap();
        assert!(tree.dirty.is_empty());
        tree.update_many(&borrowed(&data[..20])).unwrap();
        assert!(tree.dirty.is_empty());
        assert_eq!(tree.root(), root);
    }

    #[test]
    fn an_all_zero_record_is_not_an_empty_segment() {
        let mut tree = MerkleTree::new(2, 1).unwrap();
        tree.update(b"", &ZERO_HASH).unwrap();
        let segment = tree.segment_of(b"");
        assert_eq!(tree.level(1).unwrap()[segment], digest_of(&[0u8; 36]));
        assert_ne!(tree.root(), ZERO_HASH);
    }

    #[test]
    fn records_keep_key_order_through_single_updates() {
        let mut tree = MerkleTree::new(2, 1).unwrap();
        for key in [&b"m"[..], b"a", b"z", b"ab", b"", b"a\0", b"zz"] {
            tree.update(key, &[key.len() as u8; 32]).unwrap();
        }
        for segment in 0..2 {
            let keys: Vec<&[u8]> = tree.segment(segment).unwrap().map(|r| r.key).collect();
            assert!(keys.windows(2).all(|w| w[0] < w[1]), "{keys:?}");
        }
        assert_eq!(tree.size(), 7);
    }

    #[test]
    fn key_words_order_like_the_keys() {
        let keys: [&[u8]; 9] = [
            b"",
            b"\0",
            b"a",
            b"ab",
            b"ab\0",
            b"abcdefgh",
            b"abcdefgh\0",
            b"abcdefghijklmnop",
            b"abcdefghijklmnop\0",
        ];
        for a in keys {
            for b in keys {
                if key_words(a) != key_words(b) {
                    assert_eq!(key_words(a).cmp(&key_words(b)), a.cmp(b), "{a:?} {b:?}");
                }
            }
        }
    }
}
