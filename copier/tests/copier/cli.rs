//! The command-line contract: help, version, usage errors, and the shape of every output line.

use crate::common::{Fixture, Scratch, copier, listing, run};

#[test]
fn help_explains_options_exit_codes_and_a_pod_snippet() {
    let r = run(&mut copier(["--help"]));
    assert_eq!((r.code, r.stderr.as_str()), (0, ""));
    for needle in [
        "--source FILE",
        "--manifest FILE",
        "--sha256 HEX",
        "--dest FILE",
        "--log-format",
        "OPENSHELL_SUPERVISOR_SHA256",
        "EXIT STATUS",
        "0  installed, or already current",
        "2  usage or configuration error",
        "3  digest mismatch",
        "4  I/O error",
        "initContainers:",
        "readOnly: true",
    ] {
        assert!(r.stdout.contains(needle), "--help lacks {needle:?}");
    }
}

#[test]
fn version_names_the_program() {
    let r = run(&mut copier(["--version"]));
    assert_eq!(
        r.ok_line(),
        format!("openshell-copier {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn usage_errors_exit_2_with_one_line_and_touch_nothing() {
    let scratch = Scratch::new();
    let fx = Fixture::new(&scratch.join("x"), 1024);
    let r = run(copier(fx.args()).arg("--bogus"));
    assert_eq!(
        r.failure_line(2),
        "openshell-copier: --bogus: unknown option (see --help)"
    );
    let r = run(copier(fx.args()).args(["--sha256", "1234"]));
    assert!(
        r.failure_line(2)
            .contains("--sha256: must be exactly 64 hex digits")
    );
    assert!(listing(&fx.out).is_empty());
}

#[test]
fn json_lines_are_single_objects_for_success_and_failure() {
    let scratch = Scratch::new();
    let fx = Fixture::new(&scratch.join("x"), 4096);
    let r = fx.run(&["--log-format", "json"]);
    let v: serde_json::Value = serde_json::from_str(r.ok_line()).unwrap();
    assert_eq!(v["program"], "openshell-copier");
    assert_eq!(v["level"], "info");
    assert_eq!(v["event"], "installed");
    assert_eq!(v["sha256"], fx.digest.as_str());
    assert_eq!(v["bytes"], 4096);
    assert_eq!(v["dest"], fx.dest.to_str().unwrap());

    let r = fx.run(&["--log-format=json"]);
    let v: serde_json::Value = serde_json::from_str(r.ok_line()).unwrap();
    assert_eq!(v["event"], "already-current");

    // A usage error before --log-format is still reported as JSON.
    let r = run(&mut copier(["--nope", "--log-format", "json"]));
    let v: serde_json::Value = serde_json::from_str(r.failure_line(2)).unwrap();
    assert_eq!(v["level"], "error");
    assert_eq!(v["exit_code"], 2);
    assert_eq!(v["message"], "--nope: unknown option (see --help)");

    let missing = scratch.join("missing");
    let manifest = scratch.join("SHA256SUMS");
    std::fs::write(&manifest, format!("{}  missing\n", fx.digest)).unwrap();
    let mut cmd = copier(["--log-format", "json", "--sha256", &fx.digest]);
    cmd.arg("--source").arg(&missing);
    cmd.arg("--manifest").arg(&manifest);
    cmd.arg("--dest").arg(fx.out.join("other"));
    let r = run(&mut cmd);
    let v: serde_json::Value = serde_json::from_str(r.failure_line(4)).unwrap();
    assert_eq!(v["path"], missing.to_str().unwrap());
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .ends_with("open: No such file or directory (os error 2)")
    );
}

#[test]
fn refuses_without_a_pin_or_a_manifest() {
    let scratch = Scratch::new();
    let fx = Fixture::new(&scratch.join("x"), 1024);
    std::fs::remove_file(&fx.manifest).unwrap();
    let line = fx.run(&[]).failure_line(2).to_owned();
    assert!(line.contains(fx.manifest.to_str().unwrap()), "{line}");
    assert!(line.contains("not found and no pin given"), "{line}");
    assert!(listing(&fx.out).is_empty());
}
