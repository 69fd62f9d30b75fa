//! `pecora serve`: the daemon. It listens on the milter socket, reloads its configuration on
//! SIGHUP without dropping connections, and shuts down gracefully on SIGTERM/SIGINT.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use indymilter::EitherListener;
use tokio::net::{TcpListener, UnixListener};
use tokio::signal::unix::{SignalKind, signal};

use crate::config::{Config, SocketSpec};
use crate::runtime::engine::Engine;
use crate::adapters::inject::Injector;
use crate::runtime::state::Shared;
use crate::store::Store;
use crate::store::outbox::{Backoff, OutboxWorker};

type MilterListener = EitherListener<NoDelayTcpListener, UnixListener>;

/// A TCP milter listener whose connections send without Nagle's delay: the milter answers
/// in several small packets (one per header change) that Postfix reads without replying,
/// so with Nagle each would wait for a delayed ACK (tens of milliseconds per message).
pub struct NoDelayTcpListener(pub TcpListener);

impl indymilter::Listener for NoDelayTcpListener {
    type Io = tokio::net::TcpStream;

    fn poll_accept(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<Self::Io>> {
        self.0.poll_accept(cx).map(|r| {
            r.map(|(stream, _)| {
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::warn!("cannot set TCP_NODELAY on a milter connection: {e}");
                }
                stream
            })
        })
    }
}

/// Binds the milter socket. A stale unix socket is removed first, but only if it really is a
/// socket: pecora never deletes a regular file by mistake.
async fn bind(spec: &SocketSpec) -> std::io::Result<MilterListener> {
    match spec {
        SocketSpec::Inet(addr) => Ok(EitherListener::Tcp(NoDelayTcpListener(TcpListener::bind(addr).await?))),
        SocketSpec::Unix(path) => {
            remove_stale_socket(path)?;
            let l = UnixListener::bind(path)?;
            // Postfix (another user) must be able to connect; nobody else should.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
            Ok(EitherListener::Unix(l))
        }
    }
}

fn remove_stale_socket(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path),
        Ok(_) => Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a socket; refusing to remove it", path.display()),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Serves milter connections on `listener` until `shutdown` completes. Sessions in the
/// middle of a command finish it first.
pub async fn run_milter(
    listener: impl indymilter::Listener,
    shared: Arc<Shared>,
    shutdown: impl std::future::Future,
) -> std::io::Result<()> {
    let milter_config = indymilter::Config { max_connections: 64, ..Default::default() };
    indymilter::run(listener, crate::milter::callbacks(shared), milter_config, shutdown).await
}

/// The background workers: the outbox (submits generated messages through the injection
/// listener, retrying with backoff) and housekeeping (checkpoints and retention, on the one
/// host that holds the leader lock).
pub fn spawn_workers(shared: &Arc<Shared>, stop: tokio::sync::watch::Receiver<bool>) -> Vec<tokio::task::JoinHandle<()>> {
    spawn_supervised_workers(shared, stop, tokio::sync::mpsc::unbounded_channel().0)
}

/// Runs `work` as the worker `name`. Should it end (a panic, or a return) before `stop`
/// turns true, the reason is logged as an error and `name` is sent on `died`: the daemon
/// then stops with an error, so that its supervisor (systemd's `Restart=on-failure`)
/// starts it again, rather than going on with, say, no one settling held receipts.
fn supervised(
    name: &'static str,
    work: impl std::future::Future<Output = ()> + Send + 'static,
    stop: tokio::sync::watch::Receiver<bool>,
    died: tokio::sync::mpsc::UnboundedSender<&'static str>,
) -> tokio::task::JoinHandle<()> {
    let task = tokio::spawn(work);
    tokio::spawn(async move {
        let how = match task.await {
            Ok(()) => "returned".to_string(),
            Err(e) if e.is_panic() => {
                let p = e.into_panic();
                let text = p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned());
                format!("panicked: {}", text.unwrap_or_else(|| "(no message)".into()))
            }
            Err(e) => e.to_string(),
        };
        if !*stop.borrow() {
            tracing::error!(worker = name, "the {name} worker stopped ({how}); pecora stops too, so that its supervisor starts it again");
            let _ = died.send(name);
        }
    })
}

