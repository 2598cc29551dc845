//! The task-list aggregate: one user's tasks as a fold of their events, the rules that
//! turn a tool call into new events, and the reference-shaped answer to each call.
//!
//! Everything here is pure (no I/O, no clock), so the rules are tested as
//! given (past events) / when (a call) / then (new events or a refusal).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use proto_schemas::TaskNumber;
use proto_schemas::events::TaskEvent;
use proto_schemas::tasks::{
    AddTaskArgs, ChangeStatus, StatusFilter, TaskChange, TaskListing, TaskRefArgs, TaskView,
    ToolCall, ToolError, ToolOutput, UpdateTaskArgs,
};

/// The longest title, in characters, after trimming.
pub(crate) const TITLE_MAX_CHARS: usize = 200;
/// The longest description, in characters, after trimming.
pub(crate) const DESCRIPTION_MAX_CHARS: usize = 2_000;

/// The error text of the reference app for an unknown task number.
pub(crate) const TASK_NOT_FOUND: &str = "Task not found";

/// A task title: trimmed, 1 to [`TITLE_MAX_CHARS`] characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TaskTitle(String);

impl TaskTitle {
    pub(crate) fn parse(raw: &str) -> Result<Self, TaskError> {
        let title = raw.trim();
        if title.is_empty() {
            return Err(TaskError::EmptyTitle);
        }
        if title.contains('\0') {
            return Err(TaskError::NulCharacter);
        }
        if title.chars().count() > TITLE_MAX_CHARS {
            return Err(TaskError::TitleTooLong);
        }
        Ok(Self(title.to_owned()))
    }

    pub(crate) fn into_inner(self) -> String {
        self.0
    }
}

/// A task description: trimmed, at most [`DESCRIPTION_MAX_CHARS`] characters (may be empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TaskDescription(String);

impl TaskDescription {
    pub(crate) fn parse(raw: &str) -> Result<Self, TaskError> {
        let description = raw.trim();
        if description.chars().count() > DESCRIPTION_MAX_CHARS {
            return Err(TaskError::DescriptionTooLong);
        }
        if description.contains('\0') {
            return Err(TaskError::NulCharacter);
        }
        Ok(Self(description.to_owned()))
    }

    pub(crate) fn into_inner(self) -> String {
        self.0
    }
}

/// Why the task list refused a call. Refusals change nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskError {
    #[error("{TASK_NOT_FOUND}")]
    NotFound(TaskNumber),
    #[error("Title must not be empty")]
    EmptyTitle,
    #[error("Title must be at most {TITLE_MAX_CHARS} characters")]
    TitleTooLong,
    #[error("Description must be at most {DESCRIPTION_MAX_CHARS} characters")]
    DescriptionTooLong,
    /// Postgres cannot store U+0000: refused, not failed on every attempt to store it.
    #[error("Title and description must not contain NUL (\\u0000) characters")]
    NulCharacter,
    #[error("Nothing to update: give a new title or a new description")]
    NothingToUpdate(TaskNumber),
    #[error("Task list is full: no task numbers are left")]
    NumbersExhausted,
}

impl TaskError {
    /// The refusal in the reference app's `{"error", "task_id"}` shape.
    pub fn to_tool_error(&self) -> ToolError {
        let task_id = match self {
            Self::NotFound(task_id) | Self::NothingToUpdate(task_id) => Some(*task_id),
            _ => None,
        };
        ToolError {
            error: self.to_string(),
            task_id,
        }
    }
}

impl From<TaskError> for ToolOutput {
    fn from(error: TaskError) -> Self {
        ToolOutput::Refused(error.to_tool_error())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Task {
    title: String,
    description: String,
    completed: bool,
}

/// One user's task list, as folded from their stream. Also its snapshot (serde).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TaskList {
    tasks: BTreeMap<TaskNumber, Task>,
    /// The highest number ever given out. Deleting a task does not lower it, so a
    /// number someone saw ("complete 3") never comes to mean a different task.
    last_number: u32,
}

impl TaskList {
    /// The list after `events`, oldest first.
    pub(crate) fn from_events<'a>(events: impl IntoIterator<Item = &'a TaskEvent>) -> Self {
        let mut list = Self::default();
        for event in events {
            list.apply(event);
        }
        list
    }

