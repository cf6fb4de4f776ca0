//! Credentials: the redacting value type, where values come from (sources), and the cache
//! in front of them. What is done with a value — injection, swapping, signing — is the
//! `secrets` transform's business (`crate::transforms::secrets`).

mod cache;
pub mod config;
pub mod scrub;
pub mod sources;
mod value;

pub use cache::SourceCache;
pub use config::{SourceConfig, SourceKind};
pub use sources::{CompiledSource, Fetched, Probe, SourceContext, probe};
pub use value::{SecretBytes, SecretValue, SourceError};
