//! `escape-probe`: one escape attempt per subcommand, made with raw system calls, for the
//! escape suite (`tests/tests/escape.rs`). Each attempt prints one line on stdout, `ok` when the
//! attack succeeded or `err ENAME` when the kernel refused it, and exits 0 or 1 accordingly.
//! Anything else (a usage error: exit 2, a panic: exit 101, a crash: a signal) is never a
//! result, so a broken probe can never pass for a blocked attack.
//!
//! A few subcommands are helpers for the tests rather than attacks: `exec-with-pid`,
//! `run-with-landlock-blocked`, `drop-bounding`, `share-mount`, `record-signals` and `pause`.
// A throw-away prober in the bubblewrap style: every unsafe block is one raw system call on
// constants, locals or argument strings, and a malformed argument may panic (exit 101, which
// the tests never read as a refusal).
#![allow(clippy::undocumented_unsafe_blocks, clippy::expect_used, clippy::panic)]

use std::arch::asm;
use std::ffi::{CString, c_long};
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::ExitCode;

use nix::errno::Errno;
use openshell_tests::FORWARDED_SIGNALS;
use openshell_tests::caps::{Set, raise};

type Attempt = Result<(), Errno>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        // Files, against Landlock.
        ["read", path] => read(path),
        ["write", path] => write(path),
        ["create", path] => create(path),
        ["truncate", path] => sys(unsafe { libc::truncate(c(path).as_ptr(), 0) }.into()),
        // O_TRUNC on a read-only open still empties the file (Landlock below ABI 3 missed it).
        ["open-trunc", path] => sys(unsafe {
            libc::open(
                c(path).as_ptr(),
                libc::O_RDONLY | libc::O_TRUNC | libc::O_CLOEXEC,
            )
        }
        .into()),
        ["stat", path] => {
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            sys(unsafe { libc::stat(c(path).as_ptr(), &mut st) }.into())
        }
        ["list-has", dir, name] => list_has(dir, name),
        ["unix-connect", path] => unix_connect(path),
        ["unlink", path] => sys(unsafe { libc::unlink(c(path).as_ptr()) }.into()),
        ["mkdir", path] => sys(unsafe { libc::mkdir(c(path).as_ptr(), 0o755) }.into()),
        ["symlink", target, link] => {
            sys(unsafe { libc::symlink(c(target).as_ptr(), c(link).as_ptr()) }.into())
        }
        ["link", old, new] => sys(unsafe { libc::link(c(old).as_ptr(), c(new).as_ptr()) }.into()),
        ["rename", old, new] => {
            sys(unsafe { libc::rename(c(old).as_ptr(), c(new).as_ptr()) }.into())
        }
        ["exec", path, rest @ ..] => Err(std::process::Command::new(path)
            .args(rest)
            .exec()
            .raw_os_error()
            .map_or(Errno::UnknownErrno, Errno::from_raw)),
        ["noop"] => Ok(()),
        // Other processes: init (pid 1 in the sandbox) and the supervisor.
        ["ptrace-attach", pid] => ptrace_attach(int(pid)),
        ["process-vm-readv", pid] => process_vm_readv(int(pid)),
        ["proc-mem", pid] => open_read(&format!("/proc/{pid}/mem")),
        ["kill", pid, signal] => sys(unsafe { libc::kill(int(pid), int(signal)) }.into()),
        ["pidfd-getfd", pid, fd] => pidfd_getfd(int(pid), int(fd)),
        // Identity and capabilities.
        ["setuid", uid] => sys(unsafe { libc::syscall(libc::SYS_setuid, int::<libc::uid_t>(uid)) }),
        ["setgid", gid] => sys(unsafe { libc::syscall(libc::SYS_setgid, int::<libc::gid_t>(gid)) }),
        ["capset-raise", cap] => capset_raise(int(cap)),
        ["ambient-raise", cap] => sys(unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_RAISE,
                int::<libc::c_ulong>(cap),
                0,
                0,
            )
        }
        .into()),
        // Mounts and namespaces.
        ["mount-tmpfs", dir] => sys(unsafe {
            libc::mount(
                c"none".as_ptr(),
                c(dir).as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                std::ptr::null(),
            )
        }
        .into()),
        ["umount", dir] => sys(unsafe { libc::umount2(c(dir).as_ptr(), libc::MNT_DETACH) }.into()),
        ["unshare", kind] => sys(unsafe { libc::unshare(namespace(kind)) }.into()),
        ["clone-newuser"] => clone_newuser(),
        ["setns", path] => setns(path),
        ["pivot-root", new, old] => {
            sys(unsafe { libc::syscall(libc::SYS_pivot_root, c(new).as_ptr(), c(old).as_ptr()) })
        }
        ["chroot", dir] => sys(unsafe { libc::chroot(c(dir).as_ptr()) }.into()),
        ["fsopen", fstype] => {
            sys(unsafe { libc::syscall(libc::SYS_fsopen, c(fstype).as_ptr(), FSOPEN_CLOEXEC) })
        }
        ["open-tree", path] => sys(unsafe {
            libc::syscall(
                libc::SYS_open_tree,
                libc::AT_FDCWD,
                c(path).as_ptr(),
                libc::OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
            )
        }),
        ["move-mount", to] => sys(unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                -1,
                c"".as_ptr(),
                libc::AT_FDCWD,
                c(to).as_ptr(),
                libc::MOVE_MOUNT_F_EMPTY_PATH,
            )
        }),
        // Sockets and the network.
        ["socket", family, kind, protocol] => {
            sys(
                unsafe { libc::socket(socket_family(family), socket_type(kind), int(protocol)) }
                    .into(),
            )
        }
        ["udp-connect", addr, port] => udp_connect(addr, int(port)),
        // Kernel attack surface.
        ["io-uring-setup"] => {
            let mut params = [0u8; 120];
            sys(unsafe { libc::syscall(libc::SYS_io_uring_setup, 8, params.as_mut_ptr()) })
        }
        ["bpf-map-create"] => bpf_map_create(),
        ["perf-event-open"] => perf_event_open(),
        ["userfaultfd"] => sys(unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC) }),
        ["keyctl"] => sys(unsafe {
            libc::syscall(
                libc::SYS_keyctl,
                libc::KEYCTL_GET_KEYRING_ID,
                libc::KEY_SPEC_SESSION_KEYRING,
                0,
            )
        }),
        ["add-key"] => sys(unsafe {
            libc::syscall(
                libc::SYS_add_key,
                c"user".as_ptr(),
                c"openshell-escape-probe".as_ptr(),
                c"x".as_ptr(),
                1,
                libc::KEY_SPEC_PROCESS_KEYRING,
            )
        }),
        ["request-key"] => sys(unsafe {
            libc::syscall(
                libc::SYS_request_key,
                c"user".as_ptr(),
                c"openshell-escape-probe-absent".as_ptr(),
                std::ptr::null::<libc::c_char>(),
                0,
            )
        }),
        ["init-module"] => sys(unsafe {
            libc::syscall(
                libc::SYS_init_module,
                std::ptr::null::<u8>(),
                0,
                c"".as_ptr(),
            )
        }),
        ["finit-module"] => {
            sys(unsafe { libc::syscall(libc::SYS_finit_module, -1, c"".as_ptr(), 0) })
        }
        ["delete-module"] => sys(unsafe {
            libc::syscall(
                libc::SYS_delete_module,
                c"openshell_no_such_module".as_ptr(),
                libc::O_NONBLOCK,
            )
        }),
        // Flags no kernel accepts: the call stops at the kernel's own argument check.
        ["kexec-load"] => sys(unsafe {
            libc::syscall(
                libc::SYS_kexec_load,
                0,
                0,
                std::ptr::null::<u8>(),
                0xffff_0000u64,
            )
        }),
        ["name-to-handle", path] => name_to_handle(path),
        ["open-by-handle", mount] => open_by_handle(mount),
        // Other system call ABIs: i386 through int 0x80, and x32.
        ["int80", nr, arg] => int80(int(nr), int(arg)),
        ["x32", nr, arg] => {
            sys(unsafe { libc::syscall(int::<c_long>(nr) | X32_SYSCALL_BIT, int::<c_long>(arg)) })
        }
        // The terminal the agent shares with the user.
        ["tiocsti"] => sys(unsafe { libc::ioctl(0, libc::TIOCSTI, c"x".as_ptr()) }.into()),
        // Inherited file descriptors.
        ["find-inherited-fd"] => find_inherited_fd(),
        // Programs the policy never listed, run from memory.
        ["memfd-exec", how] => memfd_exec(how),
        ["memfd-create-exec"] => sys(unsafe {
            libc::memfd_create(c"escape-probe".as_ptr(), libc::MFD_EXEC | libc::MFD_CLOEXEC)
        }
        .into()),
        // Execution-domain flags that switch exploit mitigations off.
        ["personality", persona] => personality(int(persona)),
        // Allowed on purpose: the sandbox must not break these.
        ["memfd"] => memfd(),
        ["memfd-jit"] => memfd_jit(),
        ["clone3"] => clone3(),
        ["thread"] => std::thread::Builder::new()
            .spawn(|| ())
            .and_then(|t| {
                t.join()
                    .map_err(|_| std::io::Error::other("thread panicked"))
            })
            .map_err(|e| {
                e.raw_os_error()
                    .map_or(Errno::UnknownErrno, Errno::from_raw)
            }),
        // Helpers.
        ["exec-with-pid", "--", command @ ..] => exec_with_pid(command),
        ["run-with-landlock-blocked", errno, "--", command @ ..] => {
            block_landlock(errno);
            exec(command)
        }
        ["drop-bounding", cap, "--", command @ ..] => {
            sys(
                unsafe { libc::prctl(libc::PR_CAPBSET_DROP, int::<libc::c_ulong>(cap), 0, 0, 0) }
                    .into(),
            )
            .expect("PR_CAPBSET_DROP");
            exec(command)
        }
        // In a private mount namespace: DIR becomes a shared mount (as a pod's volumes are on
        // hosts whose root is shared), so a mount made on a peer of it would show here.
        ["share-mount", dir, "--", command @ ..] => {
            let dir = c(dir);
            let none = std::ptr::null();
            let bind = unsafe {
                libc::mount(dir.as_ptr(), dir.as_ptr(), none, libc::MS_BIND, none.cast())
            };
            sys(bind.into()).expect("bind mount");
            let share =
                unsafe { libc::mount(none, dir.as_ptr(), none, libc::MS_SHARED, none.cast()) };
            sys(share.into()).expect("making the mount shared");
            exec(command)
        }
        ["record-signals", file, exit_on] => record_signals(file, exit_on),
        ["pause", _marker] => loop {
            unsafe { libc::pause() };
        },
        _ => {
            eprintln!("escape-probe: unknown attempt {args:?}");
            return ExitCode::from(2);
        }
    };
    let line = match result {
        Ok(()) => "ok".to_owned(),
        Err(errno) => format!("err {errno:?}"),
    };
    println!("{line}");
    let _ = std::io::stdout().flush();
    ExitCode::from(u8::from(result.is_err()))
}

