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
