//! Three worker replicas sharing one consumer answer 100 requests exactly once each.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{ReplyCounter, Stack, answered};
use proto_schemas::events::{ConversationEvent, TaskEvent};

const REQUESTS: usize = 100;
const USERS: usize = 20;
const ITEMS: [&str; 5] = ["apples", "bread", "cheese", "dates", "eggs"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_answer_a_hundred_requests_exactly_once() {
    let mut stack = Stack::start(0).await;
    for _ in 0..3 {
        let mut config = stack.worker_config();
        config.concurrency = 4;
        stack.spawn_worker(config).await;
    }
    let counter = ReplyCounter::start(&stack.bus).await;

    let mut requests = Vec::new();
    for i in 0..REQUESTS {
        let user = format!("user-{}", i % USERS);
        let item = ITEMS[i / USERS];
        requests.push((
            user.clone(),
            item,
            stack.new_chat(&user, &format!("add a task to buy {item}")),
        ));
    }
    let jetstream = stack.jetstream();
    for (_, _, request) in &requests {
        common::publish_request(&jetstream, &stack.bus.subjects, request).await;
    }

    testkit::eventually(Duration::from_secs(180), "a reply to every request", || {
        let seen = counter.counts().len();
        async move { (seen >= REQUESTS).then_some(()) }
    })
    .await;
    // Late duplicates would arrive within a redelivery: give them the chance.
    tokio::time::sleep(Duration::from_secs(6)).await;

    let counts = counter.counts();
    assert_eq!(counts.len(), REQUESTS);
    let duplicated: Vec<_> = counts.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        duplicated.is_empty(),
        "replied more than once: {duplicated:?}"
    );

    let mut titles: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (user, item, request) in &requests {
        let reply = stack.reply(request.request_id).await;
        let (_, calls) = answered(&reply);
        assert_eq!(calls.len(), 1, "{calls:?}");
        assert_eq!(calls[0].result["status"], "created");
        let title = calls[0].result["title"].as_str().unwrap().to_owned();
        assert!(title.to_lowercase().contains(item), "{title}");
        titles.entry(user.clone()).or_default().insert(title);

        // One turn recorded per request, each step once.
        let events = stack.conversation(request.conversation_id).await;
        assert_eq!(events.len(), 5, "{events:#?}");
        assert_eq!(
            events
                .iter()
                .filter(|e| matches!(e, ConversationEvent::ToolCallCompleted { .. }))
                .count(),
            1
        );
    }
    // Every task was created once: five different tasks per user, numbered 1 to 5.
    for (user, titles) in &titles {
        assert_eq!(titles.len(), ITEMS.len(), "{user}: {titles:?}");
        let added: Vec<u32> = stack
            .task_events(user)
            .await
            .iter()
            .filter_map(|event| match event {
                TaskEvent::TaskAdded { task_id, .. } => Some(task_id.0),
                _ => None,
            })
            .collect();
        assert_eq!(added.len(), ITEMS.len(), "{user} has {added:?}");
        let tasks = stack.tasks(user).await;
        let listed: BTreeSet<String> = tasks.iter().map(|task| task.title.clone()).collect();
        assert_eq!(&listed, titles, "{user}");
    }
    assert_eq!(stack.pending_requests().await, 0);
    stack.stop().await;
}
