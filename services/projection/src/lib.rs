//! The projection service (landing in a following commit).
