//! Policy errors: each names the file, the position, the field and what would be accepted.

use std::fmt;
use std::path::PathBuf;

/// Where a policy came from, for error messages and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyOrigin {
    /// A file given with `--policy`, `OPENSHELL_POLICY` or found at the default path.
    File(PathBuf),
    /// The restrictive policy compiled into the binary.
    BuiltinDefault,
}

impl fmt::Display for PolicyOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyOrigin::File(path) => write!(f, "{}", path.display()),
            PolicyOrigin::BuiltinDefault => f.write_str("<built-in default policy>"),
        }
    }
}

/// A 1-based line and column in the policy file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// 1-based line.
    pub line: u64,
    /// 1-based column.
    pub column: u64,
}

impl Position {
    pub(crate) fn of(location: &serde_saphyr::Location) -> Option<Position> {
        (location.line() > 0).then(|| Position {
            line: location.line(),
            column: location.column(),
        })
    }
}

/// Why a policy could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read at all.
    #[error("{origin}: cannot read policy: {source}")]
    Read {
        /// The policy file.
        origin: PolicyOrigin,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is larger than any sensible policy; refusing protects start-up from a
    /// mistakenly mounted blob.
    #[error("{origin}: policy is {size} bytes; the limit is {limit} bytes")]
    TooLarge {
        /// The policy file.
        origin: PolicyOrigin,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The file parsed but a value is wrong, or it did not parse.
    #[error("{}", render_invalid(origin, position.as_ref(), field, message))]
    Invalid {
        /// The policy file.
        origin: PolicyOrigin,
        /// Where in the file, when known.
        position: Option<Position>,
        /// Dotted path of the field, e.g. `filesystem_policy.read_write[2]`.
        field: String,
        /// What is wrong and what is allowed.
        message: String,
    },
}

fn render_invalid(
    origin: &PolicyOrigin,
    position: Option<&Position>,
    field: &str,
    message: &str,
) -> String {
    let place = match position {
        Some(p) => format!("{origin}:{}:{}", p.line, p.column),
        None => origin.to_string(),
    };
    if field.is_empty() {
        format!("{place}: {message}")
    } else {
        format!("{place}: {field}: {message}")
    }
}
