//! The laboratory a test builds: its two network namespaces, an upstream server on the test
//! host, a scratch directory (the agent's workdir, holding the client script, the policies and
//! the hosts file), and the supervisor run inside the pod with that hosts file.

pub mod dns;
pub mod echo;
pub mod net;
pub mod upstream;

pub use openshell_tests::require_kernel;
use std::ffi::CString;
use std::fs::File;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub use dns::Nameserver;
pub use net::{HOST, HOST_PRIVATE, HOST_V6, METADATA, NAMESERVER, Net, Side};
pub use upstream::Upstream;

/// How long one sandbox run may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(60);

/// The client script run inside the sandbox.
const AGENT_PY: &str = include_str!("agent.py");
/// The raw HTTP client of the L7 tests.
const L7AGENT_PY: &str = include_str!("l7agent.py");
/// The real clients of the credential tests.
const CREDS_AGENT_PY: &str = include_str!("creds_agent.py");

/// Names the proxy resolves from the hosts file bind-mounted over the supervisor's /etc/hosts.
const HOSTS: &str = "\
127.0.0.1 localhost loop.test.example
203.0.113.2 test.example api.test.example a.b.test.example other.example nottest.example
203.0.113.2 git.test.example api.github.com
203.0.113.2 api.anthropic.com
10.20.0.2 private.test.example db.test.example
169.254.169.254 metadata.test.example
2001:db8::2 v6.test.example
";

/// The filesystem part of every test policy: enough to run curl, sh and python3; the workdir
/// (the scratch directory) is read-write.
pub const FILESYSTEM: &str = "\
version: 1
filesystem_policy:
  include_workdir: true
  read_only: [/usr, /bin, /lib, /lib64, /etc, /proc, /dev/urandom]
  read_write: [/dev/null]
landlock:
  compatibility: hard_requirement
";

/// One `network_policies` entry (for [`Lab::policy`]): rule `key` with one endpoint (the
/// entries of its YAML flow mapping, e.g. `host: a.example, port: 80`) for `binaries`.
pub fn rule(key: &str, endpoint: &str, binaries: &[&str]) -> String {
    let binaries: Vec<String> = binaries
        .iter()
        .map(|b| format!("{{ path: \"{b}\" }}"))
        .collect();
    format!(
        "  {key}:\n    endpoints: [{{ {endpoint} }}]\n    binaries: [{}]\n",
        binaries.join(", ")
    )
}

/// `/usr/bin/python3` as the kernel names it in /proc/PID/exe (policies must name that).
pub fn python() -> String {
    executable("/usr/bin/python3")
}

/// `/usr/bin/curl`, resolved like [`python`].
pub fn curl() -> String {
    executable("/usr/bin/curl")
}

/// `path` as the kernel names it in /proc/PID/exe; fails the test when it is not installed.
pub fn executable(path: &str) -> String {
    installed(path).unwrap_or_else(|| panic!("{path} is needed inside the sandbox: not installed"))
}

/// [`executable`], or `None` when `path` is not installed (for clients a test may skip).
pub fn installed(path: &str) -> Option<String> {
    std::fs::canonicalize(path)
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

/// One test's world. Everything it created is removed on drop.
#[derive(Debug)]
pub struct Lab {
    /// The namespaces.
    pub net: Net,
    dir: Scratch,
}

/// The scratch directory, removed on drop.
#[derive(Debug)]
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            eprintln!("cleanup: cannot remove {}: {e}", self.0.display());
        }
    }
}