const FSOPEN_CLOEXEC: libc::c_uint = 1;
const X32_SYSCALL_BIT: c_long = 0x4000_0000;

fn c(s: &str) -> CString {
    CString::new(s).expect("argument without NUL bytes")
}

fn int<T: std::str::FromStr>(s: &str) -> T {
    s.parse()
        .unwrap_or_else(|_| panic!("{s:?} is not a number of the expected type"))
}

fn sys(rc: c_long) -> Attempt {
    Errno::result(rc).map(drop)
}

fn read(path: &str) -> Attempt {
    let fd =
        Errno::result(unsafe { libc::open(c(path).as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) })?;
    let mut byte = 0u8;
    sys(unsafe { libc::read(fd, (&raw mut byte).cast(), 1) } as c_long)
}

fn open_read(path: &str) -> Attempt {
    sys(unsafe { libc::open(c(path).as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) }.into())
}

fn write(path: &str) -> Attempt {
    let fd =
        Errno::result(unsafe { libc::open(c(path).as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) })?;
    sys(unsafe { libc::write(fd, b"escaped\n".as_ptr().cast(), 8) } as c_long)
}

fn create(path: &str) -> Attempt {
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC;
    sys(unsafe { libc::open(c(path).as_ptr(), flags, 0o644) }.into())
}

