//! A directory someone else has been writing into: symlinks where our files go, leftovers of
//! killed runs, a live concurrent copier's temp file. Nothing may be written outside the
//! destination directory, and nothing that is not ours may be removed.

use std::fs::{self, File};
use std::os::unix::fs::symlink;

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