    /// Folds one event in. Events are facts: one that names an unknown task (which
    /// `decide` never produces) is ignored rather than failing the whole fold.
    pub(crate) fn apply(&mut self, event: &TaskEvent) {
        match event {
            TaskEvent::TaskAdded {
                task_id,
                title,
                description,
            } => {
                self.last_number = self.last_number.max(task_id.0);
                self.tasks.insert(
                    *task_id,
                    Task {
                        title: title.clone(),
                        description: description.clone(),
                        completed: false,
                    },
                );
            }
            TaskEvent::TaskCompleted { task_id } => {
                if let Some(task) = self.tasks.get_mut(task_id) {
                    task.completed = true;
                }
            }
            TaskEvent::TaskDeleted { task_id } => {
                self.tasks.remove(task_id);
            }
            TaskEvent::TaskUpdated {
                task_id,
                title,
                description,
            } => {
                if let Some(task) = self.tasks.get_mut(task_id) {
                    if let Some(title) = title {
                        task.title.clone_from(title);
                    }
                    if let Some(description) = description {
                        task.description.clone_from(description);
                    }
                }
            }
        }
    }

    /// The tasks `filter` admits, by number.
    pub(crate) fn list(&self, filter: StatusFilter) -> TaskListing {
        let tasks: Vec<TaskView> = self
            .tasks
            .iter()
            .filter(|(_, task)| filter.admits(task.completed))
            .map(|(id, task)| TaskView {
                id: *id,
                title: task.title.clone(),
                description: task.description.clone(),
                completed: task.completed,
            })
            .collect();
        TaskListing {
            count: tasks.len(),
            tasks,
            filter,
        }
    }

    fn task(&self, task_id: TaskNumber) -> Result<&Task, TaskError> {
        self.tasks.get(&task_id).ok_or(TaskError::NotFound(task_id))
    }
}

/// The events `call` adds to `list`, or why it is refused. Reads (`list_tasks`) and
/// calls with nothing left to do (completing a completed task) add no events.
pub(crate) fn decide(list: &TaskList, call: &ToolCall) -> Result<Vec<TaskEvent>, TaskError> {
    match call {
        ToolCall::AddTask(AddTaskArgs { title, description }) => {
            let title = TaskTitle::parse(title)?;
            let description = TaskDescription::parse(description)?;
            let number = list
                .last_number
                .checked_add(1)
                .ok_or(TaskError::NumbersExhausted)?;
            Ok(vec![TaskEvent::TaskAdded {
                task_id: TaskNumber(number),
                title: title.into_inner(),
                description: description.into_inner(),
            }])
        }
        ToolCall::ListTasks(_) => Ok(Vec::new()),
        ToolCall::CompleteTask(TaskRefArgs { task_id }) => {
            let task = list.task(*task_id)?;
            if task.completed {
                Ok(Vec::new())
            } else {
                Ok(vec![TaskEvent::TaskCompleted { task_id: *task_id }])
            }
        }
        ToolCall::DeleteTask(TaskRefArgs { task_id }) => {
            list.task(*task_id)?;
            Ok(vec![TaskEvent::TaskDeleted { task_id: *task_id }])
        }
        ToolCall::UpdateTask(UpdateTaskArgs {
            task_id,
            title,
            description,
        }) => {
            let task = list.task(*task_id)?;
            // Validate both before comparing, so a bad value is reported as bad even
            // when the other field would change.
            let title = title.as_deref().map(TaskTitle::parse).transpose()?;
            let description = description
                .as_deref()
                .map(TaskDescription::parse)
                .transpose()?;
            let title = title
                .map(TaskTitle::into_inner)
                .filter(|new| *new != task.title);
            let description = description
                .map(TaskDescription::into_inner)
                .filter(|new| *new != task.description);
            if title.is_none() && description.is_none() {
                return Err(TaskError::NothingToUpdate(*task_id));
            }
            Ok(vec![TaskEvent::TaskUpdated {
                task_id: *task_id,
                title,
                description,
            }])
        }
    }
}

impl eventlog::Aggregate for TaskList {
    type Event = TaskEvent;
    const SNAPSHOT_SCHEMA: &'static str = "task-list/1";

    fn apply(&mut self, event: &TaskEvent) {
        TaskList::apply(self, event);
    }

    fn weight(&self) -> u64 {
        let text: usize = self
            .tasks
            .values()
            .map(|task| task.title.len() + task.description.len())
            .sum();
        (64 + text + 64 * self.tasks.len()) as u64
    }
}

