//! ring: Dynamo partitioning (strategy 3) in plain Rust — key hashing, partition owners,
//! preference lists, the balanced claim, joins and leaves, and the ring's binary encoding.
//!
//! This is the Rust twin of python/dynacore/core/ring.py, whose module docstring documents the
//! claim, join and leave algorithms and the encoding; both must give identical rings. No PyO3
//! here: lib.rs binds this module as `dynacore._native.ring`. Owners are held as indexes into
//! the sorted table of distinct node ids.

use std::fmt;

use xxhash_rust::xxh3::xxh3_64;

/// The largest partition count (a power of two).
pub const MAX_PARTITIONS: u64 = 1 << 16;
/// The largest log2 of the partition count.
pub const MAX_LOG2_PARTITIONS: u32 = 16;
/// A node id is 1..=255 UTF-8 bytes.
pub const NODE_ID_MAX_BYTES: usize = 255;
/// The claim tries to give any `SPACING` consecutive partitions distinct owners.
pub const SPACING: usize = 3;
/// Preference tables are cached (by the bindings) for n up to this.
pub const CACHED_N_MAX: usize = 16;

const MAGIC: &[u8; 4] = b"DRNG";
const VERSION: u8 = 1;
const HEADER_BYTES: usize = 10; // magic, version u8, log2 Q u8, node count u32
const CHECKSUM_BYTES: usize = 8;

/// Any bad argument or encoding; the bindings raise it as `dynacore.errors.RingError`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingError(pub String);

impl fmt::Display for RingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RingError {}

pub type Result<T> = std::result::Result<T, RingError>;

fn fail<T>(message: impl Into<String>) -> Result<T> {
    Err(RingError(message.into()))
}

// -- hashing and argument checks ------------------------------------------------------------------

/// xxh3-64 (seed 0) of the key bytes.
#[inline]
pub fn key_hash(key: &[u8]) -> u64 {
    xxh3_64(key)
}

/// log2 of a partition count, which must be a power of two in [1, 65536].
pub fn log2_partitions(q: u64) -> Result<u32> {
    if q == 0 || q > MAX_PARTITIONS || !q.is_power_of_two() {
        return fail(format!(
            "the partition count must be a power of two in [1, 65536], got {q}"
        ));
    }
    Ok(q.trailing_zeros())
}

/// The partition of a hash in a ring of 2^log2q partitions: hash >> (64 - log2q).
#[inline]
pub fn partition_of_hash(hash: u64, log2q: u32) -> usize {
    debug_assert!(log2q <= MAX_LOG2_PARTITIONS);
    // (hash >> 1) >> (63 - log2q) == hash >> (64 - log2q), and is 0 when log2q == 0.
    ((hash >> 1) >> (63 - log2q)) as usize
}

/// The partition of `key` in a ring of `q` partitions.
pub fn partition_of(key: &[u8], q: u64) -> Result<usize> {
    Ok(partition_of_hash(key_hash(key), log2_partitions(q)?))
}

/// A node id must be 1..=255 UTF-8 bytes.
pub fn check_node(node: &str) -> Result<()> {
    if node.is_empty() || node.len() > NODE_ID_MAX_BYTES {
        return fail(format!(
            "a node id must be 1..255 UTF-8 bytes, got {}",
            node.len()
        ));
    }
    Ok(())
}

/// n must be at least 1.
pub fn check_n(n: usize) -> Result<usize> {
    if n < 1 {
        return fail(format!("n must be at least 1, got {n}"));
    }
    Ok(n)
}

// -- the algorithms, over owner indexes -----------------------------------------------------------

/// `node` owns none of p-2, p-1, p+1, p+2 (mod Q, other than p itself).
fn spaced(owners: &[i64], p: usize, node: i64) -> bool {
    let q = owners.len();
    (1..SPACING).all(|d| {
        let before = (p + q - d % q) % q;
        let after = (p + d) % q;
        (before == p || owners[before] != node) && (after == p || owners[after] != node)
    })
}

fn claim_indexes(q: usize, s: usize) -> Vec<i64> {
    assert!(1 <= s && s <= q);
    let mut owners: Vec<i64> = (0..q).map(|p| (p % s) as i64).collect();
    if s >= SPACING {
        repair_spacing(&mut owners);
    }
    owners
}

