//! The channel between Envoy and Portcullis, and what Envoy's listeners take from the workload
//! (X-Forwarded-For, request ids, SNI).
