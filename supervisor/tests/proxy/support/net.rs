//! Two network namespaces per test, joined by a veth pair: the pod (where the supervisor runs
//! and dials from) and the test host (where the upstream servers listen).
//!
//! Each test gets its own pair, so tests run in parallel with the same addresses, nothing is
//! added to the machine's own interfaces or routes (a 169.254.169.254 or 10.x address there
//! could capture the machine's real metadata or private traffic), and cleaning up is deleting
//! two namespaces. Namespaces left by a test process that was killed are swept by the next run.

use std::fs::File;
use std::io::Write;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The pod's address on the link (the proxy's source address).
pub const POD: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
/// The test host's public address (documentation range: public to the proxy's guard).
pub const HOST: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
/// The test host's private (RFC 1918) address.
pub const HOST_PRIVATE: Ipv4Addr = Ipv4Addr::new(10, 20, 0, 2);
/// The test host also answers as the cloud metadata service.
pub const METADATA: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// The test host's IPv6 address (documentation prefix: public to the proxy's guard).
pub const HOST_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
/// The test host's nameserver address (the pod's `/etc/resolv.conf` names it).
pub const NAMESERVER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 53);

/// Prefix of every namespace and scratch directory this suite creates.
pub const PREFIX: &str = "osbt-";

/// `ip netns add` mounts /run/netns on first use; concurrent first uses race.
static NETNS_LOCK: Mutex<()> = Mutex::new(());

/// Which namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Where the supervisor runs.
    Pod,
    /// Where the upstream servers listen.
    Host,
}

/// Why a lab could not be built.
#[derive(Debug)]
pub enum NetError {
    /// The kernel has no veth driver (a kernel feature a test may skip for).
    NoVeth(String),
}

/// The pair of namespaces; deleted on drop (also when the test panics).
#[derive(Debug)]
pub struct Net {
    id: String,
    created: Vec<String>,
}

/// A name unique to this process and call, with the pid in it for the sweep.
pub fn unique_id() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{PREFIX}{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

impl Net {
    /// Creates and addresses both namespaces.
    pub fn new() -> Result<Net, NetError> {
        sweep_stale();
        let mut net = Net {
            id: unique_id(),
            created: Vec::new(),
        };
        for side in [Side::Pod, Side::Host] {
            let name = net.name(side);
            ip(&["netns", "add", &name]).unwrap_or_else(|e| panic!("{e}"));
            net.created.push(name);
        }
        let (pod, host) = (net.name(Side::Pod), net.name(Side::Host));
        let veth = [
            "link", "add", "veth0", "netns", &pod, "type", "veth", "peer", "name", "veth0",
            "netns", &host,
        ];
        if let Err(e) = ip(&veth) {
            if e.contains("Unknown device type") || e.contains("not supported") {
                return Err(NetError::NoVeth(e));
            }
            panic!("{e}");
        }
        // The pod reaches the metadata address through the veth only because of this route:
        // like a cloud node, where it is one hop away.
        net.batch(
            Side::Pod,
            &format!(
                "link set lo up\nlink set veth0 up\naddr add {POD}/24 dev veth0\n\
                 addr add 10.20.0.1/24 dev veth0\naddr add 2001:db8::1/64 dev veth0 nodad\n\
                 route add {METADATA}/32 dev veth0\n"
            ),
        );
        net.batch(
            Side::Host,
            &format!(
                "link set lo up\nlink set veth0 up\naddr add {HOST}/24 dev veth0\n\
                 addr add {NAMESERVER}/32 dev veth0\n\
                 addr add {HOST_PRIVATE}/24 dev veth0\naddr add {METADATA}/32 dev veth0\n\
                 addr add {HOST_V6}/64 dev veth0 nodad\n"
            ),
        );
        Ok(net)
    }

    /// The unique id of this lab (also names its scratch directory).
    pub fn id(&self) -> &str {
        &self.id
    }

    fn name(&self, side: Side) -> String {
        match side {
            Side::Pod => format!("{}-pod", self.id),
            Side::Host => format!("{}-host", self.id),
        }
    }

    /// The namespace file, for `setns`.
    pub fn path(&self, side: Side) -> PathBuf {
        PathBuf::from("/run/netns").join(self.name(side))
    }

    fn batch(&self, side: Side, commands: &str) {
        let name = self.name(side);
        let mut child = Command::new("ip")
            .args(["-n", &name, "-batch", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot run ip (iproute2)");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(commands.as_bytes())
            .expect("writing to ip -batch");
        let out = child.wait_with_output().expect("ip -batch");
        assert!(
            out.status.success(),
            "ip -n {name} -batch failed: {}\n{commands}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `program` started inside `side`'s network namespace (a server of the test host).
    pub fn command(&self, side: Side, program: &str) -> Command {
        let ns = File::open(self.path(side)).expect("namespace file");
        let mut command = Command::new(program);
        // SAFETY: setns is async-signal-safe; `ns` is moved in and open until exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
                match libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) {
                    0 => Ok(()),
                    _ => Err(std::io::Error::last_os_error()),
                }
            });
        }
        command
    }

    /// Runs `f` on a thread inside `side`'s namespace: sockets it creates belong there for
    /// their whole life, whichever thread uses them later. The calling thread is untouched.
    pub fn enter<T: Send>(&self, side: Side, f: impl FnOnce() -> T + Send) -> T {
        let path = self.path(side);
        std::thread::scope(|s| {
            s.spawn(|| {
                let ns = File::open(&path)
                    .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
                // SAFETY: setns on this thread only, with a namespace fd we hold.
                let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .expect("thread inside a test namespace panicked")
        })
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for name in &self.created {
            if let Err(e) = ip(&["netns", "delete", name]) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

/// Runs `ip ARGS`; the error names the command and what ip said.
fn ip(args: &[&str]) -> Result<(), String> {
    let netns = args.first() == Some(&"netns");
    let _guard = netns.then(|| NETNS_LOCK.lock().unwrap_or_else(|p| p.into_inner()));
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip (iproute2): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Removes namespaces and scratch directories of test processes that no longer exist (killed
/// before their guards ran). Once per process.
fn sweep_stale() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let stale = |name: &str| {
            name.strip_prefix(PREFIX)
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<u32>().ok())
                .is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
        };
        for (dir, is_netns) in [("/run/netns", true), ("/tmp", false)] {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !stale(&name) {
                    continue;
                }
                let result = match is_netns {
                    true => ip(&["netns", "delete", &name]),
                    false => std::fs::remove_dir_all(entry.path()).map_err(|e| e.to_string()),
                };
                match result {
                    Ok(()) => eprintln!("removed {dir}/{name}, left by a killed test run"),
                    Err(e) => eprintln!("cannot remove stale {dir}/{name}: {e}"),
                }
            }
        }
    });
}
