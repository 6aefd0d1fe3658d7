//! The one line each run leaves behind: `key=value` text, or one JSON object per line.
//!
//! A hand-written JSON writer instead of serde/tracing-subscriber: the copier emits two shapes of
//! line with a handful of flat fields, and the binary has a size budget.

use std::fmt::Write as _;

use crate::error::{Error, quoted};
use crate::install::{Action, Report};

/// The name every line starts with (text) or carries (JSON).
pub const PROGRAM: &str = "openshell-copier";

/// How lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// `openshell-copier: installed dest=... sha256=...`
    #[default]
    Text,
    /// `{"program":"openshell-copier","level":"info","event":"installed",...}`
    Json,
}

/// A field value.
enum Value<'a> {
    Str(&'a str),
    Num(u64),
}

/// The line for a successful run.
pub fn success(format: Format, report: &Report) -> String {
    let dest = report.dest.to_string_lossy();
    let digest = report.digest.to_string();
    let (event, method) = match report.action {
        Action::Installed(method) => ("installed", Some(method.as_str())),
        Action::AlreadyCurrent => ("already-current", None),
    };
    let mut fields = vec![
        ("dest", Value::Str(&dest)),
        ("sha256", Value::Str(&digest)),
        ("bytes", Value::Num(report.bytes)),
        ("verified_by", Value::Str(report.authority.as_str())),
    ];
    fields.extend(method.map(|m| ("copy", Value::Str(m))));
    fields.push((
        "stale_temps_removed",
        Value::Num(report.stale_removed as u64),
    ));
    match format {
        Format::Text => {
            let mut line = format!("{PROGRAM}: {event}");
            for (key, value) in &fields {
                match value {
                    Value::Str(s) => line.push_str(&format!(" {key}={}", quoted(s))),
                    Value::Num(n) => line.push_str(&format!(" {key}={n}")),
                }
            }
            line
        }
        Format::Json => json("info", event, &fields),
    }
}

/// The line for a failed run: the error's message, which names the file and the cause.
pub fn failure(format: Format, error: &Error) -> String {
    let message = error.to_string();
    match format {
        Format::Text => format!("{PROGRAM}: {message}"),
        Format::Json => {
            let path = error.path().map(|p| p.to_string_lossy());
            let mut fields = vec![("exit_code", Value::Num(error.exit_code().into()))];
            fields.extend(path.as_deref().map(|p| ("path", Value::Str(p))));
            fields.push(("message", Value::Str(&message)));
            json("error", "failed", &fields)
        }
    }
}

fn json(level: &str, event: &str, fields: &[(&str, Value<'_>)]) -> String {
    let mut line = String::from("{");
    let common = [
        ("program", Value::Str(PROGRAM)),
        ("level", Value::Str(level)),
        ("event", Value::Str(event)),
    ];
    for (i, (key, value)) in common.iter().chain(fields).enumerate() {
        if i > 0 {
            line.push(',');
        }
        push_json_string(&mut line, key);
        line.push(':');
        match value {
            Value::Str(s) => push_json_string(&mut line, s),
            Value::Num(n) => line.push_str(&n.to_string()),
        }
    }
    line.push('}');
    line
}

/// Appends `s` as a JSON string: quotes, backslashes and every control character escaped, so a
/// file name can never break the one-object-per-line framing.
fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                // Writing to a String cannot fail.
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::copy::Method;
    use crate::digest::Digest;
    use crate::expected::Authority;
    use std::path::PathBuf;

    const HEX: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn report(action: Action, dest: &str) -> Report {
        Report {
            action,
            dest: PathBuf::from(dest),
            digest: Digest::from_hex(HEX.as_bytes()).unwrap(),
            bytes: 42,
            authority: Authority::PinAndManifest,
            stale_removed: 1,
        }
    }

    #[test]
    fn text_success_line() {
        let line = success(
            Format::Text,
            &report(Action::Installed(Method::CopyFileRange), "/opt/x"),
        );
        assert_eq!(
            line,
            format!(
                "openshell-copier: installed dest=/opt/x sha256={HEX} bytes=42 \
                 verified_by=pin+manifest copy=copy_file_range stale_temps_removed=1"
            )
        );
    }

    #[test]
    fn json_success_line_is_one_valid_object() {
        let line = success(
            Format::Json,
            &report(Action::AlreadyCurrent, "/o\"pt/\n\u{1}x"),
        );
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["event"], "already-current");
        assert_eq!(v["dest"], "/o\"pt/\n\u{1}x");
        assert_eq!(v["bytes"], 42);
        assert_eq!(v["sha256"], HEX);
        assert!(v.get("copy").is_none());
    }

    #[test]
    fn text_lines_quote_odd_paths() {
        let line = success(Format::Text, &report(Action::AlreadyCurrent, "/a b\nc"));
        assert!(line.contains(r#"dest="/a b\nc""#), "{line}");
        assert!(!line.contains('\n'));
    }

    #[test]
    fn failure_lines_carry_path_code_and_message() {
        let err = Error::io(
            "/d/.x.tmp-1",
            "write",
            std::io::Error::from_raw_os_error(28),
        );
        assert_eq!(
            failure(Format::Text, &err),
            "openshell-copier: /d/.x.tmp-1: write: No space left on device (os error 28)"
        );
        let v: serde_json::Value = serde_json::from_str(&failure(Format::Json, &err)).unwrap();
        assert_eq!(v["level"], "error");
        assert_eq!(v["exit_code"], 4);
        assert_eq!(v["path"], "/d/.x.tmp-1");
        assert_eq!(
            v["message"],
            "/d/.x.tmp-1: write: No space left on device (os error 28)"
        );
    }

    #[test]
    fn usage_failures_have_no_path_field() {
        let err = Error::Usage {
            arg: "--bogus".into(),
            reason: "unknown option".into(),
        };
        let v: serde_json::Value = serde_json::from_str(&failure(Format::Json, &err)).unwrap();
        assert!(v.get("path").is_none());
        assert_eq!(v["exit_code"], 2);
    }

    #[test]
    fn escapes_every_control_character() {
        let mut out = String::new();
        push_json_string(&mut out, "\u{0}\u{1f}\u{7f}é\\");
        assert_eq!(out, r#""\u0000\u001f\u007fé\\""#);
    }
}
