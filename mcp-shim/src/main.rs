//! Placeholder while the shim is written.
fn main() {}
