//! The mount API the view is built with: `open_tree`, `move_mount`, `fsopen`/`fsconfig`/
//! `fsmount`, `mount_setattr` (Linux 5.12), plus `openat2` and `pivot_root`.
//!
//! nix wraps only the classic `mount(2)`; these are raw system calls, one function each, on
//! descriptors and C strings that outlive the call. Everything works on descriptors: a tree
//! cloned before fork is attached after fork without its path being looked up again, and a
//! mount point is reached with `RESOLVE_NO_SYMLINKS`, so nothing that changes on disk between
//! the two can redirect a mount.

use std::ffi::CStr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::errno::Errno;

/// Mount attributes (`MOUNT_ATTR_*`).
pub const RDONLY: u64 = libc::MOUNT_ATTR_RDONLY;
/// No setuid/setgid bits or file capabilities take effect.
pub const NOSUID: u64 = libc::MOUNT_ATTR_NOSUID;
/// Device files cannot be opened.
pub const NODEV: u64 = libc::MOUNT_ATTR_NODEV;
/// Nothing can be executed.
pub const NOEXEC: u64 = libc::MOUNT_ATTR_NOEXEC;

fn owned(rc: libc::c_long) -> Result<OwnedFd, Errno> {
    let fd = Errno::result(rc)?;
    // SAFETY: the kernel just returned this descriptor, which nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// A detached copy of the mount tree at `fd` (recursive: submounts come along, as they must
/// when the tree has locked submounts), close-on-exec.
pub fn clone_tree(fd: BorrowedFd<'_>) -> Result<OwnedFd, Errno> {
    let flags = libc::OPEN_TREE_CLONE
        | libc::OPEN_TREE_CLOEXEC
        | libc::AT_EMPTY_PATH as u32
        | libc::AT_RECURSIVE as u32;
    // SAFETY: an fd, an empty C string and flags.
    owned(unsafe { libc::syscall(libc::SYS_open_tree, fd.as_raw_fd(), c"".as_ptr(), flags) })
}

/// A detached copy of `name` in the directory `dir` (not following a symlink there).
pub fn clone_entry(dir: BorrowedFd<'_>, name: &CStr) -> Result<OwnedFd, Errno> {
    let flags = libc::OPEN_TREE_CLONE
        | libc::OPEN_TREE_CLOEXEC
        | libc::AT_SYMLINK_NOFOLLOW as u32
        | libc::AT_RECURSIVE as u32;
    // SAFETY: an fd, a C string and flags.
    owned(unsafe { libc::syscall(libc::SYS_open_tree, dir.as_raw_fd(), name.as_ptr(), flags) })
}

/// A new, detached filesystem of type `fstype` with `options` (key, value), mounted with
/// `attributes`.
pub fn new_filesystem(
    fstype: &CStr,
    options: &[(&CStr, &CStr)],
    attributes: u64,
) -> Result<OwnedFd, Errno> {
    // SAFETY: a C string and a flag.
    let context =
        owned(unsafe { libc::syscall(libc::SYS_fsopen, fstype.as_ptr(), libc::FSOPEN_CLOEXEC) })?;
    for (key, value) in options {
        // SAFETY: the context fd, a command and two C strings.
        Errno::result(unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                context.as_raw_fd(),
                libc::FSCONFIG_SET_STRING,
                key.as_ptr(),
                value.as_ptr(),
                0,
            )
        })?;
    }
    // SAFETY: the context fd and a command without arguments.
    Errno::result(unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            context.as_raw_fd(),
            libc::FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0,
        )
    })?;
    // SAFETY: the context fd and flags.
    owned(unsafe {
        libc::syscall(
            libc::SYS_fsmount,
            context.as_raw_fd(),
            libc::FSMOUNT_CLOEXEC,
            attributes as libc::c_uint,
        )
    })
}

/// A new, detached procfs for the calling process's PID namespace (`nosuid`, `nodev`,
/// `noexec`): the view's `/proc`, and the way to a network sysctl where the pod's `/proc/sys`
/// is read-only.
pub fn new_proc() -> Result<OwnedFd, Errno> {
    new_filesystem(c"proc", &[], NOSUID | NODEV | NOEXEC)
}

/// Makes the single mount at `fd` read-only, `nosuid`, `nodev`, `noexec` and private.
pub fn seal_read_only(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    set_attributes(fd, RDONLY | NOSUID | NODEV | NOEXEC, false)
}

/// Sets `attributes` on the mount at `fd` (and on every mount below it when `recursive`) and
/// makes it private: nothing mounted on it propagates to a peer in the pod's namespace, and
/// nothing mounted in the pod appears in the view.
pub fn set_attributes(fd: BorrowedFd<'_>, attributes: u64, recursive: bool) -> Result<(), Errno> {
    let attr = libc::mount_attr {
        attr_set: attributes,
        attr_clr: 0,
        propagation: libc::MS_PRIVATE,
        userns_fd: 0,
    };
    let flags = libc::AT_EMPTY_PATH | if recursive { libc::AT_RECURSIVE } else { 0 };
    // SAFETY: an fd, an empty C string, flags, and a struct on the stack with its size.
    Errno::result(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            flags,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    })
    .map(drop)
}

/// Attaches the detached mount `mount` on top of what `target` (an `O_PATH` descriptor, or
/// `AT_FDCWD` with `path`) names.
pub fn attach(mount: BorrowedFd<'_>, target: libc::c_int, path: &CStr) -> Result<(), Errno> {
    let mut flags = libc::MOVE_MOUNT_F_EMPTY_PATH;
    if path.is_empty() {
        flags |= libc::MOVE_MOUNT_T_EMPTY_PATH;
    }
    // SAFETY: two fds, two C strings and flags.
    Errno::result(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mount.as_raw_fd(),
            c"".as_ptr(),
            target,
            path.as_ptr(),
            flags,
        )
    })
    .map(drop)
}

/// Opens `path` (absolute: from the root; relative: from `dir`) as an `O_PATH` descriptor
/// without following any symlink, the last component included.
pub fn open_no_symlinks(dir: libc::c_int, path: &CStr) -> Result<OwnedFd, Errno> {
    // SAFETY: open_how is plain data; all zero is its default (libc marks it non-exhaustive,
    // as the kernel may extend it).
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_PATH | libc::O_CLOEXEC | libc::O_NOFOLLOW) as u64;
    how.resolve = libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: an fd, a C string, a struct on the stack and its size.
    owned(unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir,
            path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    })
}

/// Makes the working directory the root: `pivot_root(".", ".")` stacks the old root on top
/// of the new one, where no path leads to it (the sequence runc uses; no directory for the old
/// root is needed, so it works on a read-only root). [`detach_stacked_root`] removes it.
pub fn pivot_to_cwd() -> Result<(), Errno> {
    // SAFETY: two C strings.
    Errno::result(unsafe { libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) })
        .map(drop)
}

/// Detaches the old root that [`pivot_to_cwd`] stacked on the new one (the working directory
/// must still be the new root), then moves to "/". The kernel waits for an RCU grace period
/// here, which is why init does it while the agent's process sets itself up.
pub fn detach_stacked_root() -> Result<(), Errno> {
    // SAFETY: a C string and a flag.
    Errno::result(unsafe { libc::umount2(c".".as_ptr(), libc::MNT_DETACH) })?;
    // SAFETY: a C string.
    Errno::result(unsafe { libc::chdir(c"/".as_ptr()) }).map(drop)
}
