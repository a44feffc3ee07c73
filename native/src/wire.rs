//! wire: the frame and field codec of every dynacore message, in plain Rust (no Python types).
//!
//! Owns the frame layout (docs/wire.md), the field encoding, every bound the decoder enforces and
//! the streaming `FrameDecoder`. The bindings in lib.rs walk Python objects into a `FrameWriter`
//! and build Python objects through a `Sink`; the format itself lives only here and in the
//! pure-Python twin python/dynacore/core/wire.py, which must produce the same bytes and the same
//! errors (kind and message) for every input.

use xxhash_rust::xxh3::xxh3_64;

/// First two bytes of every frame.
pub const MAGIC: [u8; 2] = *b"DY";
/// Version of the frame layout; a decoder refuses any other.
pub const FORMAT_VERSION: u8 = 1;
/// magic (2) + version (1) + msg type (1) + flags (1) + request id (8) + body length (4).
pub const HEADER_SIZE: usize = 17;
/// The xxh3-64 checksum that ends every frame.
pub const CHECKSUM_SIZE: usize = 8;
/// Bytes of the field count that starts every body.
pub const FIELD_COUNT_SIZE: usize = 4;
/// The smallest frame: a header, an empty field list and a checksum.
pub const MIN_FRAME_SIZE_BYTES: usize = HEADER_SIZE + FIELD_COUNT_SIZE + CHECKSUM_SIZE;
/// Hard ceiling of a frame (mirrors dynacore.limits.MAX_FRAME_SIZE_BYTES).
pub const MAX_FRAME_SIZE_BYTES: usize = 256 * 1024 * 1024;
/// Deepest nesting of lists inside a frame's field list.
pub const MAX_DEPTH: usize = 32;

const BODY_LENGTH_OFFSET: usize = 13;

pub const TAG_NONE: u8 = 0;
pub const TAG_FALSE: u8 = 1;
pub const TAG_TRUE: u8 = 2;
pub const TAG_INT: u8 = 3;
pub const TAG_FLOAT: u8 = 4;
pub const TAG_BYTES: u8 = 5;
pub const TAG_STR: u8 = 6;
pub const TAG_LIST: u8 = 7;

// Error messages shared with the pure-Python twin (the parity tests compare them).
pub const MSG_TRUNCATED_FIELD: &str = "truncated field";
pub const MSG_BAD_UTF8: &str = "str field is not valid UTF-8";
pub const MSG_CHECKSUM: &str = "checksum mismatch";
pub const MSG_BAD_MAGIC: &str = "bad magic: not a dynacore frame";
pub const MSG_BAD_DATA: &str = "frame data must be bytes, bytearray or memoryview";
pub const MSG_MSG_TYPE: &str = "msg_type must be an int in [0, 255]";
pub const MSG_REQUEST_ID: &str = "request_id must be an int in [0, 2**64 - 1]";
pub const MSG_FIELDS: &str = "fields must be a list or tuple";
pub const MSG_INT_RANGE: &str = "int field out of the signed 64-bit range";
pub const MSG_SURROGATES: &str = "str field is not valid UTF-8 (it holds surrogates)";

/// Which `dynacore.errors` class an error maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// `FrameError`: malformed frame.
    Frame,
    /// `FrameTooLarge`: the frame announces more than the allowed size.
    TooLarge,
    /// `ChecksumMismatch`: the xxh3 checksum does not match.
    Checksum,
    /// `EncodeError`: a value cannot be encoded.
    Encode,
    /// `ConfigError`: a bad `max_frame_bytes`.
    Config,
}

/// A wire error: its class and its message (identical on every backend).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError {
    pub kind: ErrorKind,
    pub message: String,
}

impl WireError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        WireError {
            kind,
            message: message.into(),
        }
    }

    fn frame(message: impl Into<String>) -> Self {
        WireError::new(ErrorKind::Frame, message)
    }

    fn encode(message: impl Into<String>) -> Self {
        WireError::new(ErrorKind::Encode, message)
    }
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.message)
    }
}

impl std::error::Error for WireError {}

/// A decoding failure: a malformed frame, or an error of the sink that builds the values.
#[derive(Debug)]
pub enum DecodeError<E> {
    Wire(WireError),
    Sink(E),
}

impl<E> From<WireError> for DecodeError<E> {
    fn from(e: WireError) -> Self {
        DecodeError::Wire(e)
    }
}