/// What `call` answers, given the list before it and the events it added.
///
/// Used both right after a decision and when a retried command is answered from the
/// events its first delivery stored, so both answers are the same. `None` when
/// `events` are not what `call` produces (a command id reused for another call).
pub(crate) fn report(
    before: &TaskList,
    call: &ToolCall,
    events: &[TaskEvent],
) -> Option<ToolOutput> {
    let changed = |task_id: TaskNumber, status: ChangeStatus, title: &str| {
        Some(ToolOutput::Changed(TaskChange {
            task_id,
            status,
            title: title.to_owned(),
        }))
    };
    match (call, events) {
        (ToolCall::AddTask(_), [TaskEvent::TaskAdded { task_id, title, .. }]) => {
            changed(*task_id, ChangeStatus::Created, title)
        }
        (ToolCall::ListTasks(args), []) => Some(ToolOutput::Listing(before.list(args.status))),
        (ToolCall::CompleteTask(args), [] | [TaskEvent::TaskCompleted { .. }]) => {
            if let [TaskEvent::TaskCompleted { task_id }] = events
                && *task_id != args.task_id
            {
                return None;
            }
            let task = before.task(args.task_id).ok()?;
            changed(args.task_id, ChangeStatus::Completed, &task.title)
        }
        (ToolCall::DeleteTask(args), [TaskEvent::TaskDeleted { task_id }])
            if *task_id == args.task_id =>
        {
            let task = before.task(args.task_id).ok()?;
            changed(args.task_id, ChangeStatus::Deleted, &task.title)
        }
        (ToolCall::UpdateTask(args), [TaskEvent::TaskUpdated { task_id, title, .. }])
            if *task_id == args.task_id =>
        {
            let task = before.task(args.task_id).ok()?;
            changed(
                args.task_id,
                ChangeStatus::Updated,
                title.as_deref().unwrap_or(&task.title),
            )
        }
        _ => None,
    }
}

/// Decides and reports in one step: the events to append (possibly none) and the
/// answer to give once they are stored.
pub(crate) fn execute(list: &TaskList, call: &ToolCall) -> (Vec<TaskEvent>, ToolOutput) {
    match decide(list, call) {
        Ok(events) => {
            let output = report(list, call, &events)
                .expect("decide only produces events that report understands");
            (events, output)
        }
        Err(refusal) => (Vec::new(), refusal.into()),
    }
}

#[cfg(test)]
mod tests {
    use proto_schemas::tasks::ListTasksArgs;
    use serde_json::json;

    #[test]
    fn text_postgres_cannot_store_is_refused() {
        assert_eq!(TaskTitle::parse("Buy\0 milk"), Err(TaskError::NulCharacter));
        assert_eq!(
            TaskDescription::parse("2\0 litres"),
            Err(TaskError::NulCharacter)
        );
        let (events, output) = execute(
            &TaskList::default(),
            &ToolCall::AddTask(AddTaskArgs {
                title: "Buy\0 milk".into(),
                description: String::new(),
            }),
        );
        assert!(events.is_empty());
        assert_eq!(
            serde_json::to_value(output).unwrap(),
            json!({"error": "Title and description must not contain NUL (\\u0000) characters"})
        );
    }

    #[test]
    fn a_list_survives_its_snapshot() {
        let mut list = TaskList::default();
        for (n, title) in [(1, "Milk"), (2, "Bread"), (3, "Eggs")] {
            list.apply(&TaskEvent::TaskAdded {
                task_id: TaskNumber(n),
                title: title.into(),
                description: "d".into(),
            });
        }
        list.apply(&TaskEvent::TaskCompleted {
            task_id: TaskNumber(2),
        });
        list.apply(&TaskEvent::TaskDeleted {
            task_id: TaskNumber(3),
        });
        let snapshot = serde_json::to_value(&list).unwrap();
        let restored: TaskList = serde_json::from_value(snapshot).unwrap();
        assert_eq!(restored, list);
        // The next number is still 4: a deleted task's number is never reused.
        let (events, _) = execute(
            &restored,
            &ToolCall::AddTask(AddTaskArgs {
                title: "Tea".into(),
                description: String::new(),
            }),
        );
        assert!(matches!(
            events[..],
            [TaskEvent::TaskAdded {
                task_id: TaskNumber(4),
                ..
            }]
        ));
    }

    use super::*;

    fn n(number: u32) -> TaskNumber {
        TaskNumber(number)
    }

    fn added(number: u32, title: &str) -> TaskEvent {
        TaskEvent::TaskAdded {
            task_id: n(number),
            title: title.into(),
            description: String::new(),
        }
    }

