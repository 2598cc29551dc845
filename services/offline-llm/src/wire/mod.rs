//! OpenAI chat-completions wire format: reading requests, writing responses and
//! stream chunks. Only this module knows the JSON shapes; the rules never see them.

pub mod request;
pub mod response;

pub use request::{ChatRequest, parse};
pub use response::Completion;
