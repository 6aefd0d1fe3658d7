//! Where each mount of the view goes: a pure function from the policy's paths (as opened) to
//! the mounts, in the order they are attached, and what must be created or found for them.
//!
//! Every mount sits at the *physical* path of what it shows, so a listed path that goes
//! through symlinks leads to the same file in the view as outside it: the links on the way are
//! recreated in the view's own directories. The rules:
//! - parents before children: a read-write path under a read-only one is mounted on top of
//!   it (and the reverse), so the deeper rule wins where they overlap;
//! - a listed path already shown, with the same rights, by the bind of a listed ancestor is
//!   not mounted again;
//! - `/tmp` and `/dev/shm` are private, empty filesystems unless the policy lists exactly that
//!   path (then the real one is bound);
//! - `/dev` holds the standard devices and a private devpts unless the policy lists `/dev`;
//! - the sandbox's own `/proc` is there when the policy lists `/proc` or a path below it;
//! - `/run/openshell` holds the files the supervisor provides, read-only; the policy may not
//!   list paths there;
//! - the workdir is there: shown by whatever covers it, else as an empty directory.
//!
//! A mount point inside a bound tree must exist there already (the pod's files are never
//! changed); one inside a filesystem of the view is created.

use std::path::{Component, Path, PathBuf};

use crate::filesystem::Access;

/// Where the supervisor's files for the agent go.
pub const PROVIDED_DIR: &str = "/run/openshell";

/// The standard devices of the view's `/dev`, bound from the pod's `/dev`.
pub const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// Links every `/dev` has.
const DEV_LINKS: [(&str, &str); 5] = [
    ("/dev/fd", "/proc/self/fd"),
    ("/dev/stdin", "/proc/self/fd/0"),
    ("/dev/stdout", "/proc/self/fd/1"),
    ("/dev/stderr", "/proc/self/fd/2"),
    ("/dev/ptmx", "pts/ptmx"),
];

/// A policy path, as opened by the supervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Its physical path (no symlinks).
    pub physical: PathBuf,
    /// The rights the policy gives.
    pub access: Access,
    /// Whether it is a directory.
    pub is_dir: bool,
    /// Symlinks followed on the way: (where the link is, its target).
    pub links: Vec<(PathBuf, PathBuf)>,
}

/// What the view is planned from.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// The policy's paths, `/proc` excepted.
    pub listed: &'a [Listed],
    /// The rights on the sandbox's `/proc`, when the policy lists it or a path below it.
    pub proc: Option<Access>,
    /// The workdir's physical path.
    pub workdir: &'a Path,
    /// Whether the supervisor provides files under [`PROVIDED_DIR`].
    pub provided: bool,
    /// Which of [`DEVICES`] the pod has.
    pub devices: &'a [bool; DEVICES.len()],
}

/// What a mount shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `listed[index]`, bound.
    Bind(usize),
    /// The private `/tmp`.
    Tmp,
    /// The private `/dev/shm`.
    Shm,
    /// `/run/openshell`.
    Provided,
    /// The private devpts instance.
    Devpts,
    /// `DEVICES[index]`, bound from the pod's `/dev`.
    Device(usize),
    /// The sandbox's `/proc`.
    Proc,
}

impl Kind {
    /// Whether the mount is a directory (else a file).
    fn is_dir(self, listed: &[Listed]) -> bool {
        match self {
            Kind::Bind(i) => listed[i].is_dir,
            Kind::Device(_) => false,
            _ => true,
        }
    }

    /// Whether the view creates this filesystem, so mount points in it can be created.
    pub fn is_own_filesystem(self) -> bool {
        matches!(self, Kind::Tmp | Kind::Shm)
    }
}

/// Which mount holds a path: the root, or `mounts[index]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Holder {
    /// The view's root.
    Root,
    /// A planned mount.
    Mount(usize),
}

/// One mount of the view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    /// Where, in the view.
    pub target: PathBuf,
    /// What.
    pub kind: Kind,
    /// The mount its mount point lies in.
    pub holder: Holder,
}

/// What to create in a filesystem of the view, relative to its root.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Node {
    /// A directory.
    Dir(PathBuf),
    /// An empty file (a mount point for a file).
    File(PathBuf),
    /// A symlink: (where, target).
    Link(PathBuf, PathBuf),
}

impl Node {
    fn path(&self) -> &Path {
        match self {
            Node::Dir(p) | Node::File(p) | Node::Link(p, _) => p,
        }
    }
}

