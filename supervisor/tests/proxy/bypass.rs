//! Going around the policy: direct TCP, UDP, IPv6 and DNS from inside the sandbox fail at once
//! (TCP refused by the transparent path, which finds no rule; UDP and DNS to anything but the
//! sandbox's resolver have no route: the agent's namespace holds only loopback), the
//! supervisor logs each attempt with pid, executable and destination, and the test host
//! receives nothing, although the same attempts from the pod, outside the sandbox, do reach
//! it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use crate::support::{HOST, HOST_V6, Lab, Side, Upstream, python, require_kernel};

const PORT: u16 = 9000;
/// A direct attempt must fail faster than this, measured by the client in the sandbox: a
/// datagram fails in the kernel (no route)...
const FAIL_WITHIN_MS: f64 = 10.0;
/// ...a TCP connect is answered by the supervisor, one round trip to it (a loaded 2-vCPU
/// machine can take a scheduling tick or two to wake it): still at once next to a connect
/// timeout.
const REFUSED_WITHIN_MS: f64 = 50.0;

/// One attempt: kind (as agent.py names it), destination, the errno the agent gets and the
/// reason the log must give.
const ATTEMPTS: &[(&str, IpAddr, u16, &str, &str)] = &[
    ("tcp", IpAddr::V4(HOST), PORT, REFUSED, NO_RULE),
    ("udp", IpAddr::V4(HOST), PORT, NO_ROUTE, UDP),
    ("tcp", IpAddr::V6(HOST_V6), PORT, REFUSED, NO_RULE),
    ("udp", IpAddr::V6(HOST_V6), PORT, NO_ROUTE, UDP),
    ("dns", IpAddr::V4(HOST), 53, NO_ROUTE, DIRECT_DNS),
    ("dns", IpAddr::V6(HOST_V6), 53, NO_ROUTE, DIRECT_DNS),
];
const REFUSED: &str = "ECONNREFUSED";
const NO_ROUTE: &str = "ENETUNREACH";
const NO_RULE: &str = "no name this sandbox resolved points to";
const UDP: &str = "UDP leaves the sandbox only as DNS to its resolver";
const DIRECT_DNS: &str = "direct DNS: the sandbox's resolver is the nameserver in /etc/resolv.conf";

/// Makes each attempt from the pod itself, where the routes exist.
fn attempt_from_pod(lab: &Lab) {
    lab.net.enter(Side::Pod, || {
        for (kind, ip, port, _, _) in ATTEMPTS {
            let to = SocketAddr::new(*ip, *port);
            match *kind {
                "tcp" => drop(
                    TcpStream::connect_timeout(&to, Duration::from_secs(2))
                        .unwrap_or_else(|e| panic!("control: tcp to {to}: {e}")),
                ),
                _ => {
                    let any: IpAddr = match ip {
                        IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
                        IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
                    };
                    let socket = UdpSocket::bind((any, 0)).expect("udp socket");
                    socket
                        .send_to(b"control", to)
                        .unwrap_or_else(|e| panic!("control: udp to {to}: {e}"));
                }
            }
        }
    });
}

#[test]
fn direct_egress_is_refused_fast_and_logged() {
    let Some(lab) = Lab::start() else { return };
    let any = |port| SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port);
    let upstream = Upstream::start(&lab.net, Side::Host, &[any(PORT)], &[any(PORT), any(53)]);
    // The control: without the sandbox every attempt arrives, so "saw nothing" below means
    // something.
    attempt_from_pod(&lab);
    let deadline = Instant::now() + Duration::from_secs(5);
    while upstream.seen().len() < ATTEMPTS.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let control = upstream.seen();
    assert_eq!(
        control.len(),
        ATTEMPTS.len(),
        "control attempts: {control:?}"
    );

    let specs: Vec<String> = ATTEMPTS
        .iter()
        .map(|(kind, ip, port, _, _)| format!("{kind}:{}", SocketAddr::new(*ip, *port)))
        .collect();
    let mut args = vec!["directs"];
    args.extend(specs.iter().map(String::as_str));
    let policy = lab.policy("policy.yaml", "");
    let run = lab.sandbox(&policy).agent(&args);
    assert_eq!(run.code, 0, "{run}");
    if !require_kernel(
        run.messages("cannot hand refused system calls").is_empty(),
        "seccomp user notification (direct egress is refused but not logged)",
    ) {
        return;
    }
    let results = run.json();
    let python = python();
    let denied = run.events("denied", "network");
    for (i, (kind, ip, port, errno, why)) in ATTEMPTS.iter().enumerate() {
        let result = &results[i];
        assert_eq!(result["errno"], *errno, "{kind} to {ip}: {run}");
        let ms = result["ms"].as_f64().expect("ms");
        let within = if *kind == "tcp" {
            REFUSED_WITHIN_MS
        } else {
            FAIL_WITHIN_MS
        };
        assert!(ms < within, "{kind} to {ip} took {ms} ms: {run}");
        eprintln!("direct {kind} to {ip}:{port} refused in {ms:.3} ms");
        let call = if *kind == "tcp" { "connect" } else { "sendto" };
        let what = format!("{call} to {}", SocketAddr::new(*ip, *port));
        let lines: Vec<_> = denied
            .iter()
            .filter(|l| l["what"].as_str().is_some_and(|w| w.starts_with(&what)))
            .collect();
        assert_eq!(lines.len(), 1, "one log line for {what}: {run}");
        let line = lines[0];
        assert!(line["pid"].as_u64().is_some_and(|p| p > 1), "{line}");
        assert_eq!(line["exe"], python.as_str(), "{line}");
        assert_eq!(line["host"], ip.to_string().as_str(), "{line}");
        assert_eq!(line["port"], *port, "{line}");
        assert!(
            line["why"].as_str().is_some_and(|w| w.starts_with(why)),
            "{line}"
        );
    }
    assert_eq!(
        upstream.seen(),
        control,
        "the test host saw a direct attempt"
    );
}
