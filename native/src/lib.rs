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

    /// dynacore._native.ring: the Python face of crate::ring, with the API of core/ring.py.
    mod ring_py {
        use std::collections::hash_map::DefaultHasher;
        use std::collections::HashMap;
        use std::hash::{Hash, Hasher};

        use pyo3::exceptions::{PyOverflowError, PyTypeError};
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

        /// The partition of every key, checked to be bytes.
        fn partitions(keys: &Bound<'_, PyAny>, log2q: u32) -> PyResult<Vec<usize>> {
            let part = |key: &Bound<'_, PyAny>| -> PyResult<usize> {
                Ok(core::partition_of_hash(
                    core::key_hash(key_arg(key)?),
                    log2q,
                ))
            };
            if let Ok(list) = keys.cast::<PyList>() {
                return list.iter().map(|key| part(&key)).collect();
            }
            if let Ok(tuple) = keys.cast::<PyTuple>() {
                return tuple.iter().map(|key| part(&key)).collect();
            }
            iterate(keys, "keys")?.map(|key| part(&key?)).collect()
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

            fn build_table(&self, py: Python<'_>, n_eff: usize) -> PyResult<Vec<Py<PyTuple>>> {
                let flat = self.inner.preference_table(n_eff);
                let mut interned: HashMap<&[u32], Py<PyTuple>> = HashMap::new();
                let mut table = Vec::with_capacity(self.inner.q());
                for row in flat.chunks_exact(n_eff) {
                    let tuple = match interned.get(row) {
                        Some(tuple) => tuple.clone_ref(py),
                        None => {
                            let tuple = self.tuple_of(py, row)?;
                            interned.insert(row, tuple.clone_ref(py));
                            tuple
                        }
                    };
                    table.push(tuple);
                }
                Ok(table)
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

            fn partitions_of(&self, keys: &Bound<'_, PyAny>) -> PyResult<Vec<usize>> {
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
                let parts = partitions(keys, self.inner.log2q())?;
                if let Some(table) = table {
                    return PyList::new(py, parts.iter().map(|&p| table[p].bind(py)));
                }
                let mut walks: HashMap<usize, Py<PyTuple>> = HashMap::new();
                let mut out = Vec::with_capacity(parts.len());
                for &p in &parts {
                    if let Some(tuple) = walks.get(&p) {
                        out.push(tuple.clone_ref(py));
                        continue;
                    }
                    let tuple = self.tuple_of(py, &self.inner.walk(p, n))?;
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

        pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
            m.add_class::<Ring>()?;
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

    pub fn register_versions(_m: &Bound<'_, PyModule>) -> PyResult<()> {
        Ok(())
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

    pub fn register_wire(_m: &Bound<'_, PyModule>) -> PyResult<()> {
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