/// The plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// `Some(index)` when the policy lists "/" itself: the root is that bind, not an empty
    /// filesystem.
    pub root_bind: Option<usize>,
    /// The mounts in attach order.
    pub mounts: Vec<Planned>,
    /// What to create, in order, in the root (when it is the view's own) or a private mount.
    pub nodes: Vec<(Holder, Node)>,
    /// Mount points that must exist in a bound tree: (holder, path relative to it, is a dir).
    pub existing: Vec<(Holder, PathBuf, bool)>,
    /// Whether the workdir is shown by a bind (else it is an empty directory of the view).
    pub workdir_bound: bool,
}

/// Why the view cannot be planned.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    /// A path the supervisor reserves.
    #[error(
        "{}: {PROVIDED_DIR} is reserved for the files the supervisor provides to the agent; \
         remove it from the policy",
        .0.display()
    )]
    Reserved(PathBuf),
    /// A path inside a filesystem the sandbox makes itself.
    #[error("{}: inside the sandbox's own {}, which cannot hold other paths", .0.display(), .1)]
    InsideOwn(PathBuf, &'static str),
    /// Two needs of the view disagree at one path (the disk changed while it was read).
    #[error("{}: both a {} and a {} in the view", .0.display(), .1, .2)]
    Conflict(PathBuf, &'static str, &'static str),
}

/// Plans the view for `request`.
pub fn layout(request: &Request<'_>) -> Result<Layout, PlanError> {
    let listed = request.listed;
    for entry in listed {
        if entry.physical.starts_with(PROVIDED_DIR) {
            return Err(PlanError::Reserved(entry.physical.clone()));
        }
    }
    let root_bind = listed.iter().position(|l| l.physical == Path::new("/"));
    let exactly = |path: &str| listed.iter().any(|l| l.physical == Path::new(path));
    let dev_listed = |name: &str| {
        listed
            .iter()
            .any(|l| l.physical == Path::new("/dev") || l.physical == Path::new(name))
    };
    let mut mounts: Vec<(PathBuf, Kind)> = best_rights(listed)
        .into_iter()
        .filter(|&i| Some(i) != root_bind)
        .map(|i| (listed[i].physical.clone(), Kind::Bind(i)))
        .collect();
    if !exactly("/tmp") {
        mounts.push(("/tmp".into(), Kind::Tmp));
    }
    if !exactly("/dev/shm") {
        mounts.push(("/dev/shm".into(), Kind::Shm));
    }
    if request.provided {
        mounts.push((PROVIDED_DIR.into(), Kind::Provided));
    }
    if request.proc.is_some() {
        mounts.push(("/proc".into(), Kind::Proc));
    }
    if !dev_listed("/dev/pts") {
        mounts.push(("/dev/pts".into(), Kind::Devpts));
    }
    for (i, name) in DEVICES.iter().enumerate() {
        let path = format!("/dev/{name}");
        if request.devices[i] && !dev_listed(&path) {
            mounts.push((path.into(), Kind::Device(i)));
        }
    }
    mounts.sort_by(|a, b| depth(&a.0).cmp(&depth(&b.0)).then_with(|| a.0.cmp(&b.0)));
    // A bind that its holder already shows with the same rights adds nothing.
    let mut planned: Vec<Planned> = Vec::new();
    for (target, kind) in mounts {
        let holder = holder_of(&planned, &target, false);
        if let Kind::Bind(i) = kind
            && same_rights(listed, root_bind, &planned, holder, i)
        {
            continue;
        }
        planned.push(Planned {
            target,
            kind,
            holder,
        });
    }
    let mut layout = Layout {
        root_bind,
        mounts: Vec::new(),
        nodes: Vec::new(),
        existing: Vec::new(),
        workdir_bound: false,
    };
    let mut builder = Builder {
        listed,
        root_bind,
        planned: &planned,
        layout: &mut layout,
    };
    for mount in &planned {
        builder.mount_point(mount)?;
    }
    let links = listed
        .iter()
        .flat_map(|l| l.links.iter().map(|(at, to)| (at.clone(), to.clone())))
        .chain(DEV_LINKS.iter().map(|(at, to)| (at.into(), to.into())));
    for (at, to) in links {
        builder.link(&at, &to)?;
    }
    builder.workdir(request.workdir)?;
    layout.mounts = planned;
    Ok(layout)
}