fn repair_spacing(owners: &mut [i64]) {
    let q = owners.len();
    for p in 0..q {
        let node = owners[p];
        if spaced(owners, p, node) {
            continue;
        }
        for r in 0..q {
            let other = owners[r];
            if other == node {
                continue;
            }
            owners[p] = other;
            owners[r] = node;
            if spaced(owners, p, other) && spaced(owners, r, node) {
                break;
            }
            owners[p] = node;
            owners[r] = other;
        }
    }
}

fn counts_of(owners: &[i64], s: usize) -> Vec<u64> {
    let mut counts = vec![0u64; s];
    for &node in owners {
        counts[node as usize] += 1;
    }
    counts
}

/// Smallest level h with sum(max(0, c - h)) <= take, and the takes left over at h.
fn drain_level(counts: &[u64], take: u64) -> (u64, u64) {
    let above = |h: u64| -> u64 { counts.iter().filter(|&&c| c > h).map(|&c| c - h).sum() };
    let top = counts.iter().copied().max().unwrap_or(0);
    let (mut low, mut high) = (top.saturating_sub(take), top);
    while low < high {
        let mid = (low + high) / 2;
        if above(mid) <= take {
            high = mid;
        } else {
            low = mid + 1;
        }
    }
    (low, take - above(low))
}

/// Largest level l with sum(max(0, l - c)) <= give, and the gifts left over at l.
fn fill_level(counts: &[u64], give: u64) -> (u64, u64) {
    let below = |l: u64| -> u64 { counts.iter().filter(|&&c| c < l).map(|&c| l - c).sum() };
    let bottom = counts.iter().copied().min().unwrap_or(0);
    let (mut low, mut high) = (bottom, bottom + give);
    while low < high {
        let mid = (low + high).div_ceil(2);
        if below(mid) <= give {
            low = mid;
        } else {
            high = mid - 1;
        }
    }
    (low, give - below(low))
}

fn join_indexes(owners: &[i64], s: usize, new: usize) -> Vec<i64> {
    let q = owners.len();
    let take = q / s;
    let mut counts = counts_of(owners, s);
    let donors: Vec<u64> = (0..s).filter(|&i| i != new).map(|i| counts[i]).collect();
    let (level, mut extras) = drain_level(&donors, take as u64);
    counts[new] = 0;
    let mut need: Vec<u64> = counts.iter().map(|&c| c.saturating_sub(level)).collect();
    let mut may_extra: Vec<bool> = (0..s).map(|i| i != new && counts[i] >= level).collect();
    let mut result = owners.to_vec();
    let new_node = new as i64;
    let mut taken = 0;
    for spaced_only in [true, false] {
        for p in 0..q {
            if taken == take {
                break;
            }
            let donor = result[p] as usize;
            if donor == new || !(need[donor] > 0 || (extras > 0 && may_extra[donor])) {
                continue;
            }
            if spaced_only && !spaced(&result, p, new_node) {
                continue;
            }
            result[p] = new_node;
            taken += 1;
            if need[donor] > 0 {
                need[donor] -= 1;
            } else {
                extras -= 1;
                may_extra[donor] = false;
            }
        }
    }
    assert_eq!(taken, take);
    result
}

/// Owners over the old node table, with the leaver's partitions given to the others.
fn leave_indexes(owners: &[i64], s: usize, leaver: usize) -> Vec<i64> {
    let mut counts = counts_of(owners, s);
    let orphans: Vec<usize> = (0..owners.len())
        .filter(|&p| owners[p] == leaver as i64)
        .collect();
    let others: Vec<u64> = (0..s).filter(|&i| i != leaver).map(|i| counts[i]).collect();
    let (level, mut extras) = fill_level(&others, orphans.len() as u64);
    counts[leaver] = level + 1; // never a receiver
    let mut need: Vec<u64> = counts.iter().map(|&c| level.saturating_sub(c)).collect();
    let mut may_extra: Vec<bool> = counts.iter().map(|&c| c <= level).collect();
    let mut pool: Vec<usize> = (0..s).rev().filter(|&i| counts[i] <= level).collect();
    let mut result = owners.to_vec();
    for &p in &orphans {
        result[p] = -1;
    }
    for &p in &orphans {
        let node = pick_receiver(&result, p, &mut pool, &need, &may_extra, extras > 0);
        result[p] = node as i64;
        if need[node] > 0 {
            need[node] -= 1;
        } else {
            extras -= 1;
            may_extra[node] = false;
        }
    }
    result
}

