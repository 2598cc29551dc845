//! Queries over NATS: request-reply on `queries.tasks`, `queries.conversations`,
//! `queries.messages` and `queries.health`, in the projection's queue group, so every
//! replica (the writer and the stand-bys) answers its share.
//!
//! Pages use keyset cursors (see [`crate::cursor`]): tasks by number, conversations
//! newest first by start time, messages in conversation order. A conversation that
//! does not exist and one that belongs to another user get the same `NotFound`, so a
//! caller cannot probe for other users' conversation ids.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use proto_schemas::Subjects;
use proto_schemas::queries::{
    ConversationSummary, ConversationsQuery, MessageView, MessagesQuery, Page, ProjectionHealth,
    QueryReply, TasksQuery,
};
use proto_schemas::tasks::{StatusFilter, TaskView};
use proto_schemas::{ConversationId, RequestId, TaskNumber};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::{PgPool, Row as _};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use uuid::Uuid;

use crate::cursor::{Cursor, PageError, check_page};
use crate::error::ProjectionError;
use crate::schema::{Sql, query};
use crate::store::decode_message;

/// How long a shutting-down replica keeps answering the queries NATS had already sent
/// it before it stops anyway.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What a caller is told when the database fails (the cause goes to the log).
const UNAVAILABLE: &str = "the read models are unavailable right now; try again";

/// Answers queries from the live read models.
#[derive(Debug, Clone)]
pub struct Reader {
    pool: PgPool,
    sql: Arc<Sql>,
}

impl Reader {
    pub fn new(pool: PgPool, sql: Arc<Sql>) -> Self {
        Self { pool, sql }
    }

    /// One page of a user's tasks, by number, filtered by status.
    pub async fn tasks(&self, request: &TasksQuery) -> QueryReply<TaskView> {
        let (limit, after) = match check_page(&request.page, |cursor| match cursor {
            Cursor::Tasks { after } => Some(after),
            _ => None,
        }) {
            Ok(page) => page,
            Err(error) => return invalid(&error),
        };
        let completed = match request.status {
            StatusFilter::All => None,
            StatusFilter::Pending => Some(false),
            StatusFilter::Completed => Some(true),
        };
        let rows = query(&self.sql.page_tasks)
            .bind(request.user_id.as_str())
            .bind(after.map_or(0, i64::from))
            .bind(completed)
            .bind(i64::from(limit) + 1)
            .fetch_all(&self.pool)
            .await;
        let tasks =
            rows.map_err(ProjectionError::from).and_then(|rows| {
                rows.iter()
                    .map(|row| {
                        let id: i64 = row.try_get("task_id")?;
                        Ok(TaskView {
                            id: TaskNumber(u32::try_from(id).map_err(|_| {
                                ProjectionError::Corrupt(format!("task number {id}"))
                            })?),
                            title: row.try_get("title")?,
                            description: row.try_get("description")?,
                            completed: row.try_get("completed")?,
                        })
                    })
                    .collect::<Result<Vec<_>, ProjectionError>>()
            });
        match tasks {
            Ok(tasks) => found(tasks, limit, |task| Cursor::Tasks { after: task.id.0 }),
            Err(error) => unavailable(&error),
        }
    }

