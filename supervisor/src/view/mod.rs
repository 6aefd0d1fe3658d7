//! The agent's filesystem as a view, as bubblewrap and nsjail build it: a fresh root holding
//! only what the policy lists, each path mounted at its own place, read-only ones read-only.
//!
//! ```text
//! prepare (supervisor, before fork; nothing is attached anywhere yet):
//!   plan (plan.rs) → a detached tmpfs root with the directories, mount points and symlinks
//!   the view needs, sealed read-only → a detached clone of every listed tree, made private,
//!   `nosuid`, `nodev` (not under /dev), read-only where listed so → private tmpfs for /tmp
//!   and /dev/shm, a private devpts, the standard devices, /run/openshell with the provided
//!   files, sealed read-only
//! apply (init, in its new mount namespace, private from the pod's):
//!   the sandbox's procfs → root attached on / → pivot_root into it → each mount attached at
//!   its place, parents first (looked up without following symlinks)
//! then, while the agent's process sets itself up (entering the workdir, read back):
//!   the old root detached → /proc/self/mountinfo read back against the plan (mountinfo.rs);
//!   the agent runs only once init says the view is verified
//! ```
//!
//! Everything is prepared on descriptors before fork; after fork init only attaches them, so
//! nothing the pod's filesystem does in between can redirect a mount, and init allocates
//! nothing. No program is run: the mount API works with a read-only root and a `FROM scratch`
//! agent image. Nothing mounted in the view propagates to the pod (every mount is private), and
//! the view disappears with the sandbox's mount namespace when the agent's last process exits.

pub(crate) mod mountinfo;
pub mod plan;
pub mod provided;
pub mod sys;

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{Mode, SFlag, fstat, mkdirat, mknodat};

use crate::channel::StepFailure;
use crate::filesystem::{Access, Resolved};
use crate::paths::{self, Opened};
use mountinfo::{Expect, Mismatch};
use plan::{DEVICES, Holder, Kind, Layout, Listed, Node, PlanError, Request};
pub use provided::{ProvidedError, ProvidedFile};

/// How much of `/proc/self/mountinfo` verification reads; a view is a few dozen lines.
const MOUNTINFO_MAX: usize = 64 * 1024;

/// Why the view cannot be prepared.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    /// The policy cannot be laid out as a view.
    #[error("filesystem view: {0}")]
    Plan(#[from] PlanError),
    /// A provided file is unusable.
    #[error(transparent)]
    Provided(#[from] ProvidedError),
    /// A mount point the view needs inside a listed tree does not exist there.
    #[error(
        "filesystem view: {} must exist inside {} (which the policy lists whole) to mount {} \
         there{}",
        path.display(),
        holder.display(),
        what,
        hint
    )]
    MissingMountPoint {
        /// The mount point.
        path: PathBuf,
        /// The listed tree it lies in.
        holder: PathBuf,
        /// What was to be mounted there.
        what: String,
        /// What to do about it.
        hint: &'static str,
    },
    /// A system call failed.
    #[error("filesystem view: {what}: {errno}{}", hint(*errno))]
    Syscall {
        /// The step.
        what: String,
        /// The error.
        errno: Errno,
    },
}

fn hint(errno: Errno) -> &'static str {
    match errno {
        Errno::ENOSYS => {
            " (the view needs the mount API of Linux 5.12: open_tree, move_mount, fsopen, \
             mount_setattr; an older kernel or the runtime's seccomp profile lacks it)"
        }
        Errno::EPERM => {
            " (the pod needs CAP_SYS_ADMIN, and the runtime's seccomp profile must \
                          allow the mount API)"
        }
        _ => "",
    }
}

fn syscall(what: impl Into<String>) -> impl FnOnce(Errno) -> ViewError {
    let what = what.into();
    move |errno| ViewError::Syscall { what, errno }
}

/// Whether `physical` is one of the standard devices every view has, read-write.
pub fn is_standard_device(physical: &Path) -> bool {
    DEVICES
        .iter()
        .any(|name| physical == Path::new("/dev").join(name))
}

