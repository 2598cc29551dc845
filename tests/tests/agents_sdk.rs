//! The reference design's client, unchanged: an OpenAI Agents SDK agent with
//! `MCPServerStreamableHttp` pointed at task-service's `/mcp` (bearer header) and
//! offline-llm as its chat-completions model, holding a whole conversation
//! (tests/python/test_agents_sdk.py) with the SDK's `convert_schemas_to_strict` on and
//! off. The Python side checks every change through the gateway's task list. Last,
//! task-service dies mid-conversation: the SDK hands the model its failure text, and the
//! reply must say the task was not added.

use std::time::Duration;

use system_tests::{Stack, repo_file, run_checked, venv_program};
use tokio::process::Command;

async fn converse(stack: &Stack, user: &str, mode: &str, env: &[(&str, String)]) {
    let python = venv_program("python");
    let output = run_checked(
        &format!("the Agents SDK conversation ({mode})"),
        Command::new(python)
            .arg(repo_file("tests/python/test_agents_sdk.py"))
            .arg(mode)
            .env("TASKCHAT_MCP_URL", &stack.mcp)
            .env("TASKCHAT_LLM_URL", &stack.llm)
            .env("TASKCHAT_GATEWAY_URL", &stack.gateway)
            .env("TASKCHAT_USER", user)
            .env("TASKCHAT_TOKEN", stack.token(user))
            // The SDK must reach only the stack, never a real provider.
            .env_remove("OPENAI_API_KEY")
            .env("PYTHONUNBUFFERED", "1")
            .envs(env.iter().map(|(name, value)| (name, value))),
        Duration::from_secs(120),
    )
    .await;
    assert!(
        output.contains(&format!("[{mode}] agents sdk conversation passed")),
        "the conversation did not run to its end:\n{output}"
    );
    // The turns, for whoever reads the test's output.
    println!("{output}");
}

#[tokio::test]
async fn the_agents_sdk_manages_tasks_over_mcp_with_strict_schemas_and_without_and_reports_failures()
 {
    let stack = Stack::start().await.unwrap();
    // One user per mode: each conversation starts from an empty list.
    converse(&stack, "sdk-strict", "strict", &[]).await;
    converse(&stack, "sdk-loose", "loose", &[]).await;
    let task_service = stack.pids()["task-service"];
    converse(
        &stack,
        "sdk-failure",
        "failure",
        &[("TASKCHAT_TASK_SERVICE_PID", task_service.to_string())],
    )
    .await;
}
