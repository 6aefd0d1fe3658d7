//! Reading the view back: `/proc/self/mountinfo` as init sees it once the view is its root,
//! compared with what was planned. Runs in init after fork, so it parses a stack buffer and
//! allocates nothing.
//!
//! What must hold: every planned mount is there; every mount in the view is either planned or
//! below a planned bind (whose submounts came along); every mount is `nosuid`, read-only where
//! it or the bind it came with was planned read-only, and `nodev` where planned; no mount
//! shares events with another namespace (`shared:` or `master:` would carry mounts made in
//! the view out to the pod, or the pod's into the view).

/// One mount the view must have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expect {
    /// Its mount point, escaped as mountinfo shows it.
    pub mount_point: Vec<u8>,
    /// Its filesystem type, when the view creates it (binds: whatever the pod's is).
    pub fstype: Option<&'static [u8]>,
    /// Whether it must be read-only.
    pub read_only: bool,
    /// Whether it must be `nodev`.
    pub nodev: bool,
    /// Whether mounts below it are its own (a recursive bind's submounts).
    pub submounts: bool,
}

/// A difference between the view and the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mismatch<'a> {
    /// A line that is not mountinfo.
    Malformed,
    /// This mount propagates to or from another namespace.
    Propagates(&'a [u8]),
    /// This mount lacks a flag (the flag's name).
    Lacks(&'a [u8], &'static str),
    /// This mount was not planned.
    Unplanned(&'a [u8]),
    /// This planned mount is not there.
    Missing(&'a [u8]),
}

/// Escapes `path` as mountinfo does (space, tab, newline and backslash as octal).
pub fn escape(path: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.len());
    for &b in path {
        if matches!(b, b' ' | b'\t' | b'\n' | b'\\') {
            out.extend_from_slice(format!("\\{b:03o}").as_bytes());
        } else {
            out.push(b);
        }
    }
    out
}

/// The fields of one mountinfo line that the supervisor reads (paths escaped as the kernel
/// shows them).
pub(crate) struct Line<'a> {
    /// The mounted directory of the file system (a subtree for a bind or a cgroup namespace).
    pub root: &'a [u8],
    pub mount_point: &'a [u8],
    /// Per-mount options (`ro`, `nosuid`...).
    pub options: &'a [u8],
    /// The optional fields (`shared:N`, `master:N`...), as one slice.
    optional: &'a [u8],
    pub fstype: &'a [u8],
    /// Per-superblock options (for cgroup v1, the controllers); empty if the line has none.
    pub super_options: &'a [u8],
}

/// One line of mountinfo; `None` when it is not one.
pub(crate) fn parse(line: &[u8]) -> Option<Line<'_>> {
    let mut fields = Fields { line, pos: 0 };
    let root = fields.nth(3)?.1;
    let mount_point = fields.next()?.1;
    let options = fields.next()?.1;
    // Optional fields run up to the "-" separator; kept as one slice.
    let optional_start = fields.pos;
    let mut optional_end = optional_start;
    loop {
        let (start, field) = fields.next()?;
        if field == b"-" {
            break;
        }
        optional_end = start + field.len();
    }
    let fstype = fields.next()?.1;
    let super_options = fields.nth(1).map_or(&b""[..], |(_, options)| options);
    Some(Line {
        root,
        mount_point,
        options,
        optional: &line[optional_start..optional_end],
        fstype,
        super_options,
    })
}

/// Space-separated fields with their offsets.
struct Fields<'a> {
    line: &'a [u8],
    pos: usize,
}

impl<'a> Iterator for Fields<'a> {
    type Item = (usize, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let start = self.pos;
        let rest = self.line.get(start..).filter(|r| !r.is_empty())?;
        let len = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
        self.pos = start + len + 1;
        Some((start, &rest[..len]))
    }
}

/// Whether the comma-separated `options` include `name`.
pub(crate) fn has_option(options: &[u8], name: &[u8]) -> bool {
    options.split(|&b| b == b',').any(|o| o == name)
}

/// Whether `path` lies strictly below `dir`.
fn below(path: &[u8], dir: &[u8]) -> bool {
    if dir == b"/" {
        return path != b"/";
    }
    path.len() > dir.len() && path.starts_with(dir) && path[dir.len()] == b'/'
}

fn matches(expect: &Expect, line: &Line<'_>) -> bool {
    expect.mount_point == line.mount_point && expect.fstype.is_none_or(|t| t == line.fstype)
}

