//! The web chat page in a real browser: Debian's headless Chromium, driven through
//! chromedriver, signs in to the gateway's page with dev login, chats, watches the task
//! panel follow, and reloads; without dev login it signs in with pasted tokens, one of
//! them an identity provider's. Every service runs as a real process (see the harness).
//!
//! Screenshots go to `target/system-tests/screenshots/` (also when a step fails), so a
//! person can look at what the page showed. Needs `/usr/bin/chromium` and
//! `/usr/bin/chromedriver` (or the paths in `CHROMIUM` / `CHROMEDRIVER`):
//! `deploy/local/browser-deps.sh` installs them.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use fantoccini::key::Key;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use platform::auth::{Claims, JwtKeys};
use proto_schemas::UserId;
use serde_json::{Value, json};
use system_tests::{Stack, StackOptions};
use testkit::{KeyKind, TestIdp, TestKey, free_port};
use tokio::process::{Child, Command};

/// How long a chat turn may take to show on the page (the model loop, over NATS).
const TURN: Duration = Duration::from_secs(45);
/// How long anything else may take to show.
const UI: Duration = Duration::from_secs(15);

/// The browser and its driver: Debian's packages unless `CHROMIUM` / `CHROMEDRIVER` name
/// others. Missing ones fail the test (never skip it): CI installs them.
struct Installed {
    chromium: PathBuf,
    chromedriver: PathBuf,
}

impl Installed {
    fn find() -> anyhow::Result<Self> {
        let path = |var: &str, default: &str| {
            PathBuf::from(std::env::var_os(var).unwrap_or_else(|| default.into()))
        };
        let installed = Self {
            chromium: path("CHROMIUM", "/usr/bin/chromium"),
            chromedriver: path("CHROMEDRIVER", "/usr/bin/chromedriver"),
        };
        for (path, package) in [
            (&installed.chromium, "chromium"),
            (&installed.chromedriver, "chromium-driver"),
        ] {
            if !path.exists() {
                bail!(
                    "{} is missing (Debian package {package}): run deploy/local/browser-deps.sh \
                     as root to install the browser this test drives (make test and .ci/run do)",
                    path.display()
                );
            }
        }
        Ok(installed)
    }
}

/// chromedriver and the browser session it runs; both end when this is dropped.
struct Browser {
    client: Client,
    _driver: Child,
    profile: PathBuf,
    screenshots: PathBuf,
}