    /// One page of a user's conversations, newest first.
    pub async fn conversations(
        &self,
        request: &ConversationsQuery,
    ) -> QueryReply<ConversationSummary> {
        let (limit, after) = match check_page(&request.page, |cursor| match cursor {
            Cursor::Conversations {
                created_at,
                conversation_id,
            } => Some((created_at, conversation_id)),
            _ => None,
        }) {
            Ok(page) => page,
            Err(error) => return invalid(&error),
        };
        let rows = query(&self.sql.page_conversations)
            .bind(request.user_id.as_str())
            .bind(after.map(|(created_at, _)| created_at))
            .bind(after.map(|(_, id)| id))
            .bind(i64::from(limit) + 1)
            .fetch_all(&self.pool)
            .await;
        let conversations = rows.map_err(ProjectionError::from).and_then(|rows| {
            rows.iter()
                .map(|row| {
                    let count: i32 = row.try_get("message_count")?;
                    Ok(ConversationSummary {
                        conversation_id: ConversationId(row.try_get("conversation_id")?),
                        title: row.try_get("title")?,
                        message_count: u32::try_from(count).unwrap_or(0),
                        created_at: row.try_get::<DateTime<Utc>, _>("created_at")?,
                        updated_at: row.try_get::<DateTime<Utc>, _>("updated_at")?,
                    })
                })
                .collect::<Result<Vec<_>, ProjectionError>>()
        });
        match conversations {
            Ok(conversations) => found(conversations, limit, |c| Cursor::Conversations {
                created_at: c.created_at,
                conversation_id: c.conversation_id.as_uuid(),
            }),
            Err(error) => unavailable(&error),
        }
    }

    /// One page of a conversation's messages, oldest first; `NotFound` unless the
    /// conversation is the user's.
    pub async fn messages(&self, request: &MessagesQuery) -> QueryReply<MessageView> {
        let (limit, after) = match check_page(&request.page, |cursor| match cursor {
            Cursor::Messages { after_seq } => Some(after_seq),
            _ => None,
        }) {
            Ok(page) => page,
            Err(error) => return invalid(&error),
        };
        let conversation_id: Uuid = request.conversation_id.as_uuid();
        let owner: Result<Option<String>, _> = sqlx::query_scalar(sqlx::AssertSqlSafe(Arc::clone(
            &self.sql.conversation_owner,
        )))
        .bind(conversation_id)
        .fetch_optional(&self.pool)
        .await;
        match owner {
            Ok(Some(owner)) if owner == request.user_id.as_str() => {}
            Ok(_) => return QueryReply::NotFound,
            Err(error) => return unavailable(&error.into()),
        }
        let rows = query(&self.sql.page_messages)
            .bind(conversation_id)
            .bind(after.unwrap_or(0))
            .bind(i64::from(limit) + 1)
            .fetch_all(&self.pool)
            .await;
        let messages = rows.map_err(ProjectionError::from).and_then(|rows| {
            rows.iter()
                .map(|row| {
                    let (key, message) = decode_message(row)?;
                    Ok((
                        key.seq,
                        MessageView {
                            role: message.role,
                            content: message.content,
                            tool_calls: message.tool_calls,
                            request_id: RequestId(message.request_id),
                            created_at: message.created_at,
                        },
                    ))
                })
                .collect::<Result<Vec<_>, ProjectionError>>()
        });
        match messages {
            Ok(messages) => {
                let page = paginate(messages, limit, |(seq, _)| Cursor::Messages {
                    after_seq: *seq,
                });
                QueryReply::Found {
                    page: Page {
                        items: page.items.into_iter().map(|(_, view)| view).collect(),
                        next_cursor: page.next_cursor,
                    },
                }
            }
            Err(error) => unavailable(&error),
        }
    }

    /// How many events the live read models have applied.
    pub async fn health(&self) -> Result<ProjectionHealth, ProjectionError> {
        let mut conn = self.pool.acquire().await?;
        let row = crate::store::read_checkpoint(&mut conn, &self.sql).await?;
        Ok(ProjectionHealth {
            events_applied: row.events_applied,
        })
    }
}

fn found<T>(items: Vec<T>, limit: u32, cursor: impl Fn(&T) -> Cursor) -> QueryReply<T> {
    QueryReply::Found {
        page: paginate(items, limit, cursor),
    }
}

/// A page of up to `limit` of `items`, which were fetched with one extra row: when that
/// row came back there is a next page, and it starts after this page's last item.
fn paginate<T>(mut items: Vec<T>, limit: u32, cursor: impl Fn(&T) -> Cursor) -> Page<T> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let next_cursor = if items.len() > limit {
        items.truncate(limit);
        items.last().map(|last| cursor(last).encode())
    } else {
        None
    };
    Page { items, next_cursor }
}

