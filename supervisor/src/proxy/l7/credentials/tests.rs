//! The credential decisions as tables: what each request head becomes, or why it is refused;
//! bodies and responses through their filters, whole and split at every byte.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use super::body::Mode;
use super::*;
use crate::credentials::{AgentVariables, Prepared};
use crate::policy::HostPattern;
use crate::policy::credentials::{CredentialEndpoint, Source};
use crate::proxy::l7::rest::{Destination, RequestHead, parse_head};
use crate::proxy::l7::stream::Filter;

/// `API_KEY` (bound to api.example.com:443, a value with characters URLs and JSON escape),
/// `OTHER` (bound to other.example.com) and `MISSING` (optional, without a value).
fn credentials() -> Credentials {
    let credential = |name: &str, variable: &str, placeholder: &str, host: &str| Credential {
        name: name.to_owned(),
        provider: name.to_owned(),
        variable: variable.to_owned(),
        source: Source::Env(variable.to_owned()),
        placeholder: placeholder.to_owned(),
        endpoints: vec![CredentialEndpoint {
            host: HostPattern::parse(host).unwrap(),
            ports: vec![443],
        }],
        optional: true,
    };
    let list = vec![
        credential(
            "api",
            "API_KEY",
            "openshell:resolve:env:API_KEY",
            "api.example.com",
        ),
        credential(
            "other",
            "OTHER",
            "sk-ant-OPENSHELL-RESOLVE-ENV-OTHER",
            "other.example.com",
        ),
        credential(
            "missing",
            "MISSING",
            "openshell:resolve:env:MISSING",
            "api.example.com",
        ),
    ];
    let store = Store::new(&[Some(&b"sk-real/\"value+1"[..]), Some(b"sk-other"), None]).unwrap();
    let prepared = Prepared {
        credentials: Arc::new(list),
        store: Arc::new(store),
        agent: AgentVariables::default(),
    };
    Credentials::new(&prepared).unwrap().unwrap()
}

fn head(raw: &str) -> RequestHead {
    let destination = Destination {
        host: "api.example.com",
        port: 443,
        tls: true,
        forward: false,
    };
    parse_head(raw.as_bytes(), &destination, false)
        .unwrap()
        .unwrap()
}

/// The head `raw` (to api.example.com) after injection, as the server gets it.
fn injected(c: &Credentials, raw: &str) -> Result<String, Refused> {
    let mut head = head(raw);
    let plan = c.plan(&head, "api.example.com", 443, None)?;
    plan.apply(&mut head);
    Ok(String::from_utf8(head.encode("api.example.com:443")).unwrap())
}

const HOST: &str = "Host: api.example.com\r\n";

#[test]
fn placeholders_in_heads_become_values_where_bound() {
    let c = credentials();
    let basic = |s: &str| STANDARD.encode(s);
    let cases: Vec<(String, &str)> = vec![
        (
            format!("GET / HTTP/1.1\r\n{HOST}x-api-key: openshell:resolve:env:API_KEY\r\n\r\n"),
            "x-api-key: sk-real/\"value+1\r\n",
        ),
        (
            format!(
                "GET / HTTP/1.1\r\n{HOST}Authorization: Bearer openshell:resolve:env:API_KEY\r\n\r\n"
            ),
            "Authorization: Bearer sk-real/\"value+1\r\n",
        ),
        (
            format!(
                "GET / HTTP/1.1\r\n{HOST}Authorization: Basic {}\r\n\r\n",
                basic("user:openshell:resolve:env:API_KEY")
            ),
            // base64 of `user:sk-real/"value+1`
            "Authorization: Basic dXNlcjpzay1yZWFsLyJ2YWx1ZSsx\r\n",
        ),
        (
            format!("GET /bot/openshell:resolve:env:API_KEY/send HTTP/1.1\r\n{HOST}\r\n"),
            "GET /bot/sk-real%2F%22value%2B1/send HTTP/1.1\r\n",
        ),
        (
            format!("GET /q?key=openshell%3Aresolve%3Aenv%3AAPI_KEY&x=1 HTTP/1.1\r\n{HOST}\r\n"),
            "GET /q?key=sk-real%2F%22value%2B1&x=1 HTTP/1.1\r\n",
        ),
        (
            format!("GET /q?key=openshell:resolve:env:API_KEY HTTP/1.1\r\n{HOST}\r\n"),
            "GET /q?key=sk-real%2F%22value%2B1 HTTP/1.1\r\n",
        ),
    ];
    for (raw, expected) in &cases {
        let out = injected(&c, raw).unwrap_or_else(|e| panic!("{raw:?}: {e:?}"));
        assert!(out.contains(expected), "{raw:?} became {out:?}");
        assert!(!out.contains("resolve"), "{out:?}");
    }
    // Nothing to do: the head is forwarded as it came, and responses are searched.
    let plain = format!("GET /x HTTP/1.1\r\n{HOST}Accept-Encoding: gzip\r\n\r\n");
    let out = injected(&c, &plain).unwrap();
    assert!(
        out.contains("Accept-Encoding: identity") && !out.contains("gzip"),
        "{out}"
    );
}

