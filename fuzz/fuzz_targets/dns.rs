//! The policy resolver's wire parser, which reads whatever the agent sends to its nameserver
//! address (queries) and what the upstream resolver answers (responses), and the readers of
//! the pod's resolv.conf and hosts files: errors carry a code to answer with, answers fit the
//! client's limit, nothing panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use openshell_sandbox::proxy::dns::{config, wire};

fuzz_target!(|data: &[u8]| {
    if let Ok(query) = wire::parse_query(data) {
        for rcode in [wire::Rcode::NoError, wire::Rcode::NxDomain] {
            let answer = wire::answer(&query, rcode, &[], query.udp_limit);
            assert!(answer.len() <= query.udp_limit.max(512));
        }
    }
    let _ = wire::parse_response(data, 0x1234, "example.com", 1);
    let _ = wire::parse_response(data, 0x1234, "example.com", 28);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = config::ResolvConf::parse(text);
        let _ = config::parse_hosts(text);
    }
});
