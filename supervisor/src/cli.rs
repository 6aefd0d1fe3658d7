//! The command line.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::log::Format;

const ABOUT: &str = "Run an AI coding agent confined: own namespaces, Landlock, seccomp, no \
                     capabilities, and all network egress through a policy-enforcing proxy.";

const LONG_ABOUT: &str = "\
Runs COMMAND (default: the user's shell from the image, or /bin/sh) confined, and stays its \
parent: it forwards signals, reaps orphans, logs every denial it can see and exits with the \
agent's status.

Layers, applied in this order in the agent's process, each one read back before the next:
  namespaces   own PID (a tiny init of ours is PID 1), mount, IPC, UTS, cgroup and network
               namespaces; the network namespace holds only loopback and the proxy's
               listening socket
  view         the agent's root holds only the policy's paths, read-only ones mounted
               read-only; private /tmp and /dev/shm, standard /dev, its own /proc; memfds
               cannot be executed (vm.memfd_noexec=2, Linux 6.6+)
  identity     run_as_user / run_as_group from the policy, or OPENSHELL_SANDBOX_UID/GID, or the
               image's `sandbox` user, or 65534; never root
  capabilities all five sets emptied, securebits locked; setuid(0) must fail
  Landlock     the same paths again at the kernel's highest ABI, plus signal and
               abstract-socket scoping (without Landlock the view alone enforces the policy)
  seccomp      last: refuses ptrace, bpf, io_uring, keyrings, mounts, namespaces, kernel
               modules, raw and exotic sockets, 32-bit and x32 system calls...; each refusal is
               logged with pid, executable and call

The policy (YAML, the upstream OpenShell v1 format) comes from --policy, else OPENSHELL_POLICY,
else /etc/openshell/policy.yaml, else a built-in restrictive default (system paths read-only,
the workdir read-write, no network). A policy error names file, line, column and field.
Run `openshell-sandbox check --policy FILE` to see what would be enforced on this machine.";

const AFTER_HELP: &str = "\
Exit status:
  the agent's own status, or 128+N if it died of signal N
  124  --timeout expired (the agent got SIGTERM, then SIGKILL after the grace period)
  125  the supervisor failed before the agent ran (bad policy, missing kernel feature or
       capability, namespace set-up); one line on stderr names the cause
  126  COMMAND exists but cannot be executed
  127  COMMAND was not found

Environment:
  OPENSHELL_POLICY            policy file (same as --policy)
  OPENSHELL_SANDBOX_UID/GID   the agent's uid/gid, overriding the policy
  OPENSHELL_GRACE_PERIOD      seconds between SIGTERM and SIGKILL (default 10)
  OPENSHELL_LOG_FILE          log file (same as --log-file)
  OPENSHELL_TRANSPARENT_EGRESS
                              auto (default), direct, relay or off: how the agent's own
                              connections meet the policy (see `check`)
  OPENSHELL_* variables configure the supervisor and are not passed to the agent.

Example:
  openshell-sandbox --policy /etc/openshell/claude.yaml --workdir /sandbox -- claude
  openshell-sandbox check --policy policy.yaml";

/// `openshell-sandbox`.
#[derive(Debug, Parser)]
#[command(
    name = "openshell-sandbox",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_long_help = AFTER_HELP,
    args_conflicts_with_subcommands = true,
    disable_help_subcommand = true
)]
pub struct Cli {
    /// A subcommand instead of running an agent.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Running an agent.
    #[command(flatten)]
    pub run: RunArgs,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate the policy and show what this kernel and these capabilities can enforce.
    #[command(
        long_about = "Validates the policy, probes the kernel (Landlock ABI, seccomp, \
                      namespaces) and the capabilities this process holds, and prints in plain \
                      words what would be enforced and what would fail. Exit status 0 when the \
                      policy can be enforced as written here, 125 otherwise.",
        after_long_help = "Example:\n  openshell-sandbox check --policy policies/default.yaml"
    )]
    Check(CheckArgs),
}

/// Where the policy comes from.
#[derive(Debug, Args)]
pub struct PolicyArgs {
    /// Policy file (YAML). `--policy-data` is accepted for upstream compatibility.
    #[arg(
        long,
        alias = "policy-data",
        env = "OPENSHELL_POLICY",
        value_name = "FILE"
    )]
    pub policy: Option<PathBuf>,
    /// The agent's working directory, made read-write when the policy's include_workdir is
    /// not false [default: the current directory].
    #[arg(long, value_name = "DIR")]
    pub workdir: Option<PathBuf>,
}

/// Logging.
#[derive(Debug, Args)]
pub struct LogArgs {
    /// Format of the supervisor's own log lines on stderr.
    #[arg(long, value_enum, default_value = "text", value_name = "text|json")]
    pub log_format: Format,
    /// Log level or filter (error, warn, info, debug, trace).
    #[arg(long, default_value = "info", value_name = "LEVEL")]
    pub log_level: String,
    /// Append the supervisor's log lines to FILE instead of stderr: they stay off an
    /// interactive agent's terminal, and the agent cannot write into them.
    #[arg(long, env = "OPENSHELL_LOG_FILE", value_name = "FILE")]
    pub log_file: Option<PathBuf>,
}

/// Running an agent.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Policy and workdir.
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Stop the agent after SECS seconds (SIGTERM, grace period, SIGKILL; exit status 124).
    #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
    pub timeout: Option<Duration>,
    /// Logging.
    #[command(flatten)]
    pub log: LogArgs,
    /// The agent and its arguments.
    #[arg(
        value_name = "COMMAND",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub command: Vec<OsString>,
}

/// `check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Policy and workdir.
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Logging.
    #[command(flatten)]
    pub log: LogArgs,
}

/// Longest timeout or grace period accepted: ten years, far beyond any agent run, and far
/// from overflowing the clock arithmetic that schedules it.
pub const MAX_SECONDS: u64 = 10 * 365 * 24 * 3600;

/// Parses a positive number of seconds, at most [`MAX_SECONDS`].
pub fn parse_seconds(raw: &str) -> Result<Duration, String> {
    match raw.trim().parse::<u64>() {
        Ok(secs) if secs > 0 && secs <= MAX_SECONDS => Ok(Duration::from_secs(secs)),
        _ => Err(format!(
            "{raw:?} is not a whole number of seconds from 1 to {MAX_SECONDS}"
        )),
    }
}
