//! A directory someone else has been writing into: symlinks where our files go, leftovers of
//! killed runs, a live concurrent copier's temp file, a look-alike binary another user owns, a
//! planted huge file. Nothing may be written outside the destination directory, nothing that
//! is not ours may be removed, and nothing we did not write ourselves counts as installed. (A
//! file renamed over ours between verification and rename: see the unit tests in install.rs,
//! which can stop between the two steps.)

use std::fs::{self, File};
use std::os::unix::fs::{MetadataExt, PermissionsExt, lchown, symlink};
use std::time::{Duration, Instant};

use crate::common::{Fixture, Scratch, TEMP_PREFIX, identity, listing};

#[test]
fn a_symlink_at_the_destination_is_refused_and_its_target_untouched() {
    let scratch = Scratch::new();
    let fx = Fixture::new(&scratch.join("x"), 10_000);
    let outside = scratch.join("precious");
    fs::write(&outside, b"not yours").unwrap();
    symlink(&outside, &fx.dest).unwrap();
    let before = identity(&outside);

    let line = fx.run(&[]).failure_line(4).to_owned();
    assert_eq!(
        line,
        format!(
            "openshell-copier: {}: is a symbolic link; refusing to follow it \
             (remove it: the copier only ever replaces a regular file there)",
            fx.dest.display()
        )
    );
    assert_eq!(fs::read(&outside).unwrap(), b"not yours");
    assert_eq!(identity(&outside), before);
    assert_eq!(fs::read_link(&fx.dest).unwrap(), outside);
    assert_eq!(listing(&fx.out), ["openshell-sandbox"]);
}

#[test]
fn a_dangling_symlink_at_the_destination_is_refused_too() {
    let scratch = Scratch::new();
    let fx = Fixture::new(&scratch.join("x"), 10_000);
    let outside = scratch.join("would-be-created");
    symlink(&outside, &fx.dest).unwrap();
    fx.run(&[]).failure_line(4);
    assert!(!outside.exists());
}

#[test]
fn a_symlinked_destination_directory_is_refused() {
    let scratch = Scratch::new();
    let fx = Fixture::new(&scratch.join("x"), 10_000);
    let real = scratch.join("real");
    fs::create_dir(&real).unwrap();
    fs::remove_dir(&fx.out).unwrap();
    symlink(&real, &fx.out).unwrap();

    let line = fx.run(&[]).failure_line(4).to_owned();
    assert_eq!(
        line,
        format!(
            "openshell-copier: {}: is a symbolic link; refusing to follow it \
             (point --dest into the real directory)",
            fx.out.display()
        )
    );
    assert!(listing(&real).is_empty());
}

#[test]
fn a_directory_at_the_destination_is_refused() {
    let scratch = Scratch::new();
    let fx = Fixture::new(&scratch.join("x"), 10_000);
    fs::create_dir(&fx.dest).unwrap();
    let line = fx.run(&[]).failure_line(4).to_owned();
    assert!(
        line.ends_with("is a directory, not a regular file"),
        "{line}"
    );
    assert!(listing(&fx.dest).is_empty());
}

#[test]
fn symlinks_planted_on_temp_names_are_never_written_through_or_removed() {
    let scratch = Scratch::new();
    let fx = Fixture::new(&scratch.join("x"), 200_000);
    let outside = scratch.join("precious");
    fs::write(&outside, b"not yours").unwrap();
    // Names in exactly the copier's temp pattern; one of them is what a sweep would remove if
    // it were a regular file.
    let planted: Vec<String> = ["0123456789abcdef", "fedcba9876543210", "0000000000000000"]
        .iter()
        .map(|suffix| format!("{TEMP_PREFIX}{suffix}"))
        .collect();
    for name in &planted {
        symlink(&outside, fx.out.join(name)).unwrap();
    }

    assert!(fx.run(&[]).ok_line().contains(" installed "));
    assert_eq!(fs::read(&outside).unwrap(), b"not yours");
    assert_eq!(fs::read(&fx.dest).unwrap(), fx.data);
    let mut expected = planted.clone();
    expected.push("openshell-sandbox".into());
    expected.sort();
    assert_eq!(listing(&fx.out), expected);
    for name in &planted {
        assert_eq!(fs::read_link(fx.out.join(name)).unwrap(), outside);
    }
}

