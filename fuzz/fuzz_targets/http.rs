//! The proxy's request-head parser, which reads whatever the agent sends: a head is refused,
//! incomplete, or parsed into a request whose every derived view (target, body framing,
//! keep-alive, the head sent upstream) can be computed; the chunked-body scanner never claims
//! more bytes than it was given. The same bytes also go through the response-head parser
//! (upstream servers are not trusted either).
#![no_main]

use libfuzzer_sys::fuzz_target;
use openshell_sandbox::proxy::http::{self, Chunked};

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(request)) = http::parse_request(data) {
        assert!(request.head_len <= data.len());
        let _ = request.target.host_port();
        let _ = request.keep_alive();
        let _ = request.upstream_head();
        if request.body().is_ok() {
            let mut scanner = Chunked::default();
            if let Ok(consumed) = scanner.advance(&data[request.head_len..]) {
                assert!(consumed <= data.len() - request.head_len);
            }
        }
    }
    if let Ok(Some(response)) = http::parse_response(data) {
        assert!(response.head_len <= data.len());
        let _ = response.body("GET");
        let _ = response.body("HEAD");
        let _ = response.client_head(true);
    }
});
