//! Vigil's HTTP API, as a library so it can be tested without a socket
//! (`router(state).oneshot(request)`); the `vigil` binary serves it.

pub mod http;
