//! Real language runtimes under the sandbox: what the filesystem view and the memfd rule must
//! not break. Python's multiprocessing (a pool, locks and shared memory, all in /dev/shm)
//! under the shipped developer policy; Node running WebAssembly; wasmtime (from PyPI), which
//! maps a memfd for every module with data, while memfds cannot be executed. Each is run
//! unconfined first: a runtime that fails there proves nothing about the sandbox.
// Test code: failing loudly, with a message, is the point of every check, helpers included.
#![allow(clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

use openshell_tests::run::{self, Output, Setup, Stdin};
use openshell_tests::scratch::{AGENT_ID, RUN_AS_AGENT, Scratch, give_to_agent};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A program the test needs from the machine (installed by scripts/setup-host.sh).
fn installed(path: &str) -> &Path {
    let path = Path::new(path);
    assert!(
        path.exists(),
        "{} missing: run scripts/setup-host.sh (make setup)",
        path.display()
    );
    path
}

/// `program args...` as the agent's user, outside any sandbox, in `workdir`.
fn unconfined(program: &Path, args: &[&str], workdir: &Path, env: &[(&str, &Path)]) -> Output {
    let mut command = Command::new(program);
    command.args(args).current_dir(workdir);
    command.envs(env.iter().copied());
    Setup {
        as_agent: true,
        ..Setup::default()
    }
    .apply(&mut command);
    run::run(&mut command, Stdin::Null)
}

/// A scratch directory with `project/`, the agent's own workdir, holding `file`.
fn project(tag: &str, file: &str, content: &str) -> (Scratch, PathBuf) {
    let scratch = Scratch::new(tag);
    let workdir = scratch.join("project");
    std::fs::create_dir(&workdir).expect("mkdir");
    give_to_agent(&workdir);
    std::fs::write(workdir.join(file), content).expect("write");
    (scratch, workdir)
}

/// Whether memfds made in the sandbox are sealed against execution (F_SEAL_EXEC): proof that
/// vm.memfd_noexec applies where the runtime ran.
const SEALED: &str = r#"
import fcntl, os
fd = os.memfd_create("probe")
print("sealed" if fcntl.fcntl(fd, 1034) & 0x20 else "executable")  # F_GET_SEALS, F_SEAL_EXEC
"#;

const MULTIPROCESSING: &str = r#"
import multiprocessing as mp
from multiprocessing import shared_memory

def square(x):
    return x * x

if __name__ == "__main__":
    with mp.Pool(4) as pool:
        print(sum(pool.map(square, range(100))))
    lock = mp.Lock()
    with lock:
        shm = shared_memory.SharedMemory(create=True, size=64)
        shm.buf[:5] = b"hello"
        other = shared_memory.SharedMemory(name=shm.name)
        print(bytes(other.buf[:5]).decode())
        other.close()
        shm.close()
        shm.unlink()
"#;

#[test]
fn python_multiprocessing_works_under_the_developer_policy() {
    let python = installed("/usr/bin/python3");
    let (_scratch, workdir) = project("python", "pool.py", MULTIPROCESSING);
    let expected = "328350\nhello\n";
    let baseline = unconfined(python, &["pool.py"], &workdir, &[]);
    assert_eq!(baseline.stdout, expected, "unconfined\n{baseline:#?}");
    let policy = repo().join("policies/developer.yaml");
    let mut command = run::sandbox(&policy, &workdir);
    command
        .env("OPENSHELL_SANDBOX_UID", AGENT_ID.to_string())
        .env("OPENSHELL_SANDBOX_GID", AGENT_ID.to_string())
        .arg("--")
        .arg(python)
        .arg("pool.py");
    let out = run::run(&mut command, Stdin::Null);
    assert_eq!((out.code(), out.stdout.as_str()), (0, expected), "{out:#?}");
}

/// A module exporting `add(i32, i32) -> i32`.
const NODE_WASM: &str = r#"
const bytes = new Uint8Array([0,97,115,109,1,0,0,0,1,7,1,96,2,127,127,1,127,3,2,1,0,7,7,1,3,97,
  100,100,0,0,10,9,1,7,0,32,0,32,1,106,11]);
WebAssembly.instantiate(bytes).then(({ instance }) => console.log(instance.exports.add(2, 3)));
"#;

#[test]
fn node_runs_webassembly_in_the_sandbox() {
    let node = installed("/usr/bin/node");
    let (scratch, workdir) = project("node", "add.js", NODE_WASM);
    let baseline = unconfined(node, &["add.js"], &workdir, &[]);
    assert_eq!(baseline.stdout, "5\n", "unconfined\n{baseline:#?}");
    let policy = scratch.policy(&[], &[&workdir], RUN_AS_AGENT);
    let mut command = run::sandbox(&policy, &workdir);
    command.arg("--").arg(node).arg("add.js");
    let out = run::run(&mut command, Stdin::Null);
    assert_eq!((out.code(), out.stdout.as_str()), (0, "5\n"), "{out:#?}");
}

/// A module with a memory and a data segment: wasmtime backs its initial memory with a memfd
/// ("wasm-memory-image") and maps it.
const WASMTIME: &str = r#"
import wasmtime
engine = wasmtime.Engine()
store = wasmtime.Store(engine)
module = wasmtime.Module(engine, """
(module
  (memory (export "memory") 1)
  (data (i32.const 16) "hello from wasm")
  (func (export "load") (param i32) (result i32) local.get 0 i32.load8_u))
""")
instance = wasmtime.Instance(store, module, [])
load = instance.exports(store)["load"]
print(bytes(load(store, 16 + i) for i in range(15)).decode())
"#;

#[test]
fn wasmtime_maps_memfds_where_they_cannot_be_executed() {
    let python = installed("/usr/bin/python3");
    let wasmtime = repo().join("build/wasmtime");
    installed(wasmtime.to_str().expect("UTF-8 path"));
    let (scratch, workdir) = project("wasmtime", "wasm.py", &format!("{WASMTIME}{SEALED}"));
    // A copy the agent's user can reach whatever the checkout's own modes.
    let package = scratch.join("site");
    let copied = Command::new("/bin/cp")
        .arg("-r")
        .arg(&wasmtime)
        .arg(&package)
        .status()
        .expect("cp");
    assert!(copied.success());
    let env = [("PYTHONPATH", package.as_path())];
    let baseline = unconfined(python, &["wasm.py"], &workdir, &env);
    assert!(
        baseline.stdout.starts_with("hello from wasm\n"),
        "unconfined\n{baseline:#?}"
    );
    let policy = scratch.policy(&[&package], &[&workdir], RUN_AS_AGENT);
    let mut command = run::sandbox(&policy, &workdir);
    command
        .env("PYTHONPATH", &package)
        .arg("--")
        .arg(python)
        .arg("wasm.py");
    let out = run::run(&mut command, Stdin::Null);
    let sealed = if openshell_tests::require_kernel(
        Path::new("/proc/sys/vm/memfd_noexec").exists(),
        "vm.memfd_noexec=2 (Linux 6.6)",
    ) {
        "sealed"
    } else {
        "executable"
    };
    assert_eq!(
        (out.code(), out.stdout.as_str()),
        (0, format!("hello from wasm\n{sealed}\n").as_str()),
        "{out:#?}"
    );
}
