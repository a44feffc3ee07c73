//! dynacore._native: the PyO3 bindings, and only the bindings.
//!
//! The algorithms live in plain Rust modules (ring.rs, versions.rs, merkle.rs, wire.rs) that know
//! nothing of Python; `cargo test` tests them without this file's `python` feature. Each primitive
//! is exposed as a submodule (`dynacore._native.ring`, ...) with exactly the API of its pure-Python
//! twin in python/dynacore/core/. Errors are raised as the classes of `dynacore.errors`.

pub mod merkle;
pub mod ring;
pub mod versions;
pub mod wire;

#[cfg(feature = "python")]
mod bindings {
    use pyo3::prelude::*;

    // ===================== ring bindings (owned by ring) =====================

    pub fn register_ring(_m: &Bound<'_, PyModule>) -> PyResult<()> {
        Ok(())
    }

    // ===================== end ring bindings =====================
    //
    //
    //
    // ===================== versions bindings (owned by versions) =====================

    pub fn register_versions(m: &Bound<'_, PyModule>) -> PyResult<()> {
        versions_py::register(m)
    }

    /// dynacore._native.versions: thin wrappers over crate::versions. Every argument is taken
    /// as a plain object and checked here, so that a wrong type is a VersionError (as in the
    /// pure twin), never a TypeError from argument extraction.
    mod versions_py {
        use crate::versions::{self as core, DvvSet};
        use pyo3::exceptions::PyTypeError;
        use pyo3::prelude::*;
        use pyo3::types::{PyBool, PyBytes, PyInt, PyList, PyString, PyTuple};

        pyo3::import_exception!(dynacore.errors, VersionError);

        fn fail(e: core::VersionError) -> PyErr {
            VersionError::new_err(e.0)
        }

        fn type_err(what: &str, obj: &Bound<'_, PyAny>) -> PyErr {
            let name = obj
                .get_type()
                .name()
                .map_or_else(|_| "?".to_owned(), |n| n.to_string());
            VersionError::new_err(format!("{what} must be bytes, not {name}"))
        }

        fn buf<'a>(obj: &'a Bound<'_, PyAny>, what: &str) -> PyResult<&'a [u8]> {
            match obj.cast::<PyBytes>() {
                Ok(b) => Ok(b.as_bytes()),
                Err(_) => Err(type_err(what, obj)),
            }
        }

        fn node<'a>(obj: &'a Bound<'_, PyAny>) -> PyResult<&'a str> {
            let s = obj
                .cast::<PyString>()
                .map_err(|_| VersionError::new_err("a node id must be str"))?;
            let text = s
                .to_str()
                .map_err(|_| VersionError::new_err("node id is not encodable as UTF-8"))?;
            core::check_node(text).map_err(fail)?;
            Ok(text)
        }

