//! Reads one plain-English user message and names what the user asked for.
//!
//! This is the "understanding" half of the stand-in model: a fixed set of phrasings
//! for adding, listing, completing, deleting and renaming tasks. It knows nothing about
//! which tools a request offers; [`super::respond`] decides what to do with the intent.
//!
//! Task numbers are read conservatively. Digits count anywhere a task reference is
//! expected ("3", "#3", "task 3"), but number words ("one" … "ten") only count right
//! where a number must stand ("complete two", "delete task one"), because "one" is an
//! ordinary English word: "delete the one about milk" must not delete task 1.

use super::text::{Phrase, capitalise_first, unquote};

/// What the user asked for in their latest message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Intent {
    /// Create a task.
    Add {
        /// Cleaned title: no filler words, first letter capitalised.
        title: String,
        /// Given with "… with description …".
        description: Option<String>,
    },
    /// Show tasks.
    List {
        /// Which tasks to show.
        filter: ListFilter,
    },
    /// Mark one or more tasks done.
    Complete {
        /// Task numbers in the order given.
        task_ids: Vec<u64>,
    },
    /// Delete one or more tasks.
    Delete {
        /// Task numbers in the order given.
        task_ids: Vec<u64>,
    },
    /// Change a task's title or description.
    Update {
        /// The task number.
        task_id: u64,
        /// Which field changes.
        field: Field,
        /// The new value.
        value: String,
    },
    /// Mark a task as not done; no tool offers that.
    Reopen,
    /// A task action without a task number to act on.
    MissingTaskNumber(Action),
    /// "add a task" with nothing to add.
    MissingTitle,
    /// "rename 3" without the new name.
    MissingNewValue {
        /// The task number.
        task_id: u64,
        /// The field the user wants to change.
        field: Field,
    },
    /// "hi", "hello".
    Greeting,
    /// "thanks".
    Thanks,
    /// Nothing recognised.
    Unknown,
}

/// The task actions that need a task number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// complete_task
    Complete,
    /// delete_task
    Delete,
    /// update_task
    Update,
}

/// The `status` filter of list_tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ListFilter {
    /// Not yet done.
    Pending,
    /// Done.
    Completed,
    /// Everything.
    All,
}

impl ListFilter {
    /// The value list_tasks expects.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Completed => "completed",
            Self::All => "all",
        }
    }
}

/// The task field update_task changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Field {
    /// The title.
    Title,
    /// The description.
    Description,
}

impl Field {
    /// The update_task argument name.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Title => "title",
            Self::Description => "description",
        }
    }
}

const GREETINGS: &[&str] = &[
    "hi",
    "hello",
    "hey",
    "hey there",
    "hi there",
    "hello there",
    "yo",
    "good morning",
    "good afternoon",
    "good evening",
];

const THANKS: &[&str] = &[
    "thanks",
    "thank you",
    "thanks a lot",
    "thank you so much",
    "thx",
    "ty",
    "cheers",
    "great thanks",
    "ok thanks",
    "okay thanks",
];

/// Filler people put in front of a request. Longest first, so "i'd like you to" wins
/// over a shorter prefix of it.
const POLITE_PREFIXES: &[&str] = &[
    "i would like you to",
    "i'd like you to",
    "i want you to",
    "i would like to",
    "i'd like to",
    "i want to",
    "go ahead and",
    "could you please",
    "can you please",
    "would you please",
    "could you",
    "can you",
    "would you",
    "will you",
    "can u",
    "please",
    "pls",
    "plz",
    "kindly",
    "hey there",
    "hi there",
    "hello",
    "hey",
    "hi",
    "okay",
    "ok",
    "so",
    "now",
    "also",
    "and",
    "then",
    "just",
];

const UPDATE_VERBS: &[&str] = &[
    "rename", "retitle", "change", "update", "edit", "modify", "set",
];

const DELETE_VERBS: &[&str] = &[
    "get rid of",
    "forget about",
    "delete",
    "remove",
    "cancel",
    "drop",
    "erase",
    "scrap",
    "trash",
    "discard",
];

const COMPLETE_VERBS: &[&str] = &[
    "i have finished",
    "i've finished",
    "ive finished",
    "i finished",
    "i have completed",
    "i've completed",
    "ive completed",
    "i completed",
    "i have done",
    "i've done",
    "ive done",
    "i did",
    "i am done with",
    "i'm done with",
    "im done with",
    "i'm finished with",
    "done with",
    "check off",
    "tick off",
    "cross off",
    "complete",
    "completed",
    "finish",
    "finished",
    "done",
    "mark",
    "tick",
    "close",
];

