//! Failures of the command-line client and the one mapping to process exit codes.
//!
//! Every failure maps to exactly one [`Exit`] code (the table in README.md is
//! generated from [`exit_codes_markdown`] and checked by a test). A refusal by the
//! gateway keeps its RFC 7807 problem document, so the user sees the server's own
//! `detail` and `code`.

use std::process::ExitCode;

use serde_json::{Value, json};

/// Exit status of the client subcommands (`topics`, `produce`, `consume`, `groups`,
/// `status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Done.
    Ok,
    /// The gateway refused the request (4xx other than 401/403: unknown topic or group,
    /// invalid events, conflict…), or the input was refused before sending.
    Refused,
    /// Bad arguments, or local input or output failed (unreadable file, closed output).
    Usage,
    /// No connection to the gateway (nothing listening, DNS, timeout).
    Unreachable,
    /// The gateway failed (5xx, not ready) or gave an answer the client cannot read.
    ServerError,
    /// Authentication or authorization refused (401, 403): check `--token`.
    Unauthorized,
    /// Interrupted by Ctrl-C before the work was done (`produce`).
    Interrupted,
}

impl Exit {
    /// Every code, in table order.
    pub const ALL: [Exit; 7] = [
        Exit::Ok,
        Exit::Refused,
        Exit::Usage,
        Exit::Unreachable,
        Exit::ServerError,
        Exit::Unauthorized,
        Exit::Interrupted,
    ];

    /// The process exit status.
    pub fn code(self) -> u8 {
        match self {
            Exit::Ok => 0,
            Exit::Refused => 1,
            Exit::Usage => 2,
            Exit::Unreachable => 3,
            Exit::ServerError => 4,
            Exit::Unauthorized => 5,
            Exit::Interrupted => 130,
        }
    }

    /// What the code means, for the documentation.
    pub fn meaning(self) -> &'static str {
        match self {
            Exit::Ok => "success (also `consume` ended by Ctrl-C or by a closed output pipe)",
            Exit::Refused => {
                "the gateway refused the request (4xx other than 401/403: unknown topic or group, invalid events, \
                 conflict), or `produce` refused an input line before sending it"
            }
            Exit::Usage => "bad arguments, or local input/output failed (unreadable `--file`)",
            Exit::Unreachable => "cannot connect to the gateway (nothing listening, DNS failure, timeout)",
            Exit::ServerError => {
                "the gateway failed (5xx, or not ready for `status`), or its answer could not be understood"
            }
            Exit::Unauthorized => "authentication or authorization refused (401/403): check `--token`",
            Exit::Interrupted => "`produce` interrupted by Ctrl-C (the summary tells what was stored)",
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e.code())
    }
}

/// The exit-code table of README.md.
pub fn exit_codes_markdown() -> String {
    let mut out = String::from("| exit code | meaning |\n| --- | --- |\n");
    for e in Exit::ALL {
        out.push_str(&format!("| {} | {} |\n", e.code(), e.meaning()));
    }
    out
}

/// A failure of a client subcommand.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Bad arguments, or local input or output failed.
    #[error("{0}")]
    Usage(String),
    /// No connection could be made.
    #[error("cannot connect to {url}: {detail}")]
    Connect { url: String, detail: String },
    /// The gateway answered with an error status; `problem` is its problem document
    /// (or one built from the status when the body was not one).
    #[error("{}", problem_line(*.status, .problem))]
    Problem { status: u16, problem: Value },
    /// Input refused before it was sent.
    #[error("{0}")]
    Input(String),
    /// An answer that is not what the API promises, or a connection cut mid-way.
    #[error("{0}")]
    Protocol(String),
}

/// `detail (status code)`, e.g. `topic "t" not found (404 topic_not_found)`.
fn problem_line(status: u16, problem: &Value) -> String {
    let detail = problem["detail"].as_str().filter(|d| !d.is_empty()).unwrap_or("(no detail)");
    match problem["code"].as_str() {
        Some(code) => format!("{detail} ({status} {code})"),
        None => format!("{detail} ({status})"),
    }
}

impl ClientError {
    /// The exit status this failure ends the process with.
    pub fn exit(&self) -> Exit {
        match self {
            ClientError::Usage(_) => Exit::Usage,
            ClientError::Connect { .. } => Exit::Unreachable,
            ClientError::Problem { status: 401 | 403, .. } => Exit::Unauthorized,
            ClientError::Problem { status, .. } if *status >= 500 => Exit::ServerError,
            ClientError::Problem { .. } | ClientError::Input(_) => Exit::Refused,
            ClientError::Protocol(_) => Exit::ServerError,
        }
    }

    /// The server's problem `code`, if the gateway refused.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Problem { problem, .. } => problem["code"].as_str(),
            _ => None,
        }
    }

    /// The failure as one JSON object (for `--json`): the server's problem document
    /// as is, or `{"code","detail"}` for failures on this side.
    pub fn to_json(&self) -> Value {
        let local = |code: &str| json!({"code": code, "detail": self.to_string()});
        match self {
            ClientError::Problem { problem, .. } => problem.clone(),
            ClientError::Usage(_) => local("usage"),
            ClientError::Connect { .. } => local("cannot_connect"),
            ClientError::Input(_) => local("invalid_input"),
            ClientError::Protocol(_) => local("invalid_answer"),
        }
    }
}

/// The message of an error and of each of its sources, joined by `: `.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

/// The message of the innermost source of an error (e.g. `Connection refused (os
/// error 111)` under the layers of an HTTP client).
pub fn root_cause(e: &dyn std::error::Error) -> String {
    let mut last = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        last = s.to_string();
        source = s.source();
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_exit_codes() {
        let problem = |status: u16| ClientError::Problem { status, problem: json!({"detail": "x", "code": "c"}) };
        assert_eq!(problem(404).exit(), Exit::Refused);
        assert_eq!(problem(409).exit(), Exit::Refused);
        assert_eq!(problem(401).exit(), Exit::Unauthorized);
        assert_eq!(problem(403).exit(), Exit::Unauthorized);
        assert_eq!(problem(500).exit(), Exit::ServerError);
        assert_eq!(problem(503).exit(), Exit::ServerError);
        assert_eq!(ClientError::Connect { url: "u".into(), detail: "refused".into() }.exit(), Exit::Unreachable);
        assert_eq!(ClientError::Usage("bad".into()).exit().code(), 2);
        assert_eq!(problem(404).to_string(), "x (404 c)");
        assert_eq!(problem(404).to_json()["code"], "c");
    }

    #[test]
    fn the_table_lists_every_code_once() {
        let table = exit_codes_markdown();
        for e in Exit::ALL {
            assert_eq!(table.matches(&format!("\n| {} |", e.code())).count(), 1, "{table}");
        }
    }
}
