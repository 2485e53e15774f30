//! Ingest: body framing and decoding, parsing, event ids, schemas and dead letters,
//! privacy of the gateway's headers, Kafka-compatible partitioning, the shared write
//! path, and the Segment-compatible payloads.

pub mod decode;
pub mod ids;
pub mod parse;
pub mod partitioner;
pub mod pipeline;
pub mod privacy;
pub mod rawjson;
pub mod rules;
pub mod segment;
pub mod time;
