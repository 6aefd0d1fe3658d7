//! The agent CLIs as `scripts/setup-host.sh --agents` installs them: the pinned npm packages of
//! `scripts/agent-clis.txt`, installed globally under one prefix (`/usr/local`, as in node
//! images, unless `OPENSHELL_AGENTS_PREFIX` says otherwise).

use std::path::{Path, PathBuf};

use openshell_tests::fake_api::Api;

/// The pins, shared with the setup script and the benchmark.
const PINS: &str = include_str!("../../../scripts/agent-clis.txt");

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the supervisor crate lives in the repository")
        .to_owned()
}

/// Where the CLIs are installed (npm's global prefix for them).
pub fn prefix() -> PathBuf {
    std::env::var_os("OPENSHELL_AGENTS_PREFIX")
        .map_or_else(|| PathBuf::from("/usr/local"), PathBuf::from)
}

/// The directories the agent's `PATH` names, in order (`/usr/bin/env` searches them for the
/// interpreter of a `#!/usr/bin/env node` script).
pub const AGENT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// An agent CLI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Agent {
    /// Anthropic's Claude Code (`@anthropic-ai/claude-code`): a native program since 2.1.
    ClaudeCode,
    /// OpenAI's Codex (`@openai/codex`): a node launcher that starts a native program.
    Codex,
    /// Google's Gemini CLI (`@google/gemini-cli`): a node program.
    GeminiCli,
}

impl Agent {
    /// Every agent.
    pub const ALL: [Agent; 3] = [Agent::ClaudeCode, Agent::Codex, Agent::GeminiCli];

