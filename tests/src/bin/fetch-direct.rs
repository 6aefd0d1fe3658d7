//! A program that knows nothing of proxies: resolves HOST with the C library, connects with a
//! blocking `connect()`, sends `GET PATH` and prints the status line and the peer. Used by the
//! transparent egress tests as "a Rust program without proxy variables".
//!
//! Usage: fetch-direct HOST PORT PATH

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [host, port, path] = args.as_slice() else {
        eprintln!("usage: fetch-direct HOST PORT PATH");
        return ExitCode::from(2);
    };
    let result = (|| -> std::io::Result<String> {
        let mut stream = TcpStream::connect((host.as_str(), port.parse().unwrap_or(80)))?;
        let peer = stream.peer_addr()?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let status = response.lines().next().unwrap_or("").to_owned();
        Ok(format!("{status} from {peer}"))
    })();
    match result {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("error: {e}");
            ExitCode::from(1)
        }
    }
}