/// Succeeds when the directory lists an entry `name`; ENOENT when it does not.
fn list_has(dir: &str, name: &str) -> Attempt {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        e.raw_os_error()
            .map_or(Errno::UnknownErrno, Errno::from_raw)
    })?;
    if entries.flatten().any(|e| e.file_name() == name) {
        Ok(())
    } else {
        Err(Errno::ENOENT)
    }
}

fn unix_connect(path: &str) -> Attempt {
    let fd = Errno::result(unsafe {
        libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0)
    })?;
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(path.as_bytes()) {
        *dst = *src as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    sys(unsafe { libc::connect(fd, (&raw const addr).cast(), len) }.into())
}

/// Copies this very program into a memfd (created as programs did before vm.memfd_noexec,
/// without flags) and executes it from there with `noop`, by descriptor (`fd`: execveat with
/// AT_EMPTY_PATH, as fexecve does) or by path (`path`: /proc/self/fd/N). Success prints the
/// exec'd copy's "ok".
fn memfd_exec(how: &str) -> Attempt {
    let program = std::fs::read("/proc/self/exe").expect("reading /proc/self/exe");
    let fd = Errno::result(unsafe { libc::memfd_create(c"payload".as_ptr(), 0) })?;
    let mut written = 0;
    while written < program.len() {
        let n = Errno::result(unsafe {
            libc::write(
                fd,
                program[written..].as_ptr().cast(),
                program.len() - written,
            )
        })?;
        written += n as usize;
    }
    let argv = [c"escape-probe".as_ptr(), c"noop".as_ptr(), std::ptr::null()];
    let envp = [std::ptr::null()];
    match how {
        "fd" => sys(unsafe {
            libc::syscall(
                libc::SYS_execveat,
                fd,
                c"".as_ptr(),
                argv.as_ptr(),
                envp.as_ptr(),
                libc::AT_EMPTY_PATH,
            )
        }),
        "path" => {
            let path = c(&format!("/proc/self/fd/{fd}"));
            sys(unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) }.into())
        }
        other => panic!("memfd-exec: unknown way {other:?}"),
    }
}