#[test]
fn placeholders_that_may_not_go_are_refused() {
    let c = credentials();
    let mismatch = |credential| Refused::Mismatch {
        credential,
        place: "headers",
    };
    let unresolved = |credential, place| Refused::Unresolved { credential, place };
    let cases: Vec<(String, Refused)> = vec![
        (
            format!(
                "GET / HTTP/1.1\r\n{HOST}x-api-key: sk-ant-OPENSHELL-RESOLVE-ENV-OTHER\r\n\r\n"
            ),
            mismatch(1),
        ),
        (
            format!("GET / HTTP/1.1\r\n{HOST}x-api-key: openshell:resolve:env:NOBODY\r\n\r\n"),
            unresolved(None, "headers"),
        ),
        (
            format!("GET / HTTP/1.1\r\n{HOST}x-api-key: openshell:resolve:env:API_KEY2\r\n\r\n"),
            unresolved(None, "headers"),
        ),
        (
            format!(
                "GET / HTTP/1.1\r\n{HOST}x-api-key: xsk-ant-OPENSHELL-RESOLVE-ENV-OTHER\r\n\r\n"
            ),
            unresolved(None, "headers"),
        ),
        (
            format!("GET / HTTP/1.1\r\n{HOST}x-api-key: openshell:resolve:env:MISSING\r\n\r\n"),
            unresolved(Some(2), "headers"),
        ),
        (
            // Mixed-case escapes are no spelling of ours: refused once decoded.
            format!("GET /q?k=openshell%3Aresolve%3aenv%3AAPI_KEY HTTP/1.1\r\n{HOST}\r\n"),
            unresolved(None, "query"),
        ),
        (
            format!(
                "GET / HTTP/1.1\r\n{HOST}Authorization: Basic {}\r\n\r\n",
                STANDARD.encode("u:sk-ant-OPENSHELL-RESOLVE-ENV-OTHER")
            ),
            Refused::Mismatch {
                credential: 1,
                place: "Basic credentials",
            },
        ),
    ];
    for (raw, expected) in &cases {
        assert_eq!(injected(&c, raw), Err(*expected), "{raw:?}");
    }
    // The same placeholder to the host it is bound to goes through.
    let mut other = head(&format!(
        "GET / HTTP/1.1\r\n{HOST}x-api-key: sk-ant-OPENSHELL-RESOLVE-ENV-OTHER\r\n\r\n"
    ));
    let plan = c.plan(&other, "other.example.com", 443, None).unwrap();
    plan.apply(&mut other);
    assert_eq!(other.headers[1].1, b"sk-other");
    // Described by name, never by value.
    let words = c.describe(mismatch(1), "api.example.com:443");
    assert_eq!(
        words,
        "the placeholder of credential other (OTHER) in the headers is not bound to \
         api.example.com:443; it is sent only to other.example.com:443"
    );
}

#[test]
fn logs_show_credential_where_a_value_went_into_the_path() {
    let c = credentials();
    let head = head(&format!(
        "GET /bot/openshell:resolve:env:API_KEY/x HTTP/1.1\r\n{HOST}\r\n"
    ));
    let plan = c.plan(&head, "api.example.com", 443, None).unwrap();
    assert_eq!(plan.logged_path(&head), "/bot/[CREDENTIAL]/x");
}

/// Feeds `text` to `filter` cut at `cut`, and returns all it passed.
fn through(filter: &mut dyn Filter, text: &[u8], cut: usize) -> Result<Vec<u8>, std::io::Error> {
    let mut out = filter.pass(&text[..cut], false)?.bytes().to_vec();
    out.extend_from_slice(filter.pass(&text[cut..], true)?.bytes());
    Ok(out)
}

#[test]
fn bodies_get_values_escaped_for_their_type_at_any_split() {
    let c = credentials();
    let head = head(&format!(
        "POST / HTTP/1.1\r\n{HOST}Content-Type: application/json\r\nContent-Length: 1\r\n\r\n"
    ));
    let plan = c.plan(&head, "api.example.com", 443, None).unwrap();
    let json = br#"{"key": "openshell:resolve:env:API_KEY"}"#;
    for cut in 0..=json.len() {
        let mut filter = plan.placeholder_filter(Mode::Rewrite(Encoding::Json), "body");
        let out = through(&mut filter, json, cut).unwrap();
        assert_eq!(out, br#"{"key": "sk-real/\"value+1"}"#, "cut at {cut}");
    }
    let form = b"a=1&key=openshell%3Aresolve%3Aenv%3AAPI_KEY";
    let mut filter = plan.placeholder_filter(Mode::Rewrite(Encoding::Url), "body");
    let out = through(&mut filter, form, 20).unwrap();
    assert_eq!(out, b"a=1&key=sk-real%2F%22value%2B1");
    // Searched only: any placeholder refuses the body, wherever it is cut.
    for cut in 0..=json.len() {
        let mut filter = plan.placeholder_filter(Mode::Scan, "body");
        let e = through(&mut filter, json, cut).unwrap_err();
        assert!(body::RefusedError::of(&e).is_some(), "cut at {cut}");
    }
}

#[test]
fn echoed_values_are_redacted_at_any_split() {
    let c = credentials();
    let head = head(&format!("GET / HTTP/1.1\r\n{HOST}\r\n"));
    let plan = c.plan(&head, "api.example.com", 443, None).unwrap();
    assert!(plan.redact);
    let echo = br#"{"error": "bad key sk-real/"value+1", "url": "/q?k=sk-real%2F%22value%2B1"}"#;
    let expected = br#"{"error": "bad key openshell:resolve:env:API_KEY", "url": "/q?k=openshell%3Aresolve%3Aenv%3AAPI_KEY"}"#;
    for cut in 0..=echo.len() {
        let mut filter = plan.redact_filter().unwrap();
        assert_eq!(
            through(&mut filter, echo, cut).unwrap(),
            expected,
            "cut at {cut}"
        );
    }
    let filter = plan.redact_filter().unwrap();
    assert_eq!(
        filter.whole(b"Bearer sk-other"),
        Some(b"Bearer sk-ant-OPENSHELL-RESOLVE-ENV-OTHER".to_vec())
    );
    assert_eq!(filter.whole(b"nothing here"), None);
}
