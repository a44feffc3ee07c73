//! dynacore._native: the PyO3 bindings, and only the bindings.
//!
//! The algorithms live in plain Rust modules (ring.rs, versions.rs, merkle.rs, wire.rs) that know
//! nothing of Python; `cargo test` tests them without this file's `python` feature. Each primitive
//! is exposed as a submodule (`dynacore._native.ring`, ...) with exactly the API of its pure-Python
//! twin in python/dynacore/core/. Errors are raised as the classes of `dynacore.errors`.

pub mod localread;
pub mod merkle;
pub mod ring;
pub mod versions;
pub mod wire;

#[cfg(feature = "python")]
mod bindings {
    use pyo3::prelude::*;

    // ===================== ring bindings (owned by ring) =====================

    /// dynacore._native.ring: the Python face of crate::ring, with the API of core/ring.py.
    /// Hot paths: `Ring.lookup` is a raw METH_FASTCALL method (see lookup_fastcall) and
    /// `lookup_many` reads list/tuple items in place; both hand out cached preference tuples.
    mod ring_py {
        use std::collections::hash_map::DefaultHasher;
        use std::collections::HashMap;
        use std::hash::{Hash, Hasher};

        use pyo3::exceptions::{PyOverflowError, PyTypeError};
        use pyo3::ffi;
        use pyo3::prelude::*;
        use pyo3::pyclass::CompareOp;
        use pyo3::sync::PyOnceLock;
        use pyo3::types::{PyBytes, PyIterator, PyList, PyString, PyTuple};
        use pyo3::IntoPyObjectExt;

        use crate::ring as core;

        pyo3::import_exception!(dynacore.errors, RingError);

        fn ring_error(error: core::RingError) -> PyErr {
            RingError::new_err(error.0)
        }

        fn type_name(value: &Bound<'_, PyAny>) -> String {
            value
                .get_type()
                .name()
                .map(|name| name.to_string())
                .unwrap_or_else(|_| "?".to_owned())
        }

        /// An integer argument, read with operator.index semantics (bool is an int, float not).
        enum Int {
            Negative,
            Small(u64),
            Huge,
        }

        fn int_arg(value: &Bound<'_, PyAny>, what: &str) -> PyResult<Int> {
            let py = value.py();
            match value.extract::<i64>() {
                Ok(v) if v < 0 => Ok(Int::Negative),
                Ok(v) => Ok(Int::Small(v as u64)),
                Err(e) if e.is_instance_of::<PyOverflowError>(py) => {
                    let index = py.import("operator")?.getattr("index")?.call1((value,))?;
                    Ok(if index.lt(0)? {
                        Int::Negative
                    } else {
                        Int::Huge
                    })
                }
                Err(e) if e.is_instance_of::<PyTypeError>(py) => Err(RingError::new_err(format!(
                    "{what} must be an integer, got {}",
                    type_name(value)
                ))),
                Err(e) => Err(e),
            }
        }

        fn q_arg(value: &Bound<'_, PyAny>) -> PyResult<u64> {
            match int_arg(value, "the partition count")? {
                Int::Small(q) => core::log2_partitions(q).map_err(ring_error).map(|_| q),
                _ => Err(RingError::new_err(
                    "the partition count must be a power of two in [1, 65536]",
                )),
            }
        }

        fn n_arg(value: &Bound<'_, PyAny>) -> PyResult<usize> {
            match int_arg(value, "n")? {
                Int::Small(n) if n >= 1 => Ok(usize::try_from(n).unwrap_or(usize::MAX)),
                Int::Huge => Ok(usize::MAX),
                _ => Err(RingError::new_err("n must be at least 1")),
            }
        }

        fn key_arg<'a>(value: &'a Bound<'_, PyAny>) -> PyResult<&'a [u8]> {
            match value.cast::<PyBytes>() {
                Ok(bytes) => Ok(bytes.as_bytes()),
                Err(_) => Err(RingError::new_err(format!(
                    "a key must be bytes, got {}",
                    type_name(value)
                ))),
            }
        }

        fn node_arg(value: &Bound<'_, PyAny>) -> PyResult<String> {
            let Ok(text) = value.cast::<PyString>() else {
                return Err(RingError::new_err(format!(
                    "a node id must be a str, got {}",
                    type_name(value)
                )));
            };
            let Ok(node) = text.to_str() else {
                return Err(RingError::new_err("a node id is not encodable as UTF-8"));
            };
            core::check_node(node).map_err(ring_error)?;
            Ok(node.to_owned())
        }

