//! L7 inspection: HTTP requests on endpoints with `protocol: rest` (or `websocket`) are
//! decided one by one, with TLS terminated where the client speaks it.

pub mod canon;
pub mod rules;
pub mod tls;
pub mod trust;
