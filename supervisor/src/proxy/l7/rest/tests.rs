//! Request heads: what is refused before any decision (smuggling, fronting, upgrades), and
//! what is forwarded.

use super::*;

const TUNNEL: Destination<'static> = Destination {
    host: "api.example.com",
    port: 443,
    tls: true,
    forward: false,
};

fn parse(raw: &str) -> Result<RequestHead, HeadError> {
    parse_head(raw.as_bytes(), &TUNNEL, false).map(|h| h.expect("complete head"))
}

fn malformed(raw: &str) -> bool {
    matches!(parse(raw), Err(HeadError::Malformed(_)))
}

#[test]
fn smuggling_shapes_are_refused() {
    let cases = [
        "POST / HTTP/1.1\r\nHost: api.example.com\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: api.example.com\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: api.example.com\r\nContent-Length: 5, 6\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: api.example.com\r\nTransfer-Encoding: gzip\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: api.example.com\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: api.example.com\r\nX-A: 1\r\n folded\r\n\r\n",
        "GET / HTTP/1.1\nHost: api.example.com\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: api.example.com\nX-A: 1\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: api.example.com\r\nConnection: close, Content-Length\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: api.example.com\r\nConnection: transfer-encoding\r\n\r\n",
        "GET / HTTP/1.1\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: api.example.com\r\nHost: api.example.com\r\n\r\n",
        "CONNECT other.example:443 HTTP/1.1\r\nHost: other.example:443\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: api.example.com\r\nContent-Length: -1\r\n\r\n",
    ];
    for raw in cases {
        assert!(malformed(raw), "{raw:?}: {:?}", parse(raw));
    }
    // Identical duplicate lengths are one length.
    let same = parse(
        "POST / HTTP/1.1\r\nHost: api.example.com\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
    );
    assert_eq!(same.unwrap().framing, Body::Length(3));
}

#[test]
fn host_must_be_the_destination() {
    for ok in [
        "GET / HTTP/1.1\r\nHost: api.example.com\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: API.Example.com.:443\r\n\r\n",
        "GET https://api.example.com/x HTTP/1.1\r\nHost: api.example.com\r\n\r\n",
        "GET / HTTP/1.0\r\n\r\n",
    ] {
        assert!(parse(ok).is_ok(), "{ok:?}: {:?}", parse(ok));
    }
    for fronted in [
        "GET / HTTP/1.1\r\nHost: evil.example\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: api.example.com:8443\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: api.example.com.evil.example\r\n\r\n",
        "GET http://evil.example/ HTTP/1.1\r\nHost: api.example.com\r\n\r\n",
    ] {
        assert!(parse(fronted).is_err(), "{fronted:?}: {:?}", parse(fronted));
    }
    assert!(matches!(
        parse("GET / HTTP/1.1\r\nHost: evil.example\r\n\r\n"),
        Err(HeadError::Authority(_))
    ));
}

#[test]
fn upgrades_other_than_websocket_are_refused() {
    let h2c = "GET / HTTP/1.1\r\nHost: api.example.com\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n";
    assert!(matches!(parse(h2c), Err(HeadError::Upgrade(_))));
    let ws = parse("GET /chat HTTP/1.1\r\nHost: api.example.com\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: x\r\n\r\n").unwrap();
    assert!(ws.websocket);
    assert_eq!(
        parse_head(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", &TUNNEL, false),
        Err(HeadError::Http2)
    );
}

#[test]
fn targets_are_canonical_and_refusals_typed() {
    let head =
        parse("GET /a/./b//c/../d;x=1?q=1 HTTP/1.1\r\nHost: api.example.com\r\n\r\n").unwrap();
    assert_eq!(head.target.path, "/a/b/d");
    assert_eq!(
        parse("GET /%2e%2e/etc HTTP/1.1\r\nHost: api.example.com\r\n\r\n"),
        Err(HeadError::Target(CanonError::EscapesRoot))
    );
    assert_eq!(
        parse("GET /a%2Fb HTTP/1.1\r\nHost: api.example.com\r\n\r\n"),
        Err(HeadError::Target(CanonError::EncodedSlash))
    );
}

#[test]
fn the_forwarded_head_is_canonical_without_hop_by_hop_headers() {
    let head = parse(
        "GET /x/../y?q=1 HTTP/1.1\r\nHost: api.example.com\r\nConnection: keep-alive, X-Secret\r\n\
         X-Secret: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\nProxy-Authorization: Basic x\r\n\
         Accept: */*\r\n\r\n",
    )
    .unwrap();
    assert_eq!(
        String::from_utf8(head.encode("api.example.com:443")).unwrap(),
        "GET /y?q=1 HTTP/1.1\r\nHost: api.example.com\r\nAccept: */*\r\n\r\n"
    );
    let old = parse("GET / HTTP/1.0\r\n\r\n").unwrap();
    assert!(!old.keep_alive);
    assert_eq!(
        String::from_utf8(old.encode("api.example.com:443")).unwrap(),
        "GET / HTTP/1.0\r\nHost: api.example.com:443\r\n\r\n"
    );
}

#[test]
fn forward_requests_need_the_absolute_form_of_the_destination() {
    let forward = Destination {
        host: "api.example.com",
        port: 80,
        tls: false,
        forward: true,
    };
    let parse = |raw: &str| parse_head(raw.as_bytes(), &forward, false).map(Option::unwrap);
    let head = parse("POST http://api.example.com/a?b HTTP/1.1\r\nHost: api.example.com\r\nContent-Length: 2\r\n\r\nhi").unwrap();
    assert_eq!(head.target.target(), "/a?b");
    assert_eq!(head.framing, Body::Length(2));
    assert!(matches!(
        parse("GET /a HTTP/1.1\r\nHost: api.example.com\r\n\r\n"),
        Err(HeadError::Malformed(_))
    ));
    assert!(matches!(
        parse("GET http://other.example/a HTTP/1.1\r\nHost: other.example\r\n\r\n"),
        Err(HeadError::Authority(_))
    ));
}