/// Sets the execution domain and reads it back (the query, 0xffffffff, only reads).
fn personality(persona: u32) -> Attempt {
    let previous = Errno::result(unsafe { libc::personality(persona as libc::c_ulong) })?;
    if persona == 0xffff_ffff {
        return Ok(());
    }
    let now = unsafe { libc::personality(0xffff_ffff) };
    // Restore, so that nothing this process runs next inherits the flags.
    unsafe { libc::personality(previous as libc::c_ulong) };
    if now as u32 == persona {
        Ok(())
    } else {
        Err(Errno::EINVAL)
    }
}

fn ptrace_attach(pid: libc::pid_t) -> Attempt {
    sys(unsafe { libc::ptrace(libc::PTRACE_ATTACH, pid, 0, 0) })?;
    let mut status = 0;
    unsafe { libc::waitpid(pid, &mut status, libc::__WALL) };
    sys(unsafe { libc::ptrace(libc::PTRACE_DETACH, pid, 0, 0) })
}

/// Reads 8 bytes at the start of the target's first mapping. Inside the sandbox the target's
/// maps cannot be read; the address is then arbitrary, since the call is refused before the
/// kernel looks at it.
fn process_vm_readv(pid: libc::pid_t) -> Attempt {
    let remote = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .ok()
        .and_then(|maps| {
            let start = maps.split('-').next()?;
            usize::from_str_radix(start, 16).ok()
        })
        .unwrap_or(0x10000);
    let mut buf = [0u8; 8];
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let remote = libc::iovec {
        iov_base: remote as *mut libc::c_void,
        iov_len: buf.len(),
    };
    sys(unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) } as c_long)
}

fn pidfd_getfd(pid: libc::pid_t, fd: libc::c_int) -> Attempt {
    let pidfd = Errno::result(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })?;
    sys(unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd, fd, 0) })
}

/// Adds `cap` to the permitted and effective sets.
fn capset_raise(cap: u32) -> Attempt {
    sys(raise(cap, &[Set::Permitted, Set::Effective]))
}

fn namespace(kind: &str) -> libc::c_int {
    match kind {
        "user" => libc::CLONE_NEWUSER,
        "mount" => libc::CLONE_NEWNS,
        "pid" => libc::CLONE_NEWPID,
        "net" => libc::CLONE_NEWNET,
        "uts" => libc::CLONE_NEWUTS,
        "ipc" => libc::CLONE_NEWIPC,
        "cgroup" => libc::CLONE_NEWCGROUP,
        "time" => libc::CLONE_NEWTIME,
        other => panic!("unknown namespace {other:?}"),
    }
}

/// `clone(CLONE_NEWUSER)` like a fork: the child leaves at once.
fn clone_newuser() -> Attempt {
    let flags = (libc::CLONE_NEWUSER | libc::SIGCHLD) as c_long;
    let pid = Errno::result(unsafe { libc::syscall(libc::SYS_clone, flags, 0, 0, 0, 0) })?;
    if pid == 0 {
        unsafe { libc::_exit(0) };
    }
    unsafe { libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), 0) };
    Ok(())
}

fn setns(path: &str) -> Attempt {
    let fd =
        Errno::result(unsafe { libc::open(c(path).as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) })?;
    sys(unsafe { libc::setns(fd, 0) }.into())
}