fn too_large_to_encode() -> WireError {
    WireError::encode(format!(
        "encoded frame exceeds {MAX_FRAME_SIZE_BYTES} bytes"
    ))
}

fn too_deep(kind: ErrorKind) -> WireError {
    WireError::new(kind, format!("lists nested deeper than {MAX_DEPTH}"))
}

/// The error for a value of an unsupported type (named as Python's `type(v).__name__`).
pub fn unsupported_type(type_name: &str) -> WireError {
    WireError::encode(format!("cannot encode a value of type {type_name}"))
}

/// Checks a decoder's `max_frame_bytes` bound.
pub fn check_max_frame_bytes(max_frame_bytes: Option<u64>) -> Result<usize, WireError> {
    match max_frame_bytes {
        Some(m) if (MIN_FRAME_SIZE_BYTES as u64..=MAX_FRAME_SIZE_BYTES as u64).contains(&m) => {
            Ok(m as usize)
        }
        _ => Err(WireError::new(
            ErrorKind::Config,
            format!(
                "max_frame_bytes must be an int in [{MIN_FRAME_SIZE_BYTES}, {MAX_FRAME_SIZE_BYTES}]"
            ),
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------------

/// Encodes one frame into a caller's buffer, in one pass over the fields (pre-order).
///
/// It makes every check an encoder makes and counts the frame's size, writing while the buffer
/// has room: with a buffer big enough (the bindings use one on the stack) the frame is done in
/// one pass; otherwise `finish` reports the exact size and the caller encodes again into a buffer
/// of that size (an empty buffer makes a pure sizer).
pub struct FrameEncoder<'a> {
    buf: &'a mut [u8],
    size: usize,
    depth: usize,
}

/// What `FrameEncoder::finish` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encoded {
    /// Size of the whole frame, checksum included.
    pub size: usize,
    /// Whether the frame was written whole into `buf[..size]`.
    pub complete: bool,
}

fn check_count(count: usize) -> Result<(), WireError> {
    if count > MAX_FRAME_SIZE_BYTES {
        return Err(too_large_to_encode());
    }
    Ok(())
}

impl<'a> FrameEncoder<'a> {
    /// Starts a frame of `field_count` top-level fields.
    pub fn new(
        buf: &'a mut [u8],
        msg_type: u8,
        request_id: u64,
        field_count: usize,
    ) -> Result<Self, WireError> {
        check_count(field_count)?;
        let mut e = FrameEncoder {
            buf,
            size: 0,
            depth: 0,
        };
        e.put(&MAGIC);
        e.put(&[FORMAT_VERSION, msg_type, 0]); // flags: reserved
        e.put(&request_id.to_be_bytes());
        e.put(&[0; 4]); // body length, filled by finish
        e.put(&(field_count as u32).to_be_bytes());
        Ok(e)
    }

    #[inline]
    fn put(&mut self, data: &[u8]) {
        let end = self.size + data.len();
        if let Some(dest) = self.buf.get_mut(self.size..end) {
            dest.copy_from_slice(data);
        }
        self.size = end;
    }

    /// A bytes or str field: the frame must still fit once it is added (checked before the
    /// field is copied anywhere, so an oversized value fails at no cost).
    fn blob(&mut self, tag: u8, data: &[u8]) -> Result<(), WireError> {
        if self.size + 1 + 4 + data.len() + CHECKSUM_SIZE > MAX_FRAME_SIZE_BYTES {
            return Err(too_large_to_encode());
        }
        self.put(&[tag]);
        self.put(&(data.len() as u32).to_be_bytes());
        self.put(data);
        Ok(())
    }

    pub fn none(&mut self) {
        self.put(&[TAG_NONE]);
    }

    pub fn boolean(&mut self, v: bool) {
        self.put(&[if v { TAG_TRUE } else { TAG_FALSE }]);
    }

    pub fn int(&mut self, v: i64) {
        let b = v.to_be_bytes();
        self.put(&[TAG_INT, b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
    }

    pub fn float(&mut self, v: f64) {
        let b = v.to_bits().to_be_bytes();
        self.put(&[TAG_FLOAT, b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
    }

    pub fn bytes(&mut self, v: &[u8]) -> Result<(), WireError> {
        self.blob(TAG_BYTES, v)
    }

    pub fn string(&mut self, v: &str) -> Result<(), WireError> {
        self.blob(TAG_STR, v.as_bytes())
    }

    /// Opens a list of `count` items; the caller encodes them, then calls `end_list`.
    pub fn begin_list(&mut self, count: usize) -> Result<(), WireError> {
        if self.depth >= MAX_DEPTH {
            return Err(too_deep(ErrorKind::Encode));
        }
        check_count(count)?;
        self.put(&[TAG_LIST]);
        self.put(&(count as u32).to_be_bytes());
        self.depth += 1;
        Ok(())
    }

    pub fn end_list(&mut self) {
        assert!(self.depth > 0, "end_list without begin_list");
        self.depth -= 1;
    }

    /// Checks the frame's size; if it was written whole, fills in the body length and the
    /// checksum.
    pub fn finish(self) -> Result<Encoded, WireError> {
        assert_eq!(self.depth, 0, "finish inside an open list");
        let size = self.size + CHECKSUM_SIZE;
        if size > MAX_FRAME_SIZE_BYTES {
            return Err(too_large_to_encode());
        }
        if size > self.buf.len() {
            return Ok(Encoded {
                size,
                complete: false,
            });
        }
        let body_len = (self.size - HEADER_SIZE) as u32;
        self.buf[BODY_LENGTH_OFFSET..HEADER_SIZE].copy_from_slice(&body_len.to_be_bytes());
        let checksum = xxh3_64(&self.buf[..self.size]);
        self.buf[self.size..size].copy_from_slice(&checksum.to_be_bytes());
        Ok(Encoded {
            size,
            complete: true,
        })
    }
}

/// A decoded field, for Rust callers (Python gets its own objects through a `Sink`).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Bytes(Vec<u8>),
    Str(String),
    List(Vec<Value>),
}

/// Encodes a whole `Value` (pre-order).
pub fn encode_value(e: &mut FrameEncoder<'_>, v: &Value) -> Result<(), WireError> {
    match v {
        Value::None => e.none(),
        Value::Bool(b) => e.boolean(*b),
        Value::Int(i) => e.int(*i),
        Value::Float(f) => e.float(*f),
        Value::Bytes(b) => e.bytes(b)?,
        Value::Str(s) => e.string(s)?,
        Value::List(items) => {
            e.begin_list(items.len())?;
            for item in items {
                encode_value(e, item)?;
            }
            e.end_list();
        }
    }
    Ok(())
}

fn encode_into(
    buf: &mut [u8],
    msg_type: u8,
    request_id: u64,
    fields: &[Value],
) -> Result<Encoded, WireError> {
    let mut e = FrameEncoder::new(buf, msg_type, request_id, fields.len())?;
    for field in fields {
        encode_value(&mut e, field)?;
    }
    e.finish()
}

/// Encodes a frame of Rust `Value`s: one pass to size it, one to write it.
pub fn encode_frame(msg_type: u8, request_id: u64, fields: &[Value]) -> Result<Vec<u8>, WireError> {
    let sized = encode_into(&mut [], msg_type, request_id, fields)?;
    let mut frame = vec![0u8; sized.size];
    let written = encode_into(&mut frame, msg_type, request_id, fields)?;
    assert_eq!(
        written,
        Encoded {
            size: sized.size,
            complete: true
        }
    );
    Ok(frame)
}

// ---------------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------------

/// Builds the decoded values (Python objects in the bindings, `Value`s in Rust). A list is made
/// with its final length, then filled in order with exactly that many items.
pub trait Sink {
    type Value;
    type List;
    type Error;
    fn none(&mut self) -> Result<Self::Value, Self::Error>;
    fn boolean(&mut self, v: bool) -> Result<Self::Value, Self::Error>;
    fn int(&mut self, v: i64) -> Result<Self::Value, Self::Error>;
    fn float(&mut self, v: f64) -> Result<Self::Value, Self::Error>;
    fn bytes(&mut self, v: &[u8]) -> Result<Self::Value, Self::Error>;
    fn string(&mut self, v: &str) -> Result<Self::Value, Self::Error>;
    fn list_new(&mut self, len: usize) -> Result<Self::List, Self::Error>;
    fn list_push(&mut self, list: &mut Self::List, item: Self::Value);
    fn list_done(&mut self, list: Self::List) -> Self::Value;
}

/// The `Sink` that builds Rust `Value`s.
pub struct ValueSink;

impl Sink for ValueSink {
    type Value = Value;
    type List = Vec<Value>;
    type Error = std::convert::Infallible;
    fn none(&mut self) -> Result<Value, Self::Error> {
        Ok(Value::None)
    }
    fn boolean(&mut self, v: bool) -> Result<Value, Self::Error> {
        Ok(Value::Bool(v))
    }
    fn int(&mut self, v: i64) -> Result<Value, Self::Error> {
        Ok(Value::Int(v))
    }
    fn float(&mut self, v: f64) -> Result<Value, Self::Error> {
        Ok(Value::Float(v))
    }
    fn bytes(&mut self, v: &[u8]) -> Result<Value, Self::Error> {
        Ok(Value::Bytes(v.to_vec()))
    }
    fn string(&mut self, v: &str) -> Result<Value, Self::Error> {
        Ok(Value::Str(v.to_owned()))
    }
    fn list_new(&mut self, len: usize) -> Result<Vec<Value>, Self::Error> {
        Ok(Vec::with_capacity(len))
    }
    fn list_push(&mut self, list: &mut Vec<Value>, item: Value) {
        list.push(item);
    }
    fn list_done(&mut self, list: Vec<Value>) -> Value {
        Value::List(list)
    }
}

/// One decoded frame; `fields` is the sink's list.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame<L> {
    pub msg_type: u8,
    pub request_id: u64,
    pub fields: L,
}

/// Checks the start of a frame, as many bytes as `head` holds (any length). Returns the total
/// frame size once the whole header is there, `None` while it is incomplete, and an error as soon
/// as a byte present is wrong or the announced size breaks `max_frame_bytes`.
pub fn check_header(head: &[u8], max_frame_bytes: usize) -> Result<Option<usize>, WireError> {
    let avail = head.len();
    if avail == 0 {
        return Ok(None);
    }
    if head[0] != MAGIC[0] || (avail > 1 && head[1] != MAGIC[1]) {
        return Err(WireError::frame(MSG_BAD_MAGIC));
    }
    if avail > 2 && head[2] != FORMAT_VERSION {
        return Err(WireError::frame(format!(
            "unsupported wire format version {}",
            head[2]
        )));
    }
    if avail > 4 && head[4] != 0 {
        return Err(WireError::frame(format!(
            "reserved flags are set: {}",
            head[4]
        )));
    }
    if avail < HEADER_SIZE {
        return Ok(None);
    }
    let body_len = read_u32(head, BODY_LENGTH_OFFSET) as usize;
    let total = HEADER_SIZE + body_len + CHECKSUM_SIZE;
    if total > max_frame_bytes {
        return Err(WireError::new(
            ErrorKind::TooLarge,
            format!("frame of {total} bytes exceeds max_frame_bytes {max_frame_bytes}"),
        ));
    }
    if body_len < FIELD_COUNT_SIZE {
        return Err(WireError::frame(format!(
            "body of {body_len} bytes is shorter than its field count"
        )));
    }
    Ok(Some(total))
}

fn read_u32(data: &[u8], pos: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&data[pos..pos + 4]);
    u32::from_be_bytes(b)
}

fn read_u64(data: &[u8], pos: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&data[pos..pos + 8]);
    u64::from_be_bytes(b)
}

/// Decodes exactly one frame held whole in `frame`.
pub fn decode_frame<S: Sink>(
    frame: &[u8],
    max_frame_bytes: usize,
    sink: &mut S,
) -> Result<Frame<S::List>, DecodeError<S::Error>> {
    let n = frame.len();
    let total = match check_header(frame, max_frame_bytes)? {
        Some(total) => total,
        None => {
            return Err(WireError::frame(format!(
                "truncated frame: {n} bytes, the header needs {HEADER_SIZE}"
            ))
            .into())
        }
    };
    if n < total {
        return Err(WireError::frame(format!("truncated frame: {n} of {total} bytes")).into());
    }
    if n > total {
        return Err(
            WireError::frame(format!("{} trailing bytes after the frame", n - total)).into(),
        );
    }
    decode_checked(frame, sink)
}

/// Decodes a frame whose header passed `check_header` and whose length is the announced total.
fn decode_checked<S: Sink>(
    frame: &[u8],
    sink: &mut S,
) -> Result<Frame<S::List>, DecodeError<S::Error>> {
    debug_assert!(frame.len() >= MIN_FRAME_SIZE_BYTES);
    let body_end = frame.len() - CHECKSUM_SIZE;
    if xxh3_64(&frame[..body_end]) != read_u64(frame, body_end) {
        return Err(WireError::new(ErrorKind::Checksum, MSG_CHECKSUM).into());
    }
    let mut reader = Reader {
        data: &frame[..body_end],
        pos: HEADER_SIZE,
    };
    let count = reader.u32()? as usize;
    if count > reader.remaining() {
        return Err(WireError::frame(format!("field count {count} exceeds the body")).into());
    }
    let fields = reader.items(count, 0, sink)?;
    if reader.remaining() != 0 {
        return Err(
            WireError::frame(format!("{} trailing bytes in the body", reader.remaining())).into(),
        );
    }
    Ok(Frame {
        msg_type: frame[3],
        request_id: read_u64(frame, 5),
        fields,
    })
}

/// A cursor over a frame's body; every read is checked against the bytes present.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if n > self.remaining() {
            return Err(WireError::frame(MSG_TRUNCATED_FIELD));
        }
        let slice = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(slice)
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(read_u32(self.take(4)?, 0))
    }

    fn u64(&mut self) -> Result<u64, WireError> {
        Ok(read_u64(self.take(8)?, 0))
    }

    fn blob(&mut self) -> Result<&'a [u8], WireError> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    /// Decodes `count` items of a list at nesting `depth` (0 = the frame's field list).
    fn items<S: Sink>(
        &mut self,
        count: usize,
        depth: usize,
        sink: &mut S,
    ) -> Result<S::List, DecodeError<S::Error>> {
        debug_assert!(count <= self.remaining() && depth <= MAX_DEPTH);
        let mut items = sink.list_new(count).map_err(DecodeError::Sink)?;
        for _ in 0..count {
            let tag = self.take(1)?[0];
            let item = match tag {
                TAG_BYTES => sink.bytes(self.blob()?),
                TAG_STR => {
                    let raw = self.blob()?;
                    let s = std::str::from_utf8(raw).map_err(|_| WireError::frame(MSG_BAD_UTF8))?;
                    sink.string(s)
                }
                TAG_INT => sink.int(self.u64()? as i64),
                TAG_FLOAT => sink.float(f64::from_bits(self.u64()?)),
                TAG_NONE => sink.none(),
                TAG_FALSE => sink.boolean(false),
                TAG_TRUE => sink.boolean(true),
                TAG_LIST => {
                    if depth >= MAX_DEPTH {
                        return Err(too_deep(ErrorKind::Frame).into());
                    }
                    let n = self.u32()? as usize;
                    if n > self.remaining() {
                        return Err(WireError::frame(format!(
                            "list of {n} items exceeds the body"
                        ))
                        .into());
                    }
                    let sub = self.items(n, depth + 1, sink)?;
                    Ok(sink.list_done(sub))
                }
                other => {
                    return Err(WireError::frame(format!("unknown field tag {other}")).into());
                }
            };
            let item = item.map_err(DecodeError::Sink)?;
            sink.list_push(&mut items, item);
        }
        Ok(items)
    }
}

