//! Deciding which digest the installed binary must have: the pod's pin, the image's manifest, or
//! both, which must then agree.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use nix::errno::Errno;
use nix::libc;

use crate::digest::Digest;
use crate::error::Error;
use crate::manifest;

/// The environment variable that pins the supervisor's digest, as an alternative to `--sha256`.
pub const PIN_ENV: &str = "OPENSHELL_SUPERVISOR_SHA256";

/// A digest pinned by whoever wrote the pod spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pin {
    /// The pinned digest.
    pub digest: Digest,
    /// Where it came from: `--sha256` or [`PIN_ENV`], for messages.
    pub origin: &'static str,
}

/// What vouched for the digest the copier checks against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Authority {
    /// Only a pin (no manifest file).
    Pin,
    /// Only the image's manifest.
    Manifest,
    /// Both, and they agree.
    PinAndManifest,
}

impl Authority {
    /// Short name for the log line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pin => "pin",
            Self::Manifest => "manifest",
            Self::PinAndManifest => "pin+manifest",
        }
    }
}

/// The digest the installed file must have, and what vouched for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expected {
    /// The digest.
    pub digest: Digest,
    /// Who vouched for it.
    pub authority: Authority,
}

/// Combines the pin and the manifest's entry for `source`'s file name.
///
/// A missing default manifest is fine when there is a pin: the pin alone is enough. A manifest
/// that exists must be readable and well-formed even then, because an image whose manifest is
/// damaged should not be trusted on the strength of the pod spec alone. One named by
/// `--manifest` (`given`) is what the operator asked to be checked against: it must exist and
/// list the source, pin or no pin, or a pin would silently stand in for a check that never ran.
pub fn resolve(
    pin: Option<Pin>,
    manifest: &Path,
    given: bool,
    source: &Path,
) -> Result<Expected, Error> {
    let name = source.file_name().ok_or_else(|| Error::Usage {
        arg: "--source".into(),
        reason: format!("{} does not name a file", source.display()),
    })?;
    let text = read_manifest(manifest)?;
    let listed = match &text {
        Some(text) => manifest::lookup(manifest, text, name)?,
        None => None,
    };
    let (digest, authority) = match (pin, listed) {
        (Some(pin), Some(listed)) if pin.digest != listed => {
            return Err(Error::PinMismatch {
                manifest: manifest.to_owned(),
                listed,
                pinned: pin.digest,
                origin: pin.origin,
            });
        }
        (Some(pin), Some(_)) => (pin.digest, Authority::PinAndManifest),
        (Some(_), None) if given => {
            return Err(match text {
                None => Error::io(manifest, "open", Errno::ENOENT),
                Some(_) => Error::GivenManifestNoEntry {
                    path: manifest.to_owned(),
                    name: name.into(),
                },
            });
        }
        (Some(pin), None) => (pin.digest, Authority::Pin),
        (None, Some(listed)) => (listed, Authority::Manifest),
        (None, None) if text.is_none() => {
            return Err(Error::NothingToVerifyAgainst {
                manifest: manifest.to_owned(),
            });
        }
        (None, None) => {
            return Err(Error::ManifestNoEntry {
                path: manifest.to_owned(),
                name: name.into(),
            });
        }
    };
    Ok(Expected { digest, authority })
}