/// The lowest eligible pool node spaced at p, else the lowest eligible one (pool descending;
/// nodes that can never be eligible again are dropped from it).
fn pick_receiver(
    owners: &[i64],
    p: usize,
    pool: &mut Vec<usize>,
    need: &[u64],
    may_extra: &[bool],
    extras_left: bool,
) -> usize {
    let mut fallback = None;
    let mut j = pool.len();
    while j > 0 {
        j -= 1;
        let node = pool[j];
        if need[node] == 0 && !(extras_left && may_extra[node]) {
            pool.remove(j);
            continue;
        }
        if spaced(owners, p, node as i64) {
            return node;
        }
        fallback.get_or_insert(node);
    }
    fallback.expect("a leave always has an eligible receiver")
}

// -- the ring -------------------------------------------------------------------------------------

/// An immutable assignment of Q partitions to owner nodes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Ring {
    log2q: u32,
    nodes: Vec<String>, // distinct, ascending
    owners: Vec<u32>,   // owners[p] indexes `nodes`
}

impl Ring {
    /// The ring where `owners[p]` owns partition p; the length must be a power of two.
    pub fn from_owners<S: AsRef<str>>(owners: &[S]) -> Result<Ring> {
        for node in owners {
            check_node(node.as_ref())?;
        }
        let log2q = log2_partitions(owners.len() as u64)?;
        let mut nodes: Vec<String> = owners.iter().map(|o| o.as_ref().to_owned()).collect();
        nodes.sort_unstable();
        nodes.dedup();
        let indexes = owners
            .iter()
            .map(|o| {
                nodes
                    .binary_search_by(|n| n.as_str().cmp(o.as_ref()))
                    .unwrap() as u32
            })
            .collect();
        Ok(Ring::from_parts(log2q, nodes, indexes))
    }

    fn from_parts(log2q: u32, nodes: Vec<String>, owners: Vec<u32>) -> Ring {
        debug_assert_eq!(owners.len(), 1usize << log2q);
        debug_assert!(nodes.windows(2).all(|w| w[0] < w[1]));
        debug_assert!(owners.iter().all(|&o| (o as usize) < nodes.len()));
        Ring {
            log2q,
            nodes,
            owners,
        }
    }

    /// The ring of `owners` (indexes into the sorted `nodes`), dropping nodes that own nothing.
    fn from_indexes(nodes: &[String], owners: &[i64]) -> Ring {
        let log2q = log2_partitions(owners.len() as u64).expect("the algorithms keep Q");
        let mut used = vec![false; nodes.len()];
        for &owner in owners {
            used[usize::try_from(owner).expect("every partition has an owner")] = true;
        }
        let mut renumber = vec![0u32; nodes.len()];
        let mut kept = Vec::with_capacity(nodes.len());
        for (index, node) in nodes.iter().enumerate() {
            if used[index] {
                renumber[index] = kept.len() as u32;
                kept.push(node.clone());
            }
        }
        let owners = owners.iter().map(|&o| renumber[o as usize]).collect();
        Ring::from_parts(log2q, kept, owners)
    }

    /// A fresh balanced claim of `q` partitions by `nodes` (deterministic).
    pub fn claim<S: AsRef<str>>(q: u64, nodes: &[S]) -> Result<Ring> {
        log2_partitions(q)?;
        for node in nodes {
            check_node(node.as_ref())?;
        }
        let mut names: Vec<String> = nodes.iter().map(|n| n.as_ref().to_owned()).collect();
        names.sort_unstable();
        names.dedup();
        if names.is_empty() {
            return fail("cannot claim a ring with no nodes");
        }
        if names.len() as u64 > q {
            return fail(format!(
                "{} nodes cannot each own one of {q} partitions",
                names.len()
            ));
        }
        let owners = claim_indexes(q as usize, names.len());
        Ok(Ring::from_indexes(&names, &owners))
    }

    pub fn q(&self) -> usize {
        self.owners.len()
    }

    pub fn log2q(&self) -> u32 {
        self.log2q
    }

    /// The distinct owners, ascending.
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// owners[p] is the index in `nodes()` of the owner of partition p.
    pub fn owner_indexes(&self) -> &[u32] {
        &self.owners
    }

