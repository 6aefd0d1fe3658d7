//! L7 inspection's request-head parser and target canonicaliser, which read the agent's
//! requests inside inspected connections: a head is refused, incomplete, or parsed into one
//! whose canonical target and re-encoded head can be computed; nothing panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use openshell_sandbox::proxy::l7::{canon, rest};

fuzz_target!(|data: &[u8]| {
    for (tls, forward, allow_encoded_slash) in [(true, false, false), (false, true, true)] {
        let destination = rest::Destination {
            host: "api.example.com",
            port: if tls { 443 } else { 80 },
            tls,
            forward,
        };
        if let Ok(Some(head)) = rest::parse_head(data, &destination, allow_encoded_slash) {
            assert!(head.head_len <= data.len());
            let _ = head.encode("api.example.com");
            if let Some(query) = &head.target.query {
                let _ = canon::query_params(query);
            }
        }
    }
    if let Ok(target) = std::str::from_utf8(data) {
        let _ = canon::canonicalize(target, false);
        let _ = canon::canonicalize(target, true);
    }
});
