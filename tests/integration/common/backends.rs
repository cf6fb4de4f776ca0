//! Local secret backends (Vault KV v2, 1Password Connect, OAuth2 and GCP token endpoints)
//! that implement the documented request/response formats and record what they received.
//! Filled in with those tests.
