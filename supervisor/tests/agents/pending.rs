//! Acceptance points of the agent suite that wait for other issues: each test states the
//! behaviour and fails until its feature lands (run them with `cargo test --test agents --
//! --ignored`), then loses its `#[ignore]`.

use crate::installed::Agent;
use crate::one_shot::{assert_policy_run, world};

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
);
