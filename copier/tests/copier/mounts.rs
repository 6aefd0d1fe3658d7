//! Filesystems that fight back: full, read-only, or a different filesystem from the source.

use std::fs;

use crate::common::{Fixture, Mount, Scratch, identity, listing};

/// Runs the copier, which must fail with exit 4 and one line naming its temp file and `cause`.
fn assert_temp_file_failure(fx: &Fixture, cause: &str) {
    let line = fx.run(&[]).failure_line(4).to_owned();
    let prefix = format!(
        "openshell-copier: {}/.openshell-sandbox.tmp-",
        fx.out.display()
    );
    assert!(line.starts_with(&prefix) && line.ends_with(cause), "{line}");
}

#[test]
fn a_full_filesystem_fails_cleanly_and_leaves_nothing() {
    let scratch = Scratch::new();
    let fx = Fixture::new(&scratch.join("x"), 3 * 1024 * 1024);
    let Some(_tmpfs) = Mount::tmpfs(&fx.out, "size=1m") else {
        return;
    };
    assert_temp_file_failure(&fx, ": No space left on device (os error 28)");
    assert!(listing(&fx.out).is_empty(), "{:?}", listing(&fx.out));

    // With an old binary in place, it stays exactly as it was.
    let old = fx.install_old();
    let before = identity(&fx.dest);
    fx.run(&[]).failure_line(4);
    assert_eq!(fs::read(&fx.dest).unwrap(), old);
    assert_eq!(identity(&fx.dest), before);
    assert_eq!(listing(&fx.out), ["openshell-sandbox"]);
}

#[test]
fn a_read_only_destination_fails_cleanly() {
    let scratch = Scratch::new();
    let fx = Fixture::new(&scratch.join("x"), 100_000);
    let Some(_tmpfs) = Mount::tmpfs(&fx.out, "ro,size=1m") else {
        return;
    };
    assert_temp_file_failure(&fx, ": create: Read-only file system (os error 30)");
    assert!(listing(&fx.out).is_empty());
}

#[test]
fn a_read_only_bind_mount_keeps_the_old_binary_and_still_accepts_a_current_one() {
    let scratch = Scratch::new();
    let fx = Fixture::new(&scratch.join("x"), 100_000);
    let old = fx.install_old();
    let Some(ro) = Mount::read_only_bind(&fx.out) else {
        return;
    };
    fx.run(&[]).failure_line(4);
    assert_eq!(fs::read(&fx.dest).unwrap(), old);
    drop(ro);

    // Installed while writable, then frozen with a killed run's leftover inside: restarts still
    // succeed, writing (and removing) nothing.
    fx.run(&[]).ok_line();
    let leftover = fx.out.join(".openshell-sandbox.tmp-00000000000000ff");
    fs::write(&leftover, b"partial").unwrap();
    let before = identity(&fx.dest);
    let Some(_ro) = Mount::read_only_bind(&fx.out) else {
        return;
    };
    assert!(fx.run(&[]).ok_line().contains("already-current"));
    assert_eq!(identity(&fx.dest).1, before.1);
    assert!(leftover.exists());
}

#[test]
fn copies_across_filesystems() {
    let scratch = Scratch::new();
    let src_root = scratch.join("tmpfs");
    let Some(_tmpfs) = Mount::tmpfs(&src_root, "size=16m") else {
        return;
    };
    let fx = Fixture::new(&src_root, 2 * 1024 * 1024 + 1);
    // Install onto the scratch dir's own filesystem instead of the tmpfs.
    let out = scratch.join("out");
    fs::create_dir(&out).unwrap();
    let dest = out.join("openshell-sandbox");
    let mut cmd = crate::common::copier(["--sha256", &fx.digest]);
    cmd.arg("--source")
        .arg(&fx.source)
        .arg("--manifest")
        .arg(&fx.manifest);
    let r = crate::common::run(cmd.arg("--dest").arg(&dest));
    // Since Linux 5.19 copy_file_range refuses most cross-filesystem copies and sendfile takes
    // over; older kernels may do it in copy_file_range. Either way the bytes must be exact.
    let line = r.ok_line();
    assert!(
        line.contains(" copy=sendfile ") || line.contains(" copy=copy_file_range "),
        "{line}"
    );
    assert_eq!(fs::read(&dest).unwrap(), fx.data);
}
