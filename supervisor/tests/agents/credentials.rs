//! Credentials under the shipped policies: the pod gives the agent container its API key (the
//! supervisor's environment, as `env: valueFrom: secretKeyRef` would), the CLI holds a
//! placeholder, and every model call reaches the API with the real key, put in by the proxy
//! on the inspected model API endpoint.

use openshell_tests::fake_api::RUN;

use crate::installed::Agent;
use crate::one_shot::{assert_answered, last_tool_output, world};
use crate::world::{KEY, inspects};

agent_tests!(
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