impl Lab {
    /// Builds the namespaces and the scratch directory; `None` (after printing why) when the
    /// kernel lacks veth and missing kernel features may skip.
    pub fn start() -> Option<Lab> {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(
            euid, 0,
            "the proxy tests create network namespaces and run the supervisor: run as root"
        );
        raise_fd_limit();
        let net = match Net::new() {
            Ok(net) => net,
            Err(net::NetError::NoVeth(e)) => {
                require_kernel(false, &format!("veth ({e})"));
                return None;
            }
        };
        let dir = Scratch(PathBuf::from("/tmp").join(net.id()));
        std::fs::create_dir(&dir.0).expect("scratch directory");
        // The agent runs as an unprivileged user: it must be able to enter and read.
        std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755))
            .expect("chmod scratch");
        let lab = Lab { net, dir };
        lab.write("agent.py", AGENT_PY);
        lab.write("l7agent.py", L7AGENT_PY);
        lab.write("creds_agent.py", CREDS_AGENT_PY);
        lab.write("hosts", HOSTS);
        // The pod's resolver: the test host's nameserver, with a Kubernetes-like search list.
        lab.write(
            "resolv.conf",
            &format!("nameserver {NAMESERVER}\nsearch default.svc.cluster.local svc.cluster.local\noptions ndots:5\n"),
        );
        Some(lab)
    }

    /// The scratch directory (the agent's workdir).
    pub fn dir(&self) -> &Path {
        &self.dir.0
    }

    /// Writes `name` in the scratch directory, readable by everyone.
    pub fn write(&self, name: &str, content: &str) -> PathBuf {
        let path = self.dir().join(name);
        std::fs::write(&path, content).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        path
    }

    /// Writes a policy with the standard filesystem part and `network` (the YAML of the
    /// `network_policies` map, indented by two spaces, or empty).
    pub fn policy(&self, name: &str, network: &str) -> PathBuf {
        let network = match network.is_empty() {
            true => String::new(),
            false => format!("network_policies:\n{network}"),
        };
        self.write(name, &format!("{FILESYSTEM}{network}"))
    }

    /// Starts HTTP servers on the test host, on every address (IPv4 and IPv6), one per port.
    pub fn upstream(&self, ports: &[u16]) -> Upstream {
        self.upstream_in(Side::Host, ports)
    }

    /// [`Lab::upstream`] in either namespace (in the pod, they catch what the proxy would
    /// dial on the pod's own loopback).
    pub fn upstream_in(&self, side: Side, ports: &[u16]) -> Upstream {
        let any = |port| SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port);
        Upstream::start(
            &self.net,
            side,
            &ports.iter().map(|p| any(*p)).collect::<Vec<_>>(),
            &[],
        )
    }

    /// The L7 test host (see [`echo`]) on the test host's addresses; its CA is written to
    /// `upstream-ca.pem` for `OPENSHELL_UPSTREAM_CA_FILE`.
    pub fn echo(
        &self,
        identity: &echo::Identity,
        tls_ports: &[u16],
        plain_ports: &[u16],
        git: Option<echo::GitRoot>,
    ) -> echo::EchoHost {
        self.write("upstream-ca.pem", &identity.ca_pem);
        echo::EchoHost::start(&self.net, identity, tls_ports, plain_ports, git)
    }

    /// A supervisor run under `policy`, to configure and start.
    pub fn sandbox(&self, policy: &Path) -> Sandbox<'_> {
        Sandbox {
            lab: self,
            policy: policy.to_owned(),
            env: Vec::new(),
            nofile: None,
            cgroup: None,
        }
    }
}

/// Lifts the test process's soft fd limit to its hard limit: the load tests hold thousands of
/// sockets, and the supervisor inherits the limit.
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct on the stack.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// A configured supervisor run.
#[derive(Debug)]
pub struct Sandbox<'a> {
    lab: &'a Lab,
    policy: PathBuf,
    env: Vec<(String, String)>,
    nofile: Option<u64>,
    cgroup: Option<CString>,
}