        fn iterate<'py>(value: &Bound<'py, PyAny>, what: &str) -> PyResult<Bound<'py, PyIterator>> {
            if value.is_instance_of::<PyString>() {
                return Err(RingError::new_err(format!(
                    "{what} must be a sequence, not a str"
                )));
            }
            value.try_iter().map_err(|e| {
                if e.is_instance_of::<PyTypeError>(value.py()) {
                    RingError::new_err(format!(
                        "{what} must be a sequence, got {}",
                        type_name(value)
                    ))
                } else {
                    e
                }
            })
        }

        fn node_list(value: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<String>> {
            iterate(value, what)?.map(|item| node_arg(&item?)).collect()
        }

        fn bad_key(key: &Bound<'_, PyAny>) -> PyErr {
            RingError::new_err(format!("a key must be bytes, got {}", type_name(key)))
        }

        /// The partition of a borrowed key object, or None when it is not bytes.
        ///
        /// # Safety
        /// `key` must be a live object that stays alive (and, being bytes, unchanged) for the
        /// call: the caller holds the sequence it comes from and runs no Python code meanwhile.
        #[inline(always)]
        unsafe fn bytes_partition(key: *mut ffi::PyObject, log2q: u32) -> Option<u32> {
            unsafe {
                if ffi::PyBytes_CheckExact(key) == 0 && ffi::PyBytes_Check(key) == 0 {
                    return None;
                }
                let data = ffi::PyBytes_AS_STRING(key) as *const u8;
                let bytes = std::slice::from_raw_parts(data, ffi::Py_SIZE(key) as usize);
                Some(core::partition_of_hash(core::key_hash(bytes), log2q) as u32)
            }
        }

        /// The partition of a borrowed key object, which must be bytes.
        fn partition_of_ptr(py: Python<'_>, key: *mut ffi::PyObject, log2q: u32) -> PyResult<u32> {
            // SAFETY: `key` comes from a sequence or iterator item the caller holds.
            match unsafe { bytes_partition(key, log2q) } {
                Some(p) => Ok(p),
                // SAFETY: as above, `key` is a live object.
                None => Err(bad_key(unsafe { &Bound::from_borrowed_ptr(py, key) })),
            }
        }

        /// The partition of every key (a list or tuple is read in place, any iterable works).
        fn partitions(keys: &Bound<'_, PyAny>, log2q: u32) -> PyResult<Vec<u32>> {
            let py = keys.py();
            if let Ok(list) = keys.cast_exact::<PyList>() {
                let size = list.len();
                let mut out = Vec::with_capacity(size);
                for i in 0..size {
                    // SAFETY: i < size, and nothing in this loop runs Python code that could
                    // shrink the list.
                    let key = unsafe { ffi::PyList_GET_ITEM(list.as_ptr(), i as ffi::Py_ssize_t) };
                    out.push(partition_of_ptr(py, key, log2q)?);
                }
                return Ok(out);
            }
            if let Ok(tuple) = keys.cast_exact::<PyTuple>() {
                let size = tuple.len();
                let mut out = Vec::with_capacity(size);
                for i in 0..size {
                    // SAFETY: i < size and tuples are immutable.
                    let key =
                        unsafe { ffi::PyTuple_GET_ITEM(tuple.as_ptr(), i as ffi::Py_ssize_t) };
                    out.push(partition_of_ptr(py, key, log2q)?);
                }
                return Ok(out);
            }
            iterate(keys, "keys")?
                .map(|key| partition_of_ptr(py, key?.as_ptr(), log2q))
                .collect()
        }

        /// A new list of the cached tuples `table[p]` for every p.
        fn tuples_list<'py>(
            py: Python<'py>,
            table: &[Py<PyTuple>],
            parts: &[u32],
        ) -> PyResult<Bound<'py, PyList>> {
            // SAFETY: PyList_New gives a list of `len` NULL slots that we own; each slot is set
            // once with a new reference; every p indexes `table` (p < Q == table.len()).
            unsafe {
                let list = ffi::PyList_New(parts.len() as ffi::Py_ssize_t);
                let list = Bound::from_owned_ptr_or_err(py, list)?;
                for (i, &p) in parts.iter().enumerate() {
                    let tuple = table[p as usize].as_ptr();
                    ffi::Py_INCREF(tuple);
                    ffi::PyList_SET_ITEM(list.as_ptr(), i as ffi::Py_ssize_t, tuple);
                }
                Ok(list.cast_into_unchecked())
            }
        }

        const LOOKUP_BLOCK: usize = 64;

        /// The preference tuple of every key of an exact list or tuple, read in place with no
        /// per-key Python objects; None for any other iterable (the generic path handles it).
        fn lookup_sequence<'py>(
            keys: &Bound<'py, PyAny>,
            table: &[Py<PyTuple>],
            log2q: u32,
        ) -> PyResult<Option<Bound<'py, PyList>>> {
            let items: *const *mut ffi::PyObject = if let Ok(list) = keys.cast_exact::<PyList>() {
                // SAFETY: a list's item array; read before any Python code can resize it.
                unsafe { (*list.as_ptr().cast::<ffi::PyListObject>()).ob_item }
            } else if let Ok(tuple) = keys.cast_exact::<PyTuple>() {
                // SAFETY: a tuple's inline item array.
                unsafe {
                    (*tuple.as_ptr().cast::<ffi::PyTupleObject>())
                        .ob_item
                        .as_ptr()
                }
            } else {
                return Ok(None);
            };
            // SAFETY: Py_SIZE of a list or tuple is its item count.
            let size = unsafe { ffi::Py_SIZE(keys.as_ptr()) } as usize;
            assert_eq!(table.len(), 1usize << log2q);
            // SAFETY: nothing in this loop runs Python code, so the sequence keeps its `size`
            // items at `items`; PyList_New gives `size` NULL slots that we own (a list with
            // NULL slots is safe to drop on the error path), each set once with a new
            // reference; every partition is < 2^log2q == table.len().
            unsafe {
                let out = Bound::from_owned_ptr_or_err(keys.py(), ffi::PyList_New(size as isize))?;
                let slots = (*out.as_ptr().cast::<ffi::PyListObject>()).ob_item;
                // Blocks: hash a run of keys, then fill their slots, so that neither loop waits
                // on the other's memory traffic (measured faster than one fused loop).
                let mut parts = [0u32; LOOKUP_BLOCK];
                let mut start = 0;
                while start < size {
                    let end = (start + LOOKUP_BLOCK).min(size);
                    for i in start..end {
                        let key = *items.add(i);
                        let Some(p) = bytes_partition(key, log2q) else {
                            return Err(bad_key(&Bound::from_borrowed_ptr(keys.py(), key)));
                        };
                        parts[i - start] = p;
                    }
                    for i in start..end {
                        let tuple = table.get_unchecked(parts[i - start] as usize).as_ptr();
                        ffi::Py_INCREF(tuple);
                        *slots.add(i) = tuple;
                    }
                    start = end;
                }
                Ok(Some(out.cast_into_unchecked()))
            }
        }

        #[pyfunction]
        fn key_hash(key: &Bound<'_, PyAny>) -> PyResult<u64> {
            Ok(core::key_hash(key_arg(key)?))
        }

        #[pyfunction]
        fn partition_of(key: &Bound<'_, PyAny>, q: &Bound<'_, PyAny>) -> PyResult<usize> {
            let q = q_arg(q)?;
            core::partition_of(key_arg(key)?, q).map_err(ring_error)
        }

        /// An immutable ring; preference tables (n <= 16) are built once and their tuples reused.
        #[pyclass(module = "dynacore._native.ring", name = "Ring", frozen)]
        pub struct Ring {
            inner: core::Ring,
            names: Vec<Py<PyString>>,
            tables: Vec<PyOnceLock<Vec<Py<PyTuple>>>>, // indexed by n_eff, 1..=CACHED_N_MAX
            hash: isize,
        }

        impl Ring {
            fn wrap(py: Python<'_>, inner: core::Ring) -> Ring {
                let names = inner
                    .nodes()
                    .iter()
                    .map(|n| PyString::new(py, n).unbind())
                    .collect();
                let tables = (0..=core::CACHED_N_MAX)
                    .map(|_| PyOnceLock::new())
                    .collect();
                let mut hasher = DefaultHasher::new();
                inner.hash(&mut hasher);
                Ring {
                    inner,
                    names,
                    tables,
                    hash: hasher.finish() as isize,
                }
            }

            fn tuple_of(&self, py: Python<'_>, list: &[u32]) -> PyResult<Py<PyTuple>> {
                let items = list.iter().map(|&i| self.names[i as usize].bind(py));
                Ok(PyTuple::new(py, items)?.unbind())
            }

            /// One tuple per partition. Shared tuples would save memory, but lookup_many would
            /// then bump the same few refcounts back to back, a serial chain that costs more
            /// than the hashing (measured: 3x slower for 8 distinct tuples).
            fn build_table(&self, py: Python<'_>, n_eff: usize) -> PyResult<Vec<Py<PyTuple>>> {
                let flat = self.inner.preference_table(n_eff);
                flat.chunks_exact(n_eff)
                    .map(|row| self.tuple_of(py, row))
                    .collect()
            }

            /// The cached table for min(n, S), or None when that is beyond CACHED_N_MAX.
            fn table(&self, py: Python<'_>, n: usize) -> PyResult<Option<&[Py<PyTuple>]>> {
                let n_eff = self.inner.effective_n(n);
                if n_eff > core::CACHED_N_MAX {
                    return Ok(None);
                }
                let table =
                    self.tables[n_eff].get_or_try_init(py, || self.build_table(py, n_eff))?;
                Ok(Some(table.as_slice()))
            }

            fn preference(&self, py: Python<'_>, p: usize, n: usize) -> PyResult<Py<PyTuple>> {
                match self.table(py, n)? {
                    Some(table) => Ok(table[p].clone_ref(py)),
                    None => self.tuple_of(py, &self.inner.walk(p, n)),
                }
            }

            fn partition_arg(&self, value: &Bound<'_, PyAny>) -> PyResult<usize> {
                let p = match int_arg(value, "a partition")? {
                    Int::Small(p) => usize::try_from(p).unwrap_or(usize::MAX),
                    _ => usize::MAX,
                };
                self.inner.check_partition(p).map_err(ring_error)
            }

            fn member_arg(&self, value: &Bound<'_, PyAny>) -> PyResult<String> {
                let node = node_arg(value)?;
                if self.inner.node_index(&node).is_none() {
                    return Err(RingError::new_err(format!(
                        "node {node:?} is not a member of the ring"
                    )));
                }
                Ok(node)
            }

            fn names_list<'py>(
                &self,
                py: Python<'py>,
                indexes: impl ExactSizeIterator<Item = usize>,
            ) -> PyResult<Bound<'py, PyList>> {
                PyList::new(py, indexes.map(|i| self.names[i].bind(py)))
            }
        }

        #[pymethods]
        impl Ring {
            #[new]
            fn new(py: Python<'_>, owners: &Bound<'_, PyAny>) -> PyResult<Self> {
                let names = node_list(owners, "owners")?;
                let inner = core::Ring::from_owners(&names).map_err(ring_error)?;
                Ok(Ring::wrap(py, inner))
            }

            #[staticmethod]
            fn claim(
                py: Python<'_>,
                q: &Bound<'_, PyAny>,
                nodes: &Bound<'_, PyAny>,
            ) -> PyResult<Self> {
                let q = q_arg(q)?;
                let names = node_list(nodes, "nodes")?;
                let inner = core::Ring::claim(q, &names).map_err(ring_error)?;
                Ok(Ring::wrap(py, inner))
            }

            #[getter]
            fn q(&self) -> usize {
                self.inner.q()
            }

            #[getter]
            fn owners<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
                let owners = self.inner.owner_indexes().iter().map(|&i| i as usize);
                self.names_list(py, owners)
            }

            #[getter]
            fn nodes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
                self.names_list(py, 0..self.names.len())
            }

            fn partition_of(&self, key: &Bound<'_, PyAny>) -> PyResult<usize> {
                Ok(self.inner.partition_of(key_arg(key)?))
            }

            fn partitions_of(&self, keys: &Bound<'_, PyAny>) -> PyResult<Vec<u32>> {
                partitions(keys, self.inner.log2q())
            }

            fn owner(
                &self,
                py: Python<'_>,
                partition: &Bound<'_, PyAny>,
            ) -> PyResult<Py<PyString>> {
                let p = self.partition_arg(partition)?;
                Ok(self.names[self.inner.owner_indexes()[p] as usize].clone_ref(py))
            }

            fn preference_list(
                &self,
                py: Python<'_>,
                partition: &Bound<'_, PyAny>,
                n: &Bound<'_, PyAny>,
            ) -> PyResult<Py<PyTuple>> {
                let p = self.partition_arg(partition)?;
                self.preference(py, p, n_arg(n)?)
            }

            fn extended_list(
                &self,
                py: Python<'_>,
                partition: &Bound<'_, PyAny>,
                n: &Bound<'_, PyAny>,
            ) -> PyResult<Py<PyTuple>> {
                let p = self.partition_arg(partition)?;
                let list = self.inner.extended_list(p, n_arg(n)?).map_err(ring_error)?;
                self.tuple_of(py, &list)
            }

            /// The checked lookup; `Ring.lookup` is `lookup_fastcall`, which ends up here for
            /// anything but a bytes key, an int n and a table already built.
            #[pyo3(name = "_lookup")]
            fn lookup(
                &self,
                py: Python<'_>,
                key: &Bound<'_, PyAny>,
                n: &Bound<'_, PyAny>,
            ) -> PyResult<Py<PyTuple>> {
                let p = self.inner.partition_of(key_arg(key)?);
                self.preference(py, p, n_arg(n)?)
            }

            fn lookup_many<'py>(
                &self,
                py: Python<'py>,
                keys: &Bound<'py, PyAny>,
                n: &Bound<'py, PyAny>,
            ) -> PyResult<Bound<'py, PyList>> {
                let n = n_arg(n)?;
                let table = self.table(py, n)?;
                let log2q = self.inner.log2q();
                if let Some(table) = table {
                    if let Some(list) = lookup_sequence(keys, table, log2q)? {
                        return Ok(list);
                    }
                }
                let parts = partitions(keys, log2q)?;
                if let Some(table) = table {
                    return tuples_list(py, table, &parts);
                }
                let mut walks: HashMap<u32, Py<PyTuple>> = HashMap::new();
                let mut out = Vec::with_capacity(parts.len());
                for &p in &parts {
                    if let Some(tuple) = walks.get(&p) {
                        out.push(tuple.clone_ref(py));
                        continue;
                    }
                    let tuple = self.tuple_of(py, &self.inner.walk(p as usize, n))?;
                    walks.insert(p, tuple.clone_ref(py));
                    out.push(tuple);
                }
                PyList::new(py, out)
            }

            fn partitions_owned(&self, node: &Bound<'_, PyAny>) -> PyResult<Vec<usize>> {
                let node = self.member_arg(node)?;
                self.inner.partitions_owned(&node).map_err(ring_error)
            }

            fn with_node(&self, py: Python<'_>, node: &Bound<'_, PyAny>) -> PyResult<Self> {
                let node = node_arg(node)?;
                let inner = self.inner.with_node(&node).map_err(ring_error)?;
                Ok(Ring::wrap(py, inner))
            }

            fn without_node(&self, py: Python<'_>, node: &Bound<'_, PyAny>) -> PyResult<Self> {
                let node = self.member_arg(node)?;
                let inner = self.inner.without_node(&node).map_err(ring_error)?;
                Ok(Ring::wrap(py, inner))
            }

            fn moves(&self, other: &Bound<'_, PyAny>) -> PyResult<Vec<(usize, String, String)>> {
                let Ok(other) = other.cast::<Ring>() else {
                    return Err(RingError::new_err(format!(
                        "moves() needs a Ring, got {}",
                        type_name(other)
                    )));
                };
                let moved = self.inner.moves(&other.get().inner).map_err(ring_error)?;
                Ok(moved
                    .into_iter()
                    .map(|(p, from, to)| (p, from.to_owned(), to.to_owned()))
                    .collect())
            }

            fn encode<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
                PyBytes::new(py, &self.inner.encode())
            }

            #[staticmethod]
            fn decode(py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<Self> {
                let Ok(bytes) = data.cast::<PyBytes>() else {
                    return Err(RingError::new_err(format!(
                        "an encoded ring must be bytes, got {}",
                        type_name(data)
                    )));
                };
                let inner = core::Ring::decode(bytes.as_bytes()).map_err(ring_error)?;
                Ok(Ring::wrap(py, inner))
            }

            fn __richcmp__(
                &self,
                py: Python<'_>,
                other: &Bound<'_, PyAny>,
                op: CompareOp,
            ) -> PyResult<Py<PyAny>> {
                let Ok(other) = other.cast::<Ring>() else {
                    return Ok(py.NotImplemented());
                };
                let equal = self.inner == other.get().inner;
                match op {
                    CompareOp::Eq => equal.into_py_any(py),
                    CompareOp::Ne => (!equal).into_py_any(py),
                    _ => Ok(py.NotImplemented()),
                }
            }

            fn __hash__(&self) -> isize {
                self.hash
            }

            fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
                let nodes = self.names_list(py, 0..self.names.len())?;
                Ok(format!(
                    "Ring(q={}, nodes={})",
                    self.inner.q(),
                    nodes.repr()?
                ))
            }
        }

        /// `Ring.lookup` as a raw METH_FASTCALL method: PyO3's call machinery costs as much as
        /// the lookup itself, so the common call (bytes key, int n, table built) is answered
        /// here with no conversions; every other call goes to the checked `Ring._lookup`.
        unsafe extern "C" fn lookup_fastcall(
            slf: *mut ffi::PyObject,
            args: *const *mut ffi::PyObject,
            nargs: ffi::Py_ssize_t,
            kwnames: *mut ffi::PyObject,
        ) -> *mut ffi::PyObject {
            // SAFETY: CPython calls this with the GIL held, `slf` an instance of Ring (the
            // method descriptor checks it) and `args` holding nargs (+ keyword) objects.
            let cached =
                std::panic::catch_unwind(|| unsafe { lookup_cached(slf, args, nargs, kwnames) });
            match cached {
                Ok(Some(tuple)) => tuple,
                _ => unsafe { lookup_checked(slf, args, nargs, kwnames) },
            }
        }

        /// A new reference to the cached preference tuple, or None when the checked path must
        /// answer (or raise).
        unsafe fn lookup_cached(
            slf: *mut ffi::PyObject,
            args: *const *mut ffi::PyObject,
            nargs: ffi::Py_ssize_t,
            kwnames: *mut ffi::PyObject,
        ) -> Option<*mut ffi::PyObject> {
            if nargs != 2 || !kwnames.is_null() {
                return None;
            }
            // SAFETY: see lookup_fastcall; the key's bytes are read while nothing can free them.
            unsafe {
                let (key, n) = (*args, *args.add(1));
                if ffi::PyBytes_Check(key) == 0 || ffi::PyLong_CheckExact(n) == 0 {
                    return None;
                }
                let n = ffi::PyLong_AsLongLong(n);
                if n < 1 {
                    ffi::PyErr_Clear(); // -1 may be an overflow error: the checked path says
                    return None;
                }
                let py = Python::assume_attached();
                let ring = pyo3::Borrowed::from_ptr(py, slf).cast_unchecked::<Ring>();
                let ring = ring.get();
                let n_eff = ring.inner.effective_n(usize::try_from(n).ok()?);
                let table = ring.tables.get(n_eff)?.get(py)?;
                let data = ffi::PyBytes_AS_STRING(key) as *const u8;
                let bytes = std::slice::from_raw_parts(data, ffi::Py_SIZE(key) as usize);
                let p = core::partition_of_hash(core::key_hash(bytes), ring.inner.log2q());
                let tuple = table.get(p)?.as_ptr();
                ffi::Py_INCREF(tuple);
                Some(tuple)
            }
        }

        /// Ring._lookup(*args, **kwargs) through the interpreter.
        unsafe fn lookup_checked(
            slf: *mut ffi::PyObject,
            args: *const *mut ffi::PyObject,
            nargs: ffi::Py_ssize_t,
            kwnames: *mut ffi::PyObject,
        ) -> *mut ffi::PyObject {
            // SAFETY: see lookup_fastcall; `call` holds self then the caller's arguments, in
            // the vectorcall layout that PyObject_VectorcallMethod expects.
            unsafe {
                let keywords = if kwnames.is_null() {
                    0
                } else {
                    ffi::PyTuple_GET_SIZE(kwnames)
                };
                let given = std::slice::from_raw_parts(args, (nargs + keywords) as usize);
                let mut call = Vec::with_capacity(given.len() + 1);
                call.push(slf);
                call.extend_from_slice(given);
                let name = ffi::PyUnicode_InternFromString(c"_lookup".as_ptr());
                if name.is_null() {
                    return std::ptr::null_mut();
                }
                let result = ffi::PyObject_VectorcallMethod(
                    name,
                    call.as_ptr(),
                    (nargs + 1) as usize,
                    kwnames,
                );
                ffi::Py_DECREF(name);
                result
            }
        }

        fn install_lookup_fastcall(m: &Bound<'_, PyModule>) -> PyResult<()> {
            let py = m.py();
            let ty = py.get_type::<Ring>();
            let def = Box::leak(Box::new(ffi::PyMethodDef {
                ml_name: c"lookup".as_ptr(),
                ml_meth: ffi::PyMethodDefPointer {
                    PyCFunctionFastWithKeywords: lookup_fastcall,
                },
                ml_flags: ffi::METH_FASTCALL | ffi::METH_KEYWORDS,
                ml_doc: c"lookup(key, n)\n--\n\nThe preference list of the key's partition."
                    .as_ptr(),
            }));
            // SAFETY: `def` lives forever (leaked once per module init); the type is Ring's.
            let descr = unsafe {
                Bound::from_owned_ptr_or_err(py, ffi::PyDescr_NewMethod(ty.as_type_ptr(), def))?
            };
            ty.setattr("lookup", descr)
        }

        pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
            m.add_class::<Ring>()?;
            install_lookup_fastcall(m)?;
            m.add_function(wrap_pyfunction!(key_hash, m)?)?;
            m.add_function(wrap_pyfunction!(partition_of, m)?)?;
            Ok(())
        }
    }

    pub fn register_ring(m: &Bound<'_, PyModule>) -> PyResult<()> {
        ring_py::register(m)
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

    pub fn register_merkle(m: &Bound<'_, PyModule>) -> PyResult<()> {
        merkle_py::register(m)
    }

    /// `dynacore._native.merkle`: the API of python/dynacore/core/merkle.py over crate::merkle.
    mod merkle_py {
        use pyo3::exceptions::PyTypeError;
        use pyo3::prelude::*;
        use pyo3::types::{PyBytes, PyInt, PyList, PyTuple};

        use crate::merkle::{self as core, Hash, MerkleTree, DIGEST_SIZE_BYTES};

        pyo3::import_exception!(dynacore.errors, MerkleError);

        pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
            m.add_class::<PyMerkleTree>()?;
            m.add_function(wrap_pyfunction!(digest, m)?)?;
            m.add("DIGEST_SIZE_BYTES", DIGEST_SIZE_BYTES)?;
            m.add("MIN_FANOUT", core::MIN_FANOUT)?;
            m.add("MAX_FANOUT", core::MAX_FANOUT)?;
            m.add("MIN_DEPTH", core::MIN_DEPTH)?;
            m.add("MAX_DEPTH", core::MAX_DEPTH)?;
            m.add("MAX_SEGMENTS", core::MAX_SEGMENTS)?;
            m.add("MAX_KEY_SIZE_BYTES", core::MAX_KEY_SIZE_BYTES)?;
            m.add("ZERO_HASH", PyBytes::new(m.py(), &core::ZERO_HASH))?;
            Ok(())
        }

        fn merkle_error(error: core::MerkleError) -> PyErr {
            MerkleError::new_err(error.0)
        }

        fn type_name(obj: &Bound<'_, PyAny>) -> String {
            obj.get_type()
                .name()
                .map_or_else(|_| "?".to_owned(), |n| n.to_string())
        }

        /// An int argument, checked in the body so that every bad value is a MerkleError (as
        /// in the pure twin), never a TypeError or OverflowError from argument parsing.
        #[derive(Clone, Copy)]
        pub enum IntArg {
            Int(i64),
            /// An int outside i64: out of every range.
            Huge,
            NotInt,
        }

        impl<'a, 'py> FromPyObject<'a, 'py> for IntArg {
            type Error = PyErr;

            fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
                if !obj.is_instance_of::<PyInt>() {
                    return Ok(IntArg::NotInt);
                }
                Ok(obj.extract::<i64>().map_or(IntArg::Huge, IntArg::Int))
            }
        }

        fn check_int(name: &str, arg: IntArg, low: i64, high: i64) -> PyResult<usize> {
            match arg {
                IntArg::Int(v) if (low..=high).contains(&v) => Ok(v as usize),
                IntArg::NotInt => Err(MerkleError::new_err(format!("{name} must be an int"))),
                _ => Err(MerkleError::new_err(format!(
                    "{name} must be in [{low}, {high}]"
                ))),
            }
        }

        fn bytes_arg<'a, 'py>(
            what: &str,
            obj: &'a Bound<'py, PyAny>,
        ) -> PyResult<&'a Bound<'py, PyBytes>> {
            obj.cast::<PyBytes>().map_err(|_| {
                MerkleError::new_err(format!("{what} must be bytes, got {}", type_name(obj)))
            })
        }

        fn key_arg<'a>(obj: &'a Bound<'_, PyAny>) -> PyResult<&'a [u8]> {
            let key = bytes_arg("a key", obj)?.as_bytes();
            core::check_key(key).map_err(merkle_error)?;
            Ok(key)
        }

        fn digest_arg<'a>(obj: &'a Bound<'_, PyAny>) -> PyResult<&'a Hash> {
            let value = bytes_arg("a digest", obj)?.as_bytes();
            value.try_into().map_err(|_| {
                MerkleError::new_err(format!(
                    "a digest must be {DIGEST_SIZE_BYTES} bytes, got {}",
                    value.len()
                ))
            })
        }

        /// `pairs` as a list or tuple: any other iterable is read into a list first, before
        /// the tree is borrowed (its iteration may run Python code).
        fn materialize<'py>(pairs: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
            if pairs.is_instance_of::<PyList>() || pairs.is_instance_of::<PyTuple>() {
                return Ok(pairs.clone());
            }
            let not_iterable = |_| {
                MerkleError::new_err(format!("pairs must be iterable, got {}", type_name(pairs)))
            };
            let items = pairs
                .try_iter()
                .map_err(not_iterable)?
                .collect::<PyResult<Vec<_>>>()
                .map_err(|e| {
                    if e.is_instance_of::<PyTypeError>(pairs.py()) {
                        MerkleError::new_err(e.to_string())
                    } else {
                        e
                    }
                })?;
            Ok(PyList::new(pairs.py(), items)?.into_any())
        }

        /// Loads every pair of a list or tuple into `tree` (update_many, or rebuild when
        /// `replace`); a bad pair raises before any pair is applied.
        fn load(tree: &mut MerkleTree, pairs: &Bound<'_, PyAny>, replace: bool) -> PyResult<()> {
            if let Ok(list) = pairs.cast::<PyList>() {
                let n = list.len();
                let mut loader = tree.loader(replace, n);
                for i in 0..n {
                    prefetch_ahead(list, i);
                    push_pair(&mut loader, &list.get_item(i)?)?;
                }
                loader.commit();
            } else {
                let tuple = pairs.cast::<PyTuple>()?;
                let mut loader = tree.loader(replace, tuple.len());
                for pair in tuple.iter_borrowed() {
                    push_pair(&mut loader, &pair)?;
                }
                loader.commit();
            }
            Ok(())
        }

        /// Pairs ahead of the one being read whose memory is requested now: a list of pairs in
        /// no particular memory order (say, from a dict) otherwise costs three cache misses per
        /// pair (the tuple, the key, the digest), one after the other.
        const LOOKAHEAD_PAIRS: usize = 8;

        /// Prefetches the tuple LOOKAHEAD_PAIRS ahead of `i`, and the key and digest of the
        /// tuple half as far ahead (prefetched earlier, so reading it is cheap).
        fn prefetch_ahead(list: &Bound<'_, PyList>, i: usize) {
            let n = list.len();
            if i + LOOKAHEAD_PAIRS < n {
                // SAFETY: the index is in range, and the list cannot change under us: the GIL
                // is held and no Python code runs while a batch is read. The item is only
                // prefetched, never dereferenced here.
                let item = unsafe {
                    pyo3::ffi::PyList_GET_ITEM(list.as_ptr(), (i + LOOKAHEAD_PAIRS) as isize)
                };
                prefetch(item.cast());
            }
            if i + LOOKAHEAD_PAIRS / 2 < n {
                if let Ok(item) = list.get_item(i + LOOKAHEAD_PAIRS / 2) {
                    if let Ok(pair) = item.cast::<PyTuple>() {
                        for field in pair.iter_borrowed().take(2) {
                            prefetch(field.as_ptr().cast());
                        }
                    }
                }
            }
        }

        /// A hint that memory at `address` is wanted soon; never faults, whatever the address.
        fn prefetch(address: *const u8) {
            #[cfg(target_arch = "x86_64")]
            {
                use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
                // SAFETY: a prefetch never faults and reads nothing into the program.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(address.cast()) };
            }
            #[cfg(not(target_arch = "x86_64"))]
            let _ = address;
        }

        fn push_pair(loader: &mut core::Loader<'_>, pair: &Bound<'_, PyAny>) -> PyResult<()> {
            let not_pair = || {
                MerkleError::new_err(format!(
                    "each pair must be a (key, digest) tuple, got {}",
                    type_name(pair)
                ))
            };
            let tuple = pair.cast::<PyTuple>().map_err(|_| not_pair())?;
            if tuple.len() != 2 {
                return Err(not_pair());
            }
            let key = tuple.get_borrowed_item(0)?;
            let value = tuple.get_borrowed_item(1)?;
            let key = bytes_arg("a key", &key)?.as_bytes();
            loader.push(key, digest_arg(&value)?).map_err(merkle_error)
        }

        /// BLAKE3-256 of `data` (32 bytes).
        #[pyfunction]
        fn digest<'py>(data: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
            let data = bytes_arg("digest() data", data)?;
            Ok(PyBytes::new(data.py(), &core::digest(data.as_bytes())))
        }

        fn hash_list<'py>(py: Python<'py>, hashes: &[Hash]) -> PyResult<Bound<'py, PyList>> {
            PyList::new(py, hashes.iter().map(|h| PyBytes::new(py, h)))
        }

        /// A Merkle tree over fanout ** depth key segments, hashed lazily (dirty tracking).
        #[pyclass(name = "MerkleTree", module = "dynacore._native.merkle")]
        pub struct PyMerkleTree {
            tree: MerkleTree,
            /// levels[d]: the hashes at depth d as a list of bytes, kept from one level() call
            /// to the next until the tree changes (level() then costs a list copy).
            levels: Vec<Option<Py<PyList>>>,
        }

        impl PyMerkleTree {
            fn changed(&mut self) {
                self.levels.iter_mut().for_each(|cached| *cached = None);
            }

            /// The hashes at `depth` as a list: the cached one, or a new one that is cached.
            fn level_list<'py>(
                &mut self,
                py: Python<'py>,
                depth: usize,
            ) -> PyResult<Bound<'py, PyList>> {
                if let Some(cached) = &self.levels[depth] {
                    return Ok(cached.bind(py).clone());
                }
                let list = hash_list(py, self.tree.level(depth).map_err(merkle_error)?)?;
                self.levels[depth] = Some(list.clone().unbind());
                Ok(list)
            }
        }

        #[pymethods]
        impl PyMerkleTree {
            #[new]
            #[pyo3(signature = (fanout = IntArg::Int(16), depth = IntArg::Int(3)))]
            fn new(fanout: IntArg, depth: IntArg) -> PyResult<Self> {
                let fanout = check_int("fanout", fanout, 0, i64::MAX)?;
                let depth = check_int("depth", depth, 0, i64::MAX)?;
                let tree = MerkleTree::new(fanout as u64, depth as u64).map_err(merkle_error)?;
                let levels = (0..=tree.depth()).map(|_| None).collect();
                Ok(PyMerkleTree { tree, levels })
            }

            #[getter]
            fn fanout(&self) -> usize {
                self.tree.fanout()
            }

            #[getter]
            fn depth(&self) -> usize {
                self.tree.depth()
            }

            #[getter]
            fn segments(&self) -> usize {
                self.tree.segments()
            }

            #[getter]
            fn size(&self) -> usize {
                self.tree.size()
            }

            fn segment_of(&self, key: &Bound<'_, PyAny>) -> PyResult<usize> {
                Ok(self.tree.segment_of(key_arg(key)?))
            }

            /// Insert or replace the digest of `key`.
            fn update(
                &mut self,
                key: &Bound<'_, PyAny>,
                digest: &Bound<'_, PyAny>,
            ) -> PyResult<()> {
                let (key, digest) = (key_arg(key)?, digest_arg(digest)?);
                self.changed();
                self.tree.update(key, digest).map_err(merkle_error)
            }

            /// Forget `key`; an absent key is a no-op.
            fn remove(&mut self, key: &Bound<'_, PyAny>) -> PyResult<()> {
                let key = key_arg(key)?;
                self.changed();
                self.tree.remove(key).map_err(merkle_error)
            }

            /// update() each pair in order; a bad pair raises before any pair is applied.
            fn update_many(slf: &Bound<'_, Self>, pairs: &Bound<'_, PyAny>) -> PyResult<()> {
                let pairs = materialize(pairs)?;
                let mut this = slf.borrow_mut();
                this.changed();
                load(&mut this.tree, &pairs, false)
            }

            /// Replace the whole content by `pairs` (a later duplicate key wins).
            fn rebuild(slf: &Bound<'_, Self>, pairs: &Bound<'_, PyAny>) -> PyResult<()> {
                let pairs = materialize(pairs)?;
                let mut this = slf.borrow_mut();
                this.changed();
                load(&mut this.tree, &pairs, true)
            }

            fn root<'py>(&mut self, py: Python<'py>) -> Bound<'py, PyBytes> {
                PyBytes::new(py, &self.tree.root())
            }

            /// All fanout ** depth hashes at `depth` (0 is the root, self.depth the segments).
            fn level<'py>(
                &mut self,
                py: Python<'py>,
                depth: IntArg,
            ) -> PyResult<Bound<'py, PyList>> {
                let depth = check_int("depth", depth, 0, self.tree.depth() as i64)?;
                let level = self.level_list(py, depth)?;
                Ok(level.get_slice(0, level.len()))
            }

            /// The hashes at `depth` of the nodes `indexes`, in the order asked.
            fn hashes<'py>(
                slf: &Bound<'py, Self>,
                depth: IntArg,
                indexes: &Bound<'py, PyAny>,
            ) -> PyResult<Bound<'py, PyList>> {
                let (tree_depth, bits) = {
                    let this = slf.borrow();
                    (
                        this.tree.depth(),
                        this.tree.fanout().trailing_zeros() as usize,
                    )
                };
                let depth = check_int("depth", depth, 0, tree_depth as i64)?;
                let high = (1i64 << (bits * depth)) - 1;
                // Read every index before the tree is borrowed: iterating may run Python code.
                let type_error = |e: PyErr| {
                    if e.is_instance_of::<PyTypeError>(slf.py()) {
                        MerkleError::new_err(format!("indexes must be an iterable of ints: {e}"))
                    } else {
                        e
                    }
                };
                let mut wanted = Vec::new();
                for index in indexes.try_iter().map_err(type_error)? {
                    let index = index.map_err(type_error)?.extract::<IntArg>()?;
                    wanted.push(check_int("index", index, 0, high)?);
                }
                let this = &mut *slf.borrow_mut();
                if let Some(cached) = &this.levels[depth] {
                    let level = cached.bind(slf.py());
                    let items = wanted.iter().map(|&i| level.get_item(i));
                    return PyList::new(slf.py(), items.collect::<PyResult<Vec<_>>>()?);
                }
                let hashes = this.tree.hashes(depth, &wanted).map_err(merkle_error)?;
                hash_list(slf.py(), &hashes)
            }

            /// The (key, digest) pairs of segment `index`, sorted by key.
            fn segment<'py>(&self, py: Python<'py>, index: IntArg) -> PyResult<Bound<'py, PyList>> {
                let high = self.tree.segments() as i64 - 1;
                let index = check_int("index", index, 0, high)?;
                let records = self.tree.segment(index).map_err(merkle_error)?;
                let items: Vec<_> = records
                    .map(|r| (PyBytes::new(py, r.key), PyBytes::new(py, r.digest)))
                    .collect();
                PyList::new(py, items)
            }

            /// The sorted indexes of the segments whose contents differ between the two trees.
            fn diff(slf: &Bound<'_, Self>, other: &Bound<'_, PyAny>) -> PyResult<Vec<usize>> {
                let other = other.cast::<PyMerkleTree>().map_err(|_| {
                    MerkleError::new_err(format!(
                        "diff() needs a MerkleTree, got {}",
                        type_name(other)
                    ))
                })?;
                if slf.is(other) {
                    return Ok(Vec::new());
                }
                let mut this = slf.borrow_mut();
                let mut that = other.borrow_mut();
                this.tree.diff(&mut that.tree).map_err(merkle_error)
            }

            fn __eq__(&self, other: PyRef<'_, Self>) -> bool {
                self.tree.same_contents(&other.tree)
            }

            fn __repr__(&self) -> String {
                format!(
                    "MerkleTree(fanout={}, depth={}, size={})",
                    self.tree.fanout(),
                    self.tree.depth(),
                    self.tree.size()
                )
            }
        }
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

    // ===================== localread bindings =====================

    pub fn register_localread(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add_class::<localread_py::FencedReader>()?;
        m.add_function(wrap_pyfunction!(localread_py::classify, m)?)?;
        m.add("FLAGS_OFFSET", crate::localread::FLAGS_OFFSET)?;
        m.add("PLAIN_MARKER_SIZE", crate::localread::PLAIN_MARKER_SIZE)?;
        Ok(())
    }

    /// dynacore._native.localread: the Python face of crate::localread, with the API of
    /// core/localread.py. `FencedReader.read_key` is the embedded cache's local get: the key,
    /// the fence, one short LMDB read transaction through py-lmdb's own objects, and the decode,
    /// in one call.
    mod localread_py {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use std::time::{Duration, Instant};

        use pyo3::exceptions::{PyTimeoutError, PyTypeError, PyValueError};
        use pyo3::ffi;
        use pyo3::intern;
        use pyo3::prelude::*;
        use pyo3::types::{PyBool, PyBytes, PyList, PyString};

        use crate::localread::{self as core, Stored};

        pyo3::import_exception!(dynacore.errors, StorageClosed);
        pyo3::import_exception!(dynacore.errors, VersionError);

        const CLOSE_POLL: Duration = Duration::from_micros(100);

        /// `callable(*args)` through the vectorcall protocol (no argument tuple to build).
        fn vectorcall<'py>(
            py: Python<'py>,
            callable: &Py<PyAny>,
            args: &[*mut ffi::PyObject],
        ) -> PyResult<Bound<'py, PyAny>> {
            // SAFETY: the GIL is held (py); every pointer in args is a live object borrowed from
            // the caller for the length of the call; the result is a new reference or NULL with
            // an exception set, which from_owned_ptr_or_err turns into Err.
            unsafe {
                let result = ffi::PyObject_Vectorcall(
                    callable.as_ptr(),
                    args.as_ptr(),
                    args.len(),
                    std::ptr::null_mut(),
                );
                Bound::from_owned_ptr_or_err(py, result)
            }
        }

        fn to_python<'py>(py: Python<'py>, stored: Stored<'_>) -> PyResult<Bound<'py, PyAny>> {
            Ok(match stored {
                Stored::Plain(data) => PyBytes::new(py, data).into_any(),
                Stored::Values(values) => {
                    PyList::new(py, values.into_iter().map(|v| PyBytes::new(py, v)))?.into_any()
                }
            })
        }

        fn check_header(header_size: usize) -> PyResult<()> {
            if header_size < core::FLAGS_OFFSET + core::PLAIN_MARKER_SIZE {
                return Err(PyValueError::new_err(format!(
                    "header_size {header_size} does not cover the flags and the expiry"
                )));
            }
            Ok(())
        }

        fn classify_bytes<'py>(
            found: &Bound<'py, PyAny>,
            header_size: usize,
            tag: u8,
        ) -> PyResult<Bound<'py, PyAny>> {
            let set = found
                .cast::<PyBytes>()
                .map_err(|_| PyTypeError::new_err("a version set must be bytes"))?;
            let stored = core::classify(set.as_bytes(), header_size, tag)
                .map_err(|e| VersionError::new_err(e.0))?;
            to_python(found.py(), stored)
        }

        /// A set's plain data, or else every value of the set (see core/localread.py).
        #[pyfunction]
        pub fn classify<'py>(
            set_bytes: &Bound<'py, PyAny>,
            header_size: usize,
            tag: u8,
        ) -> PyResult<Bound<'py, PyAny>> {
            check_header(header_size)?;
            classify_bytes(set_bytes, header_size, tag)
        }

        /// Reads of one LMDB database from any thread, fenced against close.
        #[pyclass(module = "dynacore._native.localread", name = "FencedReader", frozen)]
        pub struct FencedReader {
            begin: Py<PyAny>,
            db: Py<PyAny>,
            get: Py<PyAny>, // the transaction type's unbound `get`
            header_size: usize,
            tag: u8,
            prefix: Vec<u8>,
            max_stored_bytes: usize,
            closed: AtomicBool,
            inflight: AtomicUsize,
        }

        /// One read in flight; counted down when the read ends, however it ends.
        struct InFlight<'a>(&'a AtomicUsize);

        impl Drop for InFlight<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }

        impl FencedReader {
            fn read_stored<'py>(
                &self,
                py: Python<'py>,
                key: &Bound<'py, PyAny>,
            ) -> PyResult<Option<Bound<'py, PyAny>>> {
                self.inflight.fetch_add(1, Ordering::SeqCst);
                let _in_flight = InFlight(&self.inflight);
                if self.closed.load(Ordering::SeqCst) {
                    return Err(StorageClosed::new_err("the store is closed"));
                }
                let txn = vectorcall(py, &self.begin, &[self.db.as_ptr()])?;
                let found = vectorcall(py, &self.get, &[txn.as_ptr(), key.as_ptr()])?;
                drop(txn); // aborts the read transaction
                if found.is_none() {
                    return Ok(None);
                }
                classify_bytes(&found, self.header_size, self.tag).map(Some)
            }
        }

        #[pymethods]
        impl FencedReader {
            #[new]
            #[pyo3(signature = (begin, db, header_size, tag, prefix = None, max_stored_bytes = 0))]
            fn new(
                begin: Bound<'_, PyAny>,
                db: Bound<'_, PyAny>,
                header_size: usize,
                tag: u8,
                prefix: Option<Vec<u8>>,
                max_stored_bytes: usize,
            ) -> PyResult<Self> {
                if !begin.is_callable() {
                    return Err(PyTypeError::new_err("begin must be callable"));
                }
                check_header(header_size)?;
                let get = begin
                    .call1((&db,))?
                    .get_type()
                    .getattr(intern!(begin.py(), "get"))?;
                Ok(FencedReader {
                    begin: begin.unbind(),
                    db: db.unbind(),
                    get: get.unbind(),
                    header_size,
                    tag,
                    prefix: prefix.unwrap_or_default(),
                    max_stored_bytes,
                    closed: AtomicBool::new(false),
                    inflight: AtomicUsize::new(0),
                })
            }

            #[getter]
            fn closed(&self) -> bool {
                self.closed.load(Ordering::SeqCst)
            }

            fn read<'py>(
                &self,
                py: Python<'py>,
                key: &Bound<'py, PyAny>,
            ) -> PyResult<Option<Bound<'py, PyAny>>> {
                self.read_stored(py, key)
            }

            fn read_key<'py>(
                &self,
                py: Python<'py>,
                key: &Bound<'py, PyAny>,
            ) -> PyResult<Option<Bound<'py, PyAny>>> {
                let raw: &[u8] = if let Ok(b) = key.cast_exact::<PyBytes>() {
                    b.as_bytes()
                } else if let Ok(s) = key.cast_exact::<PyString>() {
                    s.to_str()?.as_bytes()
                } else {
                    return Ok(Some(PyBool::new(py, false).to_owned().into_any()));
                };
                if self.prefix.len() + raw.len() > self.max_stored_bytes {
                    return Ok(Some(PyBool::new(py, false).to_owned().into_any()));
                }
                let stored = PyBytes::new_with(py, self.prefix.len() + raw.len(), |buf| {
                    buf[..self.prefix.len()].copy_from_slice(&self.prefix);
                    buf[self.prefix.len()..].copy_from_slice(raw);
                    Ok(())
                })?;
                self.read_stored(py, stored.as_any())
            }

            #[pyo3(signature = (timeout_s = 10.0))]
            fn close(&self, py: Python<'_>, timeout_s: f64) -> PyResult<()> {
                self.closed.store(true, Ordering::SeqCst);
                let deadline = Instant::now() + Duration::from_secs_f64(timeout_s.max(0.0));
                while self.inflight.load(Ordering::SeqCst) > 0 {
                    if Instant::now() >= deadline {
                        return Err(PyTimeoutError::new_err(format!(
                            "a read did not finish within {timeout_s} s"
                        )));
                    }
                    py.detach(|| std::thread::sleep(CLOSE_POLL));
                }
                Ok(())
            }
        }
    }

    // ===================== end localread bindings =====================
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
        add_sub(m, "localread", register_localread)?;
        Ok(())
    }
}
