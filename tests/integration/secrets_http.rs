//! Vault KV v2, 1Password Connect, OAuth2 and GCP service-account sources against local
//! servers.
