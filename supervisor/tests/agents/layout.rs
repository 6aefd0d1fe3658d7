//! The shipped policies against the installed layout. A binary rule is matched against the
//! path the kernel reports for a process (`/proc/PID/exe`: symlinks resolved), so a rule that
//! names nothing real, or only a symlink, silently allows nothing; a rule that misses the
//! program an agent really runs silently breaks the agent (Claude Code's npm package became
//! a native program, and its policy still named node).
//!
//! Every binary rule of every shipped policy must match a real executable here, either as
//! written or moved to where this machine keeps the same install: npm's global prefix (the
//! agent CLIs, `OPENSHELL_AGENTS_PREFIX`) and rustup's home. Rules for layouts this machine
//! does not have are listed in [`OTHER_LAYOUTS`] with where they come from. And each agent's
//! connecting program, and each developer tool's, must be matched by the rule for its hosts.

use std::path::{Path, PathBuf};
use std::process::Command;

use openshell_sandbox::policy::{self, PathGlob, Policy, PolicyOrigin};

use crate::installed::{Agent, prefix, repo};

/// Rules for install layouts this machine does not have, and where each comes from.
const OTHER_LAYOUTS: &[(&str, &str)] = &[
    (
        "/usr/local/bin/node",
        "the official node images (FROM node:20)",
    ),
    (
        "/opt/*/bin/node",
        "Node.js unpacked from its release tarball",
    ),
    (
        "/usr/libexec/git-core/git-remote-http*",
        "git on Fedora, RHEL and Alpine",
    ),
    (
        "/usr/local/bin/python3*",
        "the official python images (FROM python:3)",
    ),
    (
        "/usr/local/bin/uv",
        "uv installed system-wide (pip install uv, or COPY from its image)",
    ),
    ("/usr/bin/cargo", "Debian's cargo package"),
];

/// Where an install method keeps what a rule names, relative to its root: the part of a rule
/// from this marker on is laid out the same under every root.
struct Root {
    /// The marker, e.g. `/lib/node_modules/`.
    marker: &'static str,
    /// This machine's root of that kind.
    here: fn() -> PathBuf,
}

const ROOTS: &[Root] = &[
    // npm's global prefix: /usr/local (node images), /usr (Debian's npm), here the agents'.
    Root {
        marker: "/lib/node_modules/",
        here: prefix,
    },
    // rustup's home: /usr/local/rustup (rust images), ~/.rustup, here root's.
    Root {
        marker: "/toolchains/",
        here: rustup_home,
    },
];

fn rustup_home() -> PathBuf {
    let out = Command::new("rustup")
        .args(["show", "home"])
        .output()
        .expect("rustup (the workspace's toolchain comes from it)");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// The shipped policies, loaded by the supervisor's own loader.
fn shipped() -> Vec<(PathBuf, Policy)> {
    let dir = repo().join("policies");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("policies/")
        .map(|e| e.expect("policies/ entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let policy = policy::load(PolicyOrigin::File(path.clone()), Path::new("/tmp"))
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (path, policy)
        })
        .collect()
}

/// A rule as written, and moved to this machine's root of its install method.
fn variants(rule: &PathGlob) -> Vec<PathGlob> {
    let text = rule.to_string();
    let mut all = vec![rule.clone()];
    for root in ROOTS {
        if let Some(at) = text.find(root.marker) {
            let here = (root.here)().to_string_lossy().into_owned();
            let moved = format!("{here}{}", &text[at..]);
            all.push(PathGlob::parse(&moved).expect("a moved rule is a valid glob"));
        }
    }
    all
}

/// What a rule finds on this machine.
#[derive(Debug, Default)]
struct Found {
    executables: Vec<PathBuf>,
    symlinks: Vec<PathBuf>,
}

/// Walks the directory tree under the rule's literal prefix, collecting what it matches.
fn expand(rule: &PathGlob, found: &mut Found) {
    let text = rule.to_string();
    let literal = text.split('*').next().unwrap_or_default();
    let start = match literal.rfind('/') {
        Some(0) | None => PathBuf::from("/"),
        Some(at) => PathBuf::from(&literal[..at]),
    };
    // `*` stays within a segment; `**` may descend any depth (bounded: node_modules trees).
    let depth = match text.contains("**") {
        true => 16,
        false => text.matches('/').count() - start.components().count() + 1,
    };
    walk(&start, depth, rule, found);
}

fn walk(dir: &Path, depth: usize, rule: &PathGlob, found: &mut Found) {
    if depth == 0 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let matched = rule.matches(&path.to_string_lossy());
        if meta.file_type().is_symlink() {
            if matched {
                found.symlinks.push(path);
            }
        } else if meta.is_dir() {
            walk(&path, depth - 1, rule, found);
        } else if matched
            && std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o111 != 0
        {
            found.executables.push(path);
        }
    }
}

