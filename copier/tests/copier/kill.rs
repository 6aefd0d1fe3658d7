//! SIGKILL at random moments: the destination must only ever be absent, the old complete
//! binary, or the new complete verified one; never a partial file. The next successful run must
//! leave no temp files behind.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::common::{Fixture, Mount, Rng, Scratch, copier, temp_files};

const ITERATIONS: u64 = 200;
const SOURCE_LEN: usize = 64 * 1024 * 1024;
/// Every this many kills, run to completion and check the directory is clean again.
const CLEAN_RUN_EVERY: u64 = 5;

#[derive(Debug, PartialEq)]
enum State {
    Absent,
    Old,
    New,
}

#[test]
fn sigkill_at_random_moments_never_leaves_a_partial_binary() {
    let scratch = Scratch::new();
    // On tmpfs, 200 installs of 64 MiB neither wear nor wait on the disk; source and destination
    // share it, so this still runs the copy_file_range path.
    let Some(_tmpfs) = Mount::tmpfs(&scratch.join("fs"), "size=512m") else {
        return;
    };
    let fx = Fixture::new(&scratch.join("fs"), SOURCE_LEN);
    let typical = typical_run_time(&fx);
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    println!("kill test: seed {seed:#x}, typical run {typical:?}");
    let mut rng = Rng::new(seed);
    let mut old = Vec::new();
    let mut seen = [0u64; 3];
    let mut mid_copy = 0;

    for i in 0..ITERATIONS {
        let start = if i % 2 == 0 {
            let _ = fs::remove_file(&fx.dest);
            State::Absent
        } else {
            old = fx.install_old();
            State::Old
        };
        let before = temp_files(&fx.out);
        let mut child = copier(fx.args())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let delay = rng.below(typical.as_micros() as u64 + 1);
        std::thread::sleep(Duration::from_micros(delay));
        child.kill().unwrap();
        child.wait().unwrap();

        let state = match fs::read(&fx.dest) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::Absent,
            Ok(bytes) if bytes == old && start == State::Old => State::Old,
            Ok(bytes) if bytes == fx.data => State::New,
            Ok(bytes) => panic!(
                "iteration {i} (delay {delay} us): partial or foreign destination of {} bytes",
                bytes.len()
            ),
            Err(e) => panic!("iteration {i}: {e}"),
        };
        assert!(
            state == start || state == State::New,
            "iteration {i}: went from {start:?} to {state:?}"
        );
        if state == State::New {
            let mode = fs::metadata(&fx.dest).unwrap().permissions().mode();
            assert_eq!(mode & 0o7777, 0o555, "iteration {i}");
        }
        seen[state as usize] += 1;
        // A temp file that was not there before the kill: it landed between create and rename.
        let after = temp_files(&fx.out);
        if after.iter().any(|name| !before.contains(name)) {
            mid_copy += 1;
        }
        if i % CLEAN_RUN_EVERY == CLEAN_RUN_EVERY - 1 {
            crate::common::run(&mut copier(fx.args())).ok_line();
            fx.assert_installed();
        }
    }
    crate::common::run(&mut copier(fx.args())).ok_line();
    fx.assert_installed();
    println!(
        "kill test: {ITERATIONS} kills: absent {}, old {}, new {}; {mid_copy} landed mid-copy",
        seen[0], seen[1], seen[2]
    );
    assert!(
        mid_copy >= ITERATIONS / 10,
        "only {mid_copy} of {ITERATIONS} kills landed mid-copy: the test is not testing much"
    );
}

/// Median wall time of a complete install, so kill delays span a whole run.
fn typical_run_time(fx: &Fixture) -> Duration {
    let mut times: Vec<Duration> = (0..3)
        .map(|_| {
            let _ = fs::remove_file(&fx.dest);
            let started = Instant::now();
            crate::common::run(&mut copier(fx.args())).ok_line();
            started.elapsed()
        })
        .collect();
    times.sort();
    times[1]
}
