//! The `SHA256SUMS` manifest the image build writes with `sha256sum`.
//!
//! Parsing is strict: the manifest is machine-written, so a line we cannot read means it was
//! damaged or tampered with, and a damaged manifest must not vouch for anything.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::digest::Digest;
use crate::error::Error;

/// Finds the digest the manifest lists for `name`, matching on the last path component of each
/// entry (`./openshell-sandbox`, `usr/local/bin/openshell-sandbox` and `openshell-sandbox` all
/// name the same file). `path` is only used in error messages.
///
/// Accepts both `sha256sum` separators (`"  "` text mode, `" *"` binary mode), hex in either case,
/// CRLF line ends and `sha256sum`'s backslash escaping of odd file names; blank lines are skipped.
/// Returns `None` when no entry matches; two matching entries must agree.
pub fn lookup(path: &Path, text: &[u8], name: &OsStr) -> Result<Option<Digest>, Error> {
    let mut found: Option<(Digest, usize)> = None;
    for (index, raw) in text.split(|&b| b == b'\n').enumerate() {
        let line = index + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let (digest, entry) = parse_line(raw).map_err(|reason| Error::ManifestSyntax {
            path: path.to_owned(),
            line,
            reason,
        })?;
        if base_name(&entry) != name.as_bytes() {
            continue;
        }
        match found {
            Some((earlier, first)) if earlier != digest => {
                return Err(Error::ManifestConflict {
                    path: path.to_owned(),
                    name: name.into(),
                    first,
                    second: line,
                });
            }
            Some(_) => {}
            None => found = Some((digest, line)),
        }
    }
    Ok(found.map(|(digest, _)| digest))
}

/// Splits one `sha256sum` line into its digest and (unescaped) file name.
fn parse_line(line: &[u8]) -> Result<(Digest, Vec<u8>), &'static str> {
    // sha256sum prefixes a line with `\` when it had to escape the file name.
    let (escaped, line) = match line.strip_prefix(b"\\") {
        Some(rest) => (true, rest),
        None => (false, line),
    };
    let (hex, rest) = line
        .split_at_checked(64)
        .ok_or("too short to hold a digest")?;
    let digest = Digest::from_hex(hex)?;
    let name = match rest {
        [b' ', b' ' | b'*', name @ ..] if !name.is_empty() => name,
        _ => {
            return Err(
                "the digest must be followed by two spaces (or a space and `*`) and a name",
            );
        }
    };
    if escaped {
        Ok((digest, unescape(name)?))
    } else {
        Ok((digest, name.to_vec()))
    }
}

/// Reverses sha256sum's escaping: `\\` for a backslash, `\n` for a newline, `\r` for a CR.
fn unescape(name: &[u8]) -> Result<Vec<u8>, &'static str> {
    let mut out = Vec::with_capacity(name.len());
    let mut bytes = name.iter();
    while let Some(&b) = bytes.next() {
        out.push(if b == b'\\' {
            match bytes.next() {
                Some(b'\\') => b'\\',
                Some(b'n') => b'\n',
                Some(b'r') => b'\r',
                _ => return Err("the file name holds an unknown backslash escape"),
            }
        } else {
            b
        });
    }
    Ok(out)
}

fn base_name(entry: &[u8]) -> &[u8] {
    entry.rsplit(|&b| b == b'/').next().unwrap_or(entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    const B: &str = "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752";

    fn find(text: &str) -> Result<Option<String>, Error> {
        lookup(
            Path::new("/m/SHA256SUMS"),
            text.as_bytes(),
            OsStr::new("openshell-sandbox"),
        )
        .map(|d| d.map(|d| d.to_string()))
    }

    #[test]
    fn finds_text_and_binary_mode_entries() {
        assert_eq!(
            find(&format!("{A}  openshell-sandbox\n")).unwrap(),
            Some(A.into())
        );
        assert_eq!(
            find(&format!("{A} *openshell-sandbox\n")).unwrap(),
            Some(A.into())
        );
    }

    #[test]
    fn accepts_uppercase_hex_and_crlf() {
        let text = format!("{}  openshell-sandbox\r\n", A.to_uppercase());
        assert_eq!(find(&text).unwrap(), Some(A.into()));
    }

    #[test]
    fn matches_on_the_last_path_component_only() {
        let text = format!("{B}  other-tool\n{A}  ./usr/local/bin/openshell-sandbox\n");
        assert_eq!(find(&text).unwrap(), Some(A.into()));
        let prefix_only = format!("{A}  openshell-sandbox.sig\n{A}  openshell-sandbox/x\n");
        assert_eq!(find(&prefix_only).unwrap(), None);
    }

    #[test]
    fn an_entry_for_another_file_is_no_entry() {
        assert_eq!(find(&format!("{A}  openshell-copier\n")).unwrap(), None);
        assert_eq!(find("").unwrap(), None);
        assert_eq!(find("\n \n").unwrap(), None);
    }

    #[test]
    fn unescapes_names_the_way_sha256sum_escapes_them() {
        let text = format!("\\{A}  dir\\\\name\\n/openshell-sandbox\n");
        assert_eq!(find(&text).unwrap(), Some(A.into()));
        let bad_escape = format!("\\{A}  bad\\x\n");
        assert!(matches!(
            find(&bad_escape),
            Err(Error::ManifestSyntax { line: 1, .. })
        ));
    }

    #[test]
    fn rejects_bad_lines_anywhere_with_their_line_number() {
        for bad in [
            "not a checksum line",
            &format!("{}  openshell-sandbox", &A[..63]),
            &format!("{A} openshell-sandbox"),
            &format!("{A}\topenshell-sandbox"),
            &format!("{A}  "),
            &format!("{}g  openshell-sandbox", &A[..63]),
            &format!("SHA256 (openshell-sandbox) = {A}"),
        ] {
            let text = format!("{B}  other\n\n{bad}\n");
            match find(&text) {
                Err(err @ Error::ManifestSyntax { line: 3, .. }) => {
                    assert!(
                        err.to_string().starts_with("/m/SHA256SUMS: line 3: "),
                        "{err}"
                    );
                }
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn duplicate_entries_must_agree() {
        let same = format!("{A}  openshell-sandbox\n{A}  ./openshell-sandbox\n");
        assert_eq!(find(&same).unwrap(), Some(A.into()));
        let conflict = format!("{A}  openshell-sandbox\n{B} *bin/openshell-sandbox\n");
        assert!(matches!(
            find(&conflict),
            Err(Error::ManifestConflict {
                first: 1,
                second: 2,
                ..
            })
        ));
    }
}
