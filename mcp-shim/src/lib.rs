//! Placeholder while the shim is written.