    fn add(title: &str, description: &str) -> ToolCall {
        ToolCall::AddTask(AddTaskArgs {
            title: title.into(),
            description: description.into(),
        })
    }

    fn complete(number: u32) -> ToolCall {
        ToolCall::CompleteTask(TaskRefArgs { task_id: n(number) })
    }

    fn delete(number: u32) -> ToolCall {
        ToolCall::DeleteTask(TaskRefArgs { task_id: n(number) })
    }

    fn update(number: u32, title: Option<&str>, description: Option<&str>) -> ToolCall {
        ToolCall::UpdateTask(UpdateTaskArgs {
            task_id: n(number),
            title: title.map(str::to_owned),
            description: description.map(str::to_owned),
        })
    }

    fn list(status: StatusFilter) -> ToolCall {
        ToolCall::ListTasks(ListTasksArgs { status })
    }

    /// Given `history`, when `call` runs: the new events and the answer.
    fn given_when(history: &[TaskEvent], call: ToolCall) -> (Vec<TaskEvent>, serde_json::Value) {
        let (events, output) = execute(&TaskList::from_events(history), &call);
        (events, serde_json::to_value(output).unwrap())
    }

    #[test]
    fn adding_numbers_tasks_from_one_and_trims() {
        let (events, output) = given_when(&[], add("  Buy milk  ", " 2 litres "));
        assert_eq!(
            events,
            vec![TaskEvent::TaskAdded {
                task_id: n(1),
                title: "Buy milk".into(),
                description: "2 litres".into()
            }]
        );
        assert_eq!(
            output,
            json!({"task_id": 1, "status": "created", "title": "Buy milk"})
        );

        let (events, _) = given_when(&[added(1, "a"), added(2, "b")], add("c", ""));
        assert_eq!(events, vec![added(3, "c")]);
    }

    #[test]
    fn deleted_numbers_are_never_reused() {
        let history = [
            added(1, "a"),
            added(2, "b"),
            TaskEvent::TaskDeleted { task_id: n(2) },
        ];
        let (events, output) = given_when(&history, add("c", ""));
        assert_eq!(events, vec![added(3, "c")]);
        assert_eq!(output["task_id"], 3);
    }

    #[test]
    fn titles_must_have_one_to_two_hundred_characters() {
        for bad in ["", "   ", "\n\t"] {
            let (events, output) = given_when(&[], add(bad, ""));
            assert!(events.is_empty());
            assert_eq!(output, json!({"error": "Title must not be empty"}));
        }
        let (events, output) = given_when(&[], add(&"é".repeat(201), ""));
        assert!(events.is_empty());
        assert_eq!(
            output,
            json!({"error": "Title must be at most 200 characters"})
        );
        // 200 multi-byte characters is fine: the limit counts characters, not bytes.
        let (events, _) = given_when(&[], add(&format!("  {}  ", "é".repeat(200)), ""));
        assert_eq!(events, vec![added(1, &"é".repeat(200))]);
    }

    #[test]
    fn descriptions_may_have_two_thousand_characters() {
        let (events, _) = given_when(&[], add("t", &"d".repeat(2_000)));
        assert_eq!(events.len(), 1);
        let (events, output) = given_when(&[], add("t", &"d".repeat(2_001)));
        assert!(events.is_empty());
        assert_eq!(
            output,
            json!({"error": "Description must be at most 2000 characters"})
        );
    }

    #[test]
    fn completing_marks_the_task_done() {
        let (events, output) = given_when(&[added(1, "Buy milk")], complete(1));
        assert_eq!(events, vec![TaskEvent::TaskCompleted { task_id: n(1) }]);
        assert_eq!(
            output,
            json!({"task_id": 1, "status": "completed", "title": "Buy milk"})
        );
    }

    #[test]
    fn completing_a_completed_task_succeeds_with_no_event() {
        let history = [
            added(1, "Buy milk"),
            TaskEvent::TaskCompleted { task_id: n(1) },
        ];
        let (events, output) = given_when(&history, complete(1));
        assert!(events.is_empty());
        assert_eq!(
            output,
            json!({"task_id": 1, "status": "completed", "title": "Buy milk"})
        );
    }

