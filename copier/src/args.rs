//! The command line, parsed by hand: clap alone would eat most of the binary's 800 KiB budget,
//! and the interface is five options fixed by contract (image builds and pod specs use them).

use std::ffi::{OsStr, OsString};
use std::iter::Peekable;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use crate::digest::Digest;
use crate::error::Error;
use crate::expected::{PIN_ENV, Pin};
use crate::log::Format;

/// Where the image puts the supervisor.
pub const DEFAULT_SOURCE: &str = "/usr/local/bin/openshell-sandbox";
/// Where the image build writes `sha256sum` output for its binaries.
pub const DEFAULT_MANIFEST: &str = "/usr/local/share/openshell/SHA256SUMS";
/// Where the agent container expects the supervisor (the shared emptyDir).
pub const DEFAULT_DEST: &str = "/opt/openshell/bin/openshell-sandbox";

/// `--help` text.
pub const HELP: &str = "\
openshell-copier: install a checksum-verified openshell-sandbox into a shared volume, atomically.

Runs as the init container of an OpenShell pod. Copies the supervisor from the image into the
volume the agent container runs it from, so that the agent container only ever sees no binary,
the previous complete one, or the new complete and verified one: never a partial or tampered file.

USAGE:
    openshell-copier [--source FILE] [--manifest FILE] [--sha256 HEX] [--dest FILE]
                     [--log-format text|json]

OPTIONS:
    --source FILE      Binary to install (symlinks followed; must be a regular file).
                       Default: /usr/local/bin/openshell-sandbox
    --manifest FILE    sha256sum output listing the source; its entry is the line whose file
                       name (last path component) equals the source's. Accepts `*` (binary mode)
                       and uppercase hex. Every non-blank line must be well-formed. A manifest
                       named here must exist and list the source, pin or no pin.
                       Default: /usr/local/share/openshell/SHA256SUMS
    --sha256 HEX       Pin: the 64-hex-digit SHA-256 the installed file must have. Overrides
                       the environment variable OPENSHELL_SUPERVISOR_SHA256 (same meaning;
                       ignored when empty).
    --dest FILE        Where to install. Its directory must exist and must not be a symlink.
                       Default: /opt/openshell/bin/openshell-sandbox
    --log-format FMT   `text` (default) or `json`: every line, failures included, becomes one
                       JSON object.
    -h, --help         Show this help.
    -V, --version      Show the version.
    Options also accept the --option=VALUE form.

WHAT IS VERIFIED:
    With a pin and a manifest entry, both must agree. With only one, that one is used; a missing
    default manifest is fine when a pin is given (one named by --manifest is not). With neither,
    nothing is installed. A manifest that exists must be readable and well-formed, even when a
    pin is given.
    The digest is computed over the bytes written to the temporary file, read back, never over
    the source; only a match is made executable (mode 0555) and renamed over the destination.

HOW IT INSTALLS:
    The destination directory is opened once (no symlink followed) and everything happens
    relative to it: a fresh `.NAME.tmp-<random>` file is created there (O_EXCL|O_NOFOLLOW, so a
    planted file or symlink is never written through), filled with copy_file_range (falling
    back to sendfile, then read/write), read back and hashed, chmod 0555, fsynced, renamed over
    NAME, and the directory fsynced. Any failure removes the temporary file. Temporary files
    left by killed runs are removed by the next run; concurrent copiers never remove each
    other's (each holds a lock on its own).
    If the destination already is a regular file owned by the copier's user, with one link, mode
    0555, the source's size and the expected digest, nothing is written (restarts are cheap and
    keep the same file); anything else there is replaced (a file another user owns could be made
    writable again by its owner). After the rename the destination must be the very file that
    was verified, or it is removed and the run fails. A symlink, directory or other
    non-regular file at the destination is refused, not replaced: the copier never creates one,
    so one there means tampering or a misconfigured volume.

OUTPUT:
    One line on stdout per successful run, e.g.
      openshell-copier: installed dest=/opt/openshell/bin/openshell-sandbox sha256=<hex>
        bytes=15000000 verified_by=pin+manifest copy=copy_file_range stale_temps_removed=0
    (or `already-current`). On failure, one line on stderr naming the file and the cause, e.g.
      openshell-copier: /opt/openshell/bin/.openshell-sandbox.tmp-1f2e3d4c5b6a7988:
        copy_file_range: No space left on device (os error 28)

