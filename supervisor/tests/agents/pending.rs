//! Acceptance points of the agent suite that wait for other issues: each test states the
//! behaviour and fails until its feature lands (run them with `cargo test --test agents --
//! --ignored`), then loses its `#[ignore]`.

use openshell_tests::fake_api::RUN;

use crate::installed::Agent;
use crate::one_shot::{assert_answered, assert_policy_run, last_tool_output, world};
use crate::world::{KEY, inspects};

/// With the proxy variables removed, the CLI's own connections (and name lookups) must be
/// carried by transparent egress under the same policy.
fn answers_without_the_proxy_variables(agent: Agent) {
    let Some(world) = world(agent) else { return };
    let run = world.sandboxed_without_proxy_variables(agent, &agent.one_shot("Say hello.", false));
    assert_policy_run(agent, &world, &run);
}

agent_tests!(
    #[ignore = "needs transparent egress (issue 10)"]
    answers_without_the_proxy_variables => answers_without_the_proxy_variables,
    #[ignore = "needs credentials kept from the agent (issue 11) and a credential section in the shipped policy"]
    holds_a_placeholder => holds_a_placeholder,
);

/// The key the agent holds is a placeholder, while the model calls carry the real one: the
/// model asks the CLI to print its key variable, and the tool's result (what the agent saw)
/// must not contain it.
fn holds_a_placeholder(agent: Agent) {
    let Some(world) = world(agent) else { return };
    let prompt = format!("Show the key.\n{RUN}printenv {}", agent.key_variable());
    let run = world.sandboxed(agent, &agent.one_shot(&prompt, true));
    assert_answered(&run, agent.api().after_tool());
    let seen_by_agent = last_tool_output(&world, agent.api(), &run);
    assert!(
        !seen_by_agent.contains(KEY),
        "the agent holds the real key: {seen_by_agent:?}"
    );
    // A placeholder: upstream's `openshell:resolve:env:NAME`, or the alias the policy
    // declares where a client checks the key's format.
    assert!(
        !seen_by_agent.trim().is_empty(),
        "the agent holds no key at all: {seen_by_agent:?}"
    );
    let calls = world.api.calls(agent.api());
    assert!(
        !calls.is_empty() && calls.iter().all(|c| c.credential().as_deref() == Some(KEY)),
        "not every model call carried the real key:\n{run}"
    );
}

/// Credentials are bound to L7 endpoints, so each shipped agent policy must inspect its model
/// API; the one-shot tests then trust the test CA through the supervisor
/// (`OPENSHELL_UPSTREAM_CA_FILE`) and the agent only what the supervisor gives it.
#[test]
#[ignore = "needs L7 with TLS termination (issue 9) and L7 rules for the model APIs in the shipped policies"]
fn shipped_policies_inspect_their_model_api() {
    for agent in Agent::ALL {
        assert!(
            inspects(&agent.policy(), agent.api().host()),
            "{} has no L7 rules for {}",
            agent.policy().display(),
            agent.api().host()
        );
    }
}
