use super::*;

fn request(raw: &str) -> Result<Request, HttpError> {
    parse_request(raw.as_bytes()).map(|r| r.expect("complete head"))
}

#[test]
fn connect_targets() {
    let r =
        request("CONNECT api.github.com:443 HTTP/1.1\r\nHost: api.github.com:443\r\n\r\n").unwrap();
    assert_eq!(
        r.target,
        Target::Connect {
            host: "api.github.com".into(),
            port: 443
        }
    );
    let r = request("CONNECT [2001:db8::1]:8443 HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(
        r.target,
        Target::Connect {
            host: "2001:db8::1".into(),
            port: 8443
        }
    );
    assert!(
        request("CONNECT api.github.com HTTP/1.1\r\n\r\n").is_err(),
        "port is required"
    );
    assert!(request("CONNECT a.com:0 HTTP/1.1\r\n\r\n").is_err());
    assert!(request("CONNECT a.com:99999 HTTP/1.1\r\n\r\n").is_err());
    assert!(request("CONNECT a%2fb.com:443 HTTP/1.1\r\n\r\n").is_err());
}

#[test]
fn absolute_form_targets() {
    let r = request("GET http://Example.com/a/b?c=d HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(
        r.target,
        Target::Forward {
            host: "Example.com".into(),
            port: 80,
            path: "/a/b?c=d".into()
        }
    );
    let r = request("GET http://10.0.0.1:8080 HTTP/1.0\r\n\r\n").unwrap();
    assert_eq!(
        r.target,
        Target::Forward {
            host: "10.0.0.1".into(),
            port: 8080,
            path: "/".into()
        }
    );
    let r = request("GET http://h?q=1 HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(
        r.target,
        Target::Forward {
            host: "h".into(),
            port: 80,
            path: "/?q=1".into()
        }
    );
    let https = request("GET https://example.com/ HTTP/1.1\r\n\r\n").unwrap_err();
    assert!(https.to_string().contains("use CONNECT"), "{https}");
    let origin = request("GET /index.html HTTP/1.1\r\n\r\n").unwrap_err();
    assert!(origin.to_string().contains("forward proxy"), "{origin}");
    assert!(request("GET http://user:pw@example.com/ HTTP/1.1\r\n\r\n").is_err());
}