impl Sandbox<'_> {
    /// Sets a variable for the supervisor (e.g. `OPENSHELL_PROXY_HEADER_TIMEOUT`).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Lowers the supervisor's soft RLIMIT_NOFILE to `n` (the hard limit stays, so the agent
    /// may raise its own again).
    pub fn nofile(mut self, n: u64) -> Self {
        self.nofile = Some(n);
        self
    }

    /// Starts the supervisor in `cgroup` (it joins before it runs), with all it starts.
    pub fn cgroup(mut self, cgroup: &openshell_tests::cgroup::Cgroup) -> Self {
        let procs = cgroup.procs();
        self.cgroup = Some(CString::new(procs.as_os_str().as_bytes()).expect("cgroup path"));
        self
    }

    /// Runs `python3 agent.py ARGS` in the sandbox to the end.
    pub fn agent(&self, args: &[&str]) -> Run {
        let mut argv = vec!["/usr/bin/python3", "agent.py"];
        argv.extend_from_slice(args);
        self.run(&argv)
    }

    /// Runs `argv` in the sandbox to the end.
    pub fn run(&self, argv: &[&str]) -> Run {
        Run::of(self.command(argv), argv)
    }

    /// Runs `argv` to the end without the supervisor, as [`Sandbox::run`] would start the
    /// supervisor (same namespaces, hosts file, environment and limits): the unconfined
    /// baseline of a sandboxed run.
    pub fn bare(&self, argv: &[&str]) -> Run {
        let (program, args) = argv.split_first().expect("a command");
        let mut command = Command::new(program);
        command.args(args);
        self.in_pod(&mut command);
        Run::of(command, argv)
    }

    /// The supervisor's command line, started as [`Sandbox::in_pod`] says.
    fn command(&self, argv: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_openshell-sandbox"));
        command
            .arg("--policy")
            .arg(&self.policy)
            .arg("--workdir")
            .arg(self.lab.dir())
            .args(["--log-format", "json", "--"])
            .args(argv);
        self.in_pod(&mut command);
        command
    }

    /// Starts `command` in the lab's scratch directory, inside the pod's network namespace and
    /// a private mount namespace whose /etc/hosts and /etc/resolv.conf are the lab's, with only
    /// this run's variables.
    fn in_pod(&self, command: &mut Command) {
        command
            .current_dir(self.lab.dir())
            // Nothing inherited: the agent must find /usr/bin tools, never a user's shims,
            // and the supervisor must see only the knobs this test sets.
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        let pod = File::open(self.lab.net.path(Side::Pod)).expect("pod namespace");
        let file = |name: &str| {
            CString::new(self.lab.dir().join(name).as_os_str().as_bytes()).expect("lab file path")
        };
        let (hosts, resolv) = (file("hosts"), file("resolv.conf"));
        let (nofile, cgroup) = (self.nofile, self.cgroup.clone());
        // SAFETY: only async-signal-safe system calls on data prepared before fork; `pod`
        // is moved into the closure, so its fd stays open until exec (it is close-on-exec).
        unsafe {
            command.pre_exec(move || {
                let check = |rc: libc::c_int| match rc {
                    0 => Ok(()),
                    _ => Err(std::io::Error::last_os_error()),
                };
                if let Some(procs) = &cgroup {
                    // "0": the writing process.
                    let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    let joined = fd >= 0 && libc::write(fd, c"0".as_ptr().cast(), 1) == 1;
                    let error = std::io::Error::last_os_error();
                    if fd >= 0 {
                        libc::close(fd);
                    }
                    if !joined {
                        return Err(error);
                    }
                }
                check(libc::setns(pod.as_raw_fd(), libc::CLONE_NEWNET))?;
                check(libc::unshare(libc::CLONE_NEWNS))?;
                // Private, so the bind below never propagates to the machine's /etc/hosts.
                check(libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ))?;
                for (source, target) in [(&hosts, c"/etc/hosts"), (&resolv, c"/etc/resolv.conf")] {
                    check(libc::mount(
                        source.as_ptr(),
                        target.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND,
                        std::ptr::null(),
                    ))?;
                }
                if let Some(n) = nofile {
                    let mut limit = libc::rlimit {
                        rlim_cur: 0,
                        rlim_max: 0,
                    };
                    check(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit))?;
                    limit.rlim_cur = n;
                    check(libc::setrlimit(libc::RLIMIT_NOFILE, &limit))?;
                }
                Ok(())
            });
        }
    }
}

/// A supervisor that is killed and reaped if the test panics while it runs.
#[derive(Debug)]
struct Reaped(Option<Child>);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// How a sandbox run ended and what it printed.
#[derive(Debug)]
pub struct Run {
    /// The command run in the sandbox.
    pub argv: Vec<String>,
    /// The supervisor's exit code.
    pub code: i32,
    /// The agent's stdout.
    pub stdout: String,
    /// The supervisor's JSON log lines.
    pub log: Vec<Value>,
    /// Other stderr lines (the agent's own, e.g. curl's messages).
    pub stderr: Vec<String>,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// The supervisor's peak resident set (`VmHWM`), in KiB, as last read while it ran.
    pub peak_rss_kib: Option<u64>,
}