// ---------------------------------------------------------------------------------------------
// Streaming
// ---------------------------------------------------------------------------------------------

/// Cuts a byte stream into frames. Holds at most one partial frame; poisoned after an error.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    max_frame_bytes: usize,
    buf: Vec<u8>,
    /// Total size of the buffered frame once its header is complete, else 0.
    need: usize,
    poisoned: Option<WireError>,
}

impl FrameDecoder {
    pub fn new(max_frame_bytes: Option<u64>) -> Result<Self, WireError> {
        Ok(FrameDecoder {
            max_frame_bytes: check_max_frame_bytes(max_frame_bytes)?,
            buf: Vec::new(),
            need: 0,
            poisoned: None,
        })
    }

    pub fn max_frame_bytes(&self) -> usize {
        self.max_frame_bytes
    }

    /// Bytes of the incomplete frame held back.
    pub fn pending_bytes(&self) -> usize {
        self.buf.len()
    }

    /// The error that poisoned the decoder, if any.
    pub fn poisoned(&self) -> Option<&WireError> {
        self.poisoned.as_ref()
    }

    /// Poisons the decoder with `error` (also used by callers for bad input) and returns it.
    pub fn fail(&mut self, error: WireError) -> WireError {
        self.buf = Vec::new();
        self.need = 0;
        self.poisoned = Some(error.clone());
        error
    }

