//! The text format: one readable line per event, `TIME LEVEL message field=value...`.
//!
//! The message comes first and says what happened in words; a structured field follows only
//! when the message does not already say its value (a denial's message names the call, the
//! layer, the rule, the pid and the executable, so its line carries no fields at all, where the
//! default format repeated all of them and ran to 500 characters). The JSON format keeps every
//! field. Control characters are escaped everywhere, message included: one event is one line,
//! whatever an agent names its executable.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use super::printable;

/// The text line formatter.
#[derive(Debug, Clone, Copy)]
pub struct Line;

impl<S, N> FormatEvent<S, N> for Line
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut fields = Fields::default();
        event.record(&mut fields);
        SystemTime.format_time(&mut writer)?;
        write!(
            writer,
            " {} {}",
            event.metadata().level(),
            printable(&fields.message)
        )?;
        for (name, value) in &fields.rest {
            if !says(&fields.message, value.raw()) {
                write!(writer, " {name}={}", value.shown())?;
            }
        }
        writeln!(writer)
    }
}

/// A field's value as recorded.
#[derive(Debug)]
enum Value {
    /// A string, as given.
    Str(String),
    /// Anything else, as its `Debug` (or `Display`, for `%` fields) rendering.
    Rendered(String),
}

impl Value {
    fn raw(&self) -> &str {
        match self {
            Value::Str(s) | Value::Rendered(s) => s,
        }
    }

    /// A plain word as it is, anything else quoted and escaped.
    fn shown(&self) -> String {
        match self {
            Value::Str(s) if is_plain(s) => s.clone(),
            Value::Str(s) => format!("{s:?}"),
            Value::Rendered(s) => printable(s).into_owned(),
        }
    }
}

fn is_plain(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| !c.is_whitespace() && !c.is_control() && c != '"' && c != '=')
}

#[derive(Debug, Default)]
struct Fields {
    message: String,
    rest: Vec<(&'static str, Value)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message = value.to_owned(),
            name => self.rest.push((name, Value::Str(value.to_owned()))),
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let mut rendered = String::new();
        let _ = write!(rendered, "{value:?}");
        match field.name() {
            "message" => self.message = rendered,
            name => self.rest.push((name, Value::Rendered(rendered))),
        }
    }
}

/// Whether `message` already says `value`: it holds it as a whole word (not inside a longer
/// word or name, so `pid=1` is not taken as said by "10 lines", nor `host=example.com` by
/// "api.example.com").
fn says(message: &str, value: &str) -> bool {
    if value.is_empty() {
        return false;
    }
    let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || "_-.".contains(c));
    message.match_indices(value).any(|(at, _)| {
        !word(message[..at].chars().next_back())
            && !word(message[at + value.len()..].chars().next())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_is_said_only_as_a_whole_word() {
        let message = "denied CONNECT example.com:443 by proxy: no rule (pid 12, /usr/bin/curl)";
        for said in [
            "example.com",
            "443",
            "proxy",
            "12",
            "/usr/bin/curl",
            "denied",
        ] {
            assert!(says(message, said), "{said}");
        }
        for unsaid in ["1", "44", "example", "com", "curlx", "", "seccomp"] {
            assert!(!says(message, unsaid), "{unsaid}");
        }
    }

    /// Formats events with the real subscriber, into a buffer.
    fn lines(emit: impl FnOnce()) -> Vec<String> {
        let buffer = super::super::Captured::default();
        let make = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || make.clone())
            .event_format(Line)
            .finish();
        tracing::subscriber::with_default(subscriber, emit);
        buffer.text().lines().map(str::to_owned).collect()
    }

    #[test]
    fn a_denial_is_one_short_line_with_no_field_repeated() {
        let lines = lines(|| {
            super::super::denied(&super::super::Denial {
                layer: super::super::Layer::Proxy,
                pid: 20488,
                exe: "/usr/bin/curl",
                what: "GET http://example.com:80/",
                why: "no network_policies rule allows example.com:80",
                target: Some(("example.com", 80)),
            });
        });
        assert_eq!(lines.len(), 1, "{lines:?}");
        let line = &lines[0];
        let (_time, rest) = line.split_once(' ').unwrap();
        assert_eq!(
            rest,
            "WARN denied GET http://example.com:80/ by proxy: no network_policies rule allows \
             example.com:80 (pid 20488, /usr/bin/curl)"
        );
    }

    #[test]
    fn fields_the_message_does_not_say_follow_it_quoted_when_needed() {
        let lines = lines(|| {
            tracing::info!(
                policy = "/etc/openshell/policy.yaml",
                rules = 2,
                note = "two words",
                command = ?["/bin/sh", "-c"],
                "policy loaded"
            );
            tracing::info!(status = 3, "agent exited with status 3");
        });
        let rest: Vec<&str> = lines.iter().map(|l| l.split_once(' ').unwrap().1).collect();
        assert_eq!(
            rest,
            [
                r#"INFO policy loaded policy=/etc/openshell/policy.yaml rules=2 note="two words" command=["/bin/sh", "-c"]"#,
                "INFO agent exited with status 3",
            ]
        );
    }

    #[test]
    fn control_characters_never_break_the_line() {
        let lines = lines(|| {
            tracing::warn!(exe = "/tmp/x\nFAKE", shown = %"a\nb", "message\nwith a newline");
        });
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0]
                .ends_with(r#"WARN message\u{a}with a newline exe="/tmp/x\nFAKE" shown=a\u{a}b"#),
            "{}",
            lines[0]
        );
    }
}