impl Browser {
    async fn start(stack: &Stack, installed: &Installed) -> anyhow::Result<Self> {
        // A port picked free may be taken by a parallel test before chromedriver binds
        // it: then chromedriver exits and another port is tried.
        let mut attempt = 0;
        let driver = loop {
            attempt += 1;
            let port = free_port();
            let log = std::fs::File::create(stack.logs().join("chromedriver.log"))?;
            let driver = Command::new(&installed.chromedriver)
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .context("failed to start chromedriver")?;
            let webdriver = format!("http://127.0.0.1:{port}");
            match wait_for_driver(stack, &webdriver, port, driver.id()).await {
                Ok(()) => break (driver, webdriver),
                Err(error) if attempt >= 3 => return Err(error),
                Err(_) => continue,
            }
        };
        let (driver, webdriver) = driver;

        // A fresh profile per run: no cached page, no localStorage from an earlier run.
        // chromedriver cannot find the browser's DevTools port under a path with `..`.
        let logs = std::fs::canonicalize(stack.logs())?;
        let profile = logs.join("chromium-profile");
        std::fs::create_dir_all(&profile)?;
        let screenshots = logs
            .parent()
            .context("the logs directory has a parent")?
            .join("screenshots");
        std::fs::create_dir_all(&screenshots)?;

        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": installed.chromium,
                "args": [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--disable-dev-shm-usage",
                    "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!("an object literal")
        };
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&webdriver)
            .await
            .with_context(|| {
                format!(
                    "chromedriver did not start a Chromium session; see {}",
                    stack.logs().join("chromedriver.log").display()
                )
            })?;
        Ok(Self {
            client,
            _driver: driver,
            profile,
            screenshots,
        })
    }

    /// Saves a PNG of the window as `target/system-tests/screenshots/<name>.png`.
    async fn screenshot(&self, name: &str) -> anyhow::Result<PathBuf> {
        let png = self.client.screenshot().await?;
        anyhow::ensure!(png.starts_with(b"\x89PNG"), "the screenshot is not a PNG");
        let path = self.screenshots.join(format!("{name}.png"));
        std::fs::write(&path, png)?;
        Ok(path)
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page.
    async fn js(&self, script: &str, args: Vec<Value>) -> anyhow::Result<Value> {
        Ok(self.client.execute(script, args).await?)
    }

    /// [`Self::wait_until`] for a change on the page: the usual wait for the interface,
    /// and a `script` that takes no arguments.
    async fn wait_for_ui(&self, what: &str, script: &str) -> anyhow::Result<Value> {
        self.wait_until(what, UI, script, vec![]).await
    }

    /// Waits until `script` returns something truthy and returns it; on timeout, fails
    /// naming `what` and describing what the page shows instead.
    async fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        script: &str,
        args: Vec<Value>,
    ) -> anyhow::Result<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // A script error (say, an element the page has not rendered yet) means "not yet".
            let outcome = self.js(script, args.clone()).await;
            if let Ok(value) = &outcome {
                let truthy = match value {
                    Value::Null | Value::Bool(false) => false,
                    Value::String(text) => !text.is_empty(),
                    Value::Array(items) => !items.is_empty(),
                    _ => true,
                };
                if truthy {
                    return outcome;
                }
            }
            if tokio::time::Instant::now() >= deadline {
                let last = match outcome {
                    Ok(value) => format!("the check gave {value}"),
                    Err(error) => format!("the check failed: {error:#}"),
                };
                bail!(
                    "{what} did not show within {timeout:?} ({last}); {}",
                    self.describe().await
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits for an element matching `css` whose text contains `needle` (any case).
    async fn wait_for_text(
        &self,
        what: &str,
        timeout: Duration,
        css: &str,
        needle: &str,
    ) -> anyhow::Result<String> {
        let found = self
            .wait_until(
                &format!("{what} (`{css}` containing \"{needle}\")"),
                timeout,
                "const [css, needle] = arguments;
                 const hit = [...document.querySelectorAll(css)]
                   .find((el) => el.offsetParent !== null
                     && el.innerText.toLowerCase().includes(needle.toLowerCase()));
                 return hit ? hit.innerText : null;",
                vec![css.into(), needle.into()],
            )
            .await?;
        Ok(found.as_str().unwrap_or_default().to_owned())
    }

    /// The page's texts for a failure message: the error banner, the sign-in notice,
    /// the messages and the task panel.
    async fn describe(&self) -> String {
        let script = "const text = (id) => document.getElementById(id)?.innerText?.trim() || '';
            return {
              banner: document.getElementById('banner')?.hidden ? '' : text('banner-text'),
              signin_notice: text('signin-notice'),
              turn: document.body.dataset.turn,
              messages: [...document.querySelectorAll('#messages .msg')].map((m) => m.innerText),
              pending: text('tasks-pending'),
              done: text('tasks-done'),
            };";
        match self.js(script, vec![]).await {
            Ok(state) => format!("the page shows {state}"),
            Err(error) => format!("the page could not be read ({error})"),
        }
    }

    /// Pastes `token` into the token form and submits it.
    async fn sign_in_with_token(&self, token: &str) -> anyhow::Result<()> {
        let input = self.client.find(Locator::Css("#token-input")).await?;
        input.clear().await?;
        input.send_keys(token).await?;
        self.client
            .find(Locator::Css("#token-login button[type=submit]"))
            .await?
            .click()
            .await?;
        Ok(())
    }

    /// Opens the page and signs in as `user` with dev login (the stack runs with
    /// AUTH_DEV_LOGIN=true), as a fresh user with an empty task list.
    async fn sign_in_with_dev_login(&self, stack: &Stack, user: &str) -> anyhow::Result<()> {
        self.client.goto(&format!("{}/", stack.gateway)).await?;
        self.wait_for_ui(
            "the dev sign-in form",
            "const form = document.getElementById('dev-login');
             return form && !form.hidden && document.activeElement === document.getElementById('dev-user');",
        )
        .await?;
        let name = self.client.find(Locator::Css("#dev-user")).await?;
        name.send_keys(user).await?;
        self.client
            .find(Locator::Css("#dev-login button[type=submit]"))
            .await?
            .click()
            .await?;
        self.wait_signed_in_empty(user).await
    }

    /// Waits until the app is open as `user` with nothing on their task list yet (a
    /// fresh user's first view).
    async fn wait_signed_in_empty(&self, user: &str) -> anyhow::Result<()> {
        self.wait_for_text("the signed-in user", UI, "#account-user", user)
            .await?;
        self.wait_for_text(
            "the empty task panel",
            UI,
            "#tasks-pending",
            "Nothing pending",
        )
        .await?;
        Ok(())
    }

    /// Types `text` into the message box and presses Enter, as a person would.
    async fn send(&self, text: &str) -> anyhow::Result<()> {
        let input = self.client.find(Locator::Css("#composer-input")).await?;
        input.click().await?;
        input
            .send_keys(&format!("{text}{}", char::from(Key::Enter)))
            .await?;
        Ok(())
    }

    /// Waits until the page has finished a turn: it shows `count` assistant answers and
    /// no turn is running.
    async fn wait_for_answer(&self, count: usize) -> anyhow::Result<Value> {
        self.wait_until(
            &format!("assistant answer number {count}"),
            TURN,
            "const answers = document.querySelectorAll('#messages .msg-assistant, #messages .msg-error');
             if (document.body.dataset.turn !== 'idle' || answers.length < arguments[0]) return null;
             const last = answers[arguments[0] - 1];
             return {
               role: last.classList.contains('msg-error') ? 'error' : 'assistant',
               text: last.querySelector('.bubble').innerText,
               chips: [...last.querySelectorAll('.chip')].map((c) => c.innerText),
               deltas: Number(last.dataset.deltas || 0),
             };",
            vec![count.into()],
        )
        .await
    }

    async fn close(self) {
        // Best effort: chromedriver is killed on drop, taking the browser with it.
        let _ = self.client.close().await;
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

async fn wait_for_driver(
    stack: &Stack,
    webdriver: &str,
    port: u16,
    pid: Option<u32>,
) -> anyhow::Result<()> {
    let status = format!("{webdriver}/status");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        // Only our own chromedriver: a parallel test may have bound the port first.
        if pid.is_some()
            && system_tests::listening_pid(port) == pid
            && let Ok(response) = stack.http().get(&status).send().await
            && response.status().is_success()
        {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "chromedriver did not answer {status} within 20 s; see {}",
                stack.logs().join("chromedriver.log").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The steps a person takes; each failure names the step and what the page showed.
async fn chat_in_the_browser(stack: &Stack, browser: &Browser) -> anyhow::Result<()> {
    let user = "browser-user";
    browser.sign_in_with_dev_login(stack, user).await?;

    // First turn: the reply streams in, the chip names the new task, the panel shows it.
    browser.send("add a task to buy milk").await?;
    browser
        .wait_for_text(
            "my message",
            UI,
            "#messages .msg-user",
            "add a task to buy milk",
        )
        .await?;
    let answer = browser.wait_for_answer(1).await?;
    anyhow::ensure!(
        answer["role"] == "assistant",
        "the first turn failed on the page: {answer}"
    );
    let text = answer["text"].as_str().unwrap_or_default().to_lowercase();
    anyhow::ensure!(
        text.contains("milk"),
        "the reply does not mention the task: {answer}"
    );
    // The model writes the answer in several pieces; the page must show them as they come
    // (`data-deltas` counts the `delta` events it rendered), not just the final text.
    anyhow::ensure!(
        answer["deltas"].as_u64().unwrap_or(0) >= 2,
        "the reply was not streamed to the page in pieces: {answer}"
    );
    let chips = answer["chips"].to_string().to_lowercase();
    anyhow::ensure!(
        chips.contains("added #1") && chips.contains("milk"),
        "the tool call chip should say the task was added: {answer}"
    );
    browser
        .wait_for_text(
            "the new task in the pending list",
            UI,
            "#tasks-pending li[data-task-id='1']",
            "milk",
        )
        .await?;
    browser.screenshot("browser-1-added").await?;

    // Second turn in the same conversation: the task moves to the done list.
    browser.send("mark 1 done").await?;
    let answer = browser.wait_for_answer(2).await?;
    anyhow::ensure!(
        answer["role"] == "assistant",
        "the second turn failed on the page: {answer}"
    );
    let chips = answer["chips"].to_string().to_lowercase();
    anyhow::ensure!(
        chips.contains("completed #1"),
        "the tool call chip should say task 1 was completed: {answer}"
    );
    browser
        .wait_for_text(
            "task 1 in the done list",
            UI,
            "#tasks-done li[data-task-id='1']",
            "milk",
        )
        .await?;
    browser
        .wait_for_ui(
            "task 1 gone from the pending list",
            "return !document.querySelector('#tasks-pending li[data-task-id=\"1\"]');",
        )
        .await?;
    browser
        .wait_for_text(
            "the conversation in the list",
            UI,
            ".conversation[aria-current='true']",
            "milk",
        )
        .await?;
    // The list follows the read model; once it counts both turns, a reload finds them.
    browser
        .wait_for_text(
            "both turns counted in the list",
            UI,
            ".conversation[aria-current='true']",
            "4 messages",
        )
        .await?;
    browser.screenshot("browser-2-done").await?;

    // Reload: the session and the last conversation come back from the server.
    browser.client.refresh().await?;
    browser
        .wait_for_text("the user after reload", UI, "#account-user", user)
        .await?;
    let messages = browser
        .wait_for_ui(
            "the conversation's four messages after reload",
            "const messages = [...document.querySelectorAll('#messages .msg')];
             return messages.length >= 4 ? messages.map((m) => m.className + ': ' + m.innerText) : null;",
        )
        .await?;
    let shown = messages.to_string().to_lowercase();
    for expected in [
        "add a task to buy milk",
        "mark 1 done",
        "added #1",
        "completed #1",
    ] {
        anyhow::ensure!(
            shown.contains(expected),
            "after reload {expected:?} is missing: {messages}"
        );
    }
    browser
        .wait_for_text(
            "task 1 done after reload",
            UI,
            "#tasks-done li[data-task-id='1']",
            "milk",
        )
        .await?;
    browser.screenshot("browser-3-reloaded").await?;

    // A phone-sized window: one column, the task panel below the chat.
    browser.client.set_window_size(390, 844).await?;
    browser
        .wait_for_ui(
            "the one-column layout",
            "const chat = document.querySelector('.chat').getBoundingClientRect();
             const tasks = document.querySelector('.tasks').getBoundingClientRect();
             return window.innerWidth < 500 && tasks.top >= chat.bottom - 1
               && document.documentElement.scrollWidth <= window.innerWidth
               ? { width: window.innerWidth, chat_bottom: chat.bottom, tasks_top: tasks.top } : null;",
        )
        .await?;
    browser.screenshot("browser-4-phone").await?;
    browser
        .js("document.querySelector('.tasks').scrollIntoView();", vec![])
        .await?;
    browser.screenshot("browser-5-phone-tasks").await?;
    Ok(())
}

/// Without dev login the page offers only the token form; a token the server refuses or
/// one that has run out sends the person back to sign-in with a message saying so.
async fn sign_in_with_tokens(stack: &Stack, browser: &Browser) -> anyhow::Result<()> {
    browser.client.goto(&format!("{}/", stack.gateway)).await?;
    browser
        .wait_for_ui(
            "the token form, focused, with dev sign-in hidden (the server answers 404 for it)",
            "return document.getElementById('dev-login').hidden
               && document.activeElement === document.getElementById('token-input');",
        )
        .await?;

    // Signed with another secret: the page accepts its shape, the server refuses it.
    let forged = JwtKeys::new(b"not-the-stack-secret")
        .mint(&UserId::parse("mallory")?, Duration::from_secs(3600));
    browser.sign_in_with_token(&forged).await?;
    browser
        .wait_for_text(
            "the refusal",
            UI,
            "#signin-notice",
            "did not accept your sign-in token",
        )
        .await?;
    browser
        .wait_for_ui(
            "the sign-in form again",
            "return document.getElementById('app-view').hidden
               && !document.getElementById('signin-view').hidden;",
        )
        .await?;
    browser.screenshot("browser-6-token-refused").await?;

    // Expired an hour ago: refused on the page before anything is sent.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let now = i64::try_from(now)?;
    let expired = stack.keys.sign(&Claims {
        sub: "token-user".to_owned(),
        exp: now - 3600,
        iat: Some(now - 7200),
        nbf: None,
    });
    browser.sign_in_with_token(&expired).await?;
    browser
        .wait_for_text("the expiry", UI, "#signin-notice", "expired")
        .await?;

    // A good token opens the app as its user.
    browser
        .sign_in_with_token(&stack.token("token-user"))
        .await?;
    browser.wait_signed_in_empty("token-user").await?;
    Ok(())
}

/// With an identity provider that names its user in `email`, a person pastes the
/// provider's RS256 access token and the page opens as that user (the server, not the
/// page, reads the token's user).
async fn sign_in_with_a_provider_token(
    browser: &Browser,
    gateway: &str,
    token: &str,
) -> anyhow::Result<()> {
    browser.client.goto(&format!("{gateway}/")).await?;
    browser
        .wait_for_ui(
            "the token form",
            "return document.activeElement === document.getElementById('token-input');",
        )
        .await?;
    browser.sign_in_with_token(token).await?;
    browser.wait_signed_in_empty("grace@example.com").await?;
    browser.screenshot("browser-7-identity-provider").await?;
    Ok(())
}

/// Clicks the first visible element matching `css`.
async fn click(browser: &Browser, what: &str, css: &str) -> anyhow::Result<()> {
    browser
        .wait_until(
            what,
            UI,
            "const el = [...document.querySelectorAll(arguments[0])].find((e) => e.offsetParent !== null && !e.disabled);
             if (!el) return null;
             el.click();
             return true;",
            vec![css.into()],
        )
        .await?;
    Ok(())
}

/// Turns a person steers: Regenerate, an approval, Stop, and a reload in the middle
/// of a turn, which the page follows to its end.
async fn steer_turns_in_the_browser(stack: &Stack, browser: &Browser) -> anyhow::Result<()> {
    let user = "steering-user";
    browser.sign_in_with_dev_login(stack, user).await?;

    // A first answer, then Regenerate: the page shows one answer, the fresh one.
    browser.send("add a task to buy milk").await?;
    let first = browser.wait_for_answer(1).await?;
    anyhow::ensure!(
        first["role"] == "assistant",
        "the first turn failed: {first}"
    );
    click(browser, "the Regenerate button", "#messages .regenerate").await?;
    browser
        .wait_until(
            "the regenerated answer",
            TURN,
            "const answers = document.querySelectorAll('#messages .msg-assistant, #messages .msg-error');
             return document.body.dataset.turn === 'idle' && answers.length === 1
               && answers[0].getAttribute('aria-busy') === null
               && answers[0].querySelector('.chip') !== null;",
            vec![],
        )
        .await?;
    // The superseded answer's tool call is not undone: the message ran twice.
    browser
        .wait_for_text(
            "the regenerated turn's task",
            UI,
            "#tasks-pending li[data-task-id='2']",
            "milk",
        )
        .await?;
    browser.screenshot("steering-1-regenerated").await?;

    // A destructive call waits for approval; Approve runs it.
    browser.send("delete task 1").await?;
    browser
        .wait_for_text(
            "the approval request",
            TURN,
            "#messages .approval",
            "delete_task",
        )
        .await?;
    browser.screenshot("steering-2-approval").await?;
    browser
        .wait_for_text(
            "task 1 still there while waiting",
            UI,
            "#tasks-pending li[data-task-id='1']",
            "milk",
        )
        .await?;
    click(
        browser,
        "the Approve button",
        "#messages .approval .approve",
    )
    .await?;
    let approved = browser.wait_for_answer(2).await?;
    anyhow::ensure!(
        approved["role"] == "assistant"
            && approved["chips"]
                .to_string()
                .to_lowercase()
                .contains("deleted"),
        "the approved call did not run: {approved}"
    );
    browser
        .wait_for_ui(
            "task 1 gone from the list",
            "return document.querySelector(\"#tasks-pending li[data-task-id='1']\") === null;",
        )
        .await?;

    // Stop during a slow model call: the turn ends as stopped, the message stays in the
    // composer, and no task is added.
    browser.send("add a task to walk the dog").await?;
    browser
        .wait_until(
            "the Stop button",
            UI,
            "const stop = document.getElementById('stop'); return !stop.hidden && document.body.dataset.turn === 'running' && (JSON.parse(localStorage.getItem(`taskchat.turn.${arguments[0]}`) || 'null')?.requestId || null);",
            vec![user.into()],
        )
        .await?;
    click(browser, "the Stop button", "#stop").await?;
    let stopped = browser.wait_for_answer(3).await?;
    anyhow::ensure!(
        stopped["role"] == "error"
            && stopped["text"]
                .as_str()
                .unwrap_or_default()
                .to_lowercase()
                .contains("stopped"),
        "the turn was not shown as stopped: {stopped}"
    );
    browser
        .wait_for_ui(
            "the stopped message back in the composer",
            "return document.getElementById('composer-input').value === 'add a task to walk the dog';",
        )
        .await?;
    browser.screenshot("steering-3-stopped").await?;

    // Over the length limit, Send is off (the page counts characters as the server does).
    let over = browser
        .js(
            "const input = document.getElementById('composer-input');
             input.value = 'é'.repeat(4001);
             input.dispatchEvent(new Event('input'));
             const off = document.getElementById('send').disabled;
             input.value = 'é'.repeat(4000);
             input.dispatchEvent(new Event('input'));
             return [off, document.getElementById('send').disabled];",
            vec![],
        )
        .await?;
    anyhow::ensure!(
        over == json!([true, false]),
        "Send should be off over 4,000 characters and on at 4,000: {over}"
    );

    // A reload while a turn runs: the page follows the same turn to its answer.
    browser
        .js(
            "const input = document.getElementById('composer-input');
             input.value = '';
             input.dispatchEvent(new Event('input'));",
            vec![],
        )
        .await?;
    browser.send("add a task to call mum").await?;
    browser
        .wait_until(
            "the running turn remembered",
            UI,
            "return JSON.parse(localStorage.getItem(`taskchat.turn.${arguments[0]}`) || 'null')?.requestId || null;",
            vec![user.into()],
        )
        .await?;
    browser.client.refresh().await?;
    browser
        .wait_for_text(
            "the reloaded turn's answer",
            TURN,
            "#messages .msg-assistant .chip",
            "call mum",
        )
        .await?;
    browser
        .wait_for_text("the reloaded turn's task", UI, "#tasks-pending", "call mum")
        .await?;
    browser.screenshot("steering-4-reloaded").await?;

    // Rename and delete the conversation from the list.
    click(browser, "the Rename button", "#conversation-list .rename").await?;
    let input = browser.client.find(Locator::Css(".rename-input")).await?;
    input.clear().await?;
    input
        .send_keys(&format!("Errands{}", char::from(Key::Enter)))
        .await?;
    browser
        .wait_for_text(
            "the renamed conversation",
            UI,
            "#conversation-list .conversation-title",
            "Errands",
        )
        .await?;
    click(browser, "the Delete button", "#conversation-list .delete").await?;
    click(
        browser,
        "the Delete confirmation",
        "#conversation-list .delete.danger",
    )
    .await?;
    browser
        .wait_for_ui(
            "the conversation gone from the list",
            "return document.querySelectorAll('#conversation-list .conversation').length === 0;",
        )
        .await?;
    Ok(())
}

/// Runs `steps` in a fresh browser against `stack`; on failure saves a screenshot and
/// panics with what went wrong, what the page showed and where the logs are.
async fn in_browser<F>(stack: &Stack, name: &str, steps: F)
where
    F: AsyncFnOnce(&Stack, &Browser) -> anyhow::Result<()>,
{
    let installed = match Installed::find() {
        Ok(installed) => installed,
        Err(error) => panic!("{error:#}"),
    };
    let browser = match Browser::start(stack, &installed).await {
        Ok(browser) => browser,
        Err(error) => panic!("{error:#}"),
    };
    // A failure picture left by an earlier run would be mistaken for this run's.
    let _ = std::fs::remove_file(browser.screenshots.join(format!("{name}-failure.png")));
    let outcome = steps(stack, &browser).await;
    if let Err(error) = outcome {
        let shot = match browser.screenshot(&format!("{name}-failure")).await {
            Ok(path) => format!("screenshot: {}", path.display()),
            Err(shot_error) => format!("no screenshot ({shot_error})"),
        };
        browser.close().await;
        panic!(
            "{error:#}\n{shot}\nservice logs: {}",
            stack.logs().display()
        );
    }
    browser.close().await;
}

/// Starts a stack with `options` for a browser test, after checking the browser is
/// installed: without one the test fails before the stack is started.
async fn browser_stack(options: StackOptions) -> Stack {
    Installed::find()
        .map_err(|error| format!("{error:#}"))
        .unwrap();
    Stack::start_with(options).await.expect("the stack starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_chats_in_the_browser_and_sees_the_task_list_follow() {
    let stack = browser_stack(StackOptions::default()).await;
    in_browser(&stack, "browser", chat_in_the_browser).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_stops_regenerates_approves_and_reloads_in_the_browser() {
    // Slow enough to press Stop and reload mid-turn.
    let stack = browser_stack(StackOptions {
        llm_latency_ms: 1_500,
        env: vec![("AGENT_CONFIRM_TOOLS", "delete_task".to_owned())],
        ..StackOptions::default()
    })
    .await;
    in_browser(&stack, "steering", steer_turns_in_the_browser).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_dev_login_a_person_signs_in_with_a_token_and_bad_tokens_are_explained() {
    let stack = browser_stack(StackOptions {
        dev_login: false,
        ..StackOptions::default()
    })
    .await;
    in_browser(&stack, "browser-tokens", sign_in_with_tokens).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_provider_token_signs_in_on_the_page() {
    let idp = TestIdp::start().await.expect("the provider serves");
    let key = TestKey::generate(KeyKind::Rsa, "rsa-1");
    idp.publish(&key);
    let stack = browser_stack(StackOptions {
        dev_login: false,
        env: vec![
            ("AUTH_JWKS_URL", idp.jwks_url().to_owned()),
            ("AUTH_ISSUER", "https://idp.test.example/".to_owned()),
            ("AUTH_USER_CLAIM", "email".to_owned()),
        ],
        ..StackOptions::default()
    })
    .await;
    let token = key.sign(&json!({
        "sub": "auth0|5f7c8ec7",
        "email": "grace@example.com",
        "iss": "https://idp.test.example/",
        "exp": chrono::Utc::now().timestamp() + 3600,
    }));
    in_browser(
        &stack,
        "browser-idp",
        async |stack: &Stack, browser: &Browser| {
            sign_in_with_a_provider_token(browser, &stack.gateway, &token).await
        },
    )
    .await;
}
