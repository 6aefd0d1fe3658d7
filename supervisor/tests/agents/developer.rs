//! `policies/developer.yaml` end to end for git: both gits of machines of this kind (Debian's
//! and the one under /usr/local, common in images that need a newer git) reach GitHub, and
//! nothing else does.

use crate::installed::repo;
use crate::world::World;

/// A repository on the fake GitHub (the fake API answers 404: what matters is that the
/// request arrived).
const REPOSITORY: &str = "https://github.com/openshell/probe.git";

#[test]
fn both_gits_reach_github_and_curl_does_not() {
    let Some(world) = World::start() else { return };
    let policy = repo().join("policies/developer.yaml");
    let ca = world.ca_file.to_string_lossy().into_owned();
    let env = [
        ("GIT_SSL_CAINFO", ca.as_str()),
        ("GIT_TERMINAL_PROMPT", "0"),
    ];
    let arrived = |world: &World| {
        world
            .api
            .seen()
            .iter()
            .filter(|s| {
                s.sni.as_deref() == Some("github.com")
                    && s.request
                        .target
                        .starts_with("/openshell/probe.git/info/refs")
            })
            .count()
    };
    for (n, git) in ["/usr/bin/git", "/usr/local/bin/git"]
        .into_iter()
        .enumerate()
    {
        let argv = [git, "ls-remote", REPOSITORY];
        let baseline = world.run_under(&policy, &env, &argv, true);
        assert_eq!(arrived(&world), 2 * n + 1, "{git} unconfined:\n{baseline}");
        let run = world.run_under(&policy, &env, &argv, false);
        assert_eq!(
            arrived(&world),
            2 * n + 2,
            "{git} under developer.yaml:\n{run}"
        );
        assert!(
            run.events("allowed", "proxy")
                .iter()
                .any(|l| l["host"] == "github.com" && l["rule"] == "git-github"),
            "no allowed CONNECT to github.com by rule git-github:\n{run}"
        );
    }
    // Silent (-s, no -S): the supervisor's log shares stderr with the agent here, and curl
    // writes its error message in pieces, between which the denial line can land, unparsed.
    let curl = [
        "/usr/bin/curl",
        "-s",
        "--cacert",
        ca.as_str(),
        "https://github.com/",
    ];
    // The baseline: unconfined, curl reaches the (fake) GitHub.
    let before = world.api.seen().len();
    let baseline = world.run_under(&policy, &env, &curl, true);
    assert_eq!(baseline.code, 0, "curl unconfined:\n{baseline}");
    assert_eq!(
        world.api.seen().len(),
        before + 1,
        "curl's request did not arrive unconfined:\n{baseline}"
    );
    let before = world.api.seen().len();
    let run = world.run_under(&policy, &env, &curl, false);
    assert_ne!(run.code, 0, "curl reached GitHub:\n{run}");
    assert!(
        run.events("denied", "proxy")
            .iter()
            .any(|l| l["host"] == "github.com" && l["exe"] == "/usr/bin/curl"),
        "no denial of curl to github.com:\n{run}"
    );
    assert_eq!(
        world.api.seen().len(),
        before,
        "curl's request arrived:\n{run}"
    );
}
