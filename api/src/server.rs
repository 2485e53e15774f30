//! Running a node: open the store, serve HTTP, shut down in order.
//!
//! Shutdown order: stop accepting connections and mark the node not ready; let
//! in-flight requests finish (long-polls return at once; appends are acknowledged or
//! failed, never dropped) for at most `shutdown_timeout_ms`; then drain the writer
//! queue, sync the WAL and flush RocksDB.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tidegate_storage::Store;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::state::AppState;
use crate::tls::GatewayListener;

/// Why a node could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The store could not be opened or closed cleanly.
    #[error("storage: {0}")]
    Storage(#[from] tidegate_storage::StorageError),
    /// The HTTP server failed.
    #[error("http server: {0}")]
    Io(#[from] std::io::Error),
    /// The settings cannot be used safely (keys, certificates, an open bind address).
    #[error("{0}")]
    Refused(String),
}

/// Refuses to serve a non-loopback address with authentication off, unless
/// `insecure` is set.
pub fn check_bind(config: &Config, addr: SocketAddr) -> Result<(), ServeError> {
    if addr.ip().is_loopback() || config.auth_configured() || config.insecure {
        return Ok(());
    }
    Err(ServeError::Refused(format!(
        "refusing to serve {addr} without authentication: anyone who can reach it could read and \
         write every topic. Configure jwt_keys, jwks_file or write_keys, bind a loopback address \
         (127.0.0.1), or pass --insecure if this is really wanted"
    )))
}

/// Serves the gateway on `listener` until `shutdown` completes, then shuts down in
/// order. Returns once the store is closed.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let local_addr = listener.local_addr()?;
    check_bind(&config, local_addr)?;
    let security = crate::auth::Security::from_config(&config).map_err(ServeError::Refused)?;
    let cors = crate::auth::cors::layer(&config).map_err(ServeError::Refused)?;
    let listener = if config.tls_enabled() {
        let tls = crate::tls::server_config(&config).map_err(ServeError::Refused)?;
        GatewayListener::tls(listener, tls, Duration::from_millis(config.tls_handshake_timeout_ms))?
    } else {
        GatewayListener::plain(listener)
    };
    let store_config = config.store_config();
    // Probes get an answer while the store opens (a long WAL replay): alive, not ready.
    let opening = tokio::task::spawn_blocking(move || Store::open(store_config));
    let header_timeout = Duration::from_millis(config.http_header_timeout_ms);
    let (opened, listener) = crate::starting::answer_while(listener, opening, header_timeout).await;
    let store = opened.map_err(|e| tidegate_storage::StorageError::Internal(e.to_string()))??;
    let grace = Duration::from_millis(config.shutdown_timeout_ms);
    let delivery = crate::delivery::Delivery::start(config.delivery_threads)?;
    let state = AppState::new(config, store.clone(), security, local_addr, delivery);
    crate::metrics::handle();
    let upkeep = tokio::spawn(async {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            crate::metrics::handle().run_upkeep();
        }
    });
    let expiry_state = state.clone();
    let expiry = tokio::spawn(async move {
        let mut tick =
            tokio::time::interval(Duration::from_millis((expiry_state.config.session_timeout_ms / 4).max(50)));
        loop {
            tick.tick().await;
            expiry_state.coordinator.expire();
        }
    });
    let security_state = state.clone();
    let security_upkeep = tokio::spawn(async move {
        let every = Duration::from_millis(security_state.config.jwks_reload_interval_ms);
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let s = security_state.clone();
            let tracked = tokio::task::spawn_blocking(move || {
                s.security.verifier().reload_if_changed();
                s.security.limits().forget_idle()
            })
            .await
            .unwrap_or(0);
            metrics::gauge!("tidegate_rate_limit_tracked_ips").set(tracked as f64);
        }
    });
    let app = crate::routes::router(state.clone(), cors);
    state.ready.store(true, Ordering::Release);
    tracing::info!(
        addr = %state.local_addr,
        tls = state.config.tls_enabled(),
        auth = state.security.enabled(),
        "tidegate listening"
    );

    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let signal_state = state.clone();
    let limits = crate::connections::ConnectionLimits {
        header_timeout: Duration::from_millis(state.config.http_header_timeout_ms),
        body_timeout: Duration::from_millis(state.config.http_body_timeout_ms),
        body_total_timeout: Duration::from_millis(state.config.http_body_total_timeout_ms),
        max_connections: usize::try_from(state.config.max_connections).unwrap_or(usize::MAX),
        head: crate::head_problems::HeadLimits {
            max_head_bytes: usize::try_from(state.config.max_request_head_bytes).unwrap_or(usize::MAX),
            max_headers: usize::try_from(state.config.max_request_headers).unwrap_or(usize::MAX),
        },
        memory: state.request_memory.clone(),
    };
    let server = crate::connections::serve_connections(listener, app, limits, async move {
        shutdown.await;
        tracing::info!("shutting down: no new connections, finishing in-flight requests");
        signal_state.ready.store(false, Ordering::Release);
        signal_state.store.begin_shutdown();
        let _ = stopping_tx.send(());
    });
    let served: Result<(), ServeError> = tokio::select! {
        () = server => Ok(()),
        () = async {
            if stopping_rx.await.is_ok() {
                tokio::time::sleep(grace).await;
            } else {
                std::future::pending::<()>().await;
            }
        } => {
            tracing::warn!(grace_ms = grace.as_millis() as u64, "in-flight requests did not finish in time; closing anyway");
            Ok(())
        }
    };
    for task in [upkeep, expiry, security_upkeep] {
        task.abort();
        // Resolves once the task's future (and its state clone) is dropped.
        let _ = task.await;
    }
    // Upgraded connections (WebSocket) and SSE streams are not tracked by the HTTP
    // server: wait, within the grace period, until every subscription has seen the
    // closing signal and ended (each holds a permit until its last use of the store),
    // so their final commits are written and the store is really closed on return.
    let everyone = u32::try_from(state.config.max_subscriptions).unwrap_or(u32::MAX);
    if tokio::time::timeout(grace, state.subscriptions.acquire_many(everyone)).await.is_err() {
        tracing::warn!(grace_ms = grace.as_millis() as u64, "subscriptions still open after the grace period");
    }
    // Sessions still running past the grace period are dropped here.
    state.delivery.stop();
    let closed = store.close().await;
    tracing::info!("store closed");
    // The data directory is released when the last handle on the store is gone: wait
    // (within the grace period) for stragglers such as a blocking read that was under
    // way, so a caller may open the same directory as soon as this returns.
    drop(state);
    if !store.wait_released(grace).await {
        tracing::warn!("the store is still referenced after the grace period; its files stay locked until then");
    }
    served?;
    closed?;
    Ok(())
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