impl Run {
    /// Starts `command` (running `argv`) and collects its run.
    fn of(mut command: Command, argv: &[&str]) -> Run {
        let started = Instant::now();
        let child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {:?} for {argv:?}: {e}", command.get_program())
            });
        Run::collect(Reaped(Some(child)), argv, started)
    }

    fn collect(mut child: Reaped, argv: &[&str], started: Instant) -> Run {
        let process = child.0.as_mut().expect("child");
        let read = |pipe: Option<Box<dyn std::io::Read + Send>>| {
            std::thread::spawn(move || {
                let mut text = String::new();
                if let Some(mut pipe) = pipe {
                    let _ = pipe.read_to_string(&mut text);
                }
                text
            })
        };
        let stdout = read(process.stdout.take().map(|p| Box::new(p) as _));
        let stderr = read(process.stderr.take().map(|p| Box::new(p) as _));
        let status_file = format!("/proc/{}/status", process.id());
        let mut peak_rss_kib = None;
        let status = loop {
            // Read before each check: the last value read is the peak of the whole run (the
            // high-water mark only grows), up to the final few milliseconds.
            peak_rss_kib = high_water_mark(&status_file).or(peak_rss_kib);
            if let Some(status) = process.try_wait().expect("try_wait") {
                break status;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "{argv:?} still running after {DEADLINE:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        child.0 = None;
        let stdout = stdout.join().expect("stdout reader");
        let stderr = stderr.join().expect("stderr reader");
        let (log, other): (Vec<_>, Vec<_>) = stderr
            .lines()
            .map(|line| (serde_json::from_str::<Value>(line).ok(), line))
            .partition(|(value, _)| value.as_ref().is_some_and(|v| v.get("level").is_some()));
        Run {
            argv: argv.iter().map(|a| (*a).to_owned()).collect(),
            code: status
                .code()
                .unwrap_or_else(|| panic!("supervisor killed by a signal: {status}")),
            stdout,
            log: log.into_iter().filter_map(|(v, _)| v).collect(),
            stderr: other.into_iter().map(|(_, l)| l.to_owned()).collect(),
            elapsed: started.elapsed(),
            peak_rss_kib,
        }
    }

    /// The agent's stdout as JSON; fails the test (showing everything) when it is not, e.g.
    /// because the client crashed.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("the agent printed no JSON ({e}):\n{self}"))
    }

    /// Each line of the agent's stdout as JSON (several agent runs in one sandbox).
    pub fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("agent line is not JSON ({e}): {l:?}\n{self}"))
            })
            .collect()
    }

    /// Log lines with `event` = `event` and `layer` = `layer`.
    pub fn events(&self, event: &str, layer: &str) -> Vec<&Value> {
        self.log
            .iter()
            .filter(|l| l["event"] == event && l["layer"] == layer)
            .collect()
    }

    /// Log lines whose message contains `text`.
    pub fn messages(&self, text: &str) -> Vec<&Value> {
        self.log
            .iter()
            .filter(|l| l["message"].as_str().is_some_and(|m| m.contains(text)))
            .collect()
    }
}

/// Whether the transparent path was there for `run`: false, after saying why (a failure
/// with `OPENSHELL_REQUIRE_KERNEL=1`), only when the kernel lacks what it needs and the
/// supervisor said so: it warned that transparent egress is off, or refused to start because
/// the policy has `protocol: tcp` endpoints. Any other outcome, a start-up failure included, is
/// left to the test's own checks. `detail` says which of the path's uses the test needs.
pub fn transparent_on(run: &Run, detail: &str) -> bool {
    let off = !run.messages("TRANSPARENT EGRESS OFF").is_empty()
        || !run.messages("which need transparent egress").is_empty();
    require_kernel(!off, &format!("transparent egress ({detail})"))
}

/// As [`transparent_on`], for a test of what only the direct path does (the agent holds the
/// server's connection): false too when the kernel lacks the TCP fence, so the supervisor
/// relays instead (and said so).
pub fn transparent_direct(run: &Run, detail: &str) -> bool {
    transparent_on(run, detail)
        && require_kernel(
            run.messages("TRANSPARENT EGRESS RELAYED").is_empty(),
            &format!("direct transparent egress, Landlock ABI 4 ({detail})"),
        )
}

/// Whether the supervisor said it relays `run`'s direct connections: asked to, or for want
/// of the TCP fence.
pub fn relayed(run: &Run) -> bool {
    !run.messages("transparent egress relayed").is_empty()
        || !run.messages("TRANSPARENT EGRESS RELAYED").is_empty()
}

/// The variable that chooses how the transparent path runs (auto, direct, relay, off).
pub const EGRESS_SETTING: &str = "OPENSHELL_TRANSPARENT_EGRESS";

/// `VmHWM` (peak resident set, KiB) from a `/proc/PID/status` file.
fn high_water_mark(status_file: &str) -> Option<u64> {
    let status = std::fs::read_to_string(status_file).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "sandbox run {:?}: exit {} after {:?}, supervisor peak RSS {:?} KiB",
            self.argv, self.code, self.elapsed, self.peak_rss_kib
        )?;
        writeln!(f, "--- agent stdout:\n{}", self.stdout)?;
        writeln!(f, "--- agent stderr:")?;
        for line in &self.stderr {
            writeln!(f, "{line}")?;
        }
        writeln!(f, "--- supervisor log:")?;
        for line in &self.log {
            writeln!(f, "{line}")?;
        }
        Ok(())
    }
}