EXIT STATUS:
    0  installed, or already current
    2  usage or configuration error, nothing touched: unknown option, bad --sha256 or
       OPENSHELL_SUPERVISOR_SHA256, no pin and no manifest, no entry for the source in the
       manifest (without a pin, or in one named by --manifest), malformed manifest, conflicting
       manifest entries
    3  digest mismatch, nothing installed: the pin and the manifest disagree, or the copied
       bytes do not hash to the expected digest
    4  I/O error, nothing partial left: missing or unreadable source or manifest, source or
       manifest not a regular file, no space, read-only or missing destination directory,
       permission denied, symlink (or other non-regular file) at the destination or as its
       directory, the file installed replaced by another before or as it was renamed into place

POD SNIPPET:
    initContainers:
      - name: supervisor-init
        image: ghcr.io/nvidia/openshell-community/supervisor:latest
        command: [\"openshell-copier\", \"--log-format\", \"json\"]
        env:
          - name: OPENSHELL_SUPERVISOR_SHA256   # optional pin; must match the image's manifest
            value: \"<64 hex digits>\"
        volumeMounts:
          - name: supervisor-bin
            mountPath: /opt/openshell/bin
    containers:
      - name: agent
        command: [\"/opt/openshell/bin/openshell-sandbox\"]
        volumeMounts:
          - name: supervisor-bin
            mountPath: /opt/openshell/bin
            readOnly: true
    volumes:
      - name: supervisor-bin
        emptyDir: {}
";

/// A validated install request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// The binary to install.
    pub source: PathBuf,
    /// The `sha256sum` manifest.
    pub manifest: PathBuf,
    /// Whether `--manifest` named it (then it must exist and list the source).
    pub manifest_given: bool,
    /// Where to install.
    pub dest: PathBuf,
    /// The pinned digest, from `--sha256` or the environment.
    pub pin: Option<Pin>,
}

/// What the command line asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Print [`HELP`].
    Help,
    /// Print the version.
    Version,
    /// Install.
    Install(Options),
}

/// The parse result, with the log format known even when parsing failed, so that the usage
/// error itself is reported in the format that was asked for.
#[derive(Debug)]
pub struct Parsed {
    /// `--log-format`, or the default.
    pub log_format: Format,
    /// The command, or the first usage error.
    pub command: Result<Command, Error>,
}

/// Parses `args` (without the program name); `env_pin` is the value of [`PIN_ENV`].
///
/// Every argument is looked at even after an error, so that `--log-format json` takes effect
/// wherever it appears; `--help` wins over errors.
pub fn parse(args: impl IntoIterator<Item = OsString>, env_pin: Option<OsString>) -> Parsed {
    let mut parser = Parser::default();
    let mut args = args.into_iter().peekable();
    while let Some(arg) = args.next() {
        if let Err(err) = parser.take(&arg, &mut args) {
            parser.error.get_or_insert(err);
        }
    }
    let log_format = parser.log_format.unwrap_or_default();
    let command = if parser.help {
        Ok(Command::Help)
    } else if let Some(err) = parser.error {
        Err(err)
    } else if parser.version {
        Ok(Command::Version)
    } else {
        parser.pin(env_pin).map(|pin| {
            Command::Install(Options {
                source: parser.source.unwrap_or_else(|| DEFAULT_SOURCE.into()),
                manifest_given: parser.manifest.is_some(),
                manifest: parser.manifest.unwrap_or_else(|| DEFAULT_MANIFEST.into()),
                dest: parser.dest.unwrap_or_else(|| DEFAULT_DEST.into()),
                pin,
            })
        })
    };
    Parsed {
        log_format,
        command,
    }
}

#[derive(Default)]
struct Parser {
    source: Option<PathBuf>,
    manifest: Option<PathBuf>,
    dest: Option<PathBuf>,
    sha256: Option<OsString>,
    log_format: Option<Format>,
    help: bool,
    version: bool,
    error: Option<Error>,
}