/// Indices of `listed` without duplicates: a path listed twice keeps its widest rights.
fn best_rights(listed: &[Listed]) -> Vec<usize> {
    let mut kept: Vec<usize> = Vec::new();
    for (i, entry) in listed.iter().enumerate() {
        match kept
            .iter_mut()
            .find(|k| listed[**k].physical == entry.physical)
        {
            Some(k) if entry.access == Access::ReadWrite => *k = i,
            Some(_) => {}
            None => kept.push(i),
        }
    }
    kept
}

fn depth(path: &Path) -> usize {
    path.components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .count()
}

/// The deepest planned mount whose target is above `path` (or is `path`, when `or_equal`).
fn holder_of(planned: &[Planned], path: &Path, or_equal: bool) -> Holder {
    planned
        .iter()
        .enumerate()
        .filter(|(_, m)| path.starts_with(&m.target) && (or_equal || m.target != path))
        .max_by_key(|(_, m)| depth(&m.target))
        .map_or(Holder::Root, |(i, _)| Holder::Mount(i))
}

/// Whether `holder` is a bind with the same rights (and device access) as `listed[i]`.
fn same_rights(
    listed: &[Listed],
    root_bind: Option<usize>,
    planned: &[Planned],
    holder: Holder,
    i: usize,
) -> bool {
    let bound = match holder {
        Holder::Root => root_bind,
        Holder::Mount(m) => match planned[m].kind {
            Kind::Bind(j) => Some(j),
            _ => None,
        },
    };
    bound.is_some_and(|j| {
        listed[j].access == listed[i].access
            && allows_devices(&listed[j].physical) == allows_devices(&listed[i].physical)
    })
}

/// Device files work only in binds of paths under `/dev`: everywhere else the view mounts
/// with `nodev`, so a device node planted in a writable directory opens nothing.
pub fn allows_devices(physical: &Path) -> bool {
    physical.starts_with("/dev")
}

struct Builder<'a> {
    listed: &'a [Listed],
    root_bind: Option<usize>,
    planned: &'a [Planned],
    layout: &'a mut Layout,
}

impl Builder<'_> {
    /// The target of `holder` and whether the view creates its content.
    fn holder(&self, holder: Holder) -> (PathBuf, HolderKind) {
        match holder {
            Holder::Root if self.root_bind.is_some() => ("/".into(), HolderKind::Bound),
            Holder::Root => ("/".into(), HolderKind::Own),
            Holder::Mount(i) => {
                let mount = &self.planned[i];
                let kind = match mount.kind {
                    Kind::Bind(_) => HolderKind::Bound,
                    kind if kind.is_own_filesystem() => HolderKind::Own,
                    Kind::Provided => HolderKind::Closed("files provided by the supervisor"),
                    Kind::Proc => HolderKind::Closed("/proc"),
                    Kind::Devpts => HolderKind::Closed("/dev/pts"),
                    _ => HolderKind::Closed("device files"),
                };
                (mount.target.clone(), kind)
            }
        }
    }

    fn mount_point(&mut self, mount: &Planned) -> Result<(), PlanError> {
        let is_dir = mount.kind.is_dir(self.listed);
        let (base, kind) = self.holder(mount.holder);
        let relative = relative(&mount.target, &base);
        match kind {
            HolderKind::Own => {
                self.parents(mount.holder, &relative)?;
                let node = if is_dir {
                    Node::Dir(relative)
                } else {
                    Node::File(relative)
                };
                self.add(mount.holder, node)
            }
            HolderKind::Bound => {
                self.layout.existing.push((mount.holder, relative, is_dir));
                Ok(())
            }
            HolderKind::Closed(what) => Err(PlanError::InsideOwn(mount.target.clone(), what)),
        }
    }

    /// Recreates the link `at` -> `to` where the view makes the directory holding it; a link
    /// inside a bound tree is there already.
    fn link(&mut self, at: &Path, to: &Path) -> Result<(), PlanError> {
        if self.planned.iter().any(|m| m.target == at) {
            // A mount replaces the link (the standard /dev entries, or a listed /dev).
            return if at.starts_with("/dev") {
                Ok(())
            } else {
                Err(PlanError::Conflict(at.to_owned(), "mount", "symlink"))
            };
        }
        let holder = holder_of(self.planned, at, false);
        match self.holder(holder) {
            (base, HolderKind::Own) => {
                let relative = relative(at, &base);
                self.parents(holder, &relative)?;
                self.add(holder, Node::Link(relative, to.to_owned()))
            }
            // Bound: the link is there. Closed: /proc's own links (/proc/self ...).
            _ => Ok(()),
        }
    }

    fn workdir(&mut self, workdir: &Path) -> Result<(), PlanError> {
        let holder = holder_of(self.planned, workdir, true);
        match self.holder(holder) {
            (_, HolderKind::Bound) => self.layout.workdir_bound = true,
            (base, HolderKind::Own) => {
                let relative = relative(workdir, &base);
                if !relative.as_os_str().is_empty() {
                    self.parents(holder, &relative)?;
                    self.add(holder, Node::Dir(relative))?;
                }
            }
            (_, HolderKind::Closed(what)) => {
                return Err(PlanError::InsideOwn(workdir.to_owned(), what));
            }
        }
        Ok(())
    }

    /// The directories above `relative` in `holder`.
    fn parents(&mut self, holder: Holder, relative: &Path) -> Result<(), PlanError> {
        let mut dir = PathBuf::new();
        let count = relative.components().count();
        for component in relative.components().take(count.saturating_sub(1)) {
            dir.push(component);
            self.add(holder, Node::Dir(dir.clone()))?;
        }
        Ok(())
    }

    /// Adds `node` once; the same path as another kind of node is a conflict.
    fn add(&mut self, holder: Holder, node: Node) -> Result<(), PlanError> {
        let existing = self
            .layout
            .nodes
            .iter()
            .find(|(h, n)| *h == holder && n.path() == node.path())
            .map(|(_, n)| n);
        match existing {
            None => {
                self.layout.nodes.push((holder, node));
                Ok(())
            }
            Some(n) if *n == node => Ok(()),
            Some(n) => Err(PlanError::Conflict(
                node.path().to_owned(),
                kind_name(n),
                kind_name(&node),
            )),
        }
    }
}

