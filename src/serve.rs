//! `pecora serve`: the daemon. It listens on the milter socket, reloads its configuration on
//! SIGHUP without dropping connections, and shuts down gracefully on SIGTERM/SIGINT.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, RwLock};

use indymilter::EitherListener;
use tokio::net::{TcpListener, UnixListener};
use tokio::signal::unix::{SignalKind, signal};

use crate::config::{Config, SocketSpec};
use crate::engine::Engine;

/// The configuration and what was loaded from it, swapped as one on reload.
pub struct Runtime {
    pub config: Arc<Config>,
    pub engine: Arc<Engine>,
}

/// State shared by every milter session and background task.
pub struct Shared {
    runtime: RwLock<Arc<Runtime>>,
    config_path: PathBuf,
}

impl Shared {
    pub fn new(config: Config, engine: Engine, config_path: PathBuf) -> Shared {
        let runtime = Runtime { config: Arc::new(config), engine: Arc::new(engine) };
        Shared { runtime: RwLock::new(Arc::new(runtime)), config_path }
    }

    /// The configuration and engine in force now. A session keeps the snapshot it started
    /// with, so a reload never changes the rules in the middle of a transaction.
    pub fn snapshot(&self) -> Arc<Runtime> {
        self.runtime.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Re-reads the configuration file. On any error the running configuration stays.
    pub fn reload(&self) {
        let new = match Config::load(&self.config_path) {
            Ok(c) => c,
            Err(errors) => {
                for e in &errors {
                    tracing::error!("configuration not reloaded: {e}");
                }
                return;
            }
        };
        let old_runtime = self.snapshot();
        let old = &old_runtime.config;
        let mut new = new;
        if new.listen.milter != old.listen.milter {
            tracing::warn!("new value for listen.milter not loaded, restart needed");
            new.listen.milter = old.listen.milter.clone();
        }
        if new.listen.delivery_spool != old.listen.delivery_spool {
            tracing::warn!("new value for listen.delivery_spool not loaded, restart needed");
            new.listen.delivery_spool = old.listen.delivery_spool.clone();
        }
        if new.log.format != old.log.format || new.log.level != old.log.level {
            tracing::warn!("new log settings not loaded, restart needed");
            new.log = old.log.clone();
        }
        let engine = match Engine::load(&new) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!("configuration not reloaded: {e}");
                return;
            }
        };
        let runtime = Runtime { config: Arc::new(new), engine: Arc::new(engine) };
        *self.runtime.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(runtime);
        tracing::info!(file = %self.config_path.display(), "configuration reloaded");
    }
}

/// A message pecora generated, on its way to the injection listener.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Postfix queue id of the transaction that caused it (for the logs).
    pub queue_id: String,
    /// PEC identifier of the transaction.
    pub pec_id: String,
    /// What it is (accettazione, non-accettazione, …).
    pub what: &'static str,
    pub mail_from: String,
    pub rcpts: Vec<String>,
    pub message: Vec<u8>,
}

impl Shared {
    /// Submits a generated message through the injection listener, retrying with
    /// exponential backoff (1 s doubling to 5 min) until Postfix takes it or refuses it
    /// permanently.
    pub fn send(&self, out: Outgoing) {
        let runtime = self.snapshot();
        let config = &runtime.config;
        let helo = config.inject.helo.clone().unwrap_or_else(|| config.host_id());
        let injector = crate::inject::Injector::new(config.inject.endpoint.clone(), helo);
        tokio::spawn(async move {
            let mut delay = std::time::Duration::from_secs(1);
            let mut attempt = 1u32;
            loop {
                match injector.submit(&out.mail_from, &out.rcpts, &out.message).await {
                    Ok(reply) => {
                        tracing::info!(
                            queue_id = %out.queue_id,
                            pec_id = %out.pec_id,
                            injected_as = crate::inject::queue_id_of(&reply).as_deref().unwrap_or("?"),
                            to = ?out.rcpts,
                            "{} sent", out.what
                        );
                        return;
                    }
                    Err(e) if e.is_temporary() => {
                        tracing::warn!(queue_id = %out.queue_id, pec_id = %out.pec_id, attempt, "{} not sent yet: {e}; retrying in {delay:?}", out.what);
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(std::time::Duration::from_secs(300));
                        attempt += 1;
                    }
                    Err(e) => {
                        tracing::error!(queue_id = %out.queue_id, pec_id = %out.pec_id, "{} refused by the injection listener: {e}", out.what);
                        return;
                    }
                }
            }
        });
    }
}

type MilterListener = EitherListener<TcpListener, UnixListener>;

/// Binds the milter socket. A stale unix socket is removed first, but only if it really is a
/// socket: pecora never deletes a regular file by mistake.
async fn bind(spec: &SocketSpec) -> std::io::Result<MilterListener> {
    match spec {
        SocketSpec::Inet(addr) => Ok(EitherListener::Tcp(TcpListener::bind(addr).await?)),
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

/// Runs the daemon until SIGTERM or SIGINT. The configuration was loaded and validated by
/// the caller, and logging is installed.
pub async fn run(config: Config, config_path: PathBuf) -> ExitCode {
    let engine = match Engine::load(&config) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("pecora: {e}");
            return ExitCode::from(1);
        }
    };
    let spec = config.listen.milter.clone();
    let listener = match bind(&spec).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(socket = %spec, "cannot open the milter socket: {e}");
            eprintln!("pecora: cannot open the milter socket {spec}: {e}");
            return ExitCode::from(2);
        }
    };
    let shared = Arc::new(Shared::new(config, engine, config_path));

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

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let reloader = shared.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    let r = reloader.clone();
                    // Reading files is blocking; keep it off the async workers.
                    let _ = tokio::task::spawn_blocking(move || r.reload()).await;
                }
                _ = term.recv() => { tracing::info!("SIGTERM received, shutting down"); break; }
                _ = int.recv() => { tracing::info!("SIGINT received, shutting down"); break; }
            }
        }
        let _ = stop_tx.send(());
    });

    tracing::info!(version = crate::VERSION, milter = %spec, "{} starting", crate::NAME);
    let result = run_milter(listener, shared, stop_rx).await;

    if let SocketSpec::Unix(path) = &spec {
        let _ = remove_stale_socket(path);
    }
    match result {
        Ok(()) => {
            tracing::info!("{} shut down", crate::NAME);
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("{} terminated with error: {e}", crate::NAME);
            ExitCode::FAILURE
        }
    }
}
