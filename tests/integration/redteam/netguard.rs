//! The network guard: an allowed host name that resolves to an internal address is not connected
//! to.
