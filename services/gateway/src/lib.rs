//! The gateway service (landing in a following commit).
