//! `/openapi.json` says exactly what the gateway does: schemathesis (pinned in
//! tests/python/requirements.txt, settings in tests/python/schemathesis.toml) runs every
//! check on every operation against a running stack, positive and negative cases,
//! including the chat stream's events against their documented schemas, and must find
//! nothing.

use std::time::Duration;

use system_tests::{Stack, repo_file, run_checked, venv_program};
use tokio::process::Command;

/// Cases per operation: enough to find the mismatches schemathesis found at 50, and a
/// run of about a minute on the 2-core machines CI uses.
const EXAMPLES_PER_OPERATION: &str = "50";

#[tokio::test]
async fn schemathesis_finds_no_difference_between_the_api_description_and_the_server() {
    let stack = Stack::start().await.unwrap();
    let user = "schemathesis";
    let output = run_checked(
        "schemathesis",
        Command::new(venv_program("schemathesis"))
            .arg("--config-file")
            .arg(repo_file("tests/python/schemathesis.toml"))
            .arg("--no-color")
            .args(["run", &format!("{}/openapi.json", stack.gateway)])
            .args(["--checks", "all"])
            .args(["--max-examples", EXAMPLES_PER_OPERATION])
            // Examples found failing in earlier runs are not kept between runs: each
            // run stands on its own.
            .args(["--generation-database", "none"])
            .env("TASKCHAT_USER", user)
            .env("TASKCHAT_TOKEN", stack.token(user))
            // Reports would land in the working directory.
            .current_dir(stack.logs()),
        Duration::from_secs(300),
    )
    .await;
    assert!(
        output.contains("No issues found") || output.contains("passed"),
        "schemathesis printed no verdict:\n{output}"
    );
    println!("{output}");
}
