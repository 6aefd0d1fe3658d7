//! Executable path globs for `binaries[].path`.
//!
//! `*` matches within one path segment, `**` across segments, and a whole `/**/` segment also
//! matches no segment at all (`/opt/**/bin/tool` covers `/opt/bin/tool`). Everything else is
//! literal. Matching walks the set of reachable path positions token by token (no backtracking),
//! so a pattern with many `**` cannot make the proxy spend exponential time on one path.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(Vec<u8>),
    /// `*`: any run of bytes without `/`.
    Star,
    /// `**`: any run of bytes.
    AnyDepth,
    /// `**/` right after a `/`: nothing, or any run ending in `/`.
    Segments,
}

/// A validated executable path or glob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathGlob {
    text: String,
    tokens: Vec<Token>,
}

impl PathGlob {
    /// Parses an absolute path pattern, or explains what is wrong with it.
    pub fn parse(raw: &str) -> Result<PathGlob, String> {
        if !raw.starts_with('/') {
            return Err(format!(
                "{raw:?} is not absolute; binaries are matched by their full path"
            ));
        }
        if raw.split('/').any(|segment| segment == "..") {
            return Err(format!(
                "{raw:?} contains `..`; write the path the kernel reports"
            ));
        }
        Ok(PathGlob {
            text: raw.to_owned(),
            tokens: tokenize(raw.as_bytes()),
        })
    }

    /// True when the pattern has no wildcard.
    pub fn is_literal(&self) -> bool {
        matches!(self.tokens.as_slice(), [Token::Literal(_)])
    }

    /// Does the pattern cover `path`?
    pub fn matches(&self, path: &str) -> bool {
        let path = path.as_bytes();
        // reachable[i]: the tokens consumed so far can end exactly before path[i].
        let mut reachable = vec![false; path.len() + 1];
        reachable[0] = true;
        for token in &self.tokens {
            let mut next = vec![false; path.len() + 1];
            match token {
                Token::Literal(lit) => {
                    for start in positions(&reachable) {
                        if path[start..].starts_with(lit) {
                            next[start + lit.len()] = true;
                        }
                    }
                }
                Token::Star => {
                    for start in positions(&reachable) {
                        next[start] = true;
                        for (offset, &byte) in path[start..].iter().enumerate() {
                            if byte == b'/' {
                                break;
                            }
                            next[start + offset + 1] = true;
                        }
                    }
                }
                Token::AnyDepth => {
                    if let Some(first) = positions(&reachable).next() {
                        next[first..].iter_mut().for_each(|r| *r = true);
                    }
                }
                Token::Segments => {
                    if let Some(first) = positions(&reachable).next() {
                        next[first] = true;
                        for end in first + 1..=path.len() {
                            next[end] = reachable[end] || path[end - 1] == b'/';
                        }
                    }
                }
            }
            reachable = next;
        }
        reachable[path.len()]
    }
}

fn positions(reachable: &[bool]) -> impl Iterator<Item = usize> + '_ {
    reachable
        .iter()
        .enumerate()
        .filter_map(|(i, &r)| r.then_some(i))
}

fn tokenize(raw: &[u8]) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut literal = Vec::new();
    let mut i = 0;
    while i < raw.len() {
        if raw[i] != b'*' {
            literal.push(raw[i]);
            i += 1;
            continue;
        }
        if !literal.is_empty() {
            tokens.push(Token::Literal(std::mem::take(&mut literal)));
        }
        let double = raw.get(i + 1) == Some(&b'*');
        let whole_segment = double && i > 0 && raw[i - 1] == b'/' && raw.get(i + 2) == Some(&b'/');
        let token = if whole_segment {
            i += 3;
            Token::Segments
        } else if double {
            i += 2;
            Token::AnyDepth
        } else {
            i += 1;
            Token::Star
        };
        tokens.push(token);
    }
    if !literal.is_empty() || tokens.is_empty() {
        tokens.push(Token::Literal(literal));
    }
    tokens
}

impl fmt::Display for PathGlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::PathGlob;

    fn m(pattern: &str, path: &str) -> bool {
        PathGlob::parse(pattern).unwrap().matches(path)
    }

    #[test]
    fn literal_paths_match_exactly() {
        assert!(m("/usr/bin/curl", "/usr/bin/curl"));
        assert!(!m("/usr/bin/curl", "/usr/bin/curl2"));
        assert!(!m("/usr/bin/curl", "/usr/bin/cur"));
        assert!(PathGlob::parse("/usr/bin/curl").unwrap().is_literal());
    }

    #[test]
    fn star_stays_within_a_segment() {
        assert!(m(
            "/home/*/.local/bin/copilot",
            "/home/dev/.local/bin/copilot"
        ));
        assert!(!m(
            "/home/*/.local/bin/copilot",
            "/home/a/b/.local/bin/copilot"
        ));
        assert!(m("/usr/bin/python3*", "/usr/bin/python3.12"));
        assert!(!m("/usr/bin/python3*", "/usr/bin/python3/evil"));
    }

    #[test]
    fn double_star_crosses_segments() {
        assert!(m("/**", "/anything/at/all"));
        assert!(m("/opt/**/bin/tool", "/opt/bin/tool"));
        assert!(m("/opt/**/bin/tool", "/opt/a/b/bin/tool"));
        assert!(!m("/opt/**/bin/tool", "/opt/a/b/bin/tool2"));
        assert!(m(
            "/sandbox/.uv/python/**/python3*",
            "/sandbox/.uv/python/cpython-3.12/bin/python3.12"
        ));
        assert!(m(
            "/usr/lib/node_modules/@github/copilot/node_modules/@github/**/copilot",
            "/usr/lib/node_modules/@github/copilot/node_modules/@github/x/y/copilot"
        ));
        assert!(m("/usr/lib**", "/usr/lib64/x"));
    }

    #[test]
    fn wildcard_runs_do_not_explode() {
        let pattern = format!("/{}x", "**/*".repeat(200));
        let path = format!("/{}", "a/".repeat(2000));
        assert!(!m(&pattern, &path));
    }

    #[test]
    fn refuses_relative_and_dotdot() {
        assert!(
            PathGlob::parse("curl")
                .unwrap_err()
                .contains("not absolute")
        );
        assert!(
            PathGlob::parse("/usr/../bin/sh")
                .unwrap_err()
                .contains("..")
        );
    }
}
