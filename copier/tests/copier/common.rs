//! Fixtures: scratch directories, tmpfs and bind mounts that are always unmounted, the binary,
//! and an independent digest oracle (`sha256sum`, not the code under test).

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_openshell-copier");
/// The pin environment variable (kept out of the tests' environment unless a test sets it).
pub const PIN_ENV: &str = "OPENSHELL_SUPERVISOR_SHA256";
/// The default destination file name, used by every fixture.
pub const NAME: &str = "openshell-sandbox";
/// Prefix of the copier's temp files for [`NAME`].
pub const TEMP_PREFIX: &str = ".openshell-sandbox.tmp-";

/// A fresh directory under the system temp dir, removed on drop.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "openshell-copier-it-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A mount that is unmounted on drop, even when the test fails. Declare it after the
/// [`Scratch`] it lives in, so it is dropped first.
pub struct Mount(PathBuf);

impl Mount {
    /// A tmpfs with `options` (e.g. `size=1m`) on `dir`, created if needed.
    pub fn tmpfs(dir: &Path, options: &str) -> Option<Self> {
        Self::new(dir, &["-t", "tmpfs", "-o", options, "tmpfs"])
    }

    /// A read-only bind mount of `dir` onto itself.
    pub fn read_only_bind(dir: &Path) -> Option<Self> {
        Self::new(dir, &["--bind", "-o", "ro", dir.to_str().unwrap()])
    }

    fn new(dir: &Path, args: &[&str]) -> Option<Self> {
        fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount").args(args).arg(dir).output();
        match out {
            Ok(out) if out.status.success() => Some(Self(dir.to_owned())),
            Ok(out) => kernel_feature_missing(&format!(
                "mount {args:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Err(e) => kernel_feature_missing(&format!("cannot run mount: {e}")),
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Something still holds it (a copier we failed to reap): detach it anyway.
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// A test that needs a kernel feature (mounts, here) skips with a printed reason, unless
/// `OPENSHELL_REQUIRE_KERNEL=1` (as CI sets) makes a missing feature a failure.
pub fn kernel_feature_missing<T>(reason: &str) -> Option<T> {
    if std::env::var_os("OPENSHELL_REQUIRE_KERNEL").is_some_and(|v| v == "1") {
        panic!("required kernel feature missing: {reason}");
    }
    eprintln!("skipped: {reason}");
    None
}

/// A small deterministic generator (xorshift64*), so data and delays need no extra crate.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform-ish in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

/// The SHA-256 of a file according to coreutils.
pub fn sha256sum(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success(), "sha256sum {}", path.display());
    String::from_utf8(out.stdout).unwrap()[..64].to_owned()
}

/// Sorted names in `dir`.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Names in `dir` that look like the copier's temp files.
pub fn temp_files(dir: &Path) -> Vec<String> {
    listing(dir)
        .into_iter()
        .filter(|n| n.starts_with(TEMP_PREFIX))
        .collect()
}

/// A finished run of the binary.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Asserts success with exactly one stdout line and nothing on stderr; returns the line.
    pub fn ok_line(&self) -> &str {
        assert_eq!(self.code, 0, "{self:?}");
        assert!(self.stderr.is_empty(), "{self:?}");
        one_line(&self.stdout)
    }

    /// Asserts failure `code` with exactly one stderr line and nothing on stdout; returns it.
    pub fn failure_line(&self, code: i32) -> &str {
        assert_eq!(self.code, code, "{self:?}");
        assert!(self.stdout.is_empty(), "{self:?}");
        one_line(&self.stderr)
    }
}

fn one_line(text: &str) -> &str {
    let line = text
        .strip_suffix('\n')
        .unwrap_or_else(|| panic!("no newline: {text:?}"));
    assert!(!line.contains('\n'), "more than one line: {text:?}");
    line
}

/// The binary with a clean pin environment.
pub fn copier<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_remove(PIN_ENV);
    cmd
}

pub fn run(cmd: &mut Command) -> Run {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().unwrap();
    Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8(stdout).unwrap(),
        stderr: String::from_utf8(stderr).unwrap(),
    }
}

/// A source binary with its manifest in `<root>/src`, and an empty install dir `<root>/out`.
pub struct Fixture {
    pub source: PathBuf,
    pub manifest: PathBuf,
    pub out: PathBuf,
    pub dest: PathBuf,
    pub data: Vec<u8>,
    pub digest: String,
}

impl Fixture {
    pub fn new(root: &Path, len: usize) -> Self {
        let src_dir = root.join("src");
        let out = root.join("out");
        fs::create_dir_all(&src_dir).unwrap();
        fs::create_dir_all(&out).unwrap();
        let source = src_dir.join(NAME);
        let data = Rng::new(len as u64 ^ 0x5eed).bytes(len);
        fs::write(&source, &data).unwrap();
        let digest = sha256sum(&source);
        let manifest = src_dir.join("SHA256SUMS");
        fs::write(&manifest, format!("{digest}  {NAME}\n")).unwrap();
        let dest = out.join(NAME);
        Self {
            source,
            manifest,
            out,
            dest,
            data,
            digest,
        }
    }

    /// The full command line for this fixture.
    pub fn args(&self) -> Vec<PathBuf> {
        ["--source", "--manifest", "--dest"]
            .into_iter()
            .map(PathBuf::from)
            .zip([&self.source, &self.manifest, &self.dest])
            .flat_map(|(flag, value)| [flag, value.clone()])
            .collect()
    }

    /// Runs the copier with this fixture's arguments plus `extra`.
    pub fn run(&self, extra: &[&str]) -> Run {
        run(copier(self.args()).args(extra))
    }

    /// Asserts the destination is the complete, verified source, mode 0555, with no temp files
    /// beside it.
    pub fn assert_installed(&self) {
        assert!(
            fs::read(&self.dest).unwrap() == self.data,
            "dest differs from source"
        );
        let meta = fs::symlink_metadata(&self.dest).unwrap();
        assert!(meta.file_type().is_file());
        assert_eq!(meta.permissions().mode() & 0o7777, 0o555);
        assert_eq!(temp_files(&self.out), Vec::<String>::new());
    }

    /// Puts an old, different binary at the destination, as a previous install would have.
    pub fn install_old(&self) -> Vec<u8> {
        let old = Rng::new(0x01d).bytes(64 * 1024);
        let _ = fs::remove_file(&self.dest);
        fs::write(&self.dest, &old).unwrap();
        fs::set_permissions(&self.dest, fs::Permissions::from_mode(0o555)).unwrap();
        old
    }
}

/// (device, inode, mtime, ctime) of a path, to prove a file was left alone.
pub fn identity(path: &Path) -> (u64, u64, i64, i64, i64, i64) {
    let m = fs::symlink_metadata(path).unwrap();
    (
        m.dev(),
        m.ino(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
    )
}
