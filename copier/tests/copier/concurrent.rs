//! Several copiers racing into one directory (restarts overlapping, or a misconfigured pod):
//! every one of them must succeed or find the work done, and the directory must end with one
//! complete verified file and no temp files.

use std::fs;
use std::process::Stdio;

use crate::common::{Fixture, Scratch, TEMP_PREFIX, copier, listing};

const COPIERS: usize = 8;
const ROUNDS: usize = 5;

#[test]
fn eight_concurrent_copiers_leave_one_complete_verified_file() {
    let scratch = Scratch::new();
    let fx = Fixture::new(&scratch.join("x"), 16 * 1024 * 1024);
    let mut installed = 0;
    for round in 0..ROUNDS {
        match round % 3 {
            0 => {
                let _ = fs::remove_file(&fx.dest);
            }
            1 => {
                fx.install_old();
            }
            // A leftover of a killed run, to be swept while the others copy.
            _ => fs::write(
                fx.out.join(format!("{TEMP_PREFIX}{round:016x}")),
                b"partial",
            )
            .unwrap(),
        }
        let children: Vec<_> = (0..COPIERS)
            .map(|_| {
                copier(fx.args())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for child in children {
            let out = child.wait_with_output().unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "round {round}: {stdout} {}",
                String::from_utf8_lossy(&out.stderr)
            );
            installed += usize::from(stdout.contains(" installed "));
            assert!(stdout.contains(&format!("sha256={}", fx.digest)));
        }
        fx.assert_installed();
        assert_eq!(listing(&fx.out), ["openshell-sandbox"], "round {round}");
    }
    assert!(installed >= ROUNDS, "at least one install per round");
}
