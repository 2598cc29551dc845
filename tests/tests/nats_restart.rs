//! NATS killed and restarted under load: clients that send an Idempotency-Key and
//! honour Retry-After lose nothing and duplicate nothing; what is sent once the bus
//! is back is answered, and what the gateway cannot take during the outage is a 503
//! with Retry-After (with a restart of a few seconds, nothing: requests wait for the bus).

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use system_tests::{Stack, StackOptions};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Clients sending turns one after another, each as its own user.
const CLIENTS: usize = 4;
/// How long NATS stays down: a restart's worth. Shorter than the gateway waits for
/// the bus at each step (about 11 s), so requests sent meanwhile wait and are
/// answered; a longer outage turns them into 503 with Retry-After.
const OUTAGE: Duration = Duration::from_secs(4);

/// One chat request and what the gateway first answered.
#[derive(Debug, Clone)]
struct Sent {
    user: String,
    key: String,
    title: String,
    at: Instant,
    status: StatusCode,
    retry_after: bool,
}

/// A client of one user: the gateway's URL, an HTTP client and the user's token.
#[derive(Clone)]
struct Client {
    http: reqwest::Client,
    gateway: String,
    user: String,
    token: String,
}

impl Client {
    async fn send(&self, key: &str, title: &str) -> (StatusCode, bool) {
        let response = self
            .http
            .post(format!("{}/api/{}/chat", self.gateway, self.user))
            .bearer_auth(&self.token)
            .header("idempotency-key", key)
            .json(&json!({"message": format!("add a task to buy {title}")}))
            .send()
            .await
            .expect("the gateway answers every request");
        let retry_after = response.headers().contains_key("retry-after");
        (response.status(), retry_after)
    }

    /// Sends turns until `stop`, recording each first answer.
    async fn load(self, stop: CancellationToken) -> Vec<Sent> {
        let mut sent = Vec::new();
        for turn in 0.. {
            if stop.is_cancelled() {
                break;
            }
            let key = uuid::Uuid::now_v7().to_string();
            let title = format!("{}-item-{turn}", self.user);
            let at = Instant::now();
            let (status, retry_after) = self.send(&key, &title).await;
            sent.push(Sent {
                user: self.user.clone(),
                key,
                title,
                at,
                status,
                retry_after,
            });
            // A user's pace, and Retry-After's spirit without its full wait.
            let pause = if status == StatusCode::SERVICE_UNAVAILABLE {
                500
            } else {
                100
            };
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        sent
    }
}

#[tokio::test]
async fn a_nats_restart_under_load_loses_and_duplicates_nothing() {
    let mut stack = Stack::start_with(StackOptions {
        own_nats: true,
        env: vec![("GATEWAY_TURNS_PER_MINUTE", "0".to_owned())],
        ..Default::default()
    })
    .await
    .unwrap();
    let clients: Vec<Client> = (0..CLIENTS)
        .map(|index| {
            let user = format!("restart{index}");
            Client {
                http: stack.http().clone(),
                gateway: stack.gateway.clone(),
                token: stack.token(&user),
                user,
            }
        })
        .collect();

    let stop = CancellationToken::new();
    let load: Vec<_> = clients
        .iter()
        .cloned()
        .map(|client| tokio::spawn(client.load(stop.clone())))
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;

    let down_at = Instant::now();
    stack.nats_server().kill().await.unwrap();
    tokio::time::sleep(OUTAGE).await;
    stack.nats_server().restart().await.unwrap();
    let back_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(8)).await;
    stop.cancel();
    let mut sent = Vec::new();
    for client in load {
        sent.extend(client.await.unwrap());
    }

    let count = |filter: &dyn Fn(&Sent) -> bool| sent.iter().filter(|s| filter(s)).count();
    eprintln!(
        "sent {} turns: {} before the outage, {} during it, {} after; first answers: {:?}",
        sent.len(),
        count(&|s| s.at < down_at),
        count(&|s| s.at >= down_at && s.at < back_at),
        count(&|s| s.at >= back_at),
        sent.iter().fold(BTreeMap::new(), |mut statuses, s| {
            *statuses.entry(s.status.as_u16()).or_insert(0) += 1;
            statuses
        })
    );

    // Sent after NATS came back: every one answered.
    let after: Vec<_> = sent.iter().filter(|s| s.at >= back_at).collect();
    assert!(!after.is_empty(), "the load went on after the restart");
    for s in &after {
        assert_eq!(s.status, StatusCode::OK, "sent after the restart: {s:?}");
    }
    // Refused during the outage: only ever 503 with Retry-After, never another error.
    for s in sent.iter().filter(|s| s.status != StatusCode::OK) {
        assert_eq!(s.status, StatusCode::SERVICE_UNAVAILABLE, "{s:?}");
        assert!(s.retry_after, "a 503 says when to retry: {s:?}");
    }

    // A client retries each refused request with its key: each is then answered, and
    // nothing it sent was lost or applied twice.
    for s in sent.iter().filter(|s| s.status != StatusCode::OK) {
        let client = clients.iter().find(|c| c.user == s.user).unwrap();
        let (status, _) = client.send(&s.key, &s.title).await;
        assert_eq!(status, StatusCode::OK, "retried with its key: {s:?}");
    }
    for client in &clients {
        let mine: Vec<&str> = sent
            .iter()
            .filter(|s| s.user == client.user)
            .map(|s| s.title.as_str())
            .collect();
        let tasks = testkit::eventually(
            Duration::from_secs(20),
            "every turn's task in the read model",
            || async {
                let tasks = stack
                    .get_ok(
                        &client.user,
                        &format!("/api/{}/tasks?limit=200", client.user),
                    )
                    .await;
                let items = tasks["items"].as_array()?.clone();
                (items.len() >= mine.len()).then_some(items)
            },
        )
        .await;
        let titles: Vec<String> = tasks
            .iter()
            .map(|task| task["title"].as_str().unwrap().to_lowercase())
            .collect();
        assert_eq!(
            titles.len(),
            mine.len(),
            "{}'s tasks: {titles:?}",
            client.user
        );
        for title in &mine {
            let copies = titles.iter().filter(|t| t.ends_with(title)).count();
            assert_eq!(copies, 1, "{title} in {}'s tasks: {titles:?}", client.user);
        }
    }

    stack.run_to_end("projection", &["verify"]).await;
}
