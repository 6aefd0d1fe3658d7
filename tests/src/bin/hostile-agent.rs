//! `hostile-agent ATTACK [ARGS]`: an agent that attacks the supervisor itself rather than the
//! sandbox's walls (those are `escape-probe`'s): its log destination, its threads, its memory
//! and its accounting. Each attack prints what it did on stdout, one `key value` line each, for
//! the test to compare with what the supervisor logged.
//!
//! - `tcooff`: stops the output of the terminal on stderr (`tcflow(TCOOFF)`), provokes a log
//!   line with a refused call, and waits to be stopped.
//! - `nonblock-flood N`: sets O_NONBLOCK on stderr (the open file description it shares with
//!   the supervisor), fills it until EAGAIN, then makes N refused calls.
//! - `fork-then-connect HOST:PORT`: forks until the pids limit refuses (EAGAIN), then sends
//!   `CONNECT HOST:PORT` to the proxy and prints the status line it gets.
//! - `fill-memfd MIB`: writes MIB MiB into a memfd, memory no process's resident set shows.
//! - `hold MIB`: holds MIB MiB of touched memory (resident) until killed.
//! - `refuse N [MS]`: makes N refused calls, then stays quiet for MS milliseconds.
// A test helper: failing loudly is its job.
#![allow(clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A call the sandbox's seccomp filter refuses and reports: creating a user namespace.
fn refused_call() -> i32 {
    // SAFETY: unshare with a constant flag; it fails (EPERM) under the filter.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWUSER) };
    if rc == 0 {
        panic!("unshare(CLONE_NEWUSER) was allowed: not running under the sandbox's filter");
    }
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn refuse(count: u64, quiet: Duration) {
    for _ in 0..count {
        refused_call();
    }
    println!("refused {count}");
    let _ = std::io::stdout().flush();
    std::thread::sleep(quiet);
}

fn hold(mib: usize) {
    let held = vec![0x5au8; mib << 20];
    println!("holding {}", held.len() >> 20);
    let _ = std::io::stdout().flush();
    loop {
        std::thread::sleep(Duration::from_secs(3600));
        std::hint::black_box(&held);
    }
}

fn tcooff() {
    println!("stopping the terminal's output");
    let _ = std::io::stdout().flush();
    // SAFETY: tcflow on fd 2, a terminal in this attack.
    let rc = unsafe { libc::tcflow(2, libc::TCOOFF) };
    assert_eq!(rc, 0, "tcflow: {}", std::io::Error::last_os_error());
    refused_call();
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn nonblock_flood(count: u64) {
    // SAFETY: fcntl on fd 2 with integer arguments.
    let flags = unsafe { libc::fcntl(2, libc::F_GETFL) };
    // SAFETY: as above.
    let rc = unsafe { libc::fcntl(2, libc::F_SETFL, flags | libc::O_NONBLOCK) };
    assert_eq!(rc, 0, "F_SETFL: {}", std::io::Error::last_os_error());
    let chunk = [b'#'; 4096];
    let mut filled = 0usize;
    loop {
        // SAFETY: writes from a buffer on the stack.
        let n = unsafe { libc::write(2, chunk.as_ptr().cast(), chunk.len()) };
        if n < 0 {
            let error = std::io::Error::last_os_error();
            assert_eq!(error.kind(), std::io::ErrorKind::WouldBlock, "{error}");
            break;
        }
        filled += n as usize;
    }
    println!("stderr filled {filled}");
    refuse(count, Duration::ZERO);
}

fn fork_then_connect(target: &str) {
    let mut children = Vec::new();
    let refusal = loop {
        // SAFETY: the child only pauses until it is killed.
        match unsafe { libc::fork() } {
            0 => loop {
                // SAFETY: pause takes no arguments.
                unsafe { libc::pause() };
            },
            -1 => break std::io::Error::last_os_error(),
            pid => children.push(pid),
        }
        assert!(
            children.len() < 100_000,
            "no pids limit: this attack needs one"
        );
    };
    println!("forked {}", children.len());
    println!("fork refused {}", refusal.raw_os_error().unwrap_or(0));
    let answer = connect(target);
    println!("proxy answered {answer}");
    for pid in children {
        // SAFETY: kills our own children.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    // Reaped by the sandbox's init once we exit.
}

/// Sends `CONNECT target` to the proxy; returns its status line, or what went wrong.
fn connect(target: &str) -> String {
    let mut stream = match TcpStream::connect("127.0.0.1:3128") {
        Ok(stream) => stream,
        Err(e) => return format!("connect failed: {e}"),
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(20)));
    let request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
    if let Err(e) = stream.write_all(request.as_bytes()) {
        return format!("write failed: {e}");
    }
    let mut response = Vec::new();
    let mut buf = [0u8; 1024];
    while !response.windows(2).any(|w| w == b"\r\n") {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => response.extend_from_slice(&buf[..n]),
            Err(e) => return format!("read failed: {e}"),
        }
    }
    let text = String::from_utf8_lossy(&response);
    text.lines().next().unwrap_or("nothing").to_owned()
}

fn fill_memfd(mib: u64) {
    // SAFETY: memfd_create with a constant name.
    let fd = unsafe { libc::memfd_create(c"hostile".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    let chunk = vec![0x5au8; 1 << 20];
    for written in 1..=mib {
        // SAFETY: writes from a live buffer of its length.
        let n = unsafe { libc::write(fd, chunk.as_ptr().cast(), chunk.len()) };
        assert_eq!(
            n,
            chunk.len() as isize,
            "{}",
            std::io::Error::last_os_error()
        );
        if written % 16 == 0 {
            println!("memfd {written}");
            let _ = std::io::stdout().flush();
        }
    }
    println!("memfd filled {mib}");
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |i: usize| -> u64 {
        args.get(i)
            .and_then(|n| n.parse().ok())
            .expect("a number argument")
    };
    match args.first().map(String::as_str) {
        Some("tcooff") => tcooff(),
        Some("nonblock-flood") => nonblock_flood(number(1)),
        Some("fork-then-connect") => fork_then_connect(args.get(1).expect("HOST:PORT")),
        Some("fill-memfd") => fill_memfd(number(1)),
        Some("hold") => hold(number(1) as usize),
        Some("refuse") => refuse(
            number(1),
            Duration::from_millis(args.get(2).and_then(|n| n.parse().ok()).unwrap_or(0)),
        ),
        other => panic!("unknown attack {other:?}"),
    }
}
