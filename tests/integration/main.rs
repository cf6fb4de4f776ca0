//! Integration tests: the real Envoy, the real portcullis binary, a real upstream, driven
//! with curl. Every test starts its own gateway on free ports.

mod common;

mod agents;
mod approvals;
mod bodies;
mod browser;
mod capture;
mod cli;
mod cli_api;
mod clients;
mod console;
mod contract;
mod control;
mod decisions;
mod failure;
mod fast_path;
mod features;
mod fleet;
mod grpc;
mod headers;
mod identity;
mod interception;
mod judge;
mod limits;
mod llm;
mod mcp;
mod mcp_harness;
mod protocol;
mod redteam;
mod reload;
mod secrets;
mod secrets_aws;
mod secrets_http;
mod store;
mod telemetry;
mod tunnels;
