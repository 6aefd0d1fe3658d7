//! Finding placeholders (on the way out) and real values (on the way back) in bytes, whole or
//! as they stream past.
//!
//! One Aho-Corasick automaton per direction finds every pattern in one pass (a few GB/s when
//! nothing matches, which is the common case). On a stream, a match may be split across
//! reads: the bytes at the end of a read that could still become a pattern are held back
//! until the next read (or the end) says what they are, and nothing else is: a read ending in
//! `\n\n` (a server-sent event) passes at once, since no pattern starts with it.

use aho_corasick::{AhoCorasick, MatchKind};

pub use crate::proxy::l7::stream::Passed;

use crate::policy::credentials::{ALIAS_MARKER, PLACEHOLDER_PREFIX, is_alias_byte, is_key_byte};

/// How a pattern was spelled where it was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spelling {
    /// As written.
    Raw,
    /// With its reserved characters percent-encoded (`openshell%3Aresolve%3A...`), as URL
    /// and form encoders write it.
    Percent,
}

/// What a pattern stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The placeholder of the credential at this index.
    Placeholder(usize, Spelling),
    /// The start of a placeholder nobody declared (`openshell:resolve:env:`, or an alias's
    /// marker): it can never be resolved.
    Marker,
    /// The real value of the credential at this index.
    Value(usize, Spelling),
}

/// One thing found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit {
    /// What it is.
    pub kind: Kind,
    /// Where it starts in the bytes searched.
    pub start: usize,
    /// Where it ends.
    pub end: usize,
}

/// A set of patterns, searched together.
#[derive(Debug)]
pub struct Patterns {
    automaton: AhoCorasick,
    kinds: Vec<Kind>,
    texts: Vec<Vec<u8>>,
    /// Bytes a pattern starts with (for finding what to hold back).
    first: [bool; 256],
    longest: usize,
}

/// Why the patterns could not be built (a bug: the inputs are validated).
#[derive(Debug, thiserror::Error)]
#[error("cannot build the credential matcher: {0}")]
pub struct BuildError(String);

impl Patterns {
    /// `texts` with what each stands for.
    pub fn new(patterns: Vec<(Vec<u8>, Kind)>) -> Result<Patterns, BuildError> {
        let (texts, kinds): (Vec<Vec<u8>>, Vec<Kind>) = patterns.into_iter().unzip();
        let automaton = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(&texts)
            .map_err(|e| BuildError(e.to_string()))?;
        let mut first = [false; 256];
        for text in &texts {
            if let Some(b) = text.first() {
                first[usize::from(*b)] = true;
            }
        }
        let longest = texts.iter().map(Vec::len).max().unwrap_or(0);
        Ok(Patterns {
            automaton,
            kinds,
            texts,
            first,
            longest,
        })
    }

    /// The placeholders of `placeholders` (by credential index), in every spelling, and the
    /// markers of undeclared ones.
    pub fn placeholders<'a>(
        placeholders: impl Iterator<Item = (usize, &'a str)>,
    ) -> Result<Patterns, BuildError> {
        let mut patterns = Vec::new();
        for (index, placeholder) in placeholders {
            for (text, spelling) in spellings(placeholder) {
                patterns.push((text, Kind::Placeholder(index, spelling)));
            }
        }
        for marker in [PLACEHOLDER_PREFIX, ALIAS_MARKER] {
            for (text, _) in spellings(marker) {
                patterns.push((text, Kind::Marker));
            }
        }
        Patterns::new(patterns)
    }

    /// Every match in `text`, leftmost-longest, as found (no boundary checks).
    pub fn find<'t>(&'t self, text: &'t [u8]) -> impl Iterator<Item = Hit> + 't {
        self.automaton.find_iter(text).map(|m| Hit {
            kind: self.kinds[m.pattern().as_usize()],
            start: m.start(),
            end: m.end(),
        })
    }

    /// Whether any pattern occurs in `text`.
    pub fn any(&self, text: &[u8]) -> bool {
        self.automaton.is_match(text)
    }

    /// How many bytes at the end of `text` could be the start of a pattern that the next
    /// bytes complete (or, for a placeholder, a whole one whose next byte decides whether it
    /// ends there).
    fn pending(&self, text: &[u8]) -> usize {
        let window = text.len().min(self.longest);
        let from = text.len() - window;
        for start in from..text.len() {
            if !self.first[usize::from(text[start])] {
                continue;
            }
            let rest = &text[start..];
            if self
                .texts
                .iter()
                .any(|p| p.len() >= rest.len() && p.starts_with(rest))
            {
                return text.len() - start;
            }
        }
        0
    }
}

