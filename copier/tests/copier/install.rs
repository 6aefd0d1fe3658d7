//! The install path: what gets installed, when, verified against what; and that a refused
//! install leaves the destination exactly as it was.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt;

use crate::common::{Fixture, PIN_ENV, Scratch, identity, listing, temp_files};

#[test]
fn installs_the_verified_binary_mode_0555_with_one_log_line() {
    let scratch = Scratch::new();
    let fx = Fixture::new(&scratch.join("x"), 3 * 1024 * 1024 + 7);
    let r = fx.run(&[]);
    // Source and destination share a filesystem here, so the in-kernel copy must be the one used.
    assert_eq!(
        r.ok_line(),
        format!(
            "openshell-copier: installed dest={} sha256={} bytes={} verified_by=manifest \
             copy=copy_file_range stale_temps_removed=0",
            fx.dest.display(),
            fx.digest,
            fx.data.len()
        )
    );
    fx.assert_installed();
    assert_eq!(listing(&fx.out), ["openshell-sandbox"]);
    assert_eq!(crate::common::sha256sum(&fx.dest), fx.digest);
}

#[test]
fn a_rerun_leaves_the_installed_file_alone() {
    let scratch = Scratch::new();
    let fx = Fixture::new(&scratch.join("x"), 256 * 1024);
    fx.run(&[]).ok_line();
    let before = identity(&fx.dest);
    std::thread::sleep(std::time::Duration::from_millis(20));
    let line = fx.run(&[]).ok_line().to_owned();
    assert!(
        line.starts_with("openshell-copier: already-current dest="),
        "{line}"
    );
    assert!(
        line.contains(&format!("sha256={} bytes=262144", fx.digest)),
        "{line}"
    );
    assert_eq!(identity(&fx.dest), before, "inode, mtime or ctime changed");
    fx.assert_installed();
}

#[test]
fn replaces_an_outdated_binary_and_a_right_one_with_the_wrong_mode() {
    let scratch = Scratch::new();
    let fx = Fixture::new(&scratch.join("x"), 100_000);
    fx.install_old();
    assert!(fx.run(&[]).ok_line().contains(" installed "));
    fx.assert_installed();

    fs::set_permissions(&fx.dest, fs::Permissions::from_mode(0o755)).unwrap();
    let before = identity(&fx.dest);
    assert!(fx.run(&[]).ok_line().contains(" installed "));
    assert_ne!(identity(&fx.dest).1, before.1, "expected a fresh inode");
    fx.assert_installed();
}

#[test]
fn a_pin_alone_verifies_via_flag_or_environment() {
    let scratch = Scratch::new();
    let fx = Fixture::new(&scratch.join("x"), 50_000);
    fs::remove_file(&fx.manifest).unwrap();
    // Without --manifest: the default manifest, absent here, may be missing when pinned.
    let without_manifest = || {
        crate::common::copier([
            OsStr::new("--source"),
            fx.source.as_os_str(),
            OsStr::new("--dest"),
            fx.dest.as_os_str(),
        ])
    };
    let line = crate::common::run(without_manifest().args(["--sha256", &fx.digest.to_uppercase()]))
        .ok_line()
        .to_owned();
    assert!(line.contains("verified_by=pin "), "{line}");
    fx.assert_installed();

    fs::remove_file(&fx.dest).unwrap();
    let r = crate::common::run(without_manifest().env(PIN_ENV, &fx.digest));
    assert!(r.ok_line().contains("verified_by=pin "), "{r:?}");
    fx.assert_installed();
}

#[test]
fn a_manifest_named_on_the_command_line_must_exist_and_list_the_source() {
    let scratch = Scratch::new();
    let fx = Fixture::new(&scratch.join("x"), 10_000);
    // Listing other files only: a pin must not silently stand in for the check asked for.
    fs::write(&fx.manifest, format!("{}  openshell-copier\n", fx.digest)).unwrap();
    let line = fx.run(&["--sha256", &fx.digest]).failure_line(2).to_owned();
    assert_eq!(
        line,
        format!(
            "openshell-copier: {}: no entry for openshell-sandbox; a manifest named with \
             --manifest must list the source (a pin does not stand in for it)",
            fx.manifest.display()
        )
    );
    assert!(listing(&fx.out).is_empty());
    fs::remove_file(&fx.manifest).unwrap();
    let line = fx.run(&["--sha256", &fx.digest]).failure_line(4).to_owned();
    assert!(
        line.ends_with("open: No such file or directory (os error 2)"),
        "{line}"
    );
    assert!(listing(&fx.out).is_empty());
}

#[test]
fn the_flag_overrides_the_environment_and_an_empty_variable_is_unset() {
    let scratch = Scratch::new();
    let fx = Fixture::new(&scratch.join("x"), 50_000);
    let wrong = "0".repeat(64);
    let mut cmd = crate::common::copier(fx.args());
    cmd.env(PIN_ENV, &wrong).args(["--sha256", &fx.digest]);
    let r = crate::common::run(&mut cmd);
    assert!(r.ok_line().contains("verified_by=pin+manifest "), "{r:?}");
    fx.assert_installed();

    let mut cmd = crate::common::copier(fx.args());
    let r = crate::common::run(cmd.env(PIN_ENV, ""));
    assert!(r.ok_line().contains("verified_by=manifest "), "{r:?}");
}