    /// Its npm package.
    pub fn package(self) -> &'static str {
        match self {
            Agent::ClaudeCode => "@anthropic-ai/claude-code",
            Agent::Codex => "@openai/codex",
            Agent::GeminiCli => "@google/gemini-cli",
        }
    }

    /// The command npm puts in `PREFIX/bin`.
    pub fn command(self) -> PathBuf {
        let name = match self {
            Agent::ClaudeCode => "claude",
            Agent::Codex => "codex",
            Agent::GeminiCli => "gemini",
        };
        prefix().join("bin").join(name)
    }

    /// Its shipped policy.
    pub fn policy(self) -> PathBuf {
        let name = match self {
            Agent::ClaudeCode => "claude-code.yaml",
            Agent::Codex => "codex.yaml",
            Agent::GeminiCli => "gemini-cli.yaml",
        };
        repo().join("policies").join(name)
    }

    /// The model API it calls.
    pub fn api(self) -> Api {
        match self {
            Agent::ClaudeCode => Api::Anthropic,
            Agent::Codex => Api::OpenAi,
            Agent::GeminiCli => Api::Gemini,
        }
    }

    /// The variable it takes its API key from. `codex exec` reads `CODEX_API_KEY`; it sends
    /// no key at all with only `OPENAI_API_KEY` set (that one is for `codex login`).
    pub fn key_variable(self) -> &'static str {
        match self {
            Agent::ClaudeCode => "ANTHROPIC_API_KEY",
            Agent::Codex => "CODEX_API_KEY",
            Agent::GeminiCli => "GEMINI_API_KEY",
        }
    }

    /// The variable through which it trusts an extra CA: Node's (which Claude Code's Bun
    /// runtime reads too) or, for Codex's Rust TLS stack, the OpenSSL convention.
    pub fn ca_variable(self) -> &'static str {
        match self {
            Agent::ClaudeCode | Agent::GeminiCli => "NODE_EXTRA_CA_CERTS",
            Agent::Codex => "SSL_CERT_FILE",
        }
    }

    /// Hosts this version contacts in a one-shot run that its shipped policy deliberately
    /// does not list: telemetry, experiments, update and plugin checks. (Claude Code 2.1.197
    /// sends its event logging to api.anthropic.com itself, which an L4 rule cannot tell from
    /// model calls.)
    pub fn unlisted_hosts(self) -> &'static [&'static str] {
        match self {
            Agent::ClaudeCode => &[],
            // Experiments (ab.chatgpt.com), the latest release (api.github.com) and, through
            // git, the curated plugins repository (github.com).
            Agent::Codex => &["ab.chatgpt.com", "api.github.com", "github.com"],
            // Usage statistics (Clearcut).
            Agent::GeminiCli => &["play.googleapis.com"],
        }
    }

    /// Its pinned version.
    pub fn version(self) -> &'static str {
        PINS.lines()
            .filter_map(|line| line.split_once(' '))
            .find(|(package, _)| *package == self.package())
            .map(|(_, version)| version.trim())
            .unwrap_or_else(|| panic!("{} has no pin in scripts/agent-clis.txt", self.package()))
    }

    /// The arguments of a one-shot, non-interactive prompt. With `shell`, the CLI runs its
    /// shell tool without asking (one-shot modes cannot ask).
    pub fn one_shot(self, prompt: &str, shell: bool) -> Vec<String> {
        let mut argv = vec![self.command().to_string_lossy().into_owned()];
        let args: &[&str] = match (self, shell) {
            (Agent::ClaudeCode, false) => &["-p"],
            (Agent::ClaudeCode, true) => &["--allowedTools", "Bash", "-p"],
            // Codex's own sandbox (bubblewrap, user namespaces) cannot start inside ours,
            // which refuses user namespaces: ours is the boundary, so Codex's is turned off.
            (Agent::Codex, false) => &[
                "exec",
                "--skip-git-repo-check",
                "--sandbox",
                "danger-full-access",
            ],
            // The default model of this version calls commands through a JavaScript tool;
            // gpt-5 gets the plain `exec_command` tool the fake model knows.
            (Agent::Codex, true) => &[
                "exec",
                "--skip-git-repo-check",
                "--sandbox",
                "danger-full-access",
                "-m",
                "gpt-5",
            ],
            // Non-interactive runs need the directory trusted; --yolo approves tool calls.
            (Agent::GeminiCli, false) => &["--skip-trust", "-p"],
            (Agent::GeminiCli, true) => &["--skip-trust", "--yolo", "-p"],
        };
        argv.extend(args.iter().map(|a| (*a).to_owned()));
        argv.push(prompt.to_owned());
        argv
    }

    /// The program that connects to the model API, as the kernel names it (what policies
    /// must list): the native executable behind the npm command, or node for a node program.
    pub fn connecting_exe(self) -> PathBuf {
        let path = match self {
            Agent::ClaudeCode => self.command(),
            Agent::Codex => self.package_dir().join(
                "node_modules/@openai/codex-linux-x64/vendor/x86_64-unknown-linux-musl/bin/codex",
            ),
            Agent::GeminiCli => AGENT_PATH
                .split(':')
                .map(|dir| Path::new(dir).join("node"))
                .find(|p| p.exists())
                .expect("node on the agent's PATH"),
        };
        std::fs::canonicalize(&path).unwrap_or_else(|e| {
            panic!(
                "{} ({}): {e}; run scripts/setup-host.sh --agents",
                path.display(),
                self.package()
            )
        })
    }

    /// The package's directory.
    pub fn package_dir(self) -> PathBuf {
        prefix().join("lib/node_modules").join(self.package())
    }

    /// Fails the test, naming the fix, unless the pinned version is installed.
    pub fn require_installed(self) {
        let manifest = self.package_dir().join("package.json");
        let text = std::fs::read_to_string(&manifest).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; install the agent CLIs with scripts/setup-host.sh --agents",
                manifest.display()
            )
        });
        let json: serde_json::Value = serde_json::from_str(&text).expect("package.json");
        assert_eq!(
            json["version"].as_str(),
            Some(self.version()),
            "{} is not the pinned version; run scripts/setup-host.sh --agents",
            manifest.display()
        );
    }
}
