//! Portcullis: an egress policy gateway. Envoy forwards every outbound request's headers to
//! this crate's ext_proc server, which decides — under the workload's tags — whether the
//! request may leave, which headers it leaves with, and writes the audit trail.
//!
//! Layout: [`policy`] is the engine (model, compile, evaluate), [`extproc`] is only the Envoy
//! protocol, [`transforms`] is the per-request pipeline, [`identity`] turns a connection into
//! tags, [`dlp`] finds leaked credentials and personal data in bodies, [`tls`] is the
//! interception CA, [`sds`] Envoy's certificate service for it, [`audit`] and
//! [`telemetry`] record what happened. [`store`] is the control plane's versioned store,
//! [`live`] keeps the live snapshot in step with the file and the store, and [`admin`]
//! serves the admin API and, from [`console`], the web console. [`cli`] is the command line,
//! the admin API's client among it.
//! [`mcp`] reads MCP's JSON-RPC messages and writes the answers to denied ones.
//! [`network`] vets the address an allowed request connects to (the network guard).
//! [`vocab`] is the shared vocabulary under all of them: located errors, names, tags,
//! durations. `scripts/layers` checks that imports only point down the layers.

pub mod admin;
pub mod app;
pub mod approvals;
pub mod audit;
pub mod check;
pub mod cli;
pub mod config;
pub mod console;
pub mod dlp;
pub mod extproc;
pub mod identity;
pub mod inspect;
pub mod live;
pub mod mcp;
pub mod network;
pub mod policy;
pub mod request;
pub mod routes;
pub mod sds;
pub mod secrets;
pub mod snapshot;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod transforms;
pub mod vocab;
