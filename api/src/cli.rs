//! The `tidegate` command line: `serve`, `bench`, `token`, `openapi`, `config`.

use std::path::PathBuf;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::config::{Config, ConfigLayer};

/// Tidegate: HTTP/WebSocket event-streaming gateway on a partitioned RocksDB log.
#[derive(Debug, Parser)]
#[command(name = "tidegate", version, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a gateway node. Every setting can also be given as `TIDEGATE_<NAME>`
    /// (e.g. TIDEGATE_FSYNC=never) or in the TOML file named by --config.
    Serve {
        /// TOML file with settings (flags and environment override it).
        #[arg(long, env = "TIDEGATE_CONFIG")]
        config: Option<PathBuf>,
        /// Settings.
        #[command(flatten)]
        settings: Box<ConfigLayer>,
    },
    /// Load tools: measure a running gateway.
    #[command(subcommand)]
    Bench(crate::bench::BenchCommand),
    /// Print the OpenAPI document (or write it to a file).
    Openapi {
        /// Write to this file instead of standard output.
        #[arg(long)]
        write: Option<PathBuf>,
    },
    /// Sign a JWT for this gateway (e.g. `tidegate token -p admin --secret $SECRET`),
    /// printed on standard output.
    Token(crate::auth::mint::TokenArgs),
    /// Print the configuration reference (every setting, its default and meaning).
    Config {
        /// Print as a TOML file with every default instead of a Markdown table.
        #[arg(long)]
        toml: bool,
    },
    /// Client commands against a running gateway (`topics`, `produce`, `consume`,
    /// `groups`, `status`; see [`crate::client`]).
    #[command(flatten)]
    Client(crate::client::ClientCommand),
}

/// Parses the command line, giving every `serve` setting its `TIDEGATE_*` variable.
pub fn parse() -> Cli {
    // Each setting's help ends with its default, as TOML spells it (the flags are
    // optional layers over the defaults, so clap itself knows none).
    let defaults: std::collections::HashMap<&str, String> =
        crate::config::Config::reference().into_iter().map(|d| (d.name, d.default)).collect();
    let mut command = Cli::command().mut_subcommand("serve", |serve| {
        serve.mut_args(|arg| {
            let id = arg.get_id().as_str();
            if id == "config" || id == "help" || id == "version" {
                arg
            } else {
                let env = format!("TIDEGATE_{}", id.to_ascii_uppercase());
                let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
                let arg = match defaults.get(id) {
                    Some(default) if !default.is_empty() => arg.help(format!("{help} [default: {default}]")),
                    _ => arg,
                };
                arg.env(env)
            }
        })
    });
    let matches = command.try_get_matches_from_mut(std::env::args_os()).unwrap_or_else(|e| {
        // clap names a bad value by its flag even when it came from the environment.
        if let Some(var) = from_environment(&command, &e, std::env::args_os().skip(1)) {
            let _ = e.print();
            eprintln!("note: that value comes from the environment variable {var}");
            std::process::exit(e.exit_code());
        }
        e.exit()
    });
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// The environment variable that supplied the value `error` refuses, when the flag it
/// names was not on the command line `args` (so the value can only have come from there).
fn from_environment(
    command: &clap::Command,
    error: &clap::Error,
    args: impl Iterator<Item = std::ffi::OsString>,
) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(error.kind(), ErrorKind::ValueValidation | ErrorKind::InvalidValue) {
        return None;
    }
    let Some(ContextValue::String(arg)) = error.get(ContextKind::InvalidArg) else { return None };
    let long = arg.split([' ', '=']).next()?.strip_prefix("--")?;
    let flag = format!("--{long}");
    let given = args.map(|a| a.to_string_lossy().into_owned()).any(|a| a.split('=').next() == Some(flag.as_str()));
    if given {
        return None;
    }
    let var = command
        .get_subcommands()
        .flat_map(clap::Command::get_arguments)
        .find(|a| a.get_long() == Some(long))?
        .get_env()?
        .to_string_lossy()
        .into_owned();
    std::env::var_os(&var).is_some().then_some(var)
}

/// The configuration reference as a Markdown table.
pub fn config_reference_markdown() -> String {
    let mut out =
        String::from("| setting (TOML) | flag | environment | default | meaning |\n| --- | --- | --- | --- | --- |\n");
    for s in Config::reference() {
        out.push_str(&format!(
            "| `{}` | `--{}` | `TIDEGATE_{}` | `{}` | {} |\n",
            s.name,
            s.name.replace('_', "-"),
            s.name.to_ascii_uppercase(),
            s.default,
            s.doc.replace('|', "\\|")
        ));
    }
    out
}

/// The configuration reference as a commented TOML file of defaults.
pub fn config_reference_toml() -> String {
    let mut out = String::new();
    for s in Config::reference() {
        out.push_str(&format!("# {}\n{} = {}\n\n", s.doc, s.name, s.default));
    }
    out
}
