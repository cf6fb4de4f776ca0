//! Requests whose decision needs the body: no forward without a decision, JSON-RPC recognised by
//! parsing, conditions that fail closed.
