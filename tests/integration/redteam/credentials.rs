//! Credential containment: where a placeholder is swapped, `require`, plaintext HTTP, and
//! responses that echo a credential.
