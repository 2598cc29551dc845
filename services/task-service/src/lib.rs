//! The task-service service (landing in a following commit).