/// [`spawn_workers`], each worker [`supervised`]: the name of one that ends before `stop`
/// is sent on `died`.
pub fn spawn_supervised_workers(
    shared: &Arc<Shared>,
    stop: tokio::sync::watch::Receiver<bool>,
    died: tokio::sync::mpsc::UnboundedSender<&'static str>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let runtime = shared.snapshot();
    let config = &runtime.config;
    let helo = config.inject.helo.clone().unwrap_or_else(|| config.host_id());
    let injector = Injector::new(config.inject.endpoint.clone(), helo);
    let worker = OutboxWorker::new(shared.store.clone(), injector, format!("{}-outbox", config.host_id()))
        .with_backoff(Backoff {
            base: std::time::Duration::from_secs(2),
            cap: std::time::Duration::from_secs(600),
            max_attempts: 300,
        })
        .with_injection_record(shared.injection_log.clone());
    let outbox_stop = stop.clone();
    vec![
        supervised(
            "outbox",
            async move { worker.run(std::time::Duration::from_millis(500), outbox_stop).await },
            stop.clone(),
            died.clone(),
        ),
        supervised("delivery", crate::delivery::worker::run(shared.clone(), stop.clone()), stop.clone(), died.clone()),
        supervised("reconcile", crate::delivery::reconcile::run(shared.clone(), stop.clone()), stop.clone(), died.clone()),
        supervised("queue_confirm", crate::daemon::queue_confirm::run(shared.clone(), stop.clone()), stop.clone(), died.clone()),
        supervised("housekeeping", housekeeping(shared.clone(), stop.clone()), stop, died),
    ]
}

/// Checkpoints at the configured interval and the daily retention purge, run by the leader.
async fn housekeeping(shared: Arc<Shared>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut leader = None;
    let mut last_purge: Option<chrono::DateTime<chrono::Utc>> = None;
    loop {
        if *stop.borrow() {
            return;
        }
        if leader.is_none() {
            match shared.store.try_lead("housekeeping").await {
                Ok(Some(l)) => {
                    tracing::info!("this host now runs checkpoints, retention and timers");
                    leader = Some(l);
                }
                Ok(None) => {}
                Err(e) => tracing::warn!("cannot take the leader lock: {e}"),
            }
        }
        if let Some(l) = &leader {
            if !l.still_leader().await {
                tracing::warn!("leader lock lost; another host takes over");
                leader = None;
            }
        }
        if leader.is_some() {
            let runtime = shared.snapshot();
            let (config, engine) = (&runtime.config, &runtime.engine);
            let now = chrono::Utc::now();
            let dir = config.store.checkpoint_dir.clone();
            if let Err(e) = std::fs::create_dir_all(&dir) {
                tracing::warn!(dir = %dir.display(), "cannot create the checkpoint directory: {e}");
            }
            match shared.store.checkpoint_if_due(&engine.signer, now, config.store.checkpoint_interval.std(), Some(&dir)).await {
                Ok(Some(cp)) => tracing::info!(seq = cp.seq, "registry checkpoint written"),
                Ok(None) => {}
                Err(e) => tracing::error!("registry checkpoint failed: {e}"),
            }
            match crate::daemon::timers::run_once(&shared.store, config, engine, now).await {
                Ok(r) if r.twelve + r.twenty_four > 0 => tracing::info!(twelve_hours = r.twelve, twenty_four_hours = r.twenty_four, "time-limit notices queued"),
                Ok(_) => {}
                Err(e) => tracing::error!("timer job failed: {e}"),
            }
            if last_purge.is_none_or(|t| now - t > chrono::Duration::hours(24)) {
                match shared.store.purge(&engine.signer, now, config.store.retention.std(), Some(&dir)).await {
                    Ok(r) if r.cut_seq > 0 => tracing::info!(cut = r.cut_seq, "retention purge done"),
                    Ok(_) => {}
                    Err(e) => tracing::error!("retention purge failed: {e}"),
                }
                last_purge = Some(now);
            }
        }
        let pause = shared.snapshot().config.timers.interval.std().min(std::time::Duration::from_secs(30));
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.changed() => {}
        }
    }
}