#[test]
fn manifest_entries_in_binary_mode_uppercase_and_among_others_are_found() {
    let scratch = Scratch::new();
    let fx = Fixture::new(&scratch.join("x"), 10_000);
    let other = "ab".repeat(32);
    fs::write(
        &fx.manifest,
        format!(
            "{other}  openshell-copier\n\n{} *./usr/local/bin/openshell-sandbox\r\n",
            fx.digest.to_uppercase()
        ),
    )
    .unwrap();
    assert!(fx.run(&[]).ok_line().contains("verified_by=manifest "));
    fx.assert_installed();
}

#[test]
fn a_manifest_that_cannot_vouch_is_refused_with_exit_2() {
    let scratch = Scratch::new();
    let fx = Fixture::new(&scratch.join("x"), 10_000);
    let other = "ab".repeat(32);
    for (text, expected) in [
        (
            format!(
                "{}  {}\nthis is not a checksum line\n",
                fx.digest, "openshell-sandbox"
            ),
            "line 2: ",
        ),
        (
            format!("{other}  openshell-copier\n"),
            "no entry for openshell-sandbox",
        ),
        (String::new(), "no entry for openshell-sandbox"),
        (
            format!(
                "{}  openshell-sandbox\n{other}  bin/openshell-sandbox\n",
                fx.digest
            ),
            "lines 1 and 2 give different digests",
        ),
    ] {
        fs::write(&fx.manifest, &text).unwrap();
        let r = fx.run(&[]);
        let line = r.failure_line(2);
        assert!(line.starts_with(&format!("openshell-copier: {}: ", fx.manifest.display())));
        assert!(line.contains(expected), "{text:?}: {line}");
        assert!(listing(&fx.out).is_empty());
    }
}

#[test]
fn a_pin_that_disagrees_with_the_manifest_installs_nothing() {
    let scratch = Scratch::new();
    let fx = Fixture::new(&scratch.join("x"), 10_000);
    let pin = "cd".repeat(32);
    let line = fx.run(&["--sha256", &pin]).failure_line(3).to_owned();
    assert!(
        line.contains(&format!("entry is {} but --sha256 pins {pin}", fx.digest)),
        "{line}"
    );
    assert!(listing(&fx.out).is_empty());
}

#[test]
fn a_tampered_source_installs_nothing_and_keeps_the_old_binary() {
    let scratch = Scratch::new();
    let fx = Fixture::new(&scratch.join("x"), 1024 * 1024);
    let mut tampered = fx.data.clone();
    tampered[fx.data.len() / 2] ^= 0x01;
    fs::write(&fx.source, &tampered).unwrap();

    let line = fx.run(&[]).failure_line(3).to_owned();
    assert!(
        line.contains(&format!(
            "{}: the copied bytes hash to ",
            fx.source.display()
        )),
        "{line}"
    );
    assert!(
        line.contains(&format!("expected {}; nothing installed", fx.digest)),
        "{line}"
    );
    assert!(listing(&fx.out).is_empty());

    let old = fx.install_old();
    let before = identity(&fx.dest);
    fx.run(&[]).failure_line(3);
    assert_eq!(fs::read(&fx.dest).unwrap(), old);
    assert_eq!(identity(&fx.dest), before);
    assert_eq!(listing(&fx.out), ["openshell-sandbox"]);
}

#[test]
fn a_missing_or_non_regular_source_is_an_io_error() {
    let scratch = Scratch::new();
    let fx = Fixture::new(&scratch.join("x"), 1000);
    let pin = ["--sha256", fx.digest.as_str()];

    fs::remove_file(&fx.source).unwrap();
    let line = fx.run(&pin).failure_line(4).to_owned();
    assert_eq!(
        line,
        format!(
            "openshell-copier: {}: open: No such file or directory (os error 2)",
            fx.source.display()
        )
    );

    fs::create_dir(&fx.source).unwrap();
    let line = fx.run(&pin).failure_line(4).to_owned();
    assert_eq!(
        line,
        format!(
            "openshell-copier: {}: is a directory, not a regular file",
            fx.source.display()
        )
    );

    fs::remove_dir(&fx.source).unwrap();
    nix::unistd::mkfifo(&fx.source, nix::sys::stat::Mode::S_IRWXU).unwrap();
    assert!(
        fx.run(&pin)
            .failure_line(4)
            .ends_with("is a FIFO, not a regular file")
    );
    assert!(listing(&fx.out).is_empty());
    assert!(temp_files(&fx.out).is_empty());
}

#[test]
fn a_missing_destination_directory_is_an_io_error() {
    let scratch = Scratch::new();
    let fx = Fixture::new(&scratch.join("x"), 1000);
    fs::remove_dir(&fx.out).unwrap();
    let line = fx.run(&[]).failure_line(4).to_owned();
    assert_eq!(
        line,
        format!(
            "openshell-copier: {}: open directory: No such file or directory (os error 2)",
            fx.out.display()
        )
    );
    assert!(!fx.out.exists());
}
