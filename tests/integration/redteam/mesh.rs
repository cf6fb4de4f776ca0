//! Mesh identity through Envoy: a peer certificate's URI SAN becomes the identity, and only from
//! the right trust domain.