    pub fn node_index(&self, node: &str) -> Option<usize> {
        self.nodes.binary_search_by(|n| n.as_str().cmp(node)).ok()
    }

    pub fn partition_of(&self, key: &[u8]) -> usize {
        partition_of_hash(key_hash(key), self.log2q)
    }

    pub fn check_partition(&self, partition: usize) -> Result<usize> {
        if partition >= self.q() {
            return fail(format!(
                "partition {partition} is out of range [0, {})",
                self.q()
            ));
        }
        Ok(partition)
    }

    pub fn owner(&self, partition: usize) -> Result<&str> {
        let p = self.check_partition(partition)?;
        Ok(&self.nodes[self.owners[p] as usize])
    }

    fn check_member(&self, node: &str) -> Result<usize> {
        check_node(node)?;
        match self.node_index(node) {
            Some(index) => Ok(index),
            None => fail(format!("node {node:?} is not a member of the ring")),
        }
    }

    /// The first `limit` distinct owners clockwise from `start` (fewer if there are fewer).
    pub fn walk(&self, start: usize, limit: usize) -> Vec<u32> {
        let q = self.q();
        let mut seen = vec![false; self.nodes.len()];
        let mut found = Vec::with_capacity(limit.min(self.nodes.len()));
        for step in 0..q {
            let node = self.owners[(start + step) % q];
            if !seen[node as usize] {
                seen[node as usize] = true;
                found.push(node);
                if found.len() == limit {
                    break;
                }
            }
        }
        found
    }

    /// min(n, S): the length of every preference list for n.
    pub fn effective_n(&self, n: usize) -> usize {
        n.min(self.nodes.len())
    }

    /// Preference lists of every partition for one n_eff (1 <= n_eff <= S), flattened with
    /// stride n_eff: O(Q * n_eff).
    pub fn preference_table(&self, n_eff: usize) -> Vec<u32> {
        assert!(1 <= n_eff && n_eff <= self.nodes.len());
        let q = self.q();
        let mut table = vec![0u32; q * n_eff];
        let last = self.walk(q - 1, n_eff);
        debug_assert_eq!(last.len(), n_eff);
        table[(q - 1) * n_eff..].copy_from_slice(&last);
        for p in (0..q - 1).rev() {
            let node = self.owners[p];
            let (head, tail) = table.split_at_mut((p + 1) * n_eff);
            let following = &tail[..n_eff];
            let row = &mut head[p * n_eff..];
            if following[0] == node {
                row.copy_from_slice(following);
                continue;
            }
            row[0] = node;
            let rest = following.iter().copied().filter(|&o| o != node);
            for (slot, other) in row[1..].iter_mut().zip(rest) {
                *slot = other;
            }
        }
        table
    }

    pub fn preference_list(&self, partition: usize, n: usize) -> Result<Vec<u32>> {
        let p = self.check_partition(partition)?;
        Ok(self.walk(p, check_n(n)?))
    }

    pub fn extended_list(&self, partition: usize, n: usize) -> Result<Vec<u32>> {
        let p = self.check_partition(partition)?;
        let n_eff = self.effective_n(check_n(n)?);
        Ok(self.walk(p, self.nodes.len())[n_eff..].to_vec())
    }

    pub fn partitions_owned(&self, node: &str) -> Result<Vec<usize>> {
        let index = self.check_member(node)? as u32;
        Ok((0..self.q()).filter(|&p| self.owners[p] == index).collect())
    }

    /// The ring after `node` joins: it takes Q div (S+1) partitions.
    pub fn with_node(&self, node: &str) -> Result<Ring> {
        check_node(node)?;
        if self.node_index(node).is_some() {
            return fail(format!("node {node:?} is already a member of the ring"));
        }
        if self.nodes.len() >= self.q() {
            return fail(format!(
                "a ring of {} partitions has no room for another node",
                self.q()
            ));
        }
        let mut names = self.nodes.clone();
        names.push(node.to_owned());
        names.sort_unstable();
        let new = names.binary_search_by(|n| n.as_str().cmp(node)).unwrap();
        let owners: Vec<i64> = self
            .owners
            .iter()
            .map(|&o| {
                if (o as usize) < new {
                    o as i64
                } else {
                    o as i64 + 1
                }
            })
            .collect();
        let result = join_indexes(&owners, names.len(), new);
        Ok(Ring::from_indexes(&names, &result))
    }

