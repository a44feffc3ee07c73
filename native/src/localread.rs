//! The decode step of a local read: a stored version set is either one plain value (the common
//! case, returned as its data) or something the caller resolves itself (siblings, a tombstone,
//! an expiry, another data tag). The fence and the LMDB calls live in the Python bindings
//! (lib.rs, `localread_py`); this module is the plain-Rust part that `cargo test` covers.
//! Twin: python/dynacore/core/localread.py.

use crate::versions::{self, VersionError};

/// Where an envelope's flags byte starts (after its 8-byte timestamp).
pub const FLAGS_OFFSET: usize = 8;
/// The flags byte and the 8-byte expiry: all zero for a live value that never expires.
pub const PLAIN_MARKER_SIZE: usize = 9;

/// What a stored set holds, for a reader that serves plain values itself.
#[derive(Debug, PartialEq, Eq)]
pub enum Stored<'a> {
    /// Exactly one value: live, no expiry, data tagged `tag`; the data after the tag.
    Plain(&'a [u8]),
    /// Anything else: every value of the set (versions::values order).
    Values(Vec<&'a [u8]>),
}

/// Classify a stored set. `header_size` is the envelope header's size in bytes (timestamp,
/// flags, expiry); it must cover the flags and the expiry.
pub fn classify(set: &[u8], header_size: usize, tag: u8) -> Result<Stored<'_>, VersionError> {
    assert!(header_size >= FLAGS_OFFSET + PLAIN_MARKER_SIZE);
    let values = versions::values(set)?;
    if let [only] = values.as_slice() {
        if only.len() > header_size
            && only[header_size] == tag
            && only[FLAGS_OFFSET..FLAGS_OFFSET + PLAIN_MARKER_SIZE]
                .iter()
                .all(|b| *b == 0)
        {
            return Ok(Stored::Plain(&only[header_size + 1..]));
        }
    }
    Ok(Stored::Values(values))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: usize = 17;

    fn envelope(flags: u8, expiry: u64, data: &[u8]) -> Vec<u8> {
        let mut out = 42u64.to_be_bytes().to_vec();
        out.push(flags);
        out.extend_from_slice(&expiry.to_be_bytes());
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn one_plain_value_is_its_data() {
        let set = versions::new(&envelope(0, 0, b"\x01hello"));
        assert_eq!(classify(&set, HEADER, 1).unwrap(), Stored::Plain(b"hello"));
        let empty = versions::new(&envelope(0, 0, b"\x01"));
        assert_eq!(classify(&empty, HEADER, 1).unwrap(), Stored::Plain(b""));
    }

    #[test]
    fn anything_else_is_its_values() {
        for value in [
            envelope(1, 0, b""),      // a tombstone
            envelope(0, 7, b"\x01x"), // an expiry
            envelope(0, 0, b"\x02x"), // another tag
            envelope(0, 0, b""),      // no data at all
            b"short".to_vec(),        // not even a header
        ] {
            let set = versions::new(&value);
            assert_eq!(
                classify(&set, HEADER, 1).unwrap(),
                Stored::Values(vec![&value[..]])
            );
        }
        let a = versions::new(&envelope(0, 0, b"\x01a"));
        let two =
            versions::update(&a, &versions::vv_empty(), &envelope(0, 0, b"\x01b"), "n1").unwrap();
        match classify(&two, HEADER, 1).unwrap() {
            Stored::Values(values) => assert_eq!(values.len(), 2),
            other => panic!("two siblings classified as {other:?}"),
        }
    }

    #[test]
    fn a_malformed_set_is_an_error() {
        assert!(classify(b"\xff\xff", HEADER, 1).is_err());
    }
}
