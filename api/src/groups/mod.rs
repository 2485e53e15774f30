//! Consumer groups: assignment and coordination. Committed offsets live in storage.

pub mod assign;
pub mod coordinator;