    /// The ring after `node` leaves: only its partitions move.
    pub fn without_node(&self, node: &str) -> Result<Ring> {
        let leaver = self.check_member(node)?;
        if self.nodes.len() == 1 {
            return fail(format!("node {node:?} is the last node of the ring"));
        }
        let owners: Vec<i64> = self.owners.iter().map(|&o| o as i64).collect();
        let result = leave_indexes(&owners, self.nodes.len(), leaver);
        Ok(Ring::from_indexes(&self.nodes, &result))
    }

    /// (partition, from, to) for each partition whose owner differs in `other`.
    pub fn moves<'a>(&'a self, other: &'a Ring) -> Result<Vec<(usize, &'a str, &'a str)>> {
        if other.log2q != self.log2q {
            return fail(format!(
                "rings of {} and {} partitions cannot be compared",
                self.q(),
                other.q()
            ));
        }
        let mut moved = Vec::new();
        for p in 0..self.q() {
            let mine = self.nodes[self.owners[p] as usize].as_str();
            let theirs = other.nodes[other.owners[p] as usize].as_str();
            if mine != theirs {
                moved.push((p, mine, theirs));
            }
        }
        Ok(moved)
    }

    /// The canonical encoding (see the Python twin's module docstring).
    pub fn encode(&self) -> Vec<u8> {
        let names_bytes: usize = self.nodes.iter().map(|n| 1 + n.len()).sum();
        let mut out =
            Vec::with_capacity(HEADER_BYTES + names_bytes + 2 * self.q() + CHECKSUM_BYTES);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.push(self.log2q as u8);
        out.extend_from_slice(&(self.nodes.len() as u32).to_be_bytes());
        for node in &self.nodes {
            out.push(node.len() as u8);
            out.extend_from_slice(node.as_bytes());
        }
        for &owner in &self.owners {
            out.extend_from_slice(&(owner as u16).to_be_bytes());
        }
        let checksum = xxh3_64(&out);
        out.extend_from_slice(&checksum.to_be_bytes());
        out
    }

    /// Decode an encoding; RingError for anything malformed.
    pub fn decode(data: &[u8]) -> Result<Ring> {
        if data.len() < HEADER_BYTES + CHECKSUM_BYTES {
            return fail("encoded ring truncated");
        }
        let end = data.len() - CHECKSUM_BYTES;
        let stored = u64::from_be_bytes(data[end..].try_into().unwrap());
        if stored != xxh3_64(&data[..end]) {
            return fail("encoded ring checksum mismatch");
        }
        if &data[..4] != MAGIC || data[4] != VERSION {
            return fail("not an encoded ring (bad magic or version)");
        }
        let log2q = data[5] as u32;
        if log2q > MAX_LOG2_PARTITIONS {
            return fail(format!("encoded ring has log2 Q = {log2q} > 16"));
        }
        let q = 1usize << log2q;
        let count = u32::from_be_bytes(data[6..10].try_into().unwrap()) as usize;
        if count < 1 || count > q {
            return fail(format!("encoded ring has {count} nodes for {q} partitions"));
        }
        let (nodes, offset) = decode_nodes(data, HEADER_BYTES, end, count)?;
        if end - offset != 2 * q {
            return fail("encoded ring has the wrong owner table size");
        }
        let owners: Vec<u32> = data[offset..end]
            .chunks_exact(2)
            .map(|pair| u16::from_be_bytes([pair[0], pair[1]]) as u32)
            .collect();
        if owners.iter().any(|&o| o as usize >= count) {
            return fail("encoded ring has an owner index out of range");
        }
        let mut owns = vec![false; count];
        for &o in &owners {
            owns[o as usize] = true;
        }
        if owns.iter().any(|&o| !o) {
            return fail("encoded ring lists a node that owns no partition");
        }
        Ok(Ring::from_parts(log2q, nodes, owners))
    }
}

