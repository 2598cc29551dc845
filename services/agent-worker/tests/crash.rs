//! Crash safety (invariant 3) with the real binary: a worker SIGKILLed right after a
//! tool call was recorded leaves a turn that another worker finishes without running
//! the tool again; one killed on the last allowed delivery still gets the user an
//! answer, from the max-deliveries advisory.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Stack, answered, failed};
use proto_schemas::chat::{ChatErrorCode, ChatRequest};
use proto_schemas::events::{ConversationEvent, TaskEvent};

/// The agent-worker binary on this stack; its log goes to a file named in failures.
struct WorkerProcess {
    child: Child,
    log: PathBuf,
}

impl WorkerProcess {
    fn spawn(stack: &Stack, llm_base: &str, extra: &[&str]) -> Self {
        let log = std::env::temp_dir().join(format!("agent-worker-{}.log", stack.bus.prefix));
        let file = std::fs::File::create(&log).expect("log file");
        let mut args = vec![
            "--nats-url".to_owned(),
            stack.bus.nats_url.clone(),
            "--subject-prefix".to_owned(),
            stack.bus.prefix.clone(),
            "--database-url".to_owned(),
            stack.db.url.clone(),
            "--database-max-connections".to_owned(),
            "3".to_owned(),
            "--llm-base-url".to_owned(),
            llm_base.to_owned(),
            "--llm-model".to_owned(),
            "offline-llm".to_owned(),
        ];
        args.extend(extra.iter().map(|arg| (*arg).to_owned()));
        let child = Command::new(env!("CARGO_BIN_EXE_agent-worker"))
            .args(args)
            // Whatever provider the developer's shell selects must not leak in.
            .env_remove("OPENAI_API_KEY")
            .env_remove("GEMINI_API_KEY")
            .env_remove("AGENT_MODEL")
            .env("RUST_LOG", "info")
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .spawn()
            .expect("agent-worker starts");
        Self { child, log }
    }

    /// SIGKILL: no shutdown, no last words.
    fn kill(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn wait_for(
    stack: &Stack,
    request: &ChatRequest,
    what: &str,
    log: &Path,
    found: impl Fn(&ConversationEvent) -> bool,
) {
    testkit::eventually(
        Duration::from_secs(90),
        &format!("{what} (worker log: {})", log.display()),
        || {
            let events = stack.conversation(request.conversation_id);
            let found = &found;
            async move { events.await.iter().any(found).then_some(()) }
        },
    )
    .await;
}

/// Waits until alice's add_task call has run: the task is in her list. Its result is
/// recorded with the next model step's outcome, so a worker killed now (during that
/// slow model step) leaves a requested call whose command already applied.
async fn tool_call_ran(stack: &Stack, log: &Path) {
    testkit::eventually(
        Duration::from_secs(90),
        &format!("the tool call to run (worker log: {})", log.display()),
        || async { (!stack.task_events("alice").await.is_empty()).then_some(()) },
    )
    .await;
}

fn count(events: &[ConversationEvent], matches: impl Fn(&ConversationEvent) -> bool) -> usize {
    events.iter().filter(|event| matches(event)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_after_a_tool_call_is_replaced_and_the_task_exists_once() {
    let mut stack = Stack::start(0).await;
    // Slow model steps leave a wide window between the recorded tool call and the reply.
    let (slow_llm, slow) = common::offline_llm(1500).await;
    stack.services.push(slow);
    let mut process = WorkerProcess::spawn(&stack, &slow_llm, &["--ack-wait-secs", "2"]);

    let request = stack.new_chat("alice", "add a task to buy milk");
    stack.publish(&request).await;
    tool_call_ran(&stack, &process.log).await;
    process.kill();
    let events = stack.conversation(request.conversation_id).await;
    assert_eq!(
        count(&events, |e| matches!(
            e,
            ConversationEvent::AssistantReplied { .. }
        )),
        0,
        "killed too late, the turn had ended: {events:#?}"
    );

    // Another worker picks the request up once its ack wait has passed.
    let mut config = stack.worker_config();
    config.provider.llm_base_url = Some(slow_llm.clone());
    stack.spawn_worker(config).await;
    let reply = stack.reply(request.request_id).await;
    let (response, calls) = answered(&reply);
    assert_eq!(calls.len(), 1);
    assert_eq!(
        calls[0].result,
        serde_json::json!({"task_id": 1, "status": "created", "title": "Buy milk"})
    );
    assert!(response.contains("Buy milk"), "{response}");

    let tasks = stack.tasks("alice").await;
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    let added = stack.task_events("alice").await;
    assert_eq!(count_tasks(&added), 1);
    let events = stack.conversation(request.conversation_id).await;
    assert_eq!(
        count(&events, |e| matches!(
            e,
            ConversationEvent::ToolCallRequested { .. }
        )),
        1
    );
    assert_eq!(
        count(&events, |e| matches!(
            e,
            ConversationEvent::ToolCallCompleted { .. }
        )),
        1
    );
    assert_eq!(
        count(&events, |e| matches!(
            e,
            ConversationEvent::AssistantReplied { .. }
        )),
        1
    );
    assert_eq!(stack.pending_requests().await, 0);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_on_the_last_delivery_still_gets_the_user_an_answer() {
    let mut stack = Stack::start(0).await;
    let (slow_llm, slow) = common::offline_llm(1500).await;
    stack.services.push(slow);
    let mut process = WorkerProcess::spawn(
        &stack,
        &slow_llm,
        &["--ack-wait-secs", "2", "--max-deliver", "1"],
    );

    let request = stack.new_chat("alice", "add a task to buy milk");
    stack.publish(&request).await;
    wait_for(
        &stack,
        &request,
        "the recorded user message",
        &process.log,
        |event| matches!(event, ConversationEvent::UserMessageReceived { .. }),
    )
    .await;
    // The request is the process's now; this worker only takes over what is left. It
    // has the same consumer settings (the replica started last sets them).
    let mut config = stack.worker_config();
    config.ack_wait_secs = 2;
    config.max_deliver = 1;
    stack.spawn_worker(config).await;
    tool_call_ran(&stack, &process.log).await;
    process.kill();

    let reply = stack.reply(request.request_id).await;
    assert_eq!(failed(&reply).code, ChatErrorCode::DeliveryExhausted);
    let events = stack.conversation(request.conversation_id).await;
    assert!(
        matches!(
            events.last(),
            Some(ConversationEvent::TurnFailed {
                code: ChatErrorCode::DeliveryExhausted,
                ..
            })
        ),
        "{events:#?}"
    );
    // The tool ran once, before the crash; the message is gone from the work queue.
    assert_eq!(count_tasks(&stack.task_events("alice").await), 1);
    testkit::eventually(Duration::from_secs(10), "an empty work queue", || async {
        (stack.pending_requests().await == 0).then_some(())
    })
    .await;
    stack.stop().await;
}

fn count_tasks(events: &[TaskEvent]) -> usize {
    events
        .iter()
        .filter(|event| matches!(event, TaskEvent::TaskAdded { .. }))
        .count()
}