/// Ignores SIGHUP until [`run`] takes it over: the first thing `pecora serve` does. Until
/// then a SIGHUP (`systemctl reload` right after a start, a logrotate postrotate) would end
/// the process by its default action, and systemd counts SIGHUP as a clean exit, so
/// `Restart=on-failure` would leave the milter down. A SIGHUP before the handlers are in
/// place is dropped: the configuration is being read for the first time anyway.
pub fn ignore_hangup_until_ready() {
    // SAFETY: setting a standard signal's disposition to SIG_IGN, before any other thread
    // exists; no handler code runs.
    unsafe {
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
}

/// Tells the service manager (systemd's `Type=notify`, through `$NOTIFY_SOCKET`) how the
/// daemon stands; nothing without that variable. A failure is logged and changes nothing.
fn tell_service_manager(state: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(false, state) {
        tracing::warn!("cannot notify the service manager ($NOTIFY_SOCKET): {e}");
    }
}

/// Runs the daemon until SIGTERM or SIGINT. The configuration was loaded and validated by
/// the caller, and logging is installed.
pub async fn run(config: Config, config_path: PathBuf) -> ExitCode {
    // A panic anywhere (a milter session, a worker) goes to the log like any error, with
    // where it happened; the session or worker it ends is answered or supervised.
    std::panic::set_hook(Box::new(|info| tracing::error!("panic: {info}")));
    // The handlers come first: a SIGHUP or SIGTERM while the keys, the index and the
    // registry load waits for the loop below (a reload, or a shutdown before serving).
    let (mut hup, mut term, mut int) = match (
        signal(SignalKind::hangup()),
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(h), Ok(t), Ok(i)) => (h, t, i),
        _ => {
            eprintln!("pecora: cannot install signal handlers");
            return ExitCode::from(2);
        }
    };
    let engine = match Engine::load(&config) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("pecora: {e}");
            return ExitCode::from(1);
        }
    };
    let store = match Store::open(&config.store.url).await {
        Ok(s) => s.with_host(config.host_id()),
        Err(e) => {
            tracing::error!(store = %config.store.url, "cannot open the registry: {e}");
            eprintln!("pecora: cannot open the registry {}: {e}", config.store.url);
            return ExitCode::from(2);
        }
    };
    // Every outbox row is sealed with a key derived from the signing key, and the worker
    // injects only rows whose seal verifies (crate::store::seal), under this key or a
    // previous one (keys.previous_private_keys).
    let store = match crate::store::seal::OutboxKey::from_signer(&engine.signer) {
        Ok(k) => store.with_outbox_keys(crate::store::seal::OutboxKeys::new(k, engine.previous_outbox_keys.clone())),
        Err(e) => {
            tracing::error!("cannot derive the outbox key from the signing key: {e}");
            eprintln!("pecora: cannot derive the outbox key from the signing key: {e}");
            return ExitCode::from(1);
        }
    };
    // At the upgrade that brought seals, the rows the older version queued are sealed now,
    // before any worker runs.
    match store.seal_unsealed().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(rows = n, "outbox rows queued before this version sealed at upgrade"),
        Err(e) => {
            tracing::error!("cannot seal the outbox rows of the previous version: {e}");
            eprintln!("pecora: cannot seal the outbox rows of the previous version: {e}");
            return ExitCode::from(2);
        }
    }
    // Bound before the milter socket, so a failure leaves no socket behind.
    let metrics_task = match config.metrics.listen {
        Some(addr) => match TcpListener::bind(addr).await {
            Ok(l) => {
                tracing::info!(%addr, "metrics endpoint listening");
                let source = crate::runtime::metrics::ScrapeSource::new(config.store.url.clone(), config.host_id(), Some(config.index.file.clone()))
                    .with_delivery_spool(config.listen.delivery_spool.clone());
                Some(tokio::spawn(crate::runtime::metrics::serve_on(l, crate::runtime::metrics::global().clone(), Some(Arc::new(source)))))
            }
            Err(e) => {
                tracing::error!(%addr, "cannot open the metrics endpoint: {e}");
                eprintln!("pecora: cannot open the metrics endpoint {addr}: {e}");
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    let spec = config.listen.milter.clone();
    let listener = match bind(&spec).await {
        Ok(l) => l,
        Err(e) => {
            let hint = match (&spec, e.kind()) {
                (SocketSpec::Unix(p), std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied) => format!(
                    " (its directory {} must exist and be writable by pecora: `pecora setup postfix --apply` makes it, set-group-id of Postfix's group, mode 2750)",
                    p.parent().unwrap_or(p).display()
                ),
                _ => String::new(),
            };
            tracing::error!(socket = %spec, "cannot open the milter socket: {e}{hint}");
            eprintln!("pecora: cannot open the milter socket {spec}: {e}{hint}");
            return ExitCode::from(2);
        }
    };
    let shared = Arc::new(Shared::new(config, engine, store, config_path));
    let (workers_stop, workers_stopped) = tokio::sync::watch::channel(false);
    let (died_tx, mut died_rx) = tokio::sync::mpsc::unbounded_channel();
    let workers = spawn_supervised_workers(&shared, workers_stopped, died_tx);

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let reloader = shared.clone();
    // Ends with whether a worker's death (rather than a signal) stopped the daemon.
    let signals = tokio::spawn(async move {
        let mut worker_died = false;
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    let r = reloader.clone();
                    // Reading files is blocking; keep it off the async workers.
                    let _ = tokio::task::spawn_blocking(move || r.reload()).await;
                }
                _ = term.recv() => { tracing::info!("SIGTERM received, shutting down"); break; }
                _ = int.recv() => { tracing::info!("SIGINT received, shutting down"); break; }
                Some(name) = died_rx.recv() => {
                    tracing::error!(worker = name, "a worker stopped: shutting down with an error");
                    worker_died = true;
                    break;
                }
            }
        }
        tell_service_manager(&[sd_notify::NotifyState::Stopping]);
        let _ = stop_tx.send(());
        worker_died
    });

    tracing::info!(version = crate::VERSION, milter = %spec, "{} starting", crate::NAME);
    // The milter socket is open (Postfix's connections wait in its backlog) and the workers
    // run: systemd may start Postfix now (`Before=postfix.service`).
    let status = format!("milter on {spec}");
    tell_service_manager(&[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status(&status)]);
    let result = run_milter(listener, shared, stop_rx).await;
    // The milter has stopped taking messages; let the workers finish what they hold.
    let _ = workers_stop.send(true);
    for w in workers {
        let _ = w.await;
    }
    if let Some(m) = metrics_task {
        m.abort();
    }

    if let SocketSpec::Unix(path) = &spec {
        let _ = remove_stale_socket(path);
    }
    match result {
        // The milter stops without an error only once the signal task sent the stop: that
        // task has ended, or is ending, and says why.
        Ok(()) => {
            if signals.await.unwrap_or(false) {
                tracing::error!("{} shut down because a worker stopped (see above)", crate::NAME);
                ExitCode::FAILURE
            } else {
                tracing::info!("{} shut down", crate::NAME);
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            signals.abort();
            tracing::error!("{} terminated with error: {e}", crate::NAME);
            ExitCode::FAILURE
        }
    }
}
