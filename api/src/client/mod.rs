//! The command-line client of the `tidegate` binary: `topics`, `produce`,
//! `consume`, `groups` and `status` against a running gateway over its HTTP and
//! WebSocket API.
//!
//! - [`http`]: the connection (base URL, bearer token, problem+json errors).
//! - [`topics`], [`groups`], [`status`]: admin commands, tables or `--json`.
//! - [`produce`]: NDJSON from stdin or a file, batched, several requests in flight.
//! - [`consume`]: records as NDJSON on stdout; ephemeral over HTTP reads, or as a
//!   group member over the WebSocket protocol ([`member`]).
//! - [`error`]: failures and exit codes; [`output`]: tables and formatting;
//!   [`position`]: the `--from`/`--to` syntax.
//!
//! Output contract: results go to stdout (tables, or JSON with `--json`); progress,
//! summaries of `produce`/`consume` in human mode, and errors go to stderr.

pub mod consume;
pub mod error;
pub mod groups;
pub mod http;
pub mod member;
pub mod output;
pub mod position;
pub mod produce;
pub mod status;
pub mod topics;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use reqwest::Url;

pub use error::{ClientError, Exit, exit_codes_markdown};
use http::Gateway;

/// Where the gateway is and how to talk to it; shared by every client subcommand
/// (the flags may come before or after a nested subcommand).
#[derive(Debug, Clone, Args)]
pub struct Connection {
    /// Base URL of the gateway: http://, or https:// for a gateway with TLS (its
    /// subscriptions then use wss://).
    #[arg(long, env = "TIDEGATE_URL", default_value = "http://127.0.0.1:8080", global = true)]
    pub url: Url,
    /// Extra trusted CA certificates (PEM) for an https:// URL, e.g. a gateway's
    /// self-signed certificate; the system's roots are trusted too.
    #[arg(long, env = "TIDEGATE_CA_CERT", global = true)]
    pub ca_cert: Option<PathBuf>,
    /// Bearer token, sent as `Authorization: Bearer <token>` (and as `access_token`
    /// on WebSocket subscriptions).
    #[arg(long, env = "TIDEGATE_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Machine-readable output: JSON on stdout, and errors as one JSON object on stderr.
    #[arg(long, global = true)]
    pub json: bool,
}

impl Connection {
    /// The gateway client for these flags.
    pub fn gateway(&self) -> Result<Gateway, ClientError> {
        Gateway::new(&self.url, self.token.as_deref(), self.ca_cert.as_deref())
    }
}

/// The client subcommands (flattened into the binary's top-level commands).
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Topic admin on a running gateway: list, create, describe, alter, delete.
    Topics {
        #[command(flatten)]
        conn: Connection,
        #[command(subcommand)]
        command: topics::TopicsCommand,
    },
    /// Post events to a topic: one JSON value per line (NDJSON) from stdin or --file.
    Produce(produce::ProduceArgs),
    /// Print a topic's records as NDJSON on stdout (ephemeral, or as a group member).
    Consume(consume::ConsumeArgs),
    /// Consumer-group admin: list, describe, reset offsets, delete.
    Groups {
        #[command(flatten)]
        conn: Connection,
        #[command(subcommand)]
        command: groups::GroupsCommand,
    },
    /// Health and readiness of a gateway, with its topic and group counts.
    Status {
        #[command(flatten)]
        conn: Connection,
    },
}

impl ClientCommand {
    fn connection(&self) -> &Connection {
        match self {
            ClientCommand::Topics { conn, .. }
            | ClientCommand::Groups { conn, .. }
            | ClientCommand::Status { conn } => conn,
            ClientCommand::Produce(args) => &args.conn,
            ClientCommand::Consume(args) => &args.conn,
        }
    }
}

/// Runs a client subcommand; reports a failure on stderr and returns its exit code.
pub async fn run(cmd: ClientCommand) -> ExitCode {
    let json = cmd.connection().json;
    let result = match cmd {
        ClientCommand::Topics { conn, command } => topics::run(&conn, command).await,
        ClientCommand::Produce(args) => produce::run(args).await,
        ClientCommand::Consume(args) => consume::run(args).await,
        ClientCommand::Groups { conn, command } => groups::run(&conn, command).await,
        ClientCommand::Status { conn } => status::run(&conn).await,
    };
    match result {
        Ok(exit) => exit.into(),
        Err(e) => {
            report(&e, json);
            e.exit().into()
        }
    }
}

/// Prints a failure on stderr: `error: …` lines, or one JSON object with `--json`.
pub fn report(e: &ClientError, json: bool) {
    if json {
        eprintln!("{}", e.to_json());
        return;
    }
    eprintln!("error: {e}");
    if e.exit() == Exit::Unauthorized {
        eprintln!("hint: check --token (or TIDEGATE_TOKEN)");
    }
    if let ClientError::Problem { problem, .. } = e
        && let Some(errors) = problem["errors"].as_array()
    {
        for item in errors {
            eprintln!("  event {}: {}", item["index"], item["detail"].as_str().unwrap_or("invalid"));
        }
    }
}