/// The spellings of `text`: as written and, when it has characters URL encoders escape, with
/// them percent-encoded in upper and in lower case.
fn spellings(text: &str) -> Vec<(Vec<u8>, Spelling)> {
    let mut out = vec![(text.as_bytes().to_vec(), Spelling::Raw)];
    if text.contains(':') {
        for escape in ["%3A", "%3a"] {
            out.push((text.replace(':', escape).into_bytes(), Spelling::Percent));
        }
    }
    out
}

/// Whether a placeholder found at `start..end` of `text` stands alone: not followed by more
/// of a variable name (then it is a longer name nobody declared) and, for an alias, not
/// preceded by more of a token. `None` when the byte after it has not arrived yet.
pub fn stands_alone(text: &[u8], start: usize, end: usize, at_end: bool) -> Option<bool> {
    let after = match text.get(end) {
        Some(b) => !is_key_byte(*b),
        None if at_end => true,
        None => return None,
    };
    let alias = !text[start..end].starts_with(b"openshell");
    let before = !alias || start == 0 || !is_alias_byte(text[start - 1]);
    Some(after && before)
}

/// What to do with one hit: write these bytes instead, or refuse the whole message.
pub type Decision<E> = Result<Vec<u8>, E>;

/// A stream searched across reads: bytes that could still become a pattern are held back.
#[derive(Debug, Default)]
pub struct Stream {
    held: Vec<u8>,
}