fn socket_family(name: &str) -> libc::c_int {
    match name {
        "unix" => libc::AF_UNIX,
        "inet" => libc::AF_INET,
        "netlink" => libc::AF_NETLINK,
        "packet" => libc::AF_PACKET,
        "alg" => libc::AF_ALG,
        "vsock" => libc::AF_VSOCK,
        other => panic!("unknown socket family {other:?}"),
    }
}

fn socket_type(name: &str) -> libc::c_int {
    match name {
        "stream" => libc::SOCK_STREAM,
        "dgram" => libc::SOCK_DGRAM,
        "raw" => libc::SOCK_RAW,
        "seqpacket" => libc::SOCK_SEQPACKET,
        other => panic!("unknown socket type {other:?}"),
    }
}

/// A UDP `connect` only looks up the route: no packet leaves.
fn udp_connect(addr: &str, port: u16) -> Attempt {
    let ip: std::net::Ipv4Addr = addr.parse().expect("an IPv4 address");
    let fd = Errno::result(unsafe {
        libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0)
    })?;
    let sa = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    sys(unsafe { libc::connect(fd, (&raw const sa).cast(), len) }.into())
}

/// `BPF_MAP_CREATE` of a one-entry array map.
fn bpf_map_create() -> Attempt {
    // union bpf_attr, map-create variant: map_type, key_size, value_size, max_entries.
    let mut attr = [0u32; 30];
    attr[..4].copy_from_slice(&[2, 4, 4, 1]);
    let size = std::mem::size_of_val(&attr);
    sys(unsafe { libc::syscall(libc::SYS_bpf, 0, attr.as_ptr(), size) })
}

/// A disabled software CPU-clock counter on this process.
fn perf_event_open() -> Attempt {
    // struct perf_event_attr (version 5, 112 bytes): type, size, config; flags bit 0 = disabled.
    let mut attr = [0u8; 112];
    attr[0..4].copy_from_slice(&1u32.to_ne_bytes()); // PERF_TYPE_SOFTWARE
    attr[4..8].copy_from_slice(&112u32.to_ne_bytes());
    attr[40..48].copy_from_slice(&1u64.to_ne_bytes());
    let cloexec: c_long = 8; // PERF_FLAG_FD_CLOEXEC
    sys(unsafe { libc::syscall(libc::SYS_perf_event_open, attr.as_ptr(), 0, -1, -1, cloexec) })
}

/// `struct file_handle` with room for the largest handle.
#[repr(C)]
struct FileHandle {
    handle_bytes: u32,
    handle_type: libc::c_int,
    f_handle: [u8; 128],
}

fn name_to_handle(path: &str) -> Attempt {
    let mut handle = FileHandle {
        handle_bytes: 128,
        handle_type: 0,
        f_handle: [0; 128],
    };
    let mut mount_id = 0;
    sys(unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            libc::AT_FDCWD,
            c(path).as_ptr(),
            &mut handle,
            &mut mount_id,
            0,
        )
    })
}

/// The "shocker" escape: a forged ext4 handle (inode 2, generation 0) for the root directory
/// of the filesystem `mount` is on, opened without any path lookup.
fn open_by_handle(mount: &str) -> Attempt {
    let mount_fd = Errno::result(unsafe {
        libc::open(
            c(mount).as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    })?;
    let mut handle = FileHandle {
        handle_bytes: 8,
        handle_type: 1, // FILEID_INO32_GEN
        f_handle: [0; 128],
    };
    handle.f_handle[..4].copy_from_slice(&2u32.to_ne_bytes());
    sys(unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mount_fd,
            &mut handle,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    })
}

/// An i386 system call through `int 0x80`, with one argument in ebx (rbx is reserved by the
/// compiler, hence the exchange around the call).
fn int80(nr: u32, arg: u32) -> Attempt {
    let ret: i32;
    unsafe {
        asm!(
            "xchg {arg}, rbx",
            "int 0x80",
            "xchg {arg}, rbx",
            arg = inout(reg) u64::from(arg) => _,
            inlateout("eax") nr as i32 => ret,
            out("r8") _, out("r9") _, out("r10") _, out("r11") _,
            options(nostack),
        )
    };
    if ret < 0 {
        Err(Errno::from_raw(-ret))
    } else {
        Ok(())
    }
}

/// Succeeds when any fd other than 0, 1 and 2 is open.
fn find_inherited_fd() -> Attempt {
    let limit = unsafe { libc::sysconf(libc::_SC_OPEN_MAX) }.clamp(1024, 1 << 16) as libc::c_int;
    if (3..limit).any(|fd| unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0) {
        Ok(())
    } else {
        Err(Errno::EBADF)
    }
}