/// What the view holds, for `check` and the start-up log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Listed paths mounted, with their rights.
    pub mounted: Vec<(PathBuf, Access)>,
    /// Listed paths shown by the mount of a listed parent with the same rights.
    pub shown_by_parent: usize,
    /// Listed paths that do not exist.
    pub skipped: usize,
    /// Whether /tmp and /dev/shm are private (else the real ones, as listed).
    pub private_tmp: bool,
    /// See `private_tmp`.
    pub private_shm: bool,
    /// The rights on the sandbox's /proc, when the view has one.
    pub proc: Option<Access>,
    /// Files provided under /run/openshell.
    pub provided: usize,
    /// Read-only paths under a writable one: (child, writable parent).
    pub view_only: Vec<(PathBuf, PathBuf)>,
}

impl Summary {
    /// One line: what the view enforces.
    pub fn describe(&self) -> String {
        let count = |a| self.mounted.iter().filter(|(_, x)| *x == a).count();
        let mut extra = Vec::new();
        if self.shown_by_parent > 0 {
            extra.push(format!("{} shown by a listed parent", self.shown_by_parent));
        }
        if self.skipped > 0 {
            extra.push(format!("{} skipped (missing)", self.skipped));
        }
        let private: Vec<&str> = [(self.private_tmp, "/tmp"), (self.private_shm, "/dev/shm")]
            .into_iter()
            .filter_map(|(p, name)| p.then_some(name))
            .collect();
        format!(
            "view: {} paths mounted ({} read-only, {} read-write{}{}); unlisted paths do not \
             exist, read-only ones refuse every change (write, truncate, create, delete, \
             rename, link); {}standard /dev{}{}",
            self.mounted.len(),
            count(Access::ReadOnly),
            count(Access::ReadWrite),
            if extra.is_empty() { "" } else { ", " },
            extra.join(", "),
            if private.is_empty() {
                String::new()
            } else {
                format!("private {}; ", private.join(" and "))
            },
            match self.proc {
                Some(access) => format!("; the sandbox's own /proc ({})", access.words()),
                None => String::new(),
            },
            if self.provided > 0 {
                format!("; {} files provided in /run/openshell", self.provided)
            } else {
                String::new()
            },
        )
    }
}

/// A mount waiting to be attached.
#[derive(Debug)]
struct Mount {
    /// Where, in the view (absolute).
    target: CString,
    kind: Kind,
    /// The detached mount; `None` for the procfs, made in init.
    source: Option<OwnedFd>,
    /// The step, for messages.
    step: String,
}

/// The view, prepared.
#[derive(Debug)]
pub struct Prepared {
    root: OwnedFd,
    mounts: Vec<Mount>,
    /// Rights on /proc when the view has one.
    proc: Option<Access>,
    expected: Vec<Expect>,
    /// What it holds.
    pub summary: Summary,
}

/// The agent's working directory in the view, entered by the agent's process.
#[derive(Debug)]
pub struct Workdir {
    path: CString,
    vetted: OwnedFd,
    bound: bool,
}

/// A difference found by [`Prepared::verify`], in words, in a stack buffer.
pub struct Unverified {
    buf: [u8; 200],
    len: usize,
}

impl std::fmt::Debug for Unverified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Unverified {
    fn new(parts: &[&[u8]]) -> Unverified {
        let mut out = Unverified {
            buf: [0; 200],
            len: 0,
        };
        for part in parts {
            let n = part.len().min(out.buf.len() - out.len);
            out.buf[out.len..out.len + n].copy_from_slice(&part[..n]);
            out.len += n;
        }
        out
    }

    /// The message.
    pub fn as_str(&self) -> &str {
        let bytes = &self.buf[..self.len];
        std::str::from_utf8(bytes).unwrap_or("the view differs from its plan")
    }
}

