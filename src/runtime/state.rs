//! The runtime state every milter session and background task shares: the configuration
//! and engine in force (swapped as one on reload), the registry, and what the mail log says
//! about the messages pecora injected.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use crate::config::Config;
use crate::runtime::engine::Engine;
use crate::runtime::injection_log::InjectionLog;
use crate::store::Store;

/// The configuration and what was loaded from it, swapped as one on reload.
pub struct Runtime {
    pub config: Arc<Config>,
    pub engine: Arc<Engine>,
}

/// State shared by every milter session and background task.
pub struct Shared {
    runtime: RwLock<Arc<Runtime>>,
    config_path: PathBuf,
    /// The registry (and outbox). Its URL is read at start only.
    pub store: Store,
    /// Permits for transactions at the MX whose message passed `limits.spool_threshold`
    /// (`limits.max_large_transactions`, read at start only): bounds the memory that
    /// unauthenticated senders can make pecora hold at once.
    pub large_transactions: Arc<tokio::sync::Semaphore>,
    /// What the mail log says about the messages pecora injected (crate::daemon::queue_confirm
    /// fills it, the outbox worker asks it before submitting a message again).
    pub injection_log: Arc<InjectionLog>,
}

impl Shared {
    /// The state of a daemon that runs `store`; the store is handed the process-wide
    /// metrics as its [`crate::store::Observer`].
    pub fn new(config: Config, engine: Engine, store: Store, config_path: PathBuf) -> Shared {
        let large_transactions = Arc::new(tokio::sync::Semaphore::new(config.limits.max_large_transactions.max(1) as usize));
        let injection_log = Arc::new(InjectionLog::new(config.postfix.maillog.is_some()));
        let runtime = Runtime { config: Arc::new(config), engine: Arc::new(engine) };
        // The daemon's metrics count what the store records and refuses.
        let store = store.with_observer(crate::runtime::metrics::global().clone());
        Shared { runtime: RwLock::new(Arc::new(runtime)), config_path, store, large_transactions, injection_log }
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
        if new.store.url != old.store.url {
            tracing::warn!("new value for store.url not loaded, restart needed");
            new.store.url = old.store.url.clone();
        }
        if new.log.format != old.log.format || new.log.level != old.log.level {
            tracing::warn!("new log settings not loaded, restart needed");
            new.log = old.log.clone();
        }
        if new.metrics != old.metrics {
            tracing::warn!("new value for metrics.listen not loaded, restart needed");
            new.metrics = old.metrics.clone();
        }
        let engine = match Engine::load(&new) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!("configuration not reloaded: {e}");
                return;
            }
        };
        // A new signing key seals the outbox rows from now on; the rows the old one sealed
        // are still queued, so its seals keep verifying (crate::store::seal).
        match crate::store::seal::OutboxKey::from_signer(&engine.signer) {
            Ok(k) => {
                let (changed, revoked) = self.store.rotate_outbox_key(k, engine.previous_outbox_keys.clone());
                if revoked > 0 {
                    tracing::warn!(keys = revoked,
                        "previous signing keys no longer in keys.previous_private_keys: outbox rows they sealed are refused from now on");
                }
                if changed {
                    tracing::warn!("new signing key: outbox rows are sealed with it from now on; those the old key sealed still go out until this process stops. \
                        List the old key in keys.previous_private_keys before the next restart, or they are refused then");
                }
            }
            Err(e) => {
                tracing::error!("configuration not reloaded: cannot derive the outbox key from the new signing key: {e}");
                return;
            }
        }
        let runtime = Runtime { config: Arc::new(new), engine: Arc::new(engine) };
        *self.runtime.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(runtime);
        tracing::info!(file = %self.config_path.display(), "configuration reloaded");
    }
}