    #[test]
    fn unknown_and_deleted_tasks_are_not_found() {
        let history = [added(1, "a"), TaskEvent::TaskDeleted { task_id: n(1) }];
        for call in [
            complete(1),
            delete(1),
            update(1, Some("x"), None),
            complete(7),
        ] {
            let (events, output) = given_when(&history, call.clone());
            assert!(events.is_empty(), "{call:?}");
            assert_eq!(output["error"], "Task not found", "{call:?}");
        }
        let (_, output) = given_when(&history, complete(7));
        assert_eq!(output, json!({"error": "Task not found", "task_id": 7}));
    }

    #[test]
    fn deleting_reports_the_title_it_removed() {
        let (events, output) = given_when(&[added(1, "a"), added(2, "b")], delete(2));
        assert_eq!(events, vec![TaskEvent::TaskDeleted { task_id: n(2) }]);
        assert_eq!(
            output,
            json!({"task_id": 2, "status": "deleted", "title": "b"})
        );
    }

    #[test]
    fn updating_records_only_what_changes() {
        let history = [TaskEvent::TaskAdded {
            task_id: n(1),
            title: "Buy milk".into(),
            description: "2 litres".into(),
        }];
        let (events, output) = given_when(&history, update(1, Some(" Buy oat milk "), None));
        assert_eq!(
            events,
            vec![TaskEvent::TaskUpdated {
                task_id: n(1),
                title: Some("Buy oat milk".into()),
                description: None
            }]
        );
        assert_eq!(
            output,
            json!({"task_id": 1, "status": "updated", "title": "Buy oat milk"})
        );

        // The same title again with a new description: only the description changes.
        let (events, output) = given_when(&history, update(1, Some("Buy milk"), Some("1 litre")));
        assert_eq!(
            events,
            vec![TaskEvent::TaskUpdated {
                task_id: n(1),
                title: None,
                description: Some("1 litre".into())
            }]
        );
        assert_eq!(output["title"], "Buy milk");
    }

    #[test]
    fn an_update_with_nothing_to_change_is_refused() {
        let history = [added(1, "Buy milk")];
        for call in [
            update(1, None, None),
            update(1, Some("Buy milk "), Some("")),
        ] {
            let (events, output) = given_when(&history, call);
            assert!(events.is_empty());
            assert_eq!(
                output,
                json!({
                    "error": "Nothing to update: give a new title or a new description",
                    "task_id": 1
                })
            );
        }
        let (events, output) = given_when(&history, update(1, Some(" "), Some("new")));
        assert!(events.is_empty());
        assert_eq!(output, json!({"error": "Title must not be empty"}));
    }

    #[test]
    fn listing_filters_by_status_in_number_order() {
        let history = [
            added(1, "a"),
            added(2, "b"),
            added(3, "c"),
            TaskEvent::TaskCompleted { task_id: n(2) },
            TaskEvent::TaskDeleted { task_id: n(3) },
            TaskEvent::TaskUpdated {
                task_id: n(1),
                title: None,
                description: Some("d".into()),
            },
        ];
        let (events, output) = given_when(&history, list(StatusFilter::All));
        assert!(events.is_empty());
        assert_eq!(
            output,
            json!({
                "tasks": [
                    {"id": 1, "title": "a", "description": "d", "completed": false},
                    {"id": 2, "title": "b", "description": "", "completed": true},
                ],
                "count": 2,
                "filter": "all"
            })
        );
        let (_, output) = given_when(&history, list(StatusFilter::Pending));
        assert_eq!(output["count"], 1);
        assert_eq!(output["tasks"][0]["id"], 1);
        let (_, output) = given_when(&history, list(StatusFilter::Completed));
        assert_eq!(output["tasks"][0]["id"], 2);
        assert_eq!(output["filter"], "completed");
    }

    #[test]
    fn report_rebuilds_the_first_answer_from_stored_events() {
        let before = TaskList::from_events(&[added(1, "a"), added(2, "b")]);
        let call = update(2, Some("B"), None);
        let (events, first) = execute(&before, &call);
        assert_eq!(report(&before, &call, &events), Some(first));
    }

    #[test]
    fn report_rejects_events_another_call_made() {
        let before = TaskList::from_events(&[added(1, "a"), added(2, "b")]);
        let deleted = [TaskEvent::TaskDeleted { task_id: n(1) }];
        assert_eq!(report(&before, &complete(1), &deleted), None);
        assert_eq!(report(&before, &delete(2), &deleted), None);
        assert_eq!(report(&before, &add("a", ""), &deleted), None);
        assert_eq!(report(&before, &list(StatusFilter::All), &deleted), None);
    }
}