fn memfd() -> Attempt {
    let fd =
        Errno::result(unsafe { libc::memfd_create(c"escape-probe".as_ptr(), libc::MFD_CLOEXEC) })?;
    sys(unsafe { libc::write(fd, b"x".as_ptr().cast(), 1) } as c_long)
}

/// What JIT compilers and wasm runtimes do with memfds: map one executable and call into it
/// (here a single `ret`).
fn memfd_jit() -> Attempt {
    let fd = Errno::result(unsafe { libc::memfd_create(c"jit".as_ptr(), libc::MFD_CLOEXEC) })?;
    sys(unsafe { libc::write(fd, [0xc3u8].as_ptr().cast(), 1) } as c_long)?;
    let code = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_EXEC,
            libc::MAP_SHARED,
            fd,
            0,
        )
    };
    if code == libc::MAP_FAILED {
        return Err(Errno::last());
    }
    let function: extern "C" fn() = unsafe { std::mem::transmute(code) };
    function();
    Ok(())
}

/// `struct clone_args`, first version (64 bytes).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
}

/// `clone3` like a fork: the child leaves at once.
fn clone3() -> Attempt {
    let args = CloneArgs {
        exit_signal: libc::SIGCHLD as u64,
        ..CloneArgs::default()
    };
    let size = std::mem::size_of::<CloneArgs>();
    let pid = Errno::result(unsafe { libc::syscall(libc::SYS_clone3, &args, size) })?;
    if pid == 0 {
        unsafe { libc::_exit(0) };
    }
    unsafe { libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), 0) };
    Ok(())
}

fn exec(command: &[&str]) -> Attempt {
    let (program, args) = command.split_first().expect("a command after --");
    let error = std::process::Command::new(program).args(args).exec();
    Err(error
        .raw_os_error()
        .map_or(Errno::UnknownErrno, Errno::from_raw))
}

/// Replaces `{pid}` in the command with this process's pid, which the command keeps.
fn exec_with_pid(command: &[&str]) -> Attempt {
    let pid = std::process::id().to_string();
    let command: Vec<String> = command.iter().map(|a| a.replace("{pid}", &pid)).collect();
    let command: Vec<&str> = command.iter().map(String::as_str).collect();
    exec(&command)
}

/// Installs a seccomp filter answering `landlock_create_ruleset` with `errno`, as a container
/// runtime's profile that predates Landlock does.
fn block_landlock(errno: &str) {
    let errno = match errno {
        "ENOSYS" => libc::ENOSYS,
        "EPERM" => libc::EPERM,
        other => panic!("unsupported errno {other:?}"),
    } as u32;
    let load = |offset| libc::sock_filter {
        code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16,
        jt: 0,
        jf: 0,
        k: offset,
    };
    let ret = |k| libc::sock_filter {
        code: (libc::BPF_RET | libc::BPF_K) as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let jeq = |k, jt, jf| libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    };
    let filter = [
        load(4), // arch
        jeq(0xC000_003E, 0, 3),
        load(0), // nr
        jeq(libc::SYS_landlock_create_ruleset as u32, 0, 1),
        ret(libc::SECCOMP_RET_ERRNO | errno),
        ret(libc::SECCOMP_RET_ALLOW),
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr().cast_mut(),
    };
    let rc = unsafe { libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &prog) };
    sys(rc.into()).expect("installing the seccomp filter (needs root)");
}

/// Blocks the forwarded signals, writes `ready` to `file`, then appends the name of each one
/// received; returns after `exit_on` (`none`: never).
fn record_signals(file: &str, exit_on: &str) -> Attempt {
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    unsafe { libc::sigemptyset(&mut set) };
    for (signal, _) in FORWARDED_SIGNALS {
        unsafe { libc::sigaddset(&mut set, signal) };
    }
    sys(unsafe { libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) }.into())?;
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(file)
        .expect("opening the signal log");
    log.write_all(b"ready\n").expect("writing the signal log");
    loop {
        let signal = unsafe { libc::sigwaitinfo(&set, std::ptr::null_mut()) };
        let Some((_, name)) = FORWARDED_SIGNALS.iter().find(|(s, _)| *s == signal) else {
            continue;
        };
        log.write_all(format!("{name}\n").as_bytes())
            .expect("writing the signal log");
        if *name == exit_on {
            return Ok(());
        }
    }
}