    /// Feeds the next bytes of the stream; returns every frame they complete.
    pub fn feed<S: Sink>(
        &mut self,
        data: &[u8],
        sink: &mut S,
    ) -> Result<Vec<Frame<S::List>>, DecodeError<S::Error>> {
        if let Some(error) = &self.poisoned {
            return Err(DecodeError::Wire(error.clone()));
        }
        match self.feed_unpoisoned(data, sink) {
            Err(DecodeError::Wire(error)) => Err(DecodeError::Wire(self.fail(error))),
            other => other,
        }
    }

    fn feed_unpoisoned<S: Sink>(
        &mut self,
        data: &[u8],
        sink: &mut S,
    ) -> Result<Vec<Frame<S::List>>, DecodeError<S::Error>> {
        let mut frames = Vec::new();
        let mut pos = 0;
        if !self.buf.is_empty() {
            pos = self.complete_pending(data, sink, &mut frames)?;
            if !self.buf.is_empty() {
                return Ok(frames);
            }
        }
        while pos < data.len() {
            let rest = &data[pos..];
            match check_header(rest, self.max_frame_bytes)? {
                Some(total) if total <= rest.len() => {
                    frames.push(decode_checked(&rest[..total], sink)?);
                    pos += total;
                }
                partial => {
                    self.need = partial.unwrap_or(0);
                    self.buf.extend_from_slice(rest);
                    break;
                }
            }
        }
        debug_assert!(self.buf.len() < self.need.max(HEADER_SIZE));
        Ok(frames)
    }