enum HolderKind {
    /// A filesystem the view makes: nodes are created in it.
    Own,
    /// A bound tree: mount points must exist in it.
    Bound,
    /// A filesystem nothing may be placed in.
    Closed(&'static str),
}

fn kind_name(node: &Node) -> &'static str {
    match node {
        Node::Dir(_) => "directory",
        Node::File(_) => "file",
        Node::Link(..) => "symlink",
    }
}

/// `path` relative to `base` (an ancestor of it, or itself: then empty).
fn relative(path: &Path, base: &Path) -> PathBuf {
    path.strip_prefix(base)
        .map_or_else(|_| path.to_owned(), Path::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL_DEVICES: [bool; DEVICES.len()] = [true; DEVICES.len()];

    fn ro(path: &str) -> Listed {
        entry(path, Access::ReadOnly, true)
    }

    fn rw(path: &str) -> Listed {
        entry(path, Access::ReadWrite, true)
    }

    fn entry(path: &str, access: Access, is_dir: bool) -> Listed {
        Listed {
            physical: path.into(),
            access,
            is_dir,
            links: Vec::new(),
        }
    }

    fn plan(listed: &[Listed], workdir: &str) -> Layout {
        layout(&Request {
            listed,
            proc: None,
            workdir: Path::new(workdir),
            provided: false,
            devices: &ALL_DEVICES,
        })
        .expect("a plan")
    }

    /// The mounts as (target, what) strings, in attach order.
    fn mounts(layout: &Layout, listed: &[Listed]) -> Vec<String> {
        layout
            .mounts
            .iter()
            .map(|m| {
                let what = match m.kind {
                    Kind::Bind(i) => format!("{:?}", listed[i].access),
                    other => format!("{other:?}"),
                };
                format!("{} {what}", m.target.display())
            })
            .collect()
    }

    fn nodes(layout: &Layout, holder: Holder) -> Vec<String> {
        layout
            .nodes
            .iter()
            .filter(|(h, _)| *h == holder)
            .map(|(_, n)| match n {
                Node::Dir(p) => format!("{}/", p.display()),
                Node::File(p) => p.display().to_string(),
                Node::Link(p, t) => format!("{} -> {}", p.display(), t.display()),
            })
            .collect()
    }

    const BASELINE: [&str; 9] = [
        "/tmp Tmp",
        "/dev/full Device(2)",
        "/dev/null Device(0)",
        "/dev/pts Devpts",
        "/dev/random Device(3)",
        "/dev/shm Shm",
        "/dev/tty Device(5)",
        "/dev/urandom Device(4)",
        "/dev/zero Device(1)",
    ];

    #[test]
    fn parents_are_mounted_before_children_whichever_rights_they_have() {
        let listed = [
            rw("/home/me/project"),
            ro("/home"),
            ro("/home/me/project/.git/hooks"),
            rw("/srv"),
            ro("/srv/config"),
        ];
        let layout = plan(&listed, "/home/me/project");
        let all = mounts(&layout, &listed);
        let ours: Vec<&String> = all
            .iter()
            .filter(|m| !BASELINE.contains(&m.as_str()))
            .collect();
        assert_eq!(
            ours,
            [
                "/home ReadOnly",
                "/srv ReadWrite",
                "/srv/config ReadOnly",
                "/home/me/project ReadWrite",
                "/home/me/project/.git/hooks ReadOnly",
            ]
        );
        // Children of binds need their mount points in the bound trees; the others are made.
        let existing: Vec<(String, bool)> = layout
            .existing
            .iter()
            .map(|(_, p, d)| (p.display().to_string(), *d))
            .collect();
        assert_eq!(
            existing,
            [
                ("config".to_owned(), true),
                ("me/project".to_owned(), true),
                (".git/hooks".to_owned(), true),
            ]
        );
        assert!(layout.workdir_bound);
        assert_eq!(
            nodes(&layout, Holder::Root),
            [
                "home/",
                "srv/",
                "tmp/",
                "dev/",
                "dev/full",
                "dev/null",
                "dev/pts/",
                "dev/random",
                "dev/shm/",
                "dev/tty",
                "dev/urandom",
                "dev/zero",
                "dev/fd -> /proc/self/fd",
                "dev/stdin -> /proc/self/fd/0",
                "dev/stdout -> /proc/self/fd/1",
                "dev/stderr -> /proc/self/fd/2",
                "dev/ptmx -> pts/ptmx",
            ]
        );
    }

    #[test]
    fn a_bind_its_parent_already_shows_with_the_same_rights_is_not_repeated() {
        let listed = [
            ro("/usr"),
            ro("/usr/lib"),
            rw("/usr/local"),
            rw("/usr/local/bin"),
        ];
        let layout = plan(&listed, "/");
        let all = mounts(&layout, &listed);
        assert!(all.contains(&"/usr ReadOnly".to_owned()), "{all:?}");
        assert!(all.contains(&"/usr/local ReadWrite".to_owned()), "{all:?}");
        assert!(!all.iter().any(|m| m.starts_with("/usr/lib ")), "{all:?}");
        assert!(
            !all.iter().any(|m| m.starts_with("/usr/local/bin")),
            "{all:?}"
        );
    }

    #[test]
    fn a_path_listed_twice_keeps_its_widest_rights() {
        let listed = [ro("/data"), rw("/data"), ro("/data")];
        let layout = plan(&listed, "/");
        let all = mounts(&layout, &listed);
        assert!(all.contains(&"/data ReadWrite".to_owned()), "{all:?}");
        assert_eq!(all.iter().filter(|m| m.starts_with("/data")).count(), 1);
    }

    #[test]
    fn symlinks_on_the_way_are_recreated_where_the_view_makes_the_directory() {
        let mut lib64 = ro("/usr/lib64");
        lib64.links = vec![("/lib64".into(), "usr/lib64".into())];
        let mut tool = entry("/opt/tool-1.2/bin/tool", Access::ReadOnly, false);
        tool.links = vec![
            ("/opt/tool".into(), "tool-1.2".into()),
            ("/usr/lib/link".into(), "elsewhere".into()),
        ];
        let listed = [ro("/usr"), lib64, tool];
        let layout = plan(&listed, "/");
        let root = nodes(&layout, Holder::Root);
        assert!(root.contains(&"lib64 -> usr/lib64".to_owned()), "{root:?}");
        assert!(
            root.contains(&"opt/tool -> tool-1.2".to_owned()),
            "{root:?}"
        );
        assert!(
            root.contains(&"opt/tool-1.2/bin/tool".to_owned()),
            "{root:?}"
        );
        // Inside the bound /usr the link is the pod's own.
        assert!(!root.iter().any(|n| n.contains("link")), "{root:?}");
    }

    #[test]
    fn tmp_and_shm_are_private_unless_listed_exactly() {
        let listed = [rw("/tmp/work"), ro("/etc")];
        let layout = plan(&listed, "/tmp/work");
        let all = mounts(&layout, &listed);
        assert!(all.contains(&"/tmp Tmp".to_owned()), "{all:?}");
        assert!(all.contains(&"/dev/shm Shm".to_owned()), "{all:?}");
        let tmp = layout
            .mounts
            .iter()
            .position(|m| m.kind == Kind::Tmp)
            .expect("private /tmp");
        // The listed path under the private /tmp gets its mount point there.
        assert_eq!(nodes(&layout, Holder::Mount(tmp)), ["work/"]);

        let listed = [rw("/tmp"), rw("/dev/shm")];
        let layout = plan(&listed, "/");
        let all = mounts(&layout, &listed);
        assert!(all.contains(&"/tmp ReadWrite".to_owned()), "{all:?}");
        assert!(all.contains(&"/dev/shm ReadWrite".to_owned()), "{all:?}");
        assert!(!all.iter().any(|m| m.ends_with("Tmp") || m.ends_with("Shm")));
    }

    #[test]
    fn an_unlisted_workdir_is_an_empty_directory_of_the_view() {
        let layout = plan(&[ro("/usr")], "/srv/project");
        assert!(!layout.workdir_bound);
        let root = nodes(&layout, Holder::Root);
        assert!(root.contains(&"srv/".to_owned()), "{root:?}");
        assert!(root.contains(&"srv/project/".to_owned()), "{root:?}");
        // Inside a read-only path: shown by it.
        let layout = plan(&[ro("/srv")], "/srv/project");
        assert!(layout.workdir_bound);
    }

    #[test]
    fn listing_root_makes_it_the_views_root_and_every_mount_point_must_exist() {
        let listed = [ro("/"), rw("/home/me")];
        let layout = plan(&listed, "/home/me");
        assert_eq!(layout.root_bind, Some(0));
        assert!(nodes(&layout, Holder::Root).is_empty());
        let existing: Vec<String> = layout
            .existing
            .iter()
            .map(|(_, p, _)| p.display().to_string())
            .collect();
        for expected in ["tmp", "dev/null", "dev/pts", "dev/shm", "home/me"] {
            assert!(existing.contains(&expected.to_owned()), "{existing:?}");
        }
    }

    #[test]
    fn dev_listed_whole_replaces_the_standard_devices() {
        let listed = [rw("/dev")];
        let layout = plan(&listed, "/");
        let all = mounts(&layout, &listed);
        assert!(all.contains(&"/dev ReadWrite".to_owned()), "{all:?}");
        assert!(
            !all.iter()
                .any(|m| m.contains("Device") || m.contains("Devpts"))
        );
        // /dev/shm stays private: listed exactly or not at all.
        assert!(all.contains(&"/dev/shm Shm".to_owned()), "{all:?}");
        assert!(
            layout
                .existing
                .iter()
                .any(|(_, p, _)| p == Path::new("shm"))
        );
    }

    #[test]
    fn proc_and_provided_files_have_their_own_mounts() {
        let listed = [ro("/usr")];
        let layout = layout(&Request {
            listed: &listed,
            proc: Some(Access::ReadOnly),
            workdir: Path::new("/"),
            provided: true,
            devices: &[true, true, false, true, true, false],
        })
        .expect("a plan");
        let all = mounts(&layout, &listed);
        assert!(all.contains(&"/proc Proc".to_owned()), "{all:?}");
        assert!(
            all.contains(&"/run/openshell Provided".to_owned()),
            "{all:?}"
        );
        // Devices the pod lacks are not there.
        assert!(
            !all.iter()
                .any(|m| m.starts_with("/dev/full") || m.starts_with("/dev/tty"))
        );
    }

    #[test]
    fn reserved_and_impossible_paths_are_refused() {
        let request = |listed: &'static [Listed], workdir: &'static str| Request {
            listed,
            proc: None,
            workdir: Path::new(workdir),
            provided: true,
            devices: &ALL_DEVICES,
        };
        let reserved = vec![ro("/run/openshell/tls")];
        let reserved: &'static [Listed] = reserved.leak();
        assert_eq!(
            layout(&request(reserved, "/")),
            Err(PlanError::Reserved("/run/openshell/tls".into()))
        );
        let inside = vec![rw("/dev/pts/3")];
        let inside: &'static [Listed] = inside.leak();
        assert_eq!(
            layout(&request(inside, "/")),
            Err(PlanError::InsideOwn("/dev/pts/3".into(), "/dev/pts"))
        );
    }
}