/// Prepares the view of `resolved` with the agent's `workdir` and the supervisor's `provided`
/// files.
pub fn prepare(
    resolved: &Resolved,
    workdir: &Opened,
    provided: &[ProvidedFile],
) -> Result<(Prepared, Workdir), ViewError> {
    provided::validate(provided)?;
    let listed: Vec<Listed> = resolved
        .entries
        .iter()
        .map(|e| Listed {
            physical: e.opened.physical.clone(),
            access: e.access,
            is_dir: e.is_dir,
            links: e.opened.links.clone(),
        })
        .collect();
    // The pod's standard devices, cloned from its /dev (one the pod lacks is left out).
    let dev = paths::open(Path::new("/dev")).ok();
    let mut device_trees: Vec<Option<OwnedFd>> = DEVICES
        .iter()
        .map(|name| {
            let name = CString::new(*name).ok()?;
            sys::clone_entry(dev.as_ref()?.as_fd(), &name).ok()
        })
        .collect();
    let devices: [bool; DEVICES.len()] = std::array::from_fn(|i| device_trees[i].is_some());
    let proc = resolved.proc.iter().map(|(_, a)| *a).max();
    let layout = plan::layout(&Request {
        listed: &listed,
        proc,
        workdir: &workdir.physical,
        provided: !provided.is_empty(),
        devices: &devices,
    })?;
    let root = match layout.root_bind {
        Some(i) => bind(
            &resolved.entries[i].opened.fd,
            Access::ReadOnly,
            Path::new("/"),
        )?,
        None => sys::new_filesystem(c"tmpfs", &[(c"mode", c"0755")], sys::NOSUID | sys::NODEV)
            .map_err(syscall("creating the view's root (tmpfs)"))?,
    };
    let mut mounts = Vec::with_capacity(layout.mounts.len());
    for planned in &layout.mounts {
        let source = match planned.kind {
            Kind::Bind(i) => {
                let entry = &resolved.entries[i];
                Some(bind(
                    &entry.opened.fd,
                    entry.access,
                    &entry.opened.physical,
                )?)
            }
            Kind::Device(i) => {
                let tree = device_trees[i].take().ok_or(ViewError::Syscall {
                    what: format!("cloning /dev/{}", DEVICES[i]),
                    errno: Errno::ENOENT,
                })?;
                // Devices must open: no nodev here.
                sys::set_attributes(tree.as_fd(), sys::NOSUID | sys::NOEXEC, true)
                    .map_err(syscall(format!("setting the flags of /dev/{}", DEVICES[i])))?;
                Some(tree)
            }
            Kind::Tmp => Some(tmpfs(c"1777", sys::NOSUID | sys::NODEV, "/tmp")?),
            // As in every container runtime: shared memory is not for executing.
            Kind::Shm => Some(tmpfs(
                c"1777",
                sys::NOSUID | sys::NODEV | sys::NOEXEC,
                "/dev/shm",
            )?),
            Kind::Provided => {
                let fs = tmpfs(
                    c"0755",
                    sys::NOSUID | sys::NODEV | sys::NOEXEC,
                    plan::PROVIDED_DIR,
                )?;
                provided::populate(fs.as_fd(), provided)?;
                Some(fs)
            }
            Kind::Devpts => Some(
                sys::new_filesystem(
                    c"devpts",
                    &[(c"ptmxmode", c"0666"), (c"mode", c"0620")],
                    sys::NOSUID | sys::NOEXEC,
                )
                .map_err(syscall("creating the sandbox's devpts"))?,
            ),
            Kind::Proc => None,
        };
        mounts.push(Mount {
            target: cstring(&planned.target),
            kind: planned.kind,
            source,
            step: format!(
                "mounting {} in the view",
                describe(planned, &resolved.entries)
            ),
        });
    }
    let holder_fd = |holder: Holder| -> BorrowedFd<'_> {
        match holder {
            Holder::Root => root.as_fd(),
            Holder::Mount(i) => mounts[i]
                .source
                .as_ref()
                .map_or(root.as_fd(), |fd| fd.as_fd()),
        }
    };
    // Exact modes, whatever the supervisor's umask. (The umask is the process's: the only other
    // thread at this point, the network namespace's, creates no files.)
    let umask = nix::sys::stat::umask(Mode::empty());
    let created = layout
        .nodes
        .iter()
        .try_for_each(|(holder, node)| create(holder_fd(*holder), node));
    nix::sys::stat::umask(umask);
    created?;
    for (holder, relative, is_dir) in &layout.existing {
        check_exists(holder_fd(*holder), relative, *is_dir).map_err(|_| {
            let base = match holder {
                Holder::Root => PathBuf::from("/"),
                Holder::Mount(i) => layout.mounts[*i].target.clone(),
            };
            let path = base.join(relative);
            let planned = layout.mounts.iter().find(|m| m.target == path);
            ViewError::MissingMountPoint {
                what: planned.map_or_else(
                    || "the workdir".to_owned(),
                    |m| describe(m, &resolved.entries),
                ),
                hint: if path.starts_with(plan::PROVIDED_DIR) {
                    "; list the entries of the parent the agent needs instead of the whole \
                     parent, or create an empty /run/openshell in the image"
                } else {
                    ""
                },
                holder: base,
                path,
            }
        })?;
    }
    if layout.root_bind.is_none() {
        sys::seal_read_only(root.as_fd()).map_err(syscall("sealing the view's root read-only"))?;
    }
    for mount in &mounts {
        if let (Kind::Provided, Some(fs)) = (mount.kind, &mount.source) {
            sys::seal_read_only(fs.as_fd()).map_err(syscall("sealing /run/openshell read-only"))?;
        }
    }
    let vetted = workdir
        .fd
        .try_clone()
        .map_err(|e| syscall("duplicating the workdir's descriptor")(io_errno(&e)))?;
    let prepared = Prepared {
        expected: expectations(&layout, &resolved.entries, proc),
        summary: summarize(&layout, resolved, proc, provided.len()),
        root,
        mounts,
        proc,
    };
    let workdir = Workdir {
        path: cstring(&workdir.physical),
        vetted,
        bound: layout.workdir_bound,
    };
    Ok((prepared, workdir))
}