fn decode_nodes(
    data: &[u8],
    mut offset: usize,
    end: usize,
    count: usize,
) -> Result<(Vec<String>, usize)> {
    let mut nodes: Vec<String> = Vec::with_capacity(count.min(end));
    for _ in 0..count {
        if offset >= end {
            return fail("encoded ring truncated in its node table");
        }
        let length = data[offset] as usize;
        offset += 1;
        if length < 1 || offset + length > end {
            return fail("encoded ring has a bad node id length");
        }
        let node = match std::str::from_utf8(&data[offset..offset + length]) {
            Ok(node) => node,
            Err(_) => return fail("encoded ring has a node id that is not UTF-8"),
        };
        if nodes.last().is_some_and(|last| node <= last.as_str()) {
            return fail("encoded ring nodes are not strictly ascending");
        }
        nodes.push(node.to_owned());
        offset += length;
    }
    Ok((nodes, offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(count: usize) -> Vec<String> {
        (0..count).map(|i| format!("n{i:02}")).collect()
    }

    fn counts(ring: &Ring) -> Vec<usize> {
        let mut counts = vec![0usize; ring.nodes().len()];
        for &o in ring.owner_indexes() {
            counts[o as usize] += 1;
        }
        counts
    }

    fn imbalance(ring: &Ring) -> usize {
        let c = counts(ring);
        c.iter().max().unwrap() - c.iter().min().unwrap()
    }

    fn violations(ring: &Ring) -> usize {
        let owners: Vec<i64> = ring.owner_indexes().iter().map(|&o| o as i64).collect();
        (0..owners.len())
            .filter(|&p| !spaced(&owners, p, owners[p]))
            .count()
    }

    #[test]
    fn partition_of_uses_the_top_bits() {
        let hash = key_hash(b"hello");
        assert_eq!(partition_of(b"hello", 1).unwrap(), 0);
        assert_eq!(partition_of(b"hello", 2).unwrap(), (hash >> 63) as usize);
        assert_eq!(
            partition_of(b"hello", 65536).unwrap(),
            (hash >> 48) as usize
        );
        assert!(partition_of(b"hello", 3).is_err());
        assert!(partition_of(b"hello", 0).is_err());
        assert!(partition_of(b"hello", 1 << 17).is_err());
    }

    #[test]
    fn claim_is_balanced_and_spaced() {
        for log2q in 0..=10u32 {
            let q = 1u64 << log2q;
            for s in 1..=q.min(40) as usize {
                let ring = Ring::claim(q, &names(s)).unwrap();
                assert_eq!(ring.q() as u64, q);
                assert_eq!(ring.nodes().len(), s);
                assert!(imbalance(&ring) <= 1, "q={q} s={s}");
                if s >= 4 {
                    assert_eq!(violations(&ring), 0, "q={q} s={s}");
                }
            }
        }
    }

    #[test]
    fn claim_rejects_bad_input() {
        assert!(Ring::claim(64, &Vec::<String>::new()).is_err());
        assert!(Ring::claim(6, &names(2)).is_err());
        assert!(Ring::claim(4, &names(5)).is_err());
        assert!(Ring::claim(4, &[""]).is_err());
        assert!(Ring::claim(4, &["x".repeat(256)]).is_err());
        assert!(Ring::claim(4, &["x".repeat(255)]).is_ok());
    }

    #[test]
    fn join_moves_few_partitions_only_to_the_new_node() {
        for log2q in 0..=9u32 {
            let q = 1u64 << log2q;
            for s in 1..(q.min(33) as usize) {
                let ring = Ring::claim(q, &names(s)).unwrap();
                let joined = ring.with_node("zz").unwrap();
                let moved = ring.moves(&joined).unwrap();
                assert!(moved.len() as u64 <= q.div_ceil(s as u64 + 1));
                assert!(moved.iter().all(|&(_, _, to)| to == "zz"));
                assert!(imbalance(&joined) <= 1, "q={q} s={s}");
            }
        }
    }

    #[test]
    fn leave_moves_only_the_leavers_partitions() {
        for log2q in 1..=9u32 {
            let q = 1u64 << log2q;
            for s in 2..=(q.min(33) as usize) {
                let ring = Ring::claim(q, &names(s)).unwrap();
                for leaver in [names(s)[0].clone(), names(s)[s - 1].clone()] {
                    let left = ring.without_node(&leaver).unwrap();
                    let moved = ring.moves(&left).unwrap();
                    let owned = ring.partitions_owned(&leaver).unwrap();
                    assert_eq!(moved.len(), owned.len());
                    assert!(moved.iter().all(|&(_, from, _)| from == leaver));
                    assert!(imbalance(&left) <= 1, "q={q} s={s}");
                }
            }
        }
    }

    #[test]
    fn membership_errors() {
        let ring = Ring::claim(8, &names(3)).unwrap();
        assert!(ring.with_node("n00").is_err());
        assert!(ring.without_node("zz").is_err());
        assert!(ring.partitions_owned("zz").is_err());
        let one = Ring::claim(2, &["a"]).unwrap();
        assert!(one.without_node("a").is_err());
        let full = Ring::claim(2, &["a", "b"]).unwrap();
        assert!(full.with_node("c").is_err());
        let other = Ring::claim(16, &names(3)).unwrap();
        assert!(ring.moves(&other).is_err());
    }

    #[test]
    fn preference_lists_walk_clockwise() {
        let ring = Ring::from_owners(&["a", "a", "b", "a", "c", "b", "a", "a"]).unwrap();
        let name = |list: Vec<u32>| -> Vec<&str> {
            list.iter()
                .map(|&i| ring.nodes()[i as usize].as_str())
                .collect()
        };
        assert_eq!(name(ring.preference_list(0, 2).unwrap()), ["a", "b"]);
        assert_eq!(name(ring.preference_list(5, 3).unwrap()), ["b", "a", "c"]);
        assert_eq!(name(ring.preference_list(6, 9).unwrap()), ["a", "b", "c"]);
        assert_eq!(name(ring.extended_list(6, 1).unwrap()), ["b", "c"]);
        assert!(ring.extended_list(6, 3).unwrap().is_empty());
        assert!(ring.preference_list(8, 1).is_err());
        assert!(ring.preference_list(0, 0).is_err());
        for n_eff in 1..=3 {
            let table = ring.preference_table(n_eff);
            for p in 0..ring.q() {
                let row = &table[p * n_eff..(p + 1) * n_eff];
                assert_eq!(row, ring.preference_list(p, n_eff).unwrap().as_slice());
            }
        }
    }

    #[test]
    fn encoding_round_trips_and_rejects_damage() {
        let ring = Ring::claim(64, &names(5)).unwrap().with_node("é").unwrap();
        let data = ring.encode();
        assert_eq!(Ring::decode(&data).unwrap(), ring);
        for cut in 0..data.len() {
            assert!(Ring::decode(&data[..cut]).is_err());
        }
        for i in 0..data.len() {
            let mut bad = data.clone();
            bad[i] ^= 0x40;
            assert!(Ring::decode(&bad).is_err());
        }
    }

    #[test]
    fn decode_checks_structure_behind_a_valid_checksum() {
        let seal = |body: &[u8]| -> Vec<u8> {
            let mut out = body.to_vec();
            out.extend_from_slice(&xxh3_64(body).to_be_bytes());
            out
        };
        let mut body = b"DRNG\x01\x01\x00\x00\x00\x02\x01a\x01b".to_vec();
        body.extend_from_slice(&[0, 0, 0, 1]);
        assert!(Ring::decode(&seal(&body)).is_ok());
        let bad_index = [
            b"DRNG\x01\x01\x00\x00\x00\x02\x01a\x01b".as_slice(),
            &[0, 0, 0, 2],
        ];
        assert!(Ring::decode(&seal(&bad_index.concat())).is_err());
        let unowned = [
            b"DRNG\x01\x01\x00\x00\x00\x02\x01a\x01b".as_slice(),
            &[0, 0, 0, 0],
        ];
        assert!(Ring::decode(&seal(&unowned.concat())).is_err());
        let unsorted = [
            b"DRNG\x01\x01\x00\x00\x00\x02\x01b\x01a".as_slice(),
            &[0, 0, 0, 1],
        ];
        assert!(Ring::decode(&seal(&unsorted.concat())).is_err());
        let not_utf8 = [
            b"DRNG\x01\x01\x00\x00\x00\x02\x01\xff\x01b".as_slice(),
            &[0, 0, 0, 1],
        ];
        assert!(Ring::decode(&seal(&not_utf8.concat())).is_err());
        let too_many = [
            b"DRNG\x01\x01\x00\x00\x00\x03\x01a\x01b".as_slice(),
            &[0, 0, 0, 1],
        ];
        assert!(Ring::decode(&seal(&too_many.concat())).is_err());
        let huge_q = b"DRNG\x01\x11\x00\x00\x00\x01\x01a";
        assert!(Ring::decode(&seal(huge_q)).is_err());
    }
}