const REOPEN_VERBS: &[&str] = &["reopen", "re-open", "uncheck", "untick", "uncomplete"];

/// Words after a task number that mean "not done" rather than "done".
const REOPEN_WORDS: &[&str] = &[
    "not done",
    "not complete",
    "not completed",
    "not finished",
    "undone",
    "incomplete",
    "unfinished",
    "as open",
    "as pending",
    "as todo",
];

const DONE_WORDS: &[&str] = &["done", "complete", "completed", "finished"];

/// Verbs that create a task; what follows is the title.
const ADD_VERBS: &[&str] = &[
    "remind me to",
    "remind me",
    "remember to",
    "make a new task",
    "make a task",
    "new task",
    "new todo",
    "new to-do",
    "jot down",
    "note down",
    "create",
    "add",
    "put",
];

/// Softer ways to say "add": "i need to buy milk".
const NEED_VERBS: &[&str] = &[
    "don't let me forget to",
    "dont let me forget to",
    "i've got to",
    "i have got to",
    "i need to",
    "i have to",
    "i must",
    "i should",
];

/// Words in front of a title that are not part of it ("add a task to …").
const TITLE_LEADERS: &[&str] = &[
    "to my to-do list",
    "to my todo list",
    "to my task list",
    "to my tasks",
    "to my list",
    "to the list",
    "a new task",
    "a new todo",
    "a new to-do",
    "another task",
    "one more task",
    "a task",
    "a todo",
    "a to-do",
    "new task",
    "the task",
    "task",
    "todo",
    "to-do",
    "a reminder",
    "reminder",
    "an item",
    "item",
    "that says",
    "saying",
    "called",
    "named",
    "titled",
    "for",
    "to",
];

/// Words after a title that are not part of it ("… to my list").
const TITLE_TRAILERS: &[&str] = &[
    "to my to-do list",
    "to my todo list",
    "to my task list",
    "to my tasks",
    "to my list",
    "to the list",
    "to the task list",
    "on my list",
    "on the list",
    "for me",
    "please",
    "thanks",
    "thank you",
];

/// Where a description starts inside an add request.
const DESCRIPTION_MARKERS: &[&str] = &[
    "with the description",
    "with description",
    "with a description of",
    "with a description",
    "description:",
];

const LIST_VERBS: &[&str] = &["show", "list", "display", "view"];

const QUESTION_STARTS: &[&str] = &[
    "what's",
    "whats",
    "what is",
    "what are",
    "what",
    "which",
    "how many",
    "do i have",
    "did i",
    "have i",
    "are there",
    "is there",
    "anything",
    "any",
    "tell me",
    "give me",
    "let me see",
    "see",
    "get",
    "check",
];

/// Words that make a question about the task list.
const TASK_WORDS: &[&str] = &[
    "task",
    "tasks",
    "todo",
    "todos",
    "to-do",
    "to-dos",
    "to do",
    "list",
    "open",
    "pending",
    "left",
    "remaining",
    "outstanding",
    "incomplete",
    "unfinished",
    "completed",
    "complete",
    "done",
    "finished",
    "plate",
    "agenda",
];

/// Words that may accompany task words in a bare request such as "my open tasks".
const FILLER_WORDS: &[&str] = &["my", "the", "all", "of", "me", "please", "everything"];

const PENDING_WORDS: &[&str] = &[
    "not done",
    "not completed",
    "not finished",
    "undone",
    "incomplete",
    "unfinished",
    "open",
    "pending",
    "left",
    "remaining",
    "outstanding",
    "todo",
    "todos",
    "to-do",
    "to do",
];

const NUMBER_WORDS: &[&str] = &[
    "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
];