fn io_errno(e: &std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

fn cstring(path: &Path) -> CString {
    // Paths from the kernel and from validated policies hold no NUL byte; an empty name
    // (unreachable) would only fail the lookup.
    CString::new(path.as_os_str().as_bytes()).unwrap_or_default()
}

/// A detached, private clone of the tree at `fd` with the flags `access` calls for.
fn bind(fd: &OwnedFd, access: Access, physical: &Path) -> Result<OwnedFd, ViewError> {
    let tree = sys::clone_tree(fd.as_fd()).map_err(syscall(format!(
        "cloning the mount tree of {}",
        physical.display()
    )))?;
    let mut flags = sys::NOSUID;
    if !plan::allows_devices(physical) {
        flags |= sys::NODEV;
    }
    if access == Access::ReadOnly {
        flags |= sys::RDONLY;
    }
    sys::set_attributes(tree.as_fd(), flags, true).map_err(syscall(format!(
        "making {} {} and private",
        physical.display(),
        access.words()
    )))?;
    Ok(tree)
}

fn tmpfs(mode: &std::ffi::CStr, flags: u64, name: &str) -> Result<OwnedFd, ViewError> {
    sys::new_filesystem(c"tmpfs", &[(c"mode", mode)], flags)
        .map_err(syscall(format!("creating the private {name}")))
}

fn describe(planned: &plan::Planned, entries: &[crate::filesystem::Entry]) -> String {
    let target = planned.target.display();
    match planned.kind {
        Kind::Bind(i) => format!("{target} ({})", entries[i].access.words()),
        Kind::Tmp | Kind::Shm => format!("the private {target}"),
        Kind::Provided => format!("{target} (the supervisor's files)"),
        Kind::Devpts => format!("{target} (a private devpts)"),
        Kind::Device(_) => format!("the device {target}"),
        Kind::Proc => format!("{target} (the sandbox's procfs)"),
    }
}

/// Creates `node` in the filesystem at `dir` (the view's own; the umask is 0).
fn create(dir: BorrowedFd<'_>, node: &Node) -> Result<(), ViewError> {
    let fail = |path: &Path| syscall(format!("creating {} in the view", path.display()));
    match node {
        Node::Dir(path) => mkdirat(dir, path, Mode::from_bits_truncate(0o755)).map_err(fail(path)),
        Node::File(path) => mknodat(
            dir,
            path,
            SFlag::S_IFREG,
            Mode::from_bits_truncate(0o644),
            0,
        )
        .map_err(fail(path)),
        Node::Link(path, target) => {
            nix::unistd::symlinkat(target.as_path(), dir, path.as_path()).map_err(fail(path))
        }
    }
}

/// Whether `relative` exists below `dir` with the right type, reached without symlinks.
fn check_exists(dir: BorrowedFd<'_>, relative: &Path, is_dir: bool) -> Result<(), Errno> {
    let fd = sys::open_no_symlinks(dir.as_raw_fd(), &cstring(relative))?;
    let stat = fstat(fd.as_fd())?;
    if paths::has_type(&stat, SFlag::S_IFDIR) == is_dir {
        Ok(())
    } else {
        Err(Errno::ENOTDIR)
    }
}

fn expectations(
    layout: &Layout,
    entries: &[crate::filesystem::Entry],
    proc: Option<Access>,
) -> Vec<Expect> {
    let expect = |target: &Path, fstype, read_only, nodev, submounts| Expect {
        mount_point: mountinfo::escape(target.as_os_str().as_bytes()),
        fstype,
        read_only,
        nodev,
        submounts,
    };
    let root = match layout.root_bind {
        Some(_) => expect(Path::new("/"), None, true, true, true),
        None => expect(Path::new("/"), Some(&b"tmpfs"[..]), true, true, false),
    };
    let mut expected = vec![root];
    for m in &layout.mounts {
        let t = &m.target;
        expected.push(match m.kind {
            Kind::Bind(i) => expect(
                t,
                None,
                entries[i].access == Access::ReadOnly,
                !plan::allows_devices(t),
                true,
            ),
            Kind::Tmp | Kind::Shm => expect(t, Some(b"tmpfs"), false, true, false),
            Kind::Provided => expect(t, Some(b"tmpfs"), true, true, false),
            Kind::Devpts => expect(t, Some(b"devpts"), false, false, false),
            Kind::Device(_) => expect(t, None, false, false, false),
            Kind::Proc => expect(
                t,
                Some(b"proc"),
                proc == Some(Access::ReadOnly),
                true,
                false,
            ),
        });
    }
    expected
}

fn summarize(
    layout: &Layout,
    resolved: &Resolved,
    proc: Option<Access>,
    provided: usize,
) -> Summary {
    let mut summary = Summary {
        skipped: resolved.skipped.len(),
        proc,
        provided,
        private_tmp: layout.mounts.iter().any(|m| m.kind == Kind::Tmp),
        private_shm: layout.mounts.iter().any(|m| m.kind == Kind::Shm),
        ..Summary::default()
    };
    if let Some(i) = layout.root_bind {
        summary
            .mounted
            .push(("/".into(), resolved.entries[i].access));
    }
    for (index, m) in layout.mounts.iter().enumerate() {
        let Kind::Bind(i) = m.kind else { continue };
        let access = resolved.entries[i].access;
        summary.mounted.push((m.target.clone(), access));
        if access == Access::ReadOnly
            && let Some(parent) = writable_holder(layout, resolved, index)
        {
            summary.view_only.push((m.target.clone(), parent));
        }
    }
    summary.shown_by_parent = resolved.entries.len() - summary.mounted.len();
    summary
}

/// The nearest writable mount above `layout.mounts[index]`, if any.
fn writable_holder(layout: &Layout, resolved: &Resolved, index: usize) -> Option<PathBuf> {
    let mut holder = layout.mounts[index].holder;
    while let Holder::Mount(i) = holder {
        let m = &layout.mounts[i];
        let writable = match m.kind {
            Kind::Bind(e) => resolved.entries[e].access == Access::ReadWrite,
            Kind::Tmp | Kind::Shm => true,
            _ => false,
        };
        if writable {
            return Some(m.target.clone());
        }
        holder = m.holder;
    }
    None
}

impl Prepared {
    /// Descriptors of the view's own mounts, with the rights the agent has there, for
    /// Landlock: the private /tmp and /dev/shm, devpts and the standard devices read-write,
    /// the provided files read-only. (Listed paths get their rules from their own
    /// descriptors; /proc from its path, once it exists.)
    pub fn own_mounts(&self) -> impl Iterator<Item = (BorrowedFd<'_>, Access, bool)> {
        self.mounts.iter().filter_map(|m| {
            let access = match m.kind {
                Kind::Tmp | Kind::Shm | Kind::Devpts | Kind::Device(_) => Access::ReadWrite,
                Kind::Provided => Access::ReadOnly,
                Kind::Bind(_) | Kind::Proc => return None,
            };
            let is_dir = !matches!(m.kind, Kind::Device(_));
            m.source.as_ref().map(|fd| (fd.as_fd(), access, is_dir))
        })
    }

    /// In init (PID 1 of the sandbox's PID namespace): a procfs for that namespace, read-write
    /// until [`apply`](Self::apply) (the memfd sysctl is written through it).
    pub fn new_proc(&self) -> Result<OwnedFd, StepFailure<'static>> {
        sys::new_proc().map_err(StepFailure::of("creating the sandbox's procfs"))
    }

    /// In init, in its new, private mount namespace: makes the view init's root, its working
    /// directory the view's root, and attaches every mount. Only attaches what [`prepare`]
    /// made. The old root stays stacked on the new one, unreachable, until
    /// [`detach_old_root`](Self::detach_old_root).
    pub fn apply(&self, proc: &OwnedFd) -> Result<(), StepFailure<'_>> {
        sys::attach(self.root.as_fd(), libc::AT_FDCWD, c"/")
            .map_err(StepFailure::of("attaching the view's root"))?;
        nix::unistd::fchdir(&self.root).map_err(StepFailure::of("entering the view's root"))?;
        sys::pivot_to_cwd().map_err(StepFailure::of("pivot_root into the view"))?;
        for mount in &self.mounts {
            let source = match &mount.source {
                Some(fd) => fd.as_fd(),
                None => {
                    if self.proc == Some(Access::ReadOnly) {
                        sys::seal_read_only(proc.as_fd())
                            .map_err(StepFailure::of("making /proc read-only"))?;
                    }
                    proc.as_fd()
                }
            };
            let target = sys::open_no_symlinks(libc::AT_FDCWD, &mount.target)
                .map_err(StepFailure::of(&mount.step))?;
            sys::attach(source, target.as_raw_fd(), c"").map_err(StepFailure::of(&mount.step))?;
        }
        Ok(())
    }

    /// In init, after [`apply`](Self::apply) (its working directory still the view's root):
    /// detaches the old root.
    pub fn detach_old_root(&self) -> Result<(), StepFailure<'static>> {
        sys::detach_stacked_root().map_err(StepFailure::of("detaching the old root"))
    }

    /// In init, after [`detach_old_root`](Self::detach_old_root): the view's mounts, as the
    /// kernel reports them, are the planned ones.
    #[allow(
        clippy::result_large_err,
        reason = "the message is built on the stack: init allocates nothing"
    )]
    pub fn verify(&self, proc: &OwnedFd) -> Result<(), Unverified> {
        let mut buf = [0u8; MOUNTINFO_MAX];
        let len = read_all(proc, c"self/mountinfo", &mut buf).map_err(|errno| {
            Unverified::new(&[b"reading /proc/self/mountinfo: ", errno.desc().as_bytes()])
        })?;
        if len == buf.len() {
            return Err(Unverified::new(&[b"the view has more mounts than planned"]));
        }
        mountinfo::check(&buf[..len], &self.expected).map_err(|m| match m {
            Mismatch::Malformed => Unverified::new(&[b"unreadable /proc/self/mountinfo"]),
            Mismatch::Propagates(mp) => {
                Unverified::new(&[b"view mount ", mp, b" propagates to another namespace"])
            }
            Mismatch::Lacks(mp, flag) => {
                Unverified::new(&[b"view mount ", mp, b" is not ", flag.as_bytes()])
            }
            Mismatch::Unplanned(mp) => Unverified::new(&[b"unplanned mount in the view: ", mp]),
            Mismatch::Missing(mp) => Unverified::new(&[b"planned view mount missing: ", mp]),
        })
    }
}

