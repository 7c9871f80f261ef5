//! Placeholder: the verify benchmark lands with the Verifier.
fn main() {}