#[test]
fn incomplete_and_garbage_heads() {
    assert!(
        parse_request(b"GET http://a/ HTTP/1.1\r\nHost: a\r\n")
            .unwrap()
            .is_none()
    );
    assert!(parse_request(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03").is_err());
}

#[test]
fn request_framing() {
    let body = |h: &str| {
        request(&format!("POST http://a/ HTTP/1.1\r\n{h}\r\n"))
            .unwrap()
            .body()
    };
    assert_eq!(body(""), Ok(Body::Empty));
    assert_eq!(body("Content-Length: 0\r\n"), Ok(Body::Empty));
    assert_eq!(body("Content-Length: 12\r\n"), Ok(Body::Length(12)));
    assert_eq!(
        body("Content-Length: 12\r\nContent-Length: 12\r\n"),
        Ok(Body::Length(12))
    );
    assert!(body("Content-Length: 12\r\nContent-Length: 13\r\n").is_err());
    assert!(body("Content-Length: -1\r\n").is_err());
    assert!(body("Content-Length: 1e3\r\n").is_err());
    assert_eq!(
        body("Transfer-Encoding: gzip, chunked\r\n"),
        Ok(Body::Chunked)
    );
    assert!(
        body("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n").is_err(),
        "smuggling"
    );
    assert!(body("Transfer-Encoding: gzip\r\n").is_err());
}

#[test]
fn response_framing() {
    let res = |raw: &str| parse_response(raw.as_bytes()).unwrap().unwrap();
    assert_eq!(
        res("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n").body("GET"),
        Ok(Body::Length(5))
    );
    assert_eq!(
        res("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n").body("HEAD"),
        Ok(Body::Empty)
    );
    assert_eq!(
        res("HTTP/1.1 204 No Content\r\n\r\n").body("GET"),
        Ok(Body::Empty)
    );
    assert_eq!(
        res("HTTP/1.1 304 Not Modified\r\n\r\n").body("GET"),
        Ok(Body::Empty)
    );
    assert_eq!(
        res("HTTP/1.0 200 OK\r\n\r\n").body("GET"),
        Ok(Body::UntilClose)
    );
    assert_eq!(
        res("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").body("GET"),
        Ok(Body::Chunked)
    );
    assert!(res("HTTP/1.1 100 Continue\r\n\r\n").is_interim());
}

#[test]
fn keep_alive_defaults_by_version() {
    let ka = |raw: &str| request(raw).unwrap().keep_alive();
    assert!(ka("GET http://a/ HTTP/1.1\r\n\r\n"));
    assert!(!ka("GET http://a/ HTTP/1.1\r\nConnection: close\r\n\r\n"));
    assert!(!ka("GET http://a/ HTTP/1.0\r\n\r\n"));
    assert!(ka(
        "GET http://a/ HTTP/1.0\r\nProxy-Connection: Keep-Alive\r\n\r\n"
    ));
}

#[test]
fn upstream_head_drops_hop_by_hop_and_sets_host() {
    let r = request(
        "POST http://api.example.com:8080/v1?x=1 HTTP/1.1\r\nHost: evil.example\r\n\
         Proxy-Authorization: Basic Zm9v\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\n\
         Keep-Alive: timeout=5\r\nContent-Length: 3\r\nAccept: */*\r\n\r\n",
    )
    .unwrap();
    let head = String::from_utf8(r.upstream_head()).unwrap();
    assert_eq!(
        head,
        "POST /v1?x=1 HTTP/1.1\r\nHost: api.example.com:8080\r\nContent-Length: 3\r\n\
         Accept: */*\r\nConnection: close\r\n\r\n"
    );
}

#[test]
fn client_head_declares_connection() {
    let res = parse_response(
        b"HTTP/1.1 200 OK\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\nContent-Length: 2\r\n\r\n",
    )
    .unwrap()
    .unwrap();
    assert_eq!(
        String::from_utf8(res.client_head(true)).unwrap(),
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\n"
    );
}

#[test]
fn error_responses_are_json() {
    let raw = String::from_utf8(error_response(
        403,
        "policy_denied",
        "CONNECT a:1",
        "no rule",
    ))
    .unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 403 Forbidden\r\n"));
    assert!(head.contains(&format!("Content-Length: {}", body.len())));
    let json: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(json["error"], "policy_denied");
    assert_eq!(json["detail"], "CONNECT a:1");
    assert_eq!(json["reason"], "no rule");
}

const CHUNKED: &[u8] =
    b"4\r\nWiki\r\n5;ext=1\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-Trailer: a\r\n\r\n";

#[test]
fn chunked_end_is_found_at_every_split() {
    let mut stream = CHUNKED.to_vec();
    stream.extend_from_slice(b"GET http://next/ HTTP/1.1\r\n\r\n");
    for split in 0..=stream.len() {
        let mut scanner = Chunked::default();
        let first = scanner.advance(&stream[..split]).unwrap();
        let second = scanner.advance(&stream[first..]).unwrap();
        assert_eq!(scanner, Chunked::Done, "split at {split}");
        assert_eq!(first + second, CHUNKED.len(), "split at {split}");
    }
}

#[test]
fn chunked_byte_by_byte_and_errors() {
    let mut scanner = Chunked::default();
    let mut consumed = 0;
    for b in CHUNKED {
        consumed += scanner.advance(std::slice::from_ref(b)).unwrap();
    }
    assert_eq!((scanner, consumed), (Chunked::Done, CHUNKED.len()));
    assert!(Chunked::default().advance(b"zz\r\n").is_err());
    assert!(Chunked::default().advance(b"3\r\nabcX").is_err());
    assert!(
        Chunked::default()
            .advance(b"ffffffffffffffffff\r\n")
            .is_err(),
        "overflow"
    );
    let mut empty = Chunked::default();
    assert_eq!(empty.advance(b"0\r\n\r\n").unwrap(), 5);
    assert_eq!(empty, Chunked::Done);
}

#[test]
fn a_head_may_be_complete_only_once_a_blank_line_came() {
    let head = b"GET http://a.example/ HTTP/1.1\r\nHost: a.example\r\n\r\n";
    let end = head.len();
    // Every split point: the end is seen in the bytes after it, or in the three before.
    for from in 0..end {
        assert!(may_complete_head(head, from), "from {from}");
    }
    assert!(!may_complete_head(&head[..end - 1], 0), "no blank line yet");
    // A bare LF blank line counts too: the parser then says what is wrong with it.
    assert!(may_complete_head(b"GET / HTTP/1.1\n\n", 10));
    assert!(!may_complete_head(b"GET / HTTP/1.1\r\nX: \r\r\n", 0));
}
