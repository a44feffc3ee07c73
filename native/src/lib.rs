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