/// Understands one user message.
pub(crate) fn parse(message: &str) -> Intent {
    let normalised = normalise(message);
    let lower = normalised.to_ascii_lowercase();
    // Only sentence punctuation comes off: a closing quote may end a title.
    let whole = Phrase::new(&normalised, &lower).trim_sentence_end();
    if whole.is_empty() {
        return Intent::Unknown;
    }
    if GREETINGS.contains(&whole.lower()) {
        return Intent::Greeting;
    }
    if THANKS.contains(&whole.lower()) {
        return Intent::Thanks;
    }

    let request = strip_politeness(whole);
    if request.strip_any(REOPEN_VERBS).is_some() {
        return Intent::Reopen;
    }
    if let Some((_, rest)) = request.strip_any(UPDATE_VERBS)
        && let Some(intent) = parse_update(rest)
    {
        return intent;
    }
    if let Some((_, rest)) = request.strip_any(DELETE_VERBS) {
        let task_ids = task_ids(rest);
        return if task_ids.is_empty() {
            Intent::MissingTaskNumber(Action::Delete)
        } else {
            Intent::Delete { task_ids }
        };
    }
    if let Some(intent) = parse_complete(request) {
        return intent;
    }
    if let Some((_, rest)) = request.strip_any(ADD_VERBS) {
        return parse_add(rest);
    }
    if let Some(filter) = list_filter(request) {
        return Intent::List { filter };
    }
    if let Some((_, rest)) = request.strip_any(NEED_VERBS) {
        // "i need to see my tasks" is a question, not a task called "See my tasks".
        let rest = strip_politeness(rest);
        return match list_filter(rest.strip_any(&["see", "know"]).map_or(rest, |(_, r)| r)) {
            Some(filter) if looks_like_list_request(rest) => Intent::List { filter },
            _ => parse_add(rest),
        };
    }
    Intent::Unknown
}