        fn out<'py>(
            py: Python<'py>,
            r: Result<Vec<u8>, core::VersionError>,
        ) -> PyResult<Bound<'py, PyBytes>> {
            Ok(PyBytes::new(py, &r.map_err(fail)?))
        }

        /// The items of an iterable; a TypeError while iterating is a VersionError (as list()).
        fn items<'py>(obj: &Bound<'py, PyAny>, what: &str) -> PyResult<Vec<Bound<'py, PyAny>>> {
            let py = obj.py();
            let as_version_error = |e: PyErr| {
                if e.is_instance_of::<PyTypeError>(py) {
                    VersionError::new_err(format!("{what} must be a sequence"))
                } else {
                    e
                }
            };
            let mut out = Vec::new();
            for item in obj.try_iter().map_err(as_version_error)? {
                out.push(item.map_err(as_version_error)?);
            }
            Ok(out)
        }

        fn counter(obj: &Bound<'_, PyAny>) -> PyResult<u64> {
            if obj.is_instance_of::<PyBool>() || !obj.is_instance_of::<PyInt>() {
                return Err(VersionError::new_err("a counter must be int"));
            }
            obj.extract::<u64>()
                .map_err(|_| VersionError::new_err("counter outside 0..2**64-1"))
        }

        #[pyfunction]
        fn empty(py: Python<'_>) -> Bound<'_, PyBytes> {
            PyBytes::new(py, &core::empty())
        }

        #[pyfunction]
        fn new<'py>(value: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
            let v = buf(value, "a value")?;
            Ok(PyBytes::new(value.py(), &core::new(v)))
        }

        #[pyfunction]
        fn update<'py>(
            stored: &Bound<'py, PyAny>,
            context: &Bound<'py, PyAny>,
            value: &Bound<'py, PyAny>,
            node: &Bound<'py, PyAny>,
        ) -> PyResult<Bound<'py, PyBytes>> {
            let (s, c) = (
                buf(stored, "a version set")?,
                buf(context, "a version vector")?,
            );
            let v = buf(value, "a value")?;
            let n = self::node(node)?;
            out(stored.py(), core::update(s, c, v, n))
        }

        #[pyfunction]
        fn sync<'py>(
            a: &Bound<'py, PyAny>,
            b: &Bound<'py, PyAny>,
        ) -> PyResult<Bound<'py, PyBytes>> {
            let (x, y) = (buf(a, "a version set")?, buf(b, "a version set")?);
            let (sx, sy) = (
                DvvSet::decode(x).map_err(fail)?,
                DvvSet::decode(y).map_err(fail)?,
            );
            if x == y && a.is_exact_instance_of::<PyBytes>() {
                return Ok(a.cast::<PyBytes>()?.clone());
            }
            Ok(PyBytes::new(a.py(), &sx.sync(&sy).encode()))
        }

        #[pyfunction]
        fn sync_many<'py>(sets: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
            let objs = items(sets, "sync_many's argument")?;
            let bufs = objs
                .iter()
                .map(|o| buf(o, "a version set"))
                .collect::<PyResult<Vec<&[u8]>>>()?;
            out(sets.py(), core::sync_many(&bufs))
        }

        #[pyfunction]
        fn join<'py>(s: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
            out(s.py(), core::join(buf(s, "a version set")?))
        }

        #[pyfunction]
        fn values<'py>(s: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyList>> {
            let py = s.py();
            let vals = core::values(buf(s, "a version set")?).map_err(fail)?;
            PyList::new(py, vals.into_iter().map(|v| PyBytes::new(py, v)))
        }

        #[pyfunction]
        fn size(s: &Bound<'_, PyAny>) -> PyResult<usize> {
            core::size(buf(s, "a version set")?).map_err(fail)
        }

        #[pyfunction]
        fn ids<'py>(s: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyList>> {
            let py = s.py();
            let names = core::ids(buf(s, "a version set")?).map_err(fail)?;
            PyList::new(py, names.into_iter().map(|n| PyString::new(py, n)))
        }

        #[pyfunction]
        fn lww<'py>(s: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
            out(s.py(), core::lww(buf(s, "a version set")?))
        }

        #[pyfunction]
        fn reconcile<'py>(
            s: &Bound<'py, PyAny>,
            merge: &Bound<'py, PyAny>,
            node: &Bound<'py, PyAny>,
        ) -> PyResult<Bound<'py, PyBytes>> {
            let py = s.py();
            let set = DvvSet::decode(buf(s, "a version set")?).map_err(fail)?;
            let n = self::node(node)?;
            let vals = PyList::new(
                py,
                set.all_values().into_iter().map(|v| PyBytes::new(py, v)),
            )?;
            let merged = merge.call1((vals,))?;
            let m = buf(&merged, "reconcile's merge result")?;
            out(py, core::reconcile_with_value(&set, m, n))
        }

        #[pyfunction]
        fn less(a: &Bound<'_, PyAny>, b: &Bound<'_, PyAny>) -> PyResult<bool> {
            core::less(buf(a, "a version set")?, buf(b, "a version set")?).map_err(fail)
        }

        #[pyfunction]
        fn equal(a: &Bound<'_, PyAny>, b: &Bound<'_, PyAny>) -> PyResult<bool> {
            core::equal(buf(a, "a version set")?, buf(b, "a version set")?).map_err(fail)
        }

        #[pyfunction]
        fn covers(context: &Bound<'_, PyAny>, s: &Bound<'_, PyAny>) -> PyResult<bool> {
            core::covers(buf(context, "a version vector")?, buf(s, "a version set")?).map_err(fail)
        }

        #[pyfunction]
        fn vv_empty(py: Python<'_>) -> Bound<'_, PyBytes> {
            PyBytes::new(py, &core::vv_empty())
        }

        #[pyfunction]
        fn vv_from<'py>(pairs: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
            let objs = items(pairs, "vv_from's argument")?;
            let mut held: Vec<(Bound<'py, PyAny>, u64)> = Vec::with_capacity(objs.len());
            for obj in &objs {
                let pair = obj
                    .cast::<PyTuple>()
                    .ok()
                    .filter(|t| t.len() == 2)
                    .ok_or_else(|| VersionError::new_err("vv_from takes (node, counter) tuples"))?;
                let (n, c) = (pair.get_item(0)?, pair.get_item(1)?);
                self::node(&n)?;
                let count = counter(&c)?;
                held.push((n, count));
            }
            let parsed = held
                .iter()
                .map(|(n, c)| Ok((self::node(n)?, *c)))
                .collect::<PyResult<Vec<(&str, u64)>>>()?;
            out(pairs.py(), core::vv_from(&parsed))
        }

        #[pyfunction]
        fn vv_to<'py>(vv: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyList>> {
            let py = vv.py();
            let pairs = core::vv_to(buf(vv, "a version vector")?).map_err(fail)?;
            let tuples = pairs
                .into_iter()
                .map(|(n, c)| {
                    PyTuple::new(
                        py,
                        [
                            PyString::new(py, n).into_any(),
                            c.into_pyobject(py)?.into_any(),
                        ],
                    )
                })
                .collect::<PyResult<Vec<_>>>()?;
            PyList::new(py, tuples)
        }

        #[pyfunction]
        fn vv_descends(a: &Bound<'_, PyAny>, b: &Bound<'_, PyAny>) -> PyResult<bool> {
            core::vv_descends(buf(a, "a version vector")?, buf(b, "a version vector")?)
                .map_err(fail)
        }

        #[pyfunction]
        fn vv_concurrent(a: &Bound<'_, PyAny>, b: &Bound<'_, PyAny>) -> PyResult<bool> {
            core::vv_concurrent(buf(a, "a version vector")?, buf(b, "a version vector")?)
                .map_err(fail)
        }

        #[pyfunction]
        fn vv_equal(a: &Bound<'_, PyAny>, b: &Bound<'_, PyAny>) -> PyResult<bool> {
            core::vv_equal(buf(a, "a version vector")?, buf(b, "a version vector")?).map_err(fail)
        }

        #[pyfunction]
        fn vv_merge<'py>(
            a: &Bound<'py, PyAny>,
            b: &Bound<'py, PyAny>,
        ) -> PyResult<Bound<'py, PyBytes>> {
            out(
                a.py(),
                core::vv_merge(buf(a, "a version vector")?, buf(b, "a version vector")?),
            )
        }

        #[pyfunction]
        fn vv_increment<'py>(
            vv: &Bound<'py, PyAny>,
            node: &Bound<'py, PyAny>,
        ) -> PyResult<Bound<'py, PyBytes>> {
            let v = buf(vv, "a version vector")?;
            out(vv.py(), core::vv_increment(v, self::node(node)?))
        }

        pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
            m.add_function(wrap_pyfunction!(empty, m)?)?;
            m.add_function(wrap_pyfunction!(new, m)?)?;
            m.add_function(wrap_pyfunction!(update, m)?)?;
            m.add_function(wrap_pyfunction!(sync, m)?)?;
            m.add_function(wrap_pyfunction!(sync_many, m)?)?;
            m.add_function(wrap_pyfunction!(join, m)?)?;
            m.add_function(wrap_pyfunction!(values, m)?)?;
            m.add_function(wrap_pyfunction!(size, m)?)?;
            m.add_function(wrap_pyfunction!(ids, m)?)?;
            m.add_function(wrap_pyfunction!(lww, m)?)?;
            m.add_function(wrap_pyfunction!(reconcile, m)?)?;
            m.add_function(wrap_pyfunction!(less, m)?)?;
            m.add_function(wrap_pyfunction!(equal, m)?)?;
            m.add_function(wrap_pyfunction!(covers, m)?)?;
            m.add_function(wrap_pyfunction!(vv_empty, m)?)?;
            m.add_function(wrap_pyfunction!(vv_from, m)?)?;
            m.add_function(wrap_pyfunction!(vv_to, m)?)?;
            m.add_function(wrap_pyfunction!(vv_descends, m)?)?;
            m.add_function(wrap_pyfunction!(vv_concurrent, m)?)?;
            m.add_function(wrap_pyfunction!(vv_equal, m)?)?;
            m.add_function(wrap_pyfunction!(vv_merge, m)?)?;
            m.add_function(wrap_pyfunction!(vv_increment, m)?)?;
            Ok(())
        }
    }

    // ===================== end versions bindings =====================
    //
    //
    //
    // ===================== merkle bindings (owned by merkle) =====================

    pub fn register_merkle(_m: &Bound<'_, PyModule>) -> PyResult<()> {
        Ok(())
    }

    // ===================== end merkle bindings =====================
    //
    //
    //
    // ===================== wire bindings (owned by wire) =====================

    /// Python face of native/src/wire.rs: walks Python objects into the plain-Rust frame writer
    /// and builds Python objects from the plain-Rust decoder. No format logic lives here.
    mod wire_py {
        use crate::wire::{
            self, DecodeError, Encoded, ErrorKind, Frame, FrameEncoder, Sink, WireError,
        };
        use pyo3::ffi;
        use pyo3::prelude::*;
        use pyo3::types::{
            PyBool, PyByteArray, PyBytes, PyFloat, PyInt, PyList, PyMemoryView, PyString, PyTuple,
        };

        pyo3::import_exception!(dynacore.errors, FrameError);
        pyo3::import_exception!(dynacore.errors, FrameTooLarge);
        pyo3::import_exception!(dynacore.errors, ChecksumMismatch);
        pyo3::import_exception!(dynacore.errors, EncodeError);
        pyo3::import_exception!(dynacore.errors, ConfigError);

        /// The `dynacore.errors` exception of a wire error.
        pub fn to_py_err(e: WireError) -> PyErr {
            match e.kind {
                ErrorKind::Frame => FrameError::new_err(e.message),
                ErrorKind::TooLarge => FrameTooLarge::new_err(e.message),
                ErrorKind::Checksum => ChecksumMismatch::new_err(e.message),
                ErrorKind::Encode => EncodeError::new_err(e.message),
                ErrorKind::Config => ConfigError::new_err(e.message),
            }
        }

        fn from_decode(e: DecodeError<PyErr>) -> PyErr {
            match e {
                DecodeError::Wire(w) => to_py_err(w),
                DecodeError::Sink(p) => p,
            }
        }

        /// A Python int (not a bool) that fits u64, else None.
        fn plain_u64(obj: &Bound<'_, PyAny>) -> Option<u64> {
            if obj.is_instance_of::<PyBool>() || !obj.is_instance_of::<PyInt>() {
                return None;
            }
            obj.extract::<u64>().ok()
        }

        pub fn max_frame_bytes(obj: &Bound<'_, PyAny>) -> PyResult<usize> {
            wire::check_max_frame_bytes(plain_u64(obj)).map_err(to_py_err)
        }

        fn encode_err(message: &str) -> PyErr {
            EncodeError::new_err(message.to_owned())
        }

        /// Frames up to this size are encoded in one pass into a stack buffer, then copied
        /// into the result; bigger ones are sized first and written straight into the result.
        const WIRE_STACK_BYTES: usize = 512;

        /// Encodes one Python value (pre-order, same checks in the same order as the pure twin).
        fn put(e: &mut FrameEncoder<'_>, v: &Bound<'_, PyAny>) -> PyResult<()> {
            if v.is_instance_of::<PyBytes>() {
                // SAFETY: checked just above.
                let b = unsafe { v.cast_unchecked::<PyBytes>() };
                e.bytes(b.as_bytes()).map_err(to_py_err)
            } else if v.is_instance_of::<PyString>() {
                // SAFETY: checked just above.
                let s = unsafe { v.cast_unchecked::<PyString>() };
                let s = s.to_str().map_err(|_| encode_err(wire::MSG_SURROGATES))?;
                e.string(s).map_err(to_py_err)
            } else if v.is_instance_of::<PyBool>() {
                e.boolean(v.as_ptr() == unsafe { ffi::Py_True() });
                Ok(())
            } else if v.is_instance_of::<PyInt>() {
                let x: i64 = v.extract().map_err(|_| encode_err(wire::MSG_INT_RANGE))?;
                e.int(x);
                Ok(())
            } else if v.is_none() {
                e.none();
                Ok(())
            } else if v.is_instance_of::<PyList>() {
                // SAFETY: checked just above.
                let l = unsafe { v.cast_unchecked::<PyList>() };
                put_list(e, l.len(), l.iter())
            } else if v.is_instance_of::<PyFloat>() {
                // SAFETY: checked just above.
                e.float(unsafe { v.cast_unchecked::<PyFloat>() }.value());
                Ok(())
            } else if v.is_instance_of::<PyTuple>() {
                // SAFETY: checked just above.
                let t = unsafe { v.cast_unchecked::<PyTuple>() };
                put_list(e, t.len(), t.iter())
            } else {
                let name = v.get_type().name()?;
                Err(to_py_err(wire::unsupported_type(name.to_str()?)))
            }
        }

        fn put_list<'py>(
            e: &mut FrameEncoder<'_>,
            len: usize,
            items: impl Iterator<Item = Bound<'py, PyAny>>,
        ) -> PyResult<()> {
            e.begin_list(len).map_err(to_py_err)?;
            for item in items {
                put(e, &item)?;
            }
            e.end_list();
            Ok(())
        }

        /// Encodes the frame into `buf`: complete if it fits, else only sized.
        fn encode_into(
            buf: &mut [u8],
            msg_type: u8,
            request_id: u64,
            fields: &Bound<'_, PyAny>,
        ) -> PyResult<Encoded> {
            let mut e;
            if let Ok(l) = fields.cast::<PyList>() {
                e = FrameEncoder::new(buf, msg_type, request_id, l.len()).map_err(to_py_err)?;
                for item in l.iter() {
                    put(&mut e, &item)?;
                }
            } else if let Ok(t) = fields.cast::<PyTuple>() {
                e = FrameEncoder::new(buf, msg_type, request_id, t.len()).map_err(to_py_err)?;
                for item in t.iter() {
                    put(&mut e, &item)?;
                }
            } else {
                return Err(encode_err(wire::MSG_FIELDS));
            }
            e.finish().map_err(to_py_err)
        }

        #[pyfunction]
        pub fn encode_frame<'py>(
            py: Python<'py>,
            msg_type: &Bound<'py, PyAny>,
            request_id: &Bound<'py, PyAny>,
            fields: &Bound<'py, PyAny>,
        ) -> PyResult<Bound<'py, PyBytes>> {
            let msg_type = plain_u64(msg_type)
                .and_then(|m| u8::try_from(m).ok())
                .ok_or_else(|| encode_err(wire::MSG_MSG_TYPE))?;
            let request_id =
                plain_u64(request_id).ok_or_else(|| encode_err(wire::MSG_REQUEST_ID))?;
            let mut stack = [0u8; WIRE_STACK_BYTES];
            let first = encode_into(&mut stack, msg_type, request_id, fields)?;
            if first.complete {
                return Ok(PyBytes::new(py, &stack[..first.size]));
            }
            // No Python code runs between the passes, so the second sees the same values.
            PyBytes::new_with(py, first.size, |buf| {
                let second = encode_into(buf, msg_type, request_id, fields)?;
                assert!(
                    second.complete && second.size == first.size,
                    "encode passes disagree"
                );
                Ok(())
            })
        }

        /// A Python list made at its final length and filled in order.
        struct WireList<'py> {
            list: Bound<'py, PyList>,
            filled: usize,
        }

        /// Builds Python objects for the decoder.
        struct PySink<'py> {
            py: Python<'py>,
        }

        impl<'py> Sink for PySink<'py> {
            type Value = Bound<'py, PyAny>;
            type List = WireList<'py>;
            type Error = PyErr;
            fn none(&mut self) -> PyResult<Self::Value> {
                Ok(self.py.None().into_bound(self.py))
            }
            fn boolean(&mut self, v: bool) -> PyResult<Self::Value> {
                Ok(PyBool::new(self.py, v).to_owned().into_any())
            }
            fn int(&mut self, v: i64) -> PyResult<Self::Value> {
                Ok(v.into_pyobject(self.py)?.into_any())
            }
            fn float(&mut self, v: f64) -> PyResult<Self::Value> {
                Ok(PyFloat::new(self.py, v).into_any())
            }
            fn bytes(&mut self, v: &[u8]) -> PyResult<Self::Value> {
                Ok(PyBytes::new(self.py, v).into_any())
            }
            fn string(&mut self, v: &str) -> PyResult<Self::Value> {
                Ok(PyString::new(self.py, v).into_any())
            }
            fn list_new(&mut self, len: usize) -> PyResult<WireList<'py>> {
                let len_ssize = isize::try_from(len)?;
                // SAFETY: PyList_New returns a new reference or NULL with an exception set. Its
                // slots start NULL, which list dealloc and GC traversal accept, and list_push
                // fills each slot exactly once before the list reaches Python code.
                let list = unsafe {
                    Bound::from_owned_ptr_or_err(self.py, ffi::PyList_New(len_ssize))?
                        .cast_into_unchecked::<PyList>()
                };
                Ok(WireList { list, filled: 0 })
            }
            fn list_push(&mut self, list: &mut WireList<'py>, item: Self::Value) {
                assert!(
                    list.filled < list.list.len(),
                    "list_push past the list's length"
                );
                // SAFETY: the slot is in bounds and still NULL; SET_ITEM steals the reference.
                unsafe {
                    ffi::PyList_SET_ITEM(list.list.as_ptr(), list.filled as isize, item.into_ptr())
                };
                list.filled += 1;
            }
            fn list_done(&mut self, list: WireList<'py>) -> Self::Value {
                assert_eq!(
                    list.filled,
                    list.list.len(),
                    "list_done before the list is full"
                );
                list.list.into_any()
            }
        }

        type PyFrame<'py> = (u8, u64, Bound<'py, PyList>);

        fn to_py_frame<'py>(f: Frame<WireList<'py>>) -> PyFrame<'py> {
            assert_eq!(f.fields.filled, f.fields.list.len());
            (f.msg_type, f.request_id, f.fields.list)
        }

        /// Runs `f` over the bytes of a bytes, bytearray or memoryview (the last two copied, as
        /// bytes(data) does, so that no Python code can change them under the decoder).
        fn with_bytes<'py, R>(
            data: &Bound<'py, PyAny>,
            f: impl FnOnce(&[u8]) -> R,
        ) -> Result<PyResult<R>, WireError> {
            if let Ok(b) = data.cast::<PyBytes>() {
                return Ok(Ok(f(b.as_bytes())));
            }
            if data.is_instance_of::<PyByteArray>() || data.is_instance_of::<PyMemoryView>() {
                let copy = data.py().get_type::<PyBytes>().call1((data,));
                return Ok(copy.and_then(|c| Ok(f(c.cast::<PyBytes>()?.as_bytes()))));
            }
            Err(WireError::new(ErrorKind::Frame, wire::MSG_BAD_DATA))
        }

        #[pyfunction]
        pub fn decode_frame<'py>(
            py: Python<'py>,
            frame: &Bound<'py, PyAny>,
            max_frame_bytes: &Bound<'py, PyAny>,
        ) -> PyResult<PyFrame<'py>> {
            let max = self::max_frame_bytes(max_frame_bytes)?;
            let decoded = with_bytes(frame, |b| wire::decode_frame(b, max, &mut PySink { py }))
                .map_err(to_py_err)??
                .map_err(from_decode)?;
            Ok(to_py_frame(decoded))
        }

        /// Streaming decoder: any split of a byte stream into chunks yields the same frames.
        #[pyclass(module = "dynacore._native.wire", name = "FrameDecoder")]
        pub struct WireFrameDecoder {
            inner: wire::FrameDecoder,
        }

        #[pymethods]
        impl WireFrameDecoder {
            #[new]
            fn new(max_frame_bytes: &Bound<'_, PyAny>) -> PyResult<Self> {
                let max = self::max_frame_bytes(max_frame_bytes)?;
                let inner = wire::FrameDecoder::new(Some(max as u64)).map_err(to_py_err)?;
                Ok(WireFrameDecoder { inner })
            }

            /// Feeds the next bytes; returns the frames they complete.
            fn feed<'py>(
                &mut self,
                py: Python<'py>,
                data: &Bound<'py, PyAny>,
            ) -> PyResult<Vec<PyFrame<'py>>> {
                if let Some(e) = self.inner.poisoned() {
                    return Err(to_py_err(e.clone()));
                }
                let inner = &mut self.inner;
                let frames = match with_bytes(data, |b| inner.feed(b, &mut PySink { py })) {
                    Ok(result) => result?.map_err(from_decode)?,
                    Err(e) => return Err(to_py_err(self.inner.fail(e))),
                };
                Ok(frames.into_iter().map(to_py_frame).collect())
            }

            /// Bytes of the incomplete frame held back.
            #[getter]
            fn pending_bytes(&self) -> usize {
                self.inner.pending_bytes()
            }

            fn __repr__(&self) -> String {
                format!(
                    "FrameDecoder(max_frame_bytes={}, pending_bytes={}, poisoned={})",
                    self.inner.max_frame_bytes(),
                    self.inner.pending_bytes(),
                    if self.inner.poisoned().is_some() {
                        "True"
                    } else {
                        "False"
                    },
                )
            }
        }
    }

    pub fn register_wire(m: &Bound<'_, PyModule>) -> PyResult<()> {
        use crate::wire;
        m.add_function(wrap_pyfunction!(wire_py::encode_frame, m)?)?;
        m.add_function(wrap_pyfunction!(wire_py::decode_frame, m)?)?;
        m.add_class::<wire_py::WireFrameDecoder>()?;
        m.add("HEADER_SIZE", wire::HEADER_SIZE)?;
        m.add("CHECKSUM_SIZE", wire::CHECKSUM_SIZE)?;
        m.add("MIN_FRAME_SIZE_BYTES", wire::MIN_FRAME_SIZE_BYTES)?;
        m.add("MAX_FRAME_SIZE_BYTES", wire::MAX_FRAME_SIZE_BYTES)?;
        m.add("MAX_DEPTH", wire::MAX_DEPTH)?;
        m.add("FORMAT_VERSION", wire::FORMAT_VERSION)?;
        m.add("MAGIC", pyo3::types::PyBytes::new(m.py(), &wire::MAGIC))?;
        Ok(())
    }

    // ===================== end wire bindings =====================
    //
    //
    //

    fn add_sub(
        parent: &Bound<'_, PyModule>,
        name: &str,
        register: fn(&Bound<'_, PyModule>) -> PyResult<()>,
    ) -> PyResult<()> {
        let sub = PyModule::new(parent.py(), name)?;
        register(&sub)?;
        parent.add_submodule(&sub)?;
        Ok(())
    }

    #[pymodule]
    fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add("__version__", env!("CARGO_PKG_VERSION"))?;
        add_sub(m, "ring", register_ring)?;
        add_sub(m, "versions", register_versions)?;
        add_sub(m, "merkle", register_merkle)?;
        add_sub(m, "wire", register_wire)?;
        Ok(())
    }
}
