//! Tidegate: an HTTP/WebSocket event-streaming gateway on a partitioned RocksDB log.
//!
//! Map of the crate (the only one that speaks HTTP):
//! - [`server`]: [`serve`] runs a node on a listener until a shutdown future resolves.
//! - [`routes`]: the axum router and the OpenAPI document generated from it (topic
//!   events, the Segment-compatible API, `/tracker.js`, reads, groups, ops).
//! - [`web`]: the dashboard's embedded files; [`docs`]: Swagger UI and the protocol page.
//! - [`ingest`]: body decoding, parsing, Kafka-compatible partitioning, event ids,
//!   JSON Schemas and dead letters, client-IP privacy, the shared write path, and
//!   Segment-compatible payloads.
//! - [`render`]: JSON rendering of records.
//! - [`auth`]: authentication (JWT, write keys), permissions, rate limits, CORS.
//! - [`tls`]: the HTTPS listener.
//! - [`error`]: the API error type and its problem+json mapping.
//! - [`config`]: settings from TOML, `TIDEGATE_*` variables and flags.
//! - [`metrics`]: Prometheus recorder and HTTP middleware.
//! - [`cli`]: the `tidegate` command line; [`client`]: its client commands
//!   (`topics`, `produce`, `consume`, `groups`, `status`); [`bench`]: the load tool.

pub mod auth;
pub mod bench;
pub mod cli;
pub mod client;
pub mod config;
pub mod connections;
pub mod consume;
pub mod delivery;
pub mod docs;
pub mod error;
pub mod groups;
pub mod head_problems;
pub mod ingest;
pub mod metrics;
pub mod render;
pub mod request_memory;
pub mod routes;
pub mod server;
pub mod starting;
pub mod state;
pub mod tls;
pub mod web;

pub use config::{Config, ConfigLayer};
pub use server::{ServeError, serve, shutdown_signal};
