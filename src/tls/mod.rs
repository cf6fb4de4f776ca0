//! HTTPS interception: a CA that mints a short-lived leaf certificate per TLS server name,
//! and the SDS service through which Envoy fetches them during the handshake — only for
//! names some policy could allow.

pub mod ca;
pub mod config;
pub mod leaves;
pub mod sds;

pub use config::InterceptionConfig;