    /// Completes the buffered partial frame from the start of `data`; returns the bytes used.
    fn complete_pending<S: Sink>(
        &mut self,
        data: &[u8],
        sink: &mut S,
        frames: &mut Vec<Frame<S::List>>,
    ) -> Result<usize, DecodeError<S::Error>> {
        let mut pos = 0;
        if self.buf.len() < HEADER_SIZE {
            pos = (HEADER_SIZE - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..pos]);
            match check_header(&self.buf, self.max_frame_bytes)? {
                None => return Ok(pos),
                Some(total) => self.need = total,
            }
        }
        let take = (self.need - self.buf.len()).min(data.len() - pos);
        self.buf.extend_from_slice(&data[pos..pos + take]);
        pos += take;
        if self.buf.len() < self.need {
            return Ok(pos);
        }
        let frame = std::mem::take(&mut self.buf);
        self.need = 0;
        frames.push(decode_checked(&frame, sink)?);
        Ok(pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Value> {
        vec![
            Value::Bytes(b"key-0123456789ab".to_vec()),
            Value::Int(-42),
            Value::Float(1.5),
            Value::None,
            Value::Bool(true),
            Value::Bool(false),
            Value::Str("héllo".to_owned()),
            Value::List(vec![
                Value::Int(1),
                Value::List(vec![]),
                Value::Bytes(vec![]),
            ]),
        ]
    }

    fn decode(frame: &[u8]) -> Result<Frame<Vec<Value>>, WireError> {
        match decode_frame(frame, MAX_FRAME_SIZE_BYTES, &mut ValueSink) {
            Ok(f) => Ok(f),
            Err(DecodeError::Wire(e)) => Err(e),
            Err(DecodeError::Sink(never)) => match never {},
        }
    }

    fn feed(dec: &mut FrameDecoder, data: &[u8]) -> Result<Vec<Frame<Vec<Value>>>, WireError> {
        match dec.feed(data, &mut ValueSink) {
            Ok(f) => Ok(f),
            Err(DecodeError::Wire(e)) => Err(e),
            Err(DecodeError::Sink(never)) => match never {},
        }
    }

    fn nested(depth: usize) -> Value {
        let mut v = Value::List(vec![]);
        for _ in 1..depth {
            v = Value::List(vec![v]);
        }
        v
    }

    #[test]
    fn round_trip() {
        let frame = encode_frame(7, u64::MAX, &sample()).unwrap();
        let decoded = decode(&frame).unwrap();
        assert_eq!(decoded.msg_type, 7);
        assert_eq!(decoded.request_id, u64::MAX);
        assert_eq!(decoded.fields, sample());
    }

    #[test]
    fn empty_frame_has_minimum_size() {
        let frame = encode_frame(0, 0, &[]).unwrap();
        assert_eq!(frame.len(), MIN_FRAME_SIZE_BYTES);
        assert_eq!(&frame[..2], b"DY");
        assert!(decode(&frame).unwrap().fields.is_empty());
    }

    #[test]
    fn layout_is_big_endian() {
        let frame = encode_frame(9, 0x0102_0304_0506_0708, &[Value::Int(1)]).unwrap();
        assert_eq!(frame[2], FORMAT_VERSION);
        assert_eq!(frame[3], 9);
        assert_eq!(frame[4], 0);
        assert_eq!(&frame[5..13], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&frame[13..17], &[0, 0, 0, 13]); // count (4) + tag (1) + i64 (8)
        assert_eq!(&frame[17..21], &[0, 0, 0, 1]);
        assert_eq!(&frame[21..30], &[TAG_INT, 0, 0, 0, 0, 0, 0, 0, 1]);
        let sum = xxh3_64(&frame[..30]).to_be_bytes();
        assert_eq!(&frame[30..], &sum);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let frame = encode_frame(1, 2, &sample()).unwrap();
        for cut in 0..frame.len() {
            let err = decode(&frame[..cut]).unwrap_err();
            assert_eq!(err.kind, ErrorKind::Frame, "cut at {cut}");
        }
    }

    #[test]
    fn trailing_bytes_after_frame() {
        let mut frame = encode_frame(1, 2, &sample()).unwrap();
        frame.push(0);
        assert_eq!(
            decode(&frame).unwrap_err().message,
            "1 trailing bytes after the frame"
        );
    }

    #[test]
    fn every_byte_flip_is_detected() {
        let frame = encode_frame(1, 2, &sample()).unwrap();
        for i in 0..frame.len() {
            let mut bad = frame.clone();
            bad[i] ^= 0x5a;
            let err = decode(&bad).unwrap_err();
            assert!(
                matches!(
                    err.kind,
                    ErrorKind::Frame | ErrorKind::Checksum | ErrorKind::TooLarge
                ),
                "flip at {i}: {err}"
            );
        }
    }

    #[test]
    fn oversized_header_rejected_before_body() {
        let mut header = encode_frame(1, 2, &[]).unwrap()[..HEADER_SIZE].to_vec();
        header[13..17].copy_from_slice(&u32::MAX.to_be_bytes());
        let mut dec = FrameDecoder::new(Some(1024)).unwrap();
        let err = feed(&mut dec, &header).unwrap_err();
        assert_eq!(err.kind, ErrorKind::TooLarge);
        assert_eq!(dec.pending_bytes(), 0);
    }

    #[test]
    fn bad_magic_version_flags() {
        let frame = encode_frame(1, 2, &[]).unwrap();
        for (i, want) in [
            (0, "bad magic"),
            (1, "bad magic"),
            (2, "version"),
            (4, "flags"),
        ] {
            let mut bad = frame.clone();
            bad[i] ^= 1;
            let err = decode(&bad[..i + 1]).unwrap_err();
            assert!(err.message.contains(want), "{i}: {err}");
        }
    }

    /// A frame around a hand-built (possibly malformed) body, with a correct checksum.
    fn raw_frame(body: &[u8]) -> Vec<u8> {
        let mut frame = b"DY\x01\x07\x00".to_vec();
        frame.extend_from_slice(&9u64.to_be_bytes());
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
        frame.extend_from_slice(body);
        let sum = xxh3_64(&frame);
        frame.extend_from_slice(&sum.to_be_bytes());
        frame
    }

    #[test]
    fn raw_frame_matches_encoder() {
        let want = encode_frame(7, 9, &[Value::Int(1)]).unwrap();
        assert_eq!(
            raw_frame(&[0, 0, 0, 1, TAG_INT, 0, 0, 0, 0, 0, 0, 0, 1]),
            want
        );
    }

    #[test]
    fn depth_is_bounded_both_ways() {
        assert!(encode_frame(1, 1, &[nested(MAX_DEPTH)]).is_ok());
        let err = encode_frame(1, 1, &[nested(MAX_DEPTH + 1)]).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Encode);
        let ok = encode_frame(1, 1, &[nested(MAX_DEPTH)]).unwrap();
        assert_eq!(decode(&ok).unwrap().fields, vec![nested(MAX_DEPTH)]);
        let mut body = vec![0, 0, 0, 1];
        for level in 0..=MAX_DEPTH {
            body.extend_from_slice(&[TAG_LIST, 0, 0, 0, u8::from(level < MAX_DEPTH)]);
        }
        let err = decode(&raw_frame(&body)).unwrap_err();
        assert_eq!(err.message, format!("lists nested deeper than {MAX_DEPTH}"));
    }