fn invalid<T>(error: &PageError) -> QueryReply<T> {
    QueryReply::Invalid {
        reason: error.to_string(),
    }
}

fn unavailable<T>(error: &ProjectionError) -> QueryReply<T> {
    tracing::warn!(%error, "read model query failed");
    QueryReply::Unavailable {
        reason: UNAVAILABLE.to_owned(),
    }
}

/// The query subscriptions of one replica, made before serving so that a query sent
/// once `App::build` returned reaches it.
pub async fn subscribe(
    client: &async_nats::Client,
    subjects: &Subjects,
) -> Result<Vec<async_nats::Subscriber>, async_nats::SubscribeError> {
    let mut subscribers = Vec::new();
    for subject in [
        subjects.query_tasks(),
        subjects.query_conversations(),
        subjects.query_messages(),
        subjects.query_health(),
    ] {
        subscribers.push(
            client
                .queue_subscribe(subject, subjects.projection_queue_group())
                .await?,
        );
    }
    Ok(subscribers)
}

/// Answers queries until `shutdown`, at most `concurrency` at once.
///
/// On shutdown the subscriptions are drained: NATS routes new queries to the other
/// replicas, the ones already delivered here are answered, then this returns.
pub async fn serve(
    reader: Reader,
    client: async_nats::Client,
    subjects: Subjects,
    subscribers: Vec<async_nats::Subscriber>,
    concurrency: usize,
    shutdown: CancellationToken,
) {
    platform::bus::serve(
        subscribers,
        concurrency,
        shutdown,
        DRAIN_TIMEOUT,
        "queries",
        move |message| {
            let reader = reader.clone();
            let client = client.clone();
            let subjects = subjects.clone();
            async move { answer(&reader, &client, &subjects, &message).await }
        },
    )
    .await;
}

async fn answer(
    reader: &Reader,
    client: &async_nats::Client,
    subjects: &Subjects,
    message: &async_nats::Message,
) {
    let span = tracing::info_span!("query", subject = %message.subject);
    platform::bus::follow_trace(&span, message.headers.as_ref());
    async {
        let subject = message.subject.as_str();
        if subject == subjects.query_tasks() {
            let reply = match parse::<TasksQuery, TaskView>(message) {
                Ok(request) => reader.tasks(&request).await,
                Err(reply) => reply,
            };
            send(client, message, &reply).await;
        } else if subject == subjects.query_conversations() {
            let reply = match parse::<ConversationsQuery, ConversationSummary>(message) {
                Ok(request) => reader.conversations(&request).await,
                Err(reply) => reply,
            };
            send(client, message, &reply).await;
        } else if subject == subjects.query_messages() {
            let reply = match parse::<MessagesQuery, MessageView>(message) {
                Ok(request) => reader.messages(&request).await,
                Err(reply) => reply,
            };
            send(client, message, &reply).await;
        } else if subject == subjects.query_health() {
            // Health has no error shape: a replica that cannot read its checkpoint stays
            // silent, and the caller's timeout reports the projection as not ready.
            match reader.health().await {
                Ok(health) => send(client, message, &health).await,
                Err(error) => tracing::warn!(%error, "health query failed, not answering"),
            }
        }
    }
    .instrument(span)
    .await
}

fn parse<Q: DeserializeOwned, T>(message: &async_nats::Message) -> Result<Q, QueryReply<T>> {
    platform::bus::decode_json(&message.payload).map_err(|error| {
        let cause = match &error {
            platform::BusError::Decode(cause) => cause.to_string(),
            other => other.to_string(),
        };
        tracing::debug!(%cause, "malformed query");
        QueryReply::Invalid {
            reason: format!("malformed query: {cause}"),
        }
    })
}

async fn send<T: Serialize>(client: &async_nats::Client, message: &async_nats::Message, reply: &T) {
    if let Err(error) = platform::bus::reply_json(client, message, reply).await {
        tracing::warn!(%error, "failed to reply to a query");
    }
}