/// Compares mountinfo `text` with `expected`.
pub fn check<'a>(text: &'a [u8], expected: &'a [Expect]) -> Result<(), Mismatch<'a>> {
    for raw in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let line = parse(raw).ok_or(Mismatch::Malformed)?;
        let mp = line.mount_point;
        if line
            .optional
            .split(|&b| b == b' ')
            .any(|f| f.starts_with(b"shared:") || f.starts_with(b"master:"))
        {
            return Err(Mismatch::Propagates(mp));
        }
        // The planned mount itself, else the deepest recursive bind above it.
        let rule = expected.iter().find(|e| matches(e, &line)).or_else(|| {
            expected
                .iter()
                .filter(|e| e.submounts && (e.mount_point == mp || below(mp, &e.mount_point)))
                .max_by_key(|e| e.mount_point.len())
        });
        let Some(rule) = rule else {
            return Err(Mismatch::Unplanned(mp));
        };
        if !has_option(line.options, b"nosuid") {
            return Err(Mismatch::Lacks(mp, "nosuid"));
        }
        if rule.read_only && !has_option(line.options, b"ro") {
            return Err(Mismatch::Lacks(mp, "ro"));
        }
        if rule.nodev && !has_option(line.options, b"nodev") {
            return Err(Mismatch::Lacks(mp, "nodev"));
        }
    }
    for expect in expected {
        let present = text
            .split(|&b| b == b'\n')
            .filter_map(parse)
            .any(|line| matches(expect, &line));
        if !present {
            return Err(Mismatch::Missing(&expect.mount_point));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expect(mp: &str, fstype: Option<&'static [u8]>, ro: bool, submounts: bool) -> Expect {
        Expect {
            mount_point: mp.as_bytes().to_vec(),
            fstype,
            read_only: ro,
            nodev: true,
            submounts,
        }
    }

    fn plan() -> Vec<Expect> {
        vec![
            expect("/", Some(b"tmpfs"), true, false),
            expect("/usr", None, true, true),
            expect("/home/me", None, false, true),
            expect("/tmp", Some(b"tmpfs"), false, false),
        ]
    }

    const GOOD: &str = "\
55 56 0:41 / / ro,nosuid,nodev,relatime - tmpfs none rw,mode=755
54 55 254:0 /usr /usr ro,nosuid,nodev,relatime - ext4 /dev/vda rw
60 54 0:50 / /usr/local/share ro,nosuid,nodev,relatime - tmpfs x rw
57 55 254:0 /home/me /home/me rw,nosuid,nodev,relatime - ext4 /dev/vda rw
58 55 0:42 / /tmp rw,nosuid,nodev,relatime - tmpfs none rw
";

    #[test]
    fn the_planned_view_passes() {
        assert_eq!(check(GOOD.as_bytes(), &plan()), Ok(()));
    }

    #[test]
    fn every_difference_is_named() {
        let cases: [(&str, &str, Mismatch<'static>); 6] = [
            (
                "54 55 254:0 /usr /usr ro,nosuid,nodev,relatime - ext4",
                "54 55 254:0 /usr /usr rw,nosuid,nodev,relatime - ext4",
                Mismatch::Lacks(b"/usr", "ro"),
            ),
            (
                "60 54 0:50 / /usr/local/share ro,nosuid,nodev,relatime",
                "60 54 0:50 / /usr/local/share rw,nosuid,nodev,relatime",
                Mismatch::Lacks(b"/usr/local/share", "ro"),
            ),
            (
                "57 55 254:0 /home/me /home/me rw,nosuid,nodev,relatime",
                "57 55 254:0 /home/me /home/me rw,nodev,relatime",
                Mismatch::Lacks(b"/home/me", "nosuid"),
            ),
            (
                "58 55 0:42 / /tmp rw,nosuid,nodev,relatime - tmpfs",
                "58 55 0:42 / /tmp rw,nosuid,nodev,relatime shared:7 - tmpfs",
                Mismatch::Propagates(b"/tmp"),
            ),
            (
                "58 55 0:42 / /tmp rw,nosuid,nodev,relatime - tmpfs",
                "58 55 0:42 / /etc rw,nosuid,nodev,relatime - tmpfs",
                Mismatch::Unplanned(b"/etc"),
            ),
            (
                "58 55 0:42 / /tmp rw,nosuid,nodev,relatime - tmpfs",
                "58 55 0:42 / /tmp rw,nosuid,nodev,relatime - ext4",
                Mismatch::Unplanned(b"/tmp"),
            ),
        ];
        for (from, to, expected) in cases {
            assert!(GOOD.contains(from), "{from}");
            let text = GOOD.replace(from, to);
            let plan = plan();
            let got = check(text.as_bytes(), &plan).map_err(|m| format!("{m:?}"));
            assert_eq!(got, Err(format!("{expected:?}")), "{to}");
        }
        let without_tmp: String = GOOD
            .lines()
            .filter(|l| !l.contains("/tmp"))
            .map(|l| format!("{l}\n"))
            .collect();
        let plan = plan();
        assert_eq!(
            check(without_tmp.as_bytes(), &plan),
            Err(Mismatch::Missing(b"/tmp"))
        );
        assert_eq!(check(b"garbage\n", &plan), Err(Mismatch::Malformed));
    }

    #[test]
    fn optional_fields_other_than_sharing_are_fine_and_escapes_match() {
        let plan = vec![
            expect("/", Some(b"tmpfs"), true, false),
            expect("/my dir", None, false, true),
        ];
        let text = "1 2 0:1 / / ro,nosuid,nodev - tmpfs none rw\n\
                    3 1 0:2 / /my\\040dir rw,nosuid,nodev unbindable - ext4 x rw\n";
        let plan: Vec<Expect> = plan
            .into_iter()
            .map(|mut e| {
                e.mount_point = escape(&e.mount_point);
                e
            })
            .collect();
        assert_eq!(check(text.as_bytes(), &plan), Ok(()));
        assert_eq!(escape(b"a\\b\tc\nd"), b"a\\134b\\011c\\012d");
    }
}
