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

    pub fn register_versions(_m: &Bound<'_, PyModule>) -> PyResult<()> {
        Ok(())
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