    #[test]
    fn counts_are_checked_against_the_body() {
        let err = decode(&raw_frame(&[0, 0, 0, 1, TAG_LIST, 0, 0, 3, 232])).unwrap_err();
        assert_eq!(err.message, "list of 1000 items exceeds the body");
        let err = decode(&raw_frame(&[0, 0, 0, 2, TAG_NONE])).unwrap_err();
        assert_eq!(err.message, "field count 2 exceeds the body");
        let err = decode(&raw_frame(&[0, 0, 0, 1, TAG_BYTES, 0, 0, 0, 9, 1])).unwrap_err();
        assert_eq!(err.message, MSG_TRUNCATED_FIELD);
        let err = decode(&raw_frame(&[0, 0, 0, 1, TAG_NONE, TAG_NONE])).unwrap_err();
        assert_eq!(err.message, "1 trailing bytes in the body");
        let err = decode(&raw_frame(&[0, 0, 0, 1, 8])).unwrap_err();
        assert_eq!(err.message, "unknown field tag 8");
        let err = decode(&raw_frame(&[0, 0, 0])).unwrap_err();
        assert_eq!(
            err.message,
            "body of 3 bytes is shorter than its field count"
        );
    }

    #[test]
    fn invalid_utf8_is_rejected() {
        // An encoded surrogate: well-formed bytes, but not UTF-8.
        let frame = raw_frame(&[0, 0, 0, 1, TAG_STR, 0, 0, 0, 3, 0xed, 0xa0, 0x80]);
        assert_eq!(decode(&frame).unwrap_err().message, MSG_BAD_UTF8);
    }