impl Parser {
    fn take(
        &mut self,
        arg: &OsStr,
        rest: &mut Peekable<impl Iterator<Item = OsString>>,
    ) -> Result<(), Error> {
        let bytes = arg.as_bytes();
        // `--flag=value`: split at the first '='. Values stay raw bytes: paths need not be UTF-8.
        let (flag, inline) = match bytes.iter().position(|&b| b == b'=') {
            Some(i) if bytes.starts_with(b"--") => {
                (&bytes[..i], Some(OsStr::from_bytes(&bytes[i + 1..])))
            }
            _ => (bytes, None),
        };
        let flag = String::from_utf8_lossy(flag);
        // A following option is not taken as a value: `--source --dest x` is a mistake, and a
        // file really named `--x` can still be given as `--source=--x` or `./--x`.
        let mut value = || match inline {
            Some(v) => Ok(v.to_owned()),
            None => rest
                .next_if(|v| !v.as_bytes().starts_with(b"--"))
                .ok_or_else(|| usage(&flag, "expects a value")),
        };
        match (flag.as_ref(), inline) {
            ("-h" | "--help", None) => self.help = true,
            ("-V" | "--version", None) => self.version = true,
            ("--source", _) => set_once(&mut self.source, &flag, path(&flag, value()?)?)?,
            ("--manifest", _) => set_once(&mut self.manifest, &flag, path(&flag, value()?)?)?,
            ("--dest", _) => set_once(&mut self.dest, &flag, path(&flag, value()?)?)?,
            ("--sha256", _) => set_once(&mut self.sha256, &flag, value()?)?,
            ("--log-format", _) => {
                let format = match value()?.to_str() {
                    Some("text") => Format::Text,
                    Some("json") => Format::Json,
                    _ => return Err(usage(&flag, "must be `text` or `json`")),
                };
                set_once(&mut self.log_format, &flag, format)?;
            }
            _ if flag.starts_with('-') => return Err(usage(&flag, "unknown option")),
            _ => {
                return Err(usage(
                    &flag,
                    "unexpected argument: this command takes options only",
                ));
            }
        }
        Ok(())
    }

    /// The pin: `--sha256` if given, else a non-empty [`PIN_ENV`] (empty counts as unset, so a
    /// templated pod spec with a blank value falls back to the manifest instead of failing).
    fn pin(&self, env_pin: Option<OsString>) -> Result<Option<Pin>, Error> {
        let (hex, origin) = match (&self.sha256, env_pin) {
            (Some(flag), _) => (flag.clone(), "--sha256"),
            (None, Some(env)) if !env.is_empty() => (env, PIN_ENV),
            (None, _) => return Ok(None),
        };
        let digest = Digest::from_hex(hex.as_bytes()).map_err(|reason| usage(origin, reason))?;
        Ok(Some(Pin { digest, origin }))
    }
}

fn set_once<T>(slot: &mut Option<T>, flag: &str, value: T) -> Result<(), Error> {
    if slot.is_some() {
        return Err(usage(flag, "given more than once"));
    }
    *slot = Some(value);
    Ok(())
}

fn path(flag: &str, value: OsString) -> Result<PathBuf, Error> {
    if value.is_empty() {
        return Err(usage(flag, "must not be empty"));
    }
    Ok(value.into())
}