#[test]
fn every_binary_rule_names_real_programs() {
    for agent in Agent::ALL {
        agent.require_installed();
    }
    let mut problems = Vec::new();
    let mut used_other_layouts = Vec::new();
    for (path, policy) in shipped() {
        for rule in &policy.network {
            for binary in &rule.binaries {
                let mut found = Found::default();
                for variant in variants(binary) {
                    expand(&variant, &mut found);
                }
                let other = OTHER_LAYOUTS.iter().find(|(r, _)| *r == binary.to_string());
                let name = format!("{}: rule {}: {binary}", path.display(), rule.key);
                match (&found.executables[..], &found.symlinks[..], other) {
                    ([first, ..], _, None) => eprintln!("{name}: {}", first.display()),
                    ([first, ..], _, Some(_)) => problems.push(format!(
                        "{name} is listed in OTHER_LAYOUTS but matches {} here",
                        first.display()
                    )),
                    ([], [link, ..], _) => problems.push(format!(
                        "{name} matches only the symlink {}; the kernel reports its target",
                        link.display()
                    )),
                    ([], [], Some((_, origin))) => {
                        eprintln!("{name}: for {origin}");
                        used_other_layouts.push(binary.to_string());
                    }
                    ([], [], None) => problems.push(format!(
                        "{name} matches no program here, and is not an OTHER_LAYOUTS entry"
                    )),
                }
            }
        }
    }
    for (rule, _) in OTHER_LAYOUTS {
        if !used_other_layouts.iter().any(|u| u == rule) {
            problems.push(format!(
                "OTHER_LAYOUTS entry {rule} is in no shipped policy"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The programs that must be able to reach `host`, under `policy`.
fn assert_covered(policy: &str, host: &str, programs: &[PathBuf]) {
    let path = repo().join("policies").join(policy);
    let (_, loaded) = shipped()
        .into_iter()
        .find(|(p, _)| *p == path)
        .unwrap_or_else(|| panic!("{} is not shipped", path.display()));
    let rules: Vec<_> = loaded
        .network
        .iter()
        .filter(|r| {
            r.endpoints
                .iter()
                .any(|e| e.host.matches(host) && e.ports.contains(&443))
        })
        .collect();
    assert!(!rules.is_empty(), "{policy} has no rule for {host}:443");
    for program in programs {
        let text = program.to_string_lossy();
        let covered = rules
            .iter()
            .flat_map(|r| &r.binaries)
            .flat_map(variants)
            .any(|glob| glob.matches(&text));
        assert!(
            covered,
            "{policy}: {} (what connects to {host}) is not among the binaries of its rules",
            program.display()
        );
    }
}

/// The canonical path of `program` (what the kernel reports once it runs).
fn real(program: &str) -> PathBuf {
    std::fs::canonicalize(program).unwrap_or_else(|e| panic!("{program}: {e}"))
}

#[test]
fn each_agent_program_is_covered_by_the_rule_for_its_api() {
    for agent in Agent::ALL {
        agent.require_installed();
        let policy = agent.policy();
        let name = policy
            .file_name()
            .expect("policy file name")
            .to_string_lossy();
        assert_covered(&name, agent.api().host(), &[agent.connecting_exe()]);
    }
    // Claude Code's wrapper fallback (installed with --ignore-scripts) runs the platform
    // package's program where it lies.
    let fallback = Agent::ClaudeCode
        .package_dir()
        .join("node_modules/@anthropic-ai/claude-code-linux-x64/claude");
    assert_covered(
        "claude-code.yaml",
        "api.anthropic.com",
        &[real(&fallback.to_string_lossy())],
    );
}

/// git's HTTPS helper in `git`'s exec path.
fn git_https_helper(git: &str) -> PathBuf {
    let out = Command::new(git)
        .arg("--exec-path")
        .output()
        .unwrap_or_else(|e| panic!("{git}: {e}"));
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    real(&dir.join("git-remote-https").to_string_lossy())
}

#[test]
fn developer_tools_are_covered_by_the_rules_for_their_hosts() {
    // Both gits of machines of this kind: Debian's and the one under /usr/local.
    let mut gits = Vec::new();
    for git in ["/usr/bin/git", "/usr/local/bin/git"] {
        gits.push(real(git));
        gits.push(git_https_helper(git));
    }
    assert_covered("developer.yaml", "github.com", &gits);
    let cargo = Command::new("rustup")
        .args(["which", "cargo"])
        .output()
        .expect("rustup which cargo");
    let cargo = real(String::from_utf8_lossy(&cargo.stdout).trim());
    for host in ["index.crates.io", "static.crates.io", "crates.io"] {
        assert_covered("developer.yaml", host, std::slice::from_ref(&cargo));
    }
    let python = real("/usr/bin/python3");
    assert_covered("developer.yaml", "pypi.org", std::slice::from_ref(&python));
    assert_covered("developer.yaml", "files.pythonhosted.org", &[python]);
    assert_covered(
        "developer.yaml",
        "registry.npmjs.org",
        &[real("/usr/bin/node")],
    );
}
