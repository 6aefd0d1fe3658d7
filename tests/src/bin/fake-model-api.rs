//! The fake model APIs as a program, for trying an agent CLI against them by hand (and for
//! demonstrations): serves on `--listen` (default `[::]:443`), writes the test CA to
//! `--ca-file`, and prints one JSON line per request received.
//!
//! ```text
//! fake-model-api --listen [::]:8443 --ca-file /tmp/fake-ca.pem
//! ```
// A command-line tool for tests: failing loudly on bad arguments is the point.
#![allow(clippy::expect_used, clippy::panic)]

use std::net::TcpListener;
use std::time::Duration;

use openshell_tests::fake_api::{FakeApi, HOSTS, TestCa, model};
use serde_json::json;

fn main() {
    let mut listen = "[::]:443".to_owned();
    let mut ca_file = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next().expect("--listen ADDRESS"),
            "--ca-file" => ca_file = Some(args.next().expect("--ca-file PATH")),
            other => panic!(
                "unknown argument {other:?}; usage: fake-model-api [--listen ADDR] [--ca-file PATH]"
            ),
        }
    }
    let ca = TestCa::new(HOSTS);
    if let Some(path) = &ca_file {
        std::fs::write(path, ca.ca_pem()).unwrap_or_else(|e| panic!("{path}: {e}"));
    }
    let listener = TcpListener::bind(&listen).unwrap_or_else(|e| panic!("bind {listen}: {e}"));
    let api = FakeApi::start(listener, &ca);
    eprintln!("fake-model-api: serving {} on {listen}", HOSTS.join(", "));
    let mut printed = 0;
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let seen = api.seen();
        for s in &seen[printed..] {
            let line = json!({
                "sni": s.sni,
                "method": s.request.method,
                "target": s.request.target,
                "websocket_message": s.websocket_message,
                "credential": s.credential(),
                "call": s.call().map(|c| format!("{c:?}")),
                "turn": s.call().map(|c| format!("{:?}", model::turn(c, &s.json()))),
                "body": String::from_utf8_lossy(&s.request.body[..s.request.body.len().min(400)]),
            });
            println!("{line}");
        }
        printed = seen.len();
    }
}
