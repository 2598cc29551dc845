//! OpenAI chat-completions wire format: reading requests, writing responses and
//! stream chunks. Only this module knows the JSON shapes; the rules never see them.

pub(crate) mod request;
pub(crate) mod response;

pub(crate) use request::parse;
pub(crate) use response::Completion;
