//! Parity with what the upstream reads: encoded paths, host forms, method case, conflicting
//! authorities.
