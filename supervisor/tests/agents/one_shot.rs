//! One-shot prompts: each CLI prints the fake model's answer, unconfined and under its
//! shipped policy; a tool call the model requests towards a host outside the policy is
//! refused, logged, and never reaches that host.

use std::collections::BTreeSet;

use openshell_tests::fake_api::{Api, RUN, model};
use serde_json::Value;

use crate::installed::Agent;
use crate::support::Run;
use crate::world::{EXFIL_HOST, KEY, World, lists};

const PROMPT: &str = "Say hello.";

/// The world, or `None` when the kernel lacks what the lab needs (and may skip).
pub fn world(agent: Agent) -> Option<World> {
    agent.require_installed();
    World::start()
}

/// The run ended well and printed `answer`.
pub fn assert_answered(run: &Run, answer: &str) {
    assert_eq!(run.code, 0, "the agent failed:\n{run}");
    assert!(
        run.stdout.contains(answer),
        "the agent did not print the fake model's answer {answer:?}:\n{run}"
    );
}

/// The hosts the supervisor refused to connect to, with the executable that tried. A direct
/// connection to an address an allowed name shares (every name of the test host does) is
/// refused by the L7 engine for the TLS server name it gives: that name was refused too.
fn refused(run: &Run) -> Vec<(String, String)> {
    const FRONTED: &str = "TLS server name \"";
    let mut refused = Vec::new();
    for l in run.log.iter().filter(|l| l["event"] == "denied") {
        let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        if l["host"].is_string() {
            refused.push((text(&l["host"]), text(&l["exe"])));
        }
        let why = text(&l["why"]);
        if let Some((_, rest)) = why.split_once(FRONTED)
            && let Some((named, _)) = rest.split_once('"')
        {
            refused.push((named.to_owned(), text(&l["exe"])));
        }
    }
    refused
}

/// Runs `agent` on a plain prompt unconfined: the fake API answers under the real host name.
fn answers_unconfined(agent: Agent) {
    let Some(world) = world(agent) else { return };
    let run = world.bare(agent, &agent.one_shot(PROMPT, false));
    assert_answered(&run, agent.api().answer());
    assert!(
        world.api.credentials().contains(KEY),
        "the fake API never saw the key: {:?}\n{run}",
        world.api.credentials()
    );
}

/// Runs `agent` on a plain prompt under its shipped policy, unchanged.
fn answers_under_its_policy(agent: Agent) {
    let Some(world) = world(agent) else { return };
    let run = world.sandboxed(agent, &agent.one_shot(PROMPT, false));
    assert_policy_run(agent, &world, &run);
}

/// A run under the shipped policy answered; the model calls carried the key; everything else
/// the CLI tried (telemetry, update checks, feature flags) was refused, logged, and never
/// reached the test host, without breaking the run.
pub fn assert_policy_run(agent: Agent, world: &World, run: &Run) {
    let api = agent.api();
    assert_answered(run, api.answer());
    let calls = world.api.calls(api);
    assert!(
        !calls.is_empty(),
        "no {api:?} call reached the fake API:\n{run}"
    );
    for call in &calls {
        assert_eq!(
            call.credential().as_deref(),
            Some(KEY),
            "a model call without the key: {call:?}"
        );
    }
    let reached: BTreeSet<String> = world.api.hosts();
    let refused: BTreeSet<String> = refused(run).into_iter().map(|(host, _)| host).collect();
    eprintln!("{agent:?}: reached {reached:?}; refused {refused:?}");
    for host in agent.unlisted_hosts() {
        assert!(
            refused.contains(*host),
            "{host} was not refused and logged:\n{run}"
        );
        assert!(
            !reached.contains(*host),
            "{host} reached the test host:\n{run}"
        );
    }
    let expected = BTreeSet::from([api.host().to_owned()]);
    let extra: Vec<&String> = reached.difference(&expected).collect();
    assert_policy_hosts_only(agent, &extra, run);
}

/// The result of the last tool call, as the CLI sent it back to the model.
pub fn last_tool_output(world: &World, api: Api, run: &Run) -> String {
    world
        .api
        .calls(api)
        .iter()
        .filter_map(|c| {
            c.call()
                .and_then(|call| model::tool_output(call, &c.json()))
        })
        .next_back()
        .unwrap_or_else(|| panic!("the CLI never sent the tool's result back:\n{run}"))
}

/// Hosts other than the model API that reached the test host must be listed by the policy.
fn assert_policy_hosts_only(agent: Agent, extra: &[&String], run: &Run) {
    for host in extra {
        assert!(
            lists(&agent.policy(), host),
            "{host} reached the test host but {} does not list it:\n{run}",
            agent.policy().display()
        );
    }
}