/// Reads the manifest; `None` if it does not exist.
fn read_manifest(path: &Path) -> Result<Option<Vec<u8>>, Error> {
    // O_NONBLOCK so a FIFO at the manifest's path cannot hang us before fstat rejects it.
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path);
    let mut file = match file {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path, "open", e)),
    };
    let meta = file.metadata().map_err(|e| Error::io(path, "fstat", e))?;
    if !meta.file_type().is_file() {
        return Err(Error::not_regular(path, meta.mode()));
    }
    let mut text = Vec::new();
    file.read_to_end(&mut text)
        .map_err(|e| Error::io(path, "read", e))?;
    Ok(Some(text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Scratch;

    const A: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    const B: &str = "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752";

    struct Manifest {
        scratch: Scratch,
    }

    impl Manifest {
        fn new(text: Option<&str>) -> Self {
            let scratch = Scratch::new();
            if let Some(text) = text {
                std::fs::write(scratch.join("SHA256SUMS"), text).unwrap();
            }
            Self { scratch }
        }

        fn resolve(&self, pin: Option<&str>) -> Result<Expected, Error> {
            let pin = pin.map(|hex| Pin {
                digest: digest(hex),
                origin: "--sha256",
            });
            let source = Path::new("/usr/local/bin/openshell-sandbox");
            resolve(pin, &self.scratch.join("SHA256SUMS"), false, source)
        }
    }

    fn digest(hex: &str) -> Digest {
        Digest::from_hex(hex.as_bytes()).unwrap()
    }

    fn entry(hex: &str) -> String {
        format!("{hex}  openshell-sandbox\n")
    }

    #[test]
    fn a_pin_alone_is_enough_when_there_is_no_manifest() {
        let m = Manifest::new(None);
        let expected = m.resolve(Some(A)).unwrap();
        assert_eq!(
            (expected.digest, expected.authority),
            (digest(A), Authority::Pin)
        );
    }

    #[test]
    fn the_manifest_alone_is_enough() {
        let m = Manifest::new(Some(&entry(A)));
        let expected = m.resolve(None).unwrap();
        assert_eq!(
            (expected.digest, expected.authority),
            (digest(A), Authority::Manifest)
        );
    }

    #[test]
    fn pin_and_manifest_must_agree() {
        let m = Manifest::new(Some(&entry(A)));
        assert_eq!(
            m.resolve(Some(A)).unwrap().authority,
            Authority::PinAndManifest
        );
        let err = m.resolve(Some(B)).unwrap_err();
        assert_eq!(err.exit_code(), crate::error::EXIT_MISMATCH);
        assert!(
            err.to_string()
                .contains(&format!("entry is {A} but --sha256 pins {B}")),
            "{err}"
        );
    }

    #[test]
    fn a_pin_covers_a_manifest_without_our_entry() {
        let m = Manifest::new(Some(&format!("{B}  other\n")));
        assert_eq!(m.resolve(Some(A)).unwrap().authority, Authority::Pin);
    }

    #[test]
    fn a_given_manifest_must_exist_and_list_the_source_even_with_a_pin() {
        let source = Path::new("/usr/local/bin/openshell-sandbox");
        let pin = Some(Pin {
            digest: digest(A),
            origin: "--sha256",
        });
        let other = Manifest::new(Some(&format!("{B}  other\n")));
        let path = other.scratch.join("SHA256SUMS");
        let err = resolve(pin, &path, true, source).unwrap_err();
        assert!(matches!(err, Error::GivenManifestNoEntry { .. }), "{err}");
        assert_eq!(err.exit_code(), crate::error::EXIT_USAGE);
        let missing = Manifest::new(None);
        let err = resolve(pin, &missing.scratch.join("SHA256SUMS"), true, source).unwrap_err();
        assert!(
            matches!(&err, Error::Io { op: "open", source, .. } if source.raw_os_error() == Some(libc::ENOENT)),
            "{err}"
        );
        let listed = Manifest::new(Some(&entry(A)));
        let path = listed.scratch.join("SHA256SUMS");
        assert_eq!(
            resolve(pin, &path, true, source).unwrap().authority,
            Authority::PinAndManifest
        );
    }

    #[test]
    fn refuses_when_nothing_vouches() {
        let none = Manifest::new(None);
        assert!(matches!(
            none.resolve(None),
            Err(Error::NothingToVerifyAgainst { .. })
        ));
        let other = Manifest::new(Some(&format!("{B}  other\n")));
        assert!(matches!(
            other.resolve(None),
            Err(Error::ManifestNoEntry { .. })
        ));
    }

    #[test]
    fn a_damaged_manifest_is_refused_even_with_a_pin() {
        let m = Manifest::new(Some("garbage\n"));
        let err = m.resolve(Some(A)).unwrap_err();
        assert!(
            matches!(err, Error::ManifestSyntax { line: 1, .. }),
            "{err}"
        );
    }

    #[test]
    fn a_manifest_that_is_a_directory_is_refused() {
        let dir = std::env::temp_dir();
        let err = resolve(None, &dir, false, Path::new("openshell-sandbox")).unwrap_err();
        assert!(
            matches!(
                err,
                Error::NotRegular {
                    kind: "a directory",
                    ..
                }
            ),
            "{err}"
        );
    }
}
