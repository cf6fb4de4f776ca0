//! HTTPS interception: a CA that mints a short-lived leaf certificate per TLS server name
//! ([`crate::sds`] serves them to Envoy during the handshake).

pub mod ca;
pub mod config;
pub mod leaves;

pub use config::InterceptionConfig;
