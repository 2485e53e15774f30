//! Ingest: turning HTTP bodies into record batches for the log.

pub mod decode;
pub mod parse;
pub mod partitioner;
