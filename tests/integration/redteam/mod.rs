//! The red-team suite: each test plays a hostile workload (or a hostile upstream, or a local
//! process next to the gateway) against the shipped Envoy configs and the real binary, and
//! must lose. One file per boundary; docs/security.md names the test behind each guarantee.

mod body;
mod channel;
mod control;
mod credentials;
mod mesh;
mod netguard;
mod normalise;