    #[test]
    fn small_buffer_reports_the_exact_size() {
        let want = encode_frame(1, 1, &sample()).unwrap();
        for room in [0, 5, HEADER_SIZE, want.len() - 1] {
            let mut buf = vec![0u8; room];
            let got = encode_into(&mut buf, 1, 1, &sample()).unwrap();
            assert_eq!(
                got,
                Encoded {
                    size: want.len(),
                    complete: false
                }
            );
        }
        let mut buf = vec![0u8; want.len() + 10];
        let got = encode_into(&mut buf, 1, 1, &sample()).unwrap();
        assert_eq!(
            got,
            Encoded {
                size: want.len(),
                complete: true
            }
        );
        assert_eq!(&buf[..want.len()], &want[..]);
    }

    #[test]
    fn streaming_any_split_gives_same_frames() {
        let mut stream = Vec::new();
        let mut want = Vec::new();
        for i in 0..5u64 {
            let fields = if i % 2 == 0 { sample() } else { vec![] };
            stream.extend(encode_frame(i as u8, i, &fields).unwrap());
            want.push(Frame {
                msg_type: i as u8,
                request_id: i,
                fields,
            });
        }
        for chunk in [1, 2, 3, 7, 16, 17, 18, 64, stream.len()] {
            let mut dec = FrameDecoder::new(Some(4096)).unwrap();
            let mut got = Vec::new();
            for part in stream.chunks(chunk) {
                got.extend(feed(&mut dec, part).unwrap());
                assert!(dec.pending_bytes() < 4096);
            }
            assert_eq!(got, want, "chunk {chunk}");
            assert_eq!(dec.pending_bytes(), 0);
        }
    }

