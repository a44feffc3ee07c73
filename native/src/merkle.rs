//! merkle: see lib.rs for the Python bindings (placeholder until implemented).