impl Workdir {
    /// In the agent's process, in the view: enters the workdir, looked up without following
    /// symlinks, and reads back that it is the directory the supervisor vetted (when the view
    /// shows it from the pod; an unlisted workdir is an empty directory of the view's own).
    pub fn enter(&self) -> Result<(), StepFailure<'static>> {
        let fd = sys::open_no_symlinks(libc::AT_FDCWD, &self.path)
            .map_err(StepFailure::of("opening the workdir in the view"))?;
        nix::unistd::fchdir(&fd).map_err(StepFailure::of("entering the workdir in the view"))?;
        let here =
            fstat(fd.as_fd()).map_err(StepFailure::of("fstat of the workdir in the view"))?;
        let vetted = fstat(self.vetted.as_fd()).map_err(StepFailure::of("fstat of the workdir"))?;
        if self.bound && (here.st_dev, here.st_ino) != (vetted.st_dev, vetted.st_ino) {
            return Err(StepFailure {
                what: "the workdir in the view is not the one the supervisor opened",
                errno: Errno::EXDEV,
            });
        }
        Ok(())
    }
}

/// Reads `path` below `dir` into `buf`; returns the length (equal to `buf.len()` when the file
/// did not fit).
fn read_all(dir: &OwnedFd, path: &std::ffi::CStr, buf: &mut [u8]) -> Result<usize, Errno> {
    let fd = openat(
        dir.as_fd(),
        path,
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let mut len = 0;
    while len < buf.len() {
        match nix::unistd::read(fd.as_fd(), &mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(Errno::EINTR) => {}
            Err(errno) => return Err(errno),
        }
    }
    Ok(len)
}