#[test]
fn leftovers_of_killed_runs_are_swept_but_a_live_copiers_file_is_not() {
    let scratch = Scratch::new();
    let fx = Fixture::new(&scratch.join("x"), 10_000);
    let stale = [
        format!("{TEMP_PREFIX}0123456789abcdef"),
        format!("{TEMP_PREFIX}aaaaaaaaaaaaaaaa"),
    ];
    for name in &stale {
        fs::write(fx.out.join(name), b"half a binary").unwrap();
    }
    // Look-alikes that are not ours must survive.
    let foreign = [
        format!("{TEMP_PREFIX}not-hex-at-all!"),
        ".other.tmp-0123456789abcdef".to_owned(),
        "notes.txt".to_owned(),
    ];
    for name in &foreign {
        fs::write(fx.out.join(name), b"keep me").unwrap();
    }
    // A concurrent copier's temp file: it holds the lock the copier would hold.
    let live_name = format!("{TEMP_PREFIX}1111111111111111");
    let live = File::create(fx.out.join(&live_name)).unwrap();
    live.try_lock().unwrap();

    let line = fx.run(&[]).ok_line().to_owned();
    assert!(line.ends_with("stale_temps_removed=2"), "{line}");
    let mut expected: Vec<String> = foreign.to_vec();
    expected.push(live_name.clone());
    expected.push("openshell-sandbox".into());
    expected.sort();
    assert_eq!(listing(&fx.out), expected);

    // Once its owner is gone, even an "already current" run removes it.
    drop(live);
    let line = fx.run(&[]).ok_line().to_owned();
    assert!(
        line.contains("already-current") && line.ends_with("stale_temps_removed=1"),
        "{line}"
    );
    assert!(!fx.out.join(&live_name).exists());
}

/// Runs `script` with `sh -c` as the unprivileged `uid` (another user of the volume).
fn as_user(uid: u32, script: &str) -> std::process::ExitStatus {
    use std::os::unix::process::CommandExt;
    std::process::Command::new("/bin/sh")
        .args(["-c", script])
        .uid(uid)
        .gid(uid)
        .status()
        .unwrap()
}

const OTHER_USER: u32 = 65534;

#[test]
fn the_right_bytes_in_a_file_another_user_owns_are_replaced_not_trusted() {
    let scratch = Scratch::new();
    let fx = Fixture::new(&scratch.join("x"), 100_000);
    fs::set_permissions(scratch.join("x"), fs::Permissions::from_mode(0o755)).unwrap();
    // An emptyDir: writable by every user of the pod.
    fs::set_permissions(&fx.out, fs::Permissions::from_mode(0o777)).unwrap();
    let plant = || {
        let _ = fs::remove_file(&fx.dest);
        fs::write(&fx.dest, &fx.data).unwrap();
        fs::set_permissions(&fx.dest, fs::Permissions::from_mode(0o555)).unwrap();
        lchown(&fx.dest, Some(OTHER_USER), Some(OTHER_USER)).unwrap();
    };
    // The attack: the owner of a 0555 file can make it writable again and rewrite it at will,
    // long after a copier vouched for it.
    plant();
    let dest = fx.dest.display();
    let rewrite = format!("chmod u+w '{dest}' && echo tampered > '{dest}'");
    assert!(as_user(OTHER_USER, &rewrite).success());
    assert_eq!(fs::read(&fx.dest).unwrap(), b"tampered\n");

    plant();
    let planted = identity(&fx.dest);
    let line = fx.run(&[]).ok_line().to_owned();
    assert!(line.contains(" installed "), "{line}");
    fx.assert_installed();
    assert_ne!(identity(&fx.dest), planted, "a new file");
    let meta = fs::metadata(&fx.dest).unwrap();
    assert_eq!(
        (meta.uid(), meta.nlink()),
        (nix::unistd::geteuid().as_raw(), 1)
    );
    // Its former owner can no longer touch it.
    assert!(!as_user(OTHER_USER, &rewrite).success());
    assert_eq!(fs::read(&fx.dest).unwrap(), fx.data);
}

#[test]
fn a_planted_20_gib_sparse_file_is_replaced_without_being_read() {
    let scratch = Scratch::new();
    let fx = Fixture::new(&scratch.join("x"), 100_000);
    for owner in [nix::unistd::geteuid().as_raw(), OTHER_USER] {
        let _ = fs::remove_file(&fx.dest);
        let planted = File::create(&fx.dest).unwrap();
        planted.set_len(20 << 30).unwrap();
        drop(planted);
        fs::set_permissions(&fx.dest, fs::Permissions::from_mode(0o555)).unwrap();
        lchown(&fx.dest, Some(owner), None).unwrap();
        let started = Instant::now();
        let line = fx.run(&[]).ok_line().to_owned();
        let took = started.elapsed();
        assert!(line.contains(" installed "), "{line}");
        // Hashing 20 GiB takes a minute; not reading it, milliseconds.
        assert!(took < Duration::from_secs(5), "owner {owner}: {took:?}");
        fx.assert_installed();
    }
}
