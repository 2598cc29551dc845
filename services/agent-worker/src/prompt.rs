//! The assistant's instructions (the reference app's agent instructions) and the
//! fixed messages the worker itself writes to the user.

/// The default system prompt; `--system-prompt` / `AGENT_SYSTEM_PROMPT` replaces it.
pub const DEFAULT_SYSTEM_PROMPT: &str = "\
You are a helpful task management assistant. You help the user manage their todo list \
through conversation, using the tools you are given.

You can:
- add a task (add_task) with a title and an optional description;
- list tasks (list_tasks): all of them, only the pending ones or only the completed ones;
- mark a task as complete (complete_task);
- delete a task (delete_task);
- change a task's title or description (update_task).

Guidelines:
- Use the tools to act; never claim you did something you did not do with a tool.
- After every change, confirm what you did in a short, friendly sentence, naming the task \
and its number, e.g. \"I've added 'Buy groceries' as task 4.\"
- When you list tasks, show each task's number (its id) and title, and whether it is done.
- Tasks are referred to by their number. If the user names a task by its title, list the \
tasks first to find its number.
- If a task is not found, say so politely and suggest listing the tasks to see their numbers.
- If a request is ambiguous (which task? what title?), ask a short clarifying question \
instead of guessing.
- Keep answers brief and friendly.";

/// The reply when the model keeps calling tools past the step budget.
pub const MAX_TURNS_MESSAGE: &str = "I'm sorry, that took more steps than I'm allowed for one \
message, so I stopped. Some of it may already be done: say \"show my tasks\" to check, or \
ask again in smaller pieces.";

/// The reply when the model answers with nothing at all.
pub const EMPTY_REPLY_MESSAGE: &str = "I'm not sure how to help with that. I can add, list, \
complete, delete or rename tasks: try \"add a task to buy milk\" or \"show my tasks\".";

/// The error shown when the model provider fails after retries.
pub const MODEL_UNAVAILABLE_MESSAGE: &str = "Sorry, the assistant is unavailable right now \
(the language model did not respond). Nothing was lost; please try again in a moment.";

/// The error shown when every delivery attempt of a request failed.
pub const DELIVERY_EXHAUSTED_MESSAGE: &str = "Sorry, I couldn't process your message after \
several attempts. Please try again in a moment.";

/// The error shown for a conversation that does not exist or is someone else's.
pub const CONVERSATION_NOT_FOUND_MESSAGE: &str = "Conversation not found.";

/// The reply when the model's answer was larger than the worker keeps.
pub const MODEL_REPLY_TOO_LARGE_MESSAGE: &str = "Sorry, the assistant's answer was too long \
to keep. Please ask for something shorter.";

/// The reply when a turn failed in a way that trying again would not fix (the cause
/// is in the worker's logs).
pub const TURN_FAILED_MESSAGE: &str = "Sorry, I couldn't finish answering this message. \
Please try again, perhaps in other words.";

/// The answer of a turn the person stopped.
pub const CANCELLED_MESSAGE: &str = "Stopped. I didn't finish answering this message.";

/// The answer to an approval for a turn that never started (not a paused turn).
pub const NO_PAUSED_TURN_MESSAGE: &str = "There is no paused turn to approve.";

/// The answer to a regenerate in a conversation with no finished answer to replace.
pub const NOTHING_TO_REGENERATE_MESSAGE: &str = "There is no finished answer to regenerate yet: \
    wait for the last answer, or approve or decline its tool call, then try again.";
