//! The agent-worker service (landing in a following commit).