/// One spelling for the characters phones and word processors substitute.
fn normalise(message: &str) -> String {
    let straightened: String = message
        .chars()
        .map(|c| match c {
            '\u{2018}' | '\u{2019}' => '\'',
            '\u{201C}' | '\u{201D}' => '"',
            c => c,
        })
        .collect();
    straightened
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn strip_politeness(mut phrase: Phrase<'_>) -> Phrase<'_> {
    while let Some((_, rest)) = phrase.strip_any(POLITE_PREFIXES) {
        phrase = rest.trim_leading_separators();
    }
    phrase
}

fn parse_update(rest: Phrase<'_>) -> Option<Intent> {
    let mut field = Field::Title;
    let mut rest = rest;
    if let Some((word, after)) = rest.strip_any(&[
        "the description of",
        "description of",
        "the details of",
        "the title of",
        "title of",
        "the name of",
        "name of",
    ]) {
        if word.contains("description") || word.contains("details") {
            field = Field::Description;
        }
        rest = after;
    }
    let Some((task_id, after_ref)) = task_ref(rest, true) else {
        // "update" with no number may be about something other than a task; only
        // ask for a number when a task was clearly meant.
        let about_a_task = ["task", "title", "name", "description"]
            .iter()
            .any(|w| rest.contains_word(w));
        return about_a_task.then_some(Intent::MissingTaskNumber(Action::Update));
    };
    let mut rest = after_ref;
    if let Some(after) = rest.strip_word("'s") {
        rest = after;
    }
    if let Some((word, after)) = rest.strip_any(&[
        "description",
        "desc",
        "details",
        "notes",
        "title",
        "name",
        "text",
    ]) {
        field = if matches!(word, "title" | "name" | "text") {
            Field::Title
        } else {
            Field::Description
        };
        rest = after;
    }
    let Some((_, value)) = rest.strip_any(&["to be", "to", "into", "as", ":", "="]) else {
        return Some(Intent::MissingNewValue { task_id, field });
    };
    let value = unquote(value.trim_leading_separators().trim_sentence_end().orig()).trim();
    if value.is_empty() {
        return Some(Intent::MissingNewValue { task_id, field });
    }
    let value = match field {
        Field::Title => capitalise_first(value),
        Field::Description => value.to_owned(),
    };
    Some(Intent::Update {
        task_id,
        field,
        value,
    })
}

fn parse_complete(request: Phrase<'_>) -> Option<Intent> {
    if let Some((verb, rest)) = request.strip_any(COMPLETE_VERBS) {
        if REOPEN_WORDS.iter().any(|w| rest.contains_word(w)) {
            return Some(Intent::Reopen);
        }
        let ids = task_ids(rest);
        if !ids.is_empty() {
            return Some(Intent::Complete { task_ids: ids });
        }
        // "completed tasks?" and "done ones" are questions about the list.
        if let Some(filter) = list_filter(request) {
            return Some(Intent::List { filter });
        }
        // "mark" and "close" are too common to claim without a number.
        return (!matches!(verb, "mark" | "close"))
            .then_some(Intent::MissingTaskNumber(Action::Complete));
    }
    // "task 3 is done", "3 done", "#4 finished".
    let (task_id, rest) = task_ref(request, false)?;
    let rest = rest.trim_punctuation();
    let rest = rest.strip_word("is").unwrap_or(rest);
    if REOPEN_WORDS.iter().any(|w| rest.lower() == *w) {
        return Some(Intent::Reopen);
    }
    DONE_WORDS
        .contains(&rest.lower())
        .then(|| Intent::Complete {
            task_ids: vec![task_id],
        })
}

fn parse_add(rest: Phrase<'_>) -> Intent {
    let (title_part, description) = match DESCRIPTION_MARKERS
        .iter()
        .find_map(|marker| rest.split_once_word(marker))
    {
        Some((title, description)) => {
            let description = unquote(description.trim_sentence_end().orig()).trim();
            (
                title,
                (!description.is_empty()).then(|| description.to_owned()),
            )
        }
        None => (rest, None),
    };
    let title = clean_title(title_part);
    if title.is_empty() {
        return Intent::MissingTitle;
    }
    Intent::Add { title, description }
}

/// "a task to buy milk." → "Buy milk".
fn clean_title(phrase: Phrase<'_>) -> String {
    let mut phrase = phrase.trim_leading_separators().trim_sentence_end();
    loop {
        let before = phrase;
        if let Some((_, rest)) = phrase.strip_any(TITLE_LEADERS) {
            phrase = rest.trim_leading_separators();
        }
        if let Some(rest) = TITLE_TRAILERS
            .iter()
            .find_map(|w| phrase.strip_suffix_word(w))
        {
            phrase = rest.trim_sentence_end();
        }
        if phrase == before {
            break;
        }
    }
    let title = unquote(phrase.orig());
    let title = title.trim_end_matches(|c: char| c.is_whitespace() || ".!?,;:".contains(c));
    capitalise_first(title.trim())
}

/// A task number at the start of `phrase`: "3", "#3", "task 3", "number 3", and, when
/// `words_allowed`, "three" / "task three".
fn task_ref(phrase: Phrase<'_>, words_allowed: bool) -> Option<(u64, Phrase<'_>)> {
    let phrase = phrase
        .strip_any(&[
            "task number",
            "task no.",
            "task",
            "tasks",
            "number",
            "no.",
            "item",
        ])
        .map_or(phrase, |(_, rest)| rest);
    let phrase = match phrase.lower().strip_prefix('#') {
        Some(_) => phrase.trim_by(|c| c == '#' || c.is_whitespace()),
        None => phrase,
    };
    let (word, rest) = phrase.first_word()?;
    let number = if word.bytes().all(|b| b.is_ascii_digit()) {
        word.parse().ok()?
    } else if words_allowed {
        NUMBER_WORDS.iter().position(|w| *w == word)? as u64 + 1
    } else {
        return None;
    };
    Some((number, rest))
}

/// Every task number the user listed: "3", "3 and 4", "#3, #5", "task two".
fn task_ids(phrase: Phrase<'_>) -> Vec<u64> {
    let mut ids = Vec::new();
    if let Some((first, mut rest)) = task_ref(phrase, true) {
        ids.push(first);
        loop {
            let next = rest.trim_leading_separators();
            let next = next
                .strip_any(&["and", "&", "+", "plus"])
                .map_or(next, |(_, r)| r);
            // Only digits continue a list: "3 and one more thing" is not task 1.
            match task_ref(next, false) {
                Some((id, after)) => {
                    if !ids.contains(&id) {
                        ids.push(id);
                    }
                    rest = after;
                }
                None => break,
            }
        }
        return ids;
    }
    // A reference further in ("the milk one, #3"): only an explicit "#3" or "task 3",
    // never a bare number that may belong to the title ("the 2 eggs").
    let words: Vec<&str> = phrase.words().collect();
    let explicit = words.iter().enumerate().find_map(|(i, word)| {
        let digits = match word.strip_prefix('#') {
            Some(digits) => digits,
            None if i > 0 && matches!(words[i - 1], "task" | "number" | "no" | "#") => word,
            None => return None,
        };
        digits.parse::<u64>().ok()
    });
    ids.extend(explicit);
    ids
}

/// The list filter when `phrase` asks to see tasks.
fn list_filter(phrase: Phrase<'_>) -> Option<ListFilter> {
    looks_like_list_request(phrase).then(|| filter_words(phrase))
}

fn looks_like_list_request(phrase: Phrase<'_>) -> bool {
    if phrase.strip_any(LIST_VERBS).is_some() {
        return true;
    }
    let mentions_tasks = TASK_WORDS.iter().any(|w| phrase.contains_word(w));
    if phrase.strip_any(QUESTION_STARTS).is_some() && mentions_tasks {
        return true;
    }
    // A bare "open tasks", "my todo list", "completed".
    mentions_tasks
        && phrase
            .words()
            .all(|w| TASK_WORDS.contains(&w) || FILLER_WORDS.contains(&w) || w == "to" || w == "do")
}

fn filter_words(phrase: Phrase<'_>) -> ListFilter {
    // "my todo list" names the whole list, not the pending part of it.
    let whole_list = ["todo list", "to-do list", "to do list"]
        .iter()
        .any(|w| phrase.contains_word(w));
    let pending = PENDING_WORDS.iter().any(|w| phrase.contains_word(w));
    if pending && !whole_list {
        return ListFilter::Pending;
    }
    if DONE_WORDS.iter().any(|w| phrase.contains_word(w)) {
        return ListFilter::Completed;
    }
    ListFilter::All
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(title: &str) -> Intent {
        Intent::Add {
            title: title.to_owned(),
            description: None,
        }
    }

    fn list(filter: ListFilter) -> Intent {
        Intent::List { filter }
    }

    #[test]
    fn add_requests_become_clean_titles() {
        let cases = [
            ("add a task to buy milk", "Buy milk"),
            ("Add a task to buy milk.", "Buy milk"),
            ("add buy milk", "Buy milk"),
            (
                "please add a new task: call the plumber!",
                "Call the plumber",
            ),
            ("remind me to call mom tomorrow", "Call mom tomorrow"),
            ("Can you remind me to water the plants?", "Water the plants"),
            ("create a task called \"Pay rent\"", "Pay rent"),
            ("add walk the dog to my list", "Walk the dog"),
            ("I need to renew my passport", "Renew my passport"),
            ("add task to buy Oat Milk", "Buy Oat Milk"),
            ("add Crème brûlée for dessert", "Crème brûlée for dessert"),
            ("new task: file taxes", "File taxes"),
            ("add \u{201C}Read 2 books\u{201D}", "Read 2 books"),
        ];
        for (message, title) in cases {
            assert_eq!(parse(message), add(title), "message: {message}");
        }
    }

    #[test]
    fn add_with_description_splits_it_off() {
        assert_eq!(
            parse("add a task to buy milk with description 2 litres, semi-skimmed."),
            Intent::Add {
                title: "Buy milk".to_owned(),
                description: Some("2 litres, semi-skimmed".to_owned()),
            }
        );
    }

    #[test]
    fn add_without_a_title_asks_for_one() {
        assert_eq!(parse("add a task"), Intent::MissingTitle);
        assert_eq!(parse("create a new task please"), Intent::MissingTitle);
    }

    #[test]
    fn list_requests_pick_the_right_filter() {
        let cases = [
            ("show my tasks", ListFilter::All),
            ("list", ListFilter::All),
            ("What are my tasks?", ListFilter::All),
            ("what's open?", ListFilter::Pending),
            ("What\u{2019}s pending", ListFilter::Pending),
            ("what's left", ListFilter::Pending),
            ("what do I still have to do?", ListFilter::Pending),
            ("show remaining tasks", ListFilter::Pending),
            ("what have I completed?", ListFilter::Completed),
            ("show finished tasks", ListFilter::Completed),
            ("completed tasks", ListFilter::Completed),
            ("show me all tasks", ListFilter::All),
            ("show my todo list", ListFilter::All),
            ("open tasks", ListFilter::Pending),
            ("I need to see my tasks", ListFilter::All),
            ("how many tasks do I have?", ListFilter::All),
        ];
        for (message, filter) in cases {
            assert_eq!(parse(message), list(filter), "message: {message}");
        }
    }

    #[test]
    fn completing_reads_every_way_of_naming_a_number() {
        let cases: [(&str, &[u64]); 12] = [
            ("complete 3", &[3]),
            ("mark 3 done", &[3]),
            ("mark task 3 as complete", &[3]),
            ("Done with #4", &[4]),
            ("finish task two", &[2]),
            ("I finished 5", &[5]),
            ("I've finished task 5.", &[5]),
            ("check off number 7", &[7]),
            ("task 3 is done", &[3]),
            ("#8 finished", &[8]),
            ("complete 3 and 4", &[3, 4]),
            ("please complete tasks 1, 2 and 6", &[1, 2, 6]),
        ];
        for (message, ids) in cases {
            assert_eq!(
                parse(message),
                Intent::Complete {
                    task_ids: ids.to_vec()
                },
                "message: {message}"
            );
        }
    }

    #[test]
    fn completing_without_a_number_asks_for_it() {
        assert_eq!(
            parse("finish the report"),
            Intent::MissingTaskNumber(Action::Complete)
        );
        assert_eq!(
            parse("mark the milk one, #3, as done"),
            Intent::Complete { task_ids: vec![3] }
        );
    }

    #[test]
    fn reopening_is_recognised_so_it_can_be_declined() {
        assert_eq!(parse("mark 3 as not done"), Intent::Reopen);
        assert_eq!(parse("reopen task 3"), Intent::Reopen);
        assert_eq!(parse("task 2 is undone"), Intent::Reopen);
    }

    #[test]
    fn deleting_reads_numbers_but_never_guesses_one() {
        assert_eq!(parse("delete 2"), Intent::Delete { task_ids: vec![2] });
        assert_eq!(
            parse("remove task #9 from my list"),
            Intent::Delete { task_ids: vec![9] }
        );
        assert_eq!(parse("cancel three"), Intent::Delete { task_ids: vec![3] });
        assert_eq!(
            parse("get rid of 4 and 5"),
            Intent::Delete {
                task_ids: vec![4, 5]
            }
        );
        // Neither "one" nor the "2" inside a title is a task number here.
        assert_eq!(
            parse("delete the one about milk"),
            Intent::MissingTaskNumber(Action::Delete)
        );
        assert_eq!(
            parse("remove the buy 2 eggs task"),
            Intent::MissingTaskNumber(Action::Delete)
        );
        assert_eq!(
            parse("delete 3 and one more"),
            Intent::Delete { task_ids: vec![3] }
        );
    }

    #[test]
    fn renaming_and_changing_descriptions() {
        let title = |task_id, value: &str| Intent::Update {
            task_id,
            field: Field::Title,
            value: value.to_owned(),
        };
        let description = |task_id, value: &str| Intent::Update {
            task_id,
            field: Field::Description,
            value: value.to_owned(),
        };
        assert_eq!(parse("rename 3 to buy oat milk"), title(3, "Buy oat milk"));
        assert_eq!(
            parse("rename task 3 to \"Buy oat milk\"."),
            title(3, "Buy oat milk")
        );
        assert_eq!(
            parse("change task 1 to walk the dog"),
            title(1, "Walk the dog")
        );
        assert_eq!(
            parse("update 2 title to Call grandma"),
            title(2, "Call grandma")
        );
        assert_eq!(
            parse("update 2 description to before 5pm"),
            description(2, "before 5pm")
        );
        assert_eq!(
            parse("change the description of task 4 to ask about the 2 boxes"),
            description(4, "ask about the 2 boxes")
        );
        assert_eq!(
            parse("set task 6's description to: gate code 1234"),
            description(6, "gate code 1234")
        );
        assert_eq!(
            parse("rename 3"),
            Intent::MissingNewValue {
                task_id: 3,
                field: Field::Title
            }
        );
        assert_eq!(
            parse("rename the milk task to oat milk"),
            Intent::MissingTaskNumber(Action::Update)
        );
    }

    #[test]
    fn small_talk_and_the_rest() {
        assert_eq!(parse("Hi!"), Intent::Greeting);
        assert_eq!(parse("thank you"), Intent::Thanks);
        assert_eq!(parse("what's the weather like?"), Intent::Unknown);
        assert_eq!(parse("   "), Intent::Unknown);
        assert_eq!(parse("tell me a joke"), Intent::Unknown);
        assert_eq!(parse("address the envelope"), Intent::Unknown);
    }
}
