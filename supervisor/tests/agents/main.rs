//! The real agent CLIs end to end: Claude Code, Codex and Gemini CLI, as installed by
//! `scripts/setup-host.sh --agents` (pinned npm packages), run a one-shot prompt under their
//! shipped policies against fake model APIs on the test network, and their shipped policies
//! are checked against the installed layout.
//!
//! Each run is shown to work unconfined first (the baseline), then under the sandbox, and
//! checked on the far side: what the fake API received, and what it never did.
// Test code: failing loudly, with a message, is the point of every check, helpers included.
#![allow(clippy::expect_used, clippy::panic)]

/// For each agent, a module of tests (`claude_code::answers_unconfined`, ...), each calling a
/// check of the invoking module with that agent: `agent_tests!(test => check, ...)`, with
/// attributes such as `#[ignore]` before a test's name.
macro_rules! agent_tests {
    ($($(#[$attr:meta])* $test:ident => $check:ident),* $(,)?) => {
        agent_tests!(@agent claude_code ClaudeCode; $($(#[$attr])* $test => $check),*);
        agent_tests!(@agent codex Codex; $($(#[$attr])* $test => $check),*);
        agent_tests!(@agent gemini_cli GeminiCli; $($(#[$attr])* $test => $check),*);
    };
    (@agent $module:ident $agent:ident; $($(#[$attr:meta])* $test:ident => $check:ident),*) => {
        mod $module {
            $(
                #[test]
                $(#[$attr])*
                fn $test() {
                    super::$check(crate::installed::Agent::$agent);
                }
            )*
        }
    };
}

// The proxy tests' laboratory: namespaces, hosts file, supervisor runs.
#[allow(dead_code, unused_imports)]
#[path = "../proxy/support/mod.rs"]
mod support;

mod credentials;
mod developer;
mod installed;
mod layout;
mod one_shot;
mod world;