impl Stream {
    /// Searches `data` (after what was held): each hit goes to `decide`, which says what to
    /// write in its place (`needs_boundary`: whether `decide` must know that a placeholder
    /// stands alone, so the byte after it must have arrived). With `at_end`, nothing is held.
    pub fn pass<'d, E>(
        &mut self,
        patterns: &Patterns,
        data: &'d [u8],
        at_end: bool,
        needs_boundary: bool,
        mut decide: impl FnMut(&[u8], Hit) -> Decision<E>,
    ) -> Result<Passed<'d>, E> {
        if self.held.is_empty() {
            if !patterns.any(data) {
                let keep = if at_end { 0 } else { patterns.pending(data) };
                self.held.extend_from_slice(&data[data.len() - keep..]);
                return Ok(Passed::Unchanged(&data[..data.len() - keep]));
            }
            return self.rewrite(patterns, data.to_vec(), at_end, needs_boundary, &mut decide);
        }
        let mut joined = std::mem::take(&mut self.held);
        joined.extend_from_slice(data);
        self.rewrite(patterns, joined, at_end, needs_boundary, &mut decide)
    }

    fn rewrite<'d, E>(
        &mut self,
        patterns: &Patterns,
        data: Vec<u8>,
        at_end: bool,
        needs_boundary: bool,
        decide: &mut impl FnMut(&[u8], Hit) -> Decision<E>,
    ) -> Result<Passed<'d>, E> {
        let mut out = Vec::with_capacity(data.len());
        let mut done = 0;
        let mut hold_from = None;
        for hit in patterns.find(&data) {
            if !at_end {
                // A longer pattern may still complete from here, or a placeholder's next
                // byte is not there yet: decide on the next read.
                let rest = &data[hit.start..];
                let longer = patterns
                    .texts
                    .iter()
                    .any(|p| p.len() > rest.len() && p.starts_with(rest));
                let boundary_unknown = needs_boundary && hit.end == data.len();
                if longer || boundary_unknown {
                    hold_from = Some(hit.start);
                    break;
                }
            }
            out.extend_from_slice(&data[done..hit.start]);
            out.extend_from_slice(&decide(&data, hit)?);
            done = hit.end;
        }
        let keep_from = match hold_from {
            Some(at) => at,
            None if at_end => data.len(),
            None => data.len() - patterns.pending(&data[done..]),
        };
        out.extend_from_slice(&data[done..keep_from]);
        self.held = data[keep_from..].to_vec();
        Ok(Passed::Rewritten(out))
    }

    /// Whether bytes are held back.
    pub fn holding(&self) -> bool {
        !self.held.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placeholders() -> Patterns {
        Patterns::placeholders(
            [
                (0, "openshell:resolve:env:API_KEY"),
                (1, "sk-ant-api03-OPENSHELL-RESOLVE-ENV-ANTHROPIC_API_KEY"),
            ]
            .into_iter(),
        )
        .unwrap()
    }

    fn kinds(patterns: &Patterns, text: &str) -> Vec<Kind> {
        patterns.find(text.as_bytes()).map(|h| h.kind).collect()
    }

    #[test]
    fn placeholders_in_every_spelling_and_undeclared_ones() {
        let p = placeholders();
        assert_eq!(
            kinds(&p, "Bearer openshell:resolve:env:API_KEY"),
            [Kind::Placeholder(0, Spelling::Raw)]
        );
        // Mixed-case escapes are no spelling of ours (the URL check decodes and refuses them).
        assert!(kinds(&p, "key=openshell%3Aresolve%3aenv%3AAPI_KEY").is_empty());
        assert_eq!(
            kinds(&p, "key=openshell%3aresolve%3aenv%3aAPI_KEY&x"),
            [Kind::Placeholder(0, Spelling::Percent)]
        );
        assert_eq!(
            kinds(
                &p,
                "x-api-key: sk-ant-api03-OPENSHELL-RESOLVE-ENV-ANTHROPIC_API_KEY"
            ),
            [Kind::Placeholder(1, Spelling::Raw)]
        );
        assert_eq!(kinds(&p, "openshell:resolve:env:OTHER"), [Kind::Marker]);
        assert_eq!(kinds(&p, "ghp_OPENSHELL-RESOLVE-ENV-GH"), [Kind::Marker]);
        assert!(kinds(&p, "openshell resolve env").is_empty());
    }

    #[test]
    fn a_placeholder_stands_alone_or_is_part_of_a_longer_name() {
        let text = b"openshell:resolve:env:API_KEY2 x";
        assert_eq!(stands_alone(text, 0, 29, false), Some(false));
        let text = b"openshell:resolve:env:API_KEY\"";
        assert_eq!(stands_alone(text, 0, 29, false), Some(true));
        assert_eq!(stands_alone(&text[..29], 0, 29, false), None);
        assert_eq!(stands_alone(&text[..29], 0, 29, true), Some(true));
        let alias = b"xsk-ant-api03-OPENSHELL-RESOLVE-ENV-ANTHROPIC_API_KEY";
        assert_eq!(stands_alone(alias, 1, alias.len(), true), Some(false));
    }

    /// Feeds `reads` one by one and returns what passed; hits are replaced by `<N>`.
    fn stream(patterns: &Patterns, reads: &[&str]) -> (String, Vec<usize>) {
        let mut s = Stream::default();
        let mut out = Vec::new();
        let mut sizes = Vec::new();
        for (i, read) in reads.iter().enumerate() {
            let at_end = i + 1 == reads.len();
            let passed = s
                .pass(patterns, read.as_bytes(), at_end, true, |_, hit| {
                    Ok::<_, ()>(format!("<{:?}>", hit.kind).into_bytes())
                })
                .unwrap();
            let bytes = match passed {
                Passed::Unchanged(b) => b.to_vec(),
                Passed::Rewritten(b) => b,
            };
            sizes.push(bytes.len());
            out.extend(bytes);
        }
        (String::from_utf8(out).unwrap(), sizes)
    }

    #[test]
    fn a_placeholder_split_across_reads_is_found() {
        let p = placeholders();
        let whole = "{\"key\": \"openshell:resolve:env:API_KEY\"}";
        let expected = "{\"key\": \"<Placeholder(0, Raw)>\"}";
        for cut in 1..whole.len() {
            let (out, _) = stream(&p, &[&whole[..cut], &whole[cut..]]);
            assert_eq!(out, expected, "cut at {cut}");
        }
        // Cut right after the marker, the known placeholder is still recognised.
        let (out, sizes) = stream(&p, &["a openshell:resolve:env:", "API_KEY b"]);
        assert_eq!(out, "a <Placeholder(0, Raw)> b");
        assert_eq!(sizes[0], 2, "only the possible start is held");
    }

    #[test]
    fn nothing_that_cannot_start_a_pattern_is_held() {
        let p = placeholders();
        let (out, sizes) = stream(&p, &["data: 1\n\n", "data: 2\n\n"]);
        assert_eq!(out, "data: 1\n\ndata: 2\n\n");
        assert_eq!(sizes, [9, 9]);
        // A possible start is held until the next read says it is not one.
        let (out, sizes) = stream(&p, &["x open", "ing"]);
        assert_eq!(out, "x opening");
        assert_eq!(sizes, [2, 7]);
    }
}