/// The model asks for a command that tries a host outside the policy: the CLI runs it, the
/// supervisor refuses and logs the connection, the host never sees it, and the CLI reports
/// the failure back to the model and finishes.
fn tool_call_outside_the_policy(agent: Agent) {
    let api: Api = agent.api();
    // Baseline: unconfined, the upload reaches the host.
    let Some(world) = world(agent) else { return };
    let args = agent.one_shot(&world.exfiltration_prompt(), true);
    let baseline = world.bare(agent, &args);
    assert_answered(&baseline, api.after_tool());
    let uploads = |world: &World| {
        world
            .api
            .seen()
            .into_iter()
            .filter(|s| s.sni.as_deref() == Some(EXFIL_HOST))
            .count()
    };
    assert_eq!(
        uploads(&world),
        1,
        "unconfined, the upload did not arrive:\n{baseline}"
    );

    let Some(world) = World::start() else { return };
    let args = agent.one_shot(&world.exfiltration_prompt(), true);
    let run = world.sandboxed(agent, &args);
    assert_answered(&run, api.after_tool());
    let curl = std::fs::canonicalize("/usr/bin/curl").expect("curl");
    let refusals = refused(&run);
    assert!(
        refusals
            .iter()
            .any(|(host, exe)| host == EXFIL_HOST && *exe == curl.to_string_lossy()),
        "no denial of {EXFIL_HOST} for {}: {refusals:?}\n{run}",
        curl.display()
    );
    assert!(
        !world.api.hosts().contains(EXFIL_HOST),
        "{EXFIL_HOST} was reached from the sandbox:\n{run}"
    );
    // The model got the refusal back as the tool's result.
    let output = last_tool_output(&world, api, &run);
    assert!(
        output.contains("403"),
        "the tool's result does not show the proxy's refusal: {output:?}"
    );
}

/// With the proxy variables removed, the CLI's own connections (and name lookups) are carried
/// by transparent egress under the same policy, with the same result.
fn answers_without_the_proxy_variables(agent: Agent) {
    let Some(world) = world(agent) else { return };
    let run = world.sandboxed_without_proxy_variables(agent, &agent.one_shot("Say hello.", false));
    assert_policy_run(agent, &world, &run);
}

agent_tests!(
    answers_unconfined => answers_unconfined,
    answers_under_its_shipped_policy => answers_under_its_policy,
    answers_without_the_proxy_variables => answers_without_the_proxy_variables,
    tool_call_outside_the_policy_is_refused => tool_call_outside_the_policy,
);

/// bubblewrap's message when it cannot make a namespace.
const NO_NAMESPACE: &str = "bwrap: No permissions to create new namespace";

/// Codex's own sandbox for the commands it runs (its bundled bubblewrap, which needs user
/// namespaces) cannot start inside ours, which refuses creating namespaces: the command does
/// not run, and the supervisor logs the refusal with bubblewrap as the culprit. Hence
/// `--sandbox danger-full-access` in the one-shot runs above (and in the README). Unconfined
/// (the baseline), bubblewrap gets past its namespaces.
#[test]
fn codex_own_sandbox_is_refused_inside_ours() {
    let agent = Agent::Codex;
    let Some(world) = world(agent) else { return };
    let marker = "openshell-marker";
    // What the command prints is worked out by the shell, so that it is not in the command's
    // text, which a failure message may quote.
    let printed = format!("42{marker}");
    let prompt =
        format!("Check.\n{RUN}echo $((6*7)){marker}; echo {marker} > \"$HOME/{marker}.txt\"");
    let mut args = agent.one_shot(&prompt, true);
    let at = args
        .iter()
        .position(|a| a == "--sandbox")
        .expect("--sandbox");
    args.drain(at..at + 2);
    let baseline = world.bare(agent, &args);
    assert_answered(&baseline, Api::OpenAi.after_tool());
    let output = last_tool_output(&world, Api::OpenAi, &baseline);
    // Unconfined, bubblewrap makes its namespaces and goes on to start the command through
    // Codex's helper (`codex-linux-sandbox`), which the installed Codex does not put where
    // bubblewrap looks for it on this machine: the command runs when it finds it.
    assert!(
        !output.contains(NO_NAMESPACE)
            && (output.contains("bwrap: execvp") || output.contains(&printed)),
        "unconfined, bubblewrap makes its namespaces: {output:?}"
    );
    let run = world.sandboxed(agent, &args);
    assert_answered(&run, Api::OpenAi.after_tool());
    let output = last_tool_output(&world, Api::OpenAi, &run);
    assert!(
        output.contains(NO_NAMESPACE) && !output.contains(&printed),
        "bubblewrap did not fail making its namespaces: {output:?}"
    );
    assert!(
        !world.home().join(format!("{marker}.txt")).exists(),
        "the command ran"
    );
    // The bubblewrap on PATH when there is one (/usr/bin/bwrap), else the bundled one.
    let refusals: Vec<&Value> = run.events("denied", "seccomp");
    assert!(
        refusals
            .iter()
            .any(|l| l["exe"].as_str().is_some_and(|e| e.ends_with("/bwrap"))),
        "no seccomp denial for Codex's bubblewrap:\n{run}"
    );
}
