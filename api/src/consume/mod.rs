//! Consumption: the WebSocket subscription protocol and its sessions.

pub mod cache;
pub mod protocol;
pub mod session;