    #[test]
    fn decoder_stays_poisoned() {
        let mut dec = FrameDecoder::new(Some(4096)).unwrap();
        let err = feed(&mut dec, b"XX").unwrap_err();
        assert_eq!(err.message, MSG_BAD_MAGIC);
        let good = encode_frame(1, 1, &[]).unwrap();
        assert_eq!(feed(&mut dec, &good).unwrap_err(), err);
    }

    #[test]
    fn max_frame_bytes_is_bounded() {
        assert!(FrameDecoder::new(Some(MIN_FRAME_SIZE_BYTES as u64 - 1)).is_err());
        assert!(FrameDecoder::new(Some(MAX_FRAME_SIZE_BYTES as u64 + 1)).is_err());
        assert!(FrameDecoder::new(None).is_err());
        assert_eq!(
            FrameDecoder::new(Some(MIN_FRAME_SIZE_BYTES as u64))
                .unwrap()
                .max_frame_bytes(),
            MIN_FRAME_SIZE_BYTES
        );
    }

    #[test]
    fn float_bits_survive() {
        let nan = f64::from_bits(0x7ff8_dead_beef_0001);
        let frame = encode_frame(1, 1, &[Value::Float(nan), Value::Float(-0.0)]).unwrap();
        let fields = decode(&frame).unwrap().fields;
        match (&fields[0], &fields[1]) {
            (Value::Float(a), Value::Float(b)) => {
                assert_eq!(a.to_bits(), nan.to_bits());
                assert_eq!(b.to_bits(), (-0.0f64).to_bits());
            }
            other => panic!("{other:?}"),
        }
    }
}
