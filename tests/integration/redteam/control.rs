//! The control plane under hostile or broken input: admin API bounds, store isolation and
//! liveness, the audit queue.
