//! `tidegate` binary: parses the command line and wires signals; everything else
//! lives in the library.

use std::process::ExitCode;

use tidegate::cli::{self, Command};
use tidegate::config::Config;

/// mimalloc: fewer cycles per allocation than glibc's malloc on the ingest path, and
/// less fragmentation under many threads.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Logs to stderr, in colour only when stderr is a terminal (a pipe, file or journal
/// gets plain text). `RUST_LOG`, when set and valid, overrides `filter`.
fn init_tracing(filter: &str) {
    use std::io::IsTerminal;
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => tracing_subscriber::EnvFilter::try_new(&v).unwrap_or_else(|e| {
            eprintln!("warning: RUST_LOG is not a log filter ({e}); using {filter:?}");
            tracing_subscriber::EnvFilter::new(filter)
        }),
        _ => tracing_subscriber::EnvFilter::new(filter),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

/// Reports why the server stops: in the log, or on stderr when the log filter hides
/// errors (`--log off`), so a failed start is never silent.
fn fatal(message: &str, error: &dyn std::fmt::Display) {
    if tracing::enabled!(tracing::Level::ERROR) {
        tracing::error!(error = %error, "{message}");
    } else {
        eprintln!("error: {message}: {error}");
    }
}

fn main() -> ExitCode {
    let cli = cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Serve { config, settings } => {
            let config = match Config::load(config.as_deref(), *settings) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            if let Err(e) = tidegate::server::check_bind(&config, config.addr) {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
            init_tracing(&config.log);
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::bind(config.addr).await {
                    Ok(l) => l,
                    Err(e) => {
                        fatal(&format!("cannot listen on {}", config.addr), &e);
                        return ExitCode::FAILURE;
                    }
                };
                match tidegate::serve(config, listener, tidegate::shutdown_signal()).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        fatal("stopped with an error", &e);
                        ExitCode::FAILURE
                    }
                }
            })
        }
        Command::Bench(cmd) => {
            init_tracing("warn");
            match runtime.block_on(tidegate::bench::run(cmd)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Token(args) => match tidegate::auth::mint::mint(&args) {
            Ok(token) => {
                println!("{token}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Command::Openapi { write } => {
            let doc = tidegate::routes::openapi_json();
            match write {
                Some(path) => match std::fs::write(&path, doc) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("error: cannot write {}: {e}", path.display());
                        ExitCode::FAILURE
                    }
                },
                None => {
                    print!("{doc}");
                    ExitCode::SUCCESS
                }
            }
        }
        Command::Client(cmd) => runtime.block_on(tidegate::client::run(cmd)),
        Command::Config { toml } => {
            if toml {
                print!("{}", cli::config_reference_toml());
            } else {
                print!("{}", cli::config_reference_markdown());
            }
            ExitCode::SUCCESS
        }
    }
}