fn usage(arg: &str, reason: &str) -> Error {
    Error::Usage {
        arg: arg.to_owned(),
        reason: reason.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStringExt;

    const HEX: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn parse_strs(args: &[&str], env: Option<&str>) -> Parsed {
        parse(args.iter().map(OsString::from), env.map(OsString::from))
    }

    fn options(args: &[&str], env: Option<&str>) -> Options {
        match parse_strs(args, env).command {
            Ok(Command::Install(options)) => options,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    fn usage_error(args: &[&str], env: Option<&str>) -> String {
        match parse_strs(args, env).command {
            Err(err @ Error::Usage { .. }) => err.to_string(),
            other => panic!("{args:?}: {other:?}"),
        }
    }

    #[test]
    fn defaults_match_the_contract() {
        let o = options(&[], None);
        assert_eq!(o.source, PathBuf::from("/usr/local/bin/openshell-sandbox"));
        assert_eq!(
            o.manifest,
            PathBuf::from("/usr/local/share/openshell/SHA256SUMS")
        );
        assert_eq!(
            o.dest,
            PathBuf::from("/opt/openshell/bin/openshell-sandbox")
        );
        assert_eq!(o.pin, None);
        assert_eq!(parse_strs(&[], None).log_format, Format::Text);
    }

    #[test]
    fn takes_separate_and_inline_values() {
        let o = options(
            &[
                "--source",
                "/s",
                "--manifest=/m",
                "--dest",
                "/d=x",
                "--sha256",
                HEX,
            ],
            None,
        );
        assert_eq!((o.source, o.manifest), ("/s".into(), "/m".into()));
        assert_eq!(o.dest, PathBuf::from("/d=x"));
        assert_eq!(
            o.pin.map(|p| (p.digest.to_string(), p.origin)),
            Some((HEX.into(), "--sha256"))
        );
    }

    #[test]
    fn keeps_non_utf8_paths_intact() {
        let raw = b"/tmp/\xff\xfe".to_vec();
        let mut inline = b"--dest=".to_vec();
        inline.extend(&raw);
        let parsed = parse(
            [
                OsString::from("--source"),
                OsString::from_vec(raw.clone()),
                OsString::from_vec(inline),
            ],
            None,
        );
        let Ok(Command::Install(o)) = parsed.command else {
            panic!("{:?}", parsed.command)
        };
        assert_eq!(o.source.into_os_string().into_vec(), raw);
        assert_eq!(o.dest.into_os_string().into_vec(), raw);
    }

    #[test]
    fn the_flag_pin_overrides_the_environment_and_an_empty_one_is_unset() {
        let upper = HEX.to_uppercase();
        let from_env = options(&[], Some(&upper)).pin.unwrap();
        assert_eq!(
            (from_env.digest.to_string().as_str(), from_env.origin),
            (HEX, PIN_ENV)
        );
        let from_flag = options(&["--sha256", HEX], Some("not even hex"))
            .pin
            .unwrap();
        assert_eq!(from_flag.origin, "--sha256");
        assert_eq!(options(&[], Some("")).pin, None);
    }

    #[test]
    fn bad_pins_are_usage_errors_naming_their_origin() {
        assert!(
            usage_error(&["--sha256", "abc"], None).starts_with("--sha256: must be exactly 64")
        );
        let env = usage_error(&[], Some(&HEX.replace('a', "z")));
        assert!(
            env.starts_with("OPENSHELL_SUPERVISOR_SHA256: contains a character"),
            "{env}"
        );
    }

    #[test]
    fn rejects_what_it_does_not_understand() {
        for (args, expected) in [
            (&["--bogus"][..], "--bogus: unknown option (see --help)"),
            (
                &["stray"],
                "stray: unexpected argument: this command takes options only (see --help)",
            ),
            (&["--source"], "--source: expects a value (see --help)"),
            (
                &["--source", "--dest", "/d"],
                "--source: expects a value (see --help)",
            ),
            (&["--source="], "--source: must not be empty (see --help)"),
            (
                &["--dest", "/a", "--dest", "/b"],
                "--dest: given more than once (see --help)",
            ),
            (
                &["--log-format", "xml"],
                "--log-format: must be `text` or `json` (see --help)",
            ),
            (&["--help=yes"], "--help: unknown option (see --help)"),
        ] {
            assert_eq!(usage_error(args, None), expected, "{args:?}");
        }
    }

    #[test]
    fn the_log_format_applies_even_to_an_earlier_usage_error() {
        let parsed = parse_strs(&["--bogus", "--log-format", "json"], None);
        assert_eq!(parsed.log_format, Format::Json);
        assert!(parsed.command.is_err());
    }

    #[test]
    fn help_wins_and_version_is_recognised() {
        assert!(matches!(
            parse_strs(&["--bogus", "-h"], None).command,
            Ok(Command::Help)
        ));
        assert!(matches!(
            parse_strs(&["--version"], None).command,
            Ok(Command::Version)
        ));
        assert!(matches!(
            parse_strs(&["-V"], Some("junk")).command,
            Ok(Command::Version)
        ));
    }

    #[test]
    fn help_documents_every_option_and_exit_code() {
        for needle in [
            "--source",
            "--manifest",
            "--sha256",
            "--dest",
            "--log-format",
            PIN_ENV,
            DEFAULT_SOURCE,
            DEFAULT_MANIFEST,
            DEFAULT_DEST,
            "\n    0  ",
            "\n    2  ",
            "\n    3  ",
            "\n    4  ",
            "initContainers:",
            "emptyDir",
        ] {
            assert!(HELP.contains(needle), "help lacks {needle:?}");
        }
    }
}
