//! The `pecora` command: the PEC daemon and its operator tools.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use pecora::config::{self, Config};

/// pecora turns Postfix and Dovecot into an Italian certified-mail (PEC) point: it signs
/// transport envelopes and receipts, verifies incoming PEC mail and keeps the registry.
///
/// Exit status: 0 success, 1 a check failed (invalid message, tampered registry,
/// misconfiguration found), 2 usage or environment error.
#[derive(Parser)]
#[command(name = "pecora", version, max_term_width = 100)]
struct Cli {
    /// Configuration file.
    #[arg(long, short = 'c', global = true, value_name = "FILE", default_value = config::DEFAULT_PATH)]
    config: PathBuf,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: the milter for Postfix, the delivery hook, timers and the outbox.
    ///
    /// Runs in the foreground (systemd starts it as a simple service). SIGHUP reloads the
    /// configuration, SIGTERM stops it gracefully.
    Serve,
    /// Check the configuration file and print what is wrong, with file, line and key.
    Check,
    /// Search, show and verify the event registry (the 30-month legal log).
    ///
    /// `log verify` exits 0 when the chain and its signed checkpoints hold, 1 when a row was
    /// changed, inserted or deleted (and names the first one), 2 when it cannot be read.
    Log {
        #[command(subcommand)]
        cmd: pecora::cmd::log::LogCommand,
    },
    /// Reproduce a receipt the user lost, as a new signed copy from the registry.
    ///
    /// `receipt reproduce ID` exits 0 when the copy was made, 1 when nothing reproducible
    /// matches ID, 2 on usage or environment errors.
    Receipt {
        #[command(subcommand)]
        cmd: pecora::cmd::receipt::ReceiptCommand,
    },
    /// The outbox: list what waits or failed; put failed messages back once fixed.
    ///
    /// `outbox retry ID...` exits 0 when every message was queued again, 1 when one was not
    /// (not found, not failed, or its seal is not pecora's), 2 on environment errors.
    Outbox {
        #[command(subcommand)]
        cmd: pecora::cmd::outbox::OutboxCommand,
    },
    /// Verify saved PEC messages: is each one genuine, and what does it certify?
    ///
    /// Checks the S/MIME signature, that the signer is in the provider index, that its
    /// certificate was valid at the message's certified instant, and that the headers agree
    /// with the signed daticert.xml. Works without a configuration file when --index is
    /// given. Exit 0 when every file is genuine, 1 otherwise, 2 on usage errors.
    Verify(pecora::cmd::check::VerifyArgs),
    /// Signing key and certificate: generate a key and CSR with the PEC profile; show and
    /// check the configured certificate and warn ahead of its expiry.
    Keys {
        #[command(subcommand)]
        cmd: pecora::cmd::keys::KeysCommand,
    },
    /// Check the running setup (configuration, keys, index, registry, milter, Postfix,
    /// Dovecot, clock) and say how to fix what is wrong.
    ///
    /// Exit status 0 when nothing failed (warnings allowed), 1 when something failed, 2 on
    /// usage errors: run it from monitoring.
    Doctor(pecora::cmd::doctor::DoctorArgs),
    /// Print, or apply with --apply, the Postfix and Dovecot settings pecora needs (the
    /// fragments under /usr/share/pecora with their placeholders filled).
    Setup {
        #[command(subcommand)]
        cmd: pecora::cmd::setup::SetupCommand,
    },
    /// The provider index: `index update` fetches it from index.url, checks it and swaps it in.
    Index {
        #[command(subcommand)]
        cmd: pecora::cmd::index::IndexCommand,
    },
}

fn load_config(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|errors| {
        for e in &errors {
            eprintln!("pecora: {e}");
        }
        // An unreadable file is an environment error (2); a readable but wrong one is a
        // misconfiguration found (1).
        ExitCode::from(if errors.iter().all(|e| e.unreadable) { 2 } else { 1 })
    })
}

/// Runs the command `f` makes of the configuration at `path` on an async runtime: exit 2
/// when the configuration does not load or the runtime does not start.
fn with_config<F, Fut>(path: &std::path::Path, f: F) -> ExitCode
where
    F: FnOnce(Config) -> Fut,
    Fut: std::future::Future<Output = ExitCode>,
{
    let config = match load_config(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match tokio::runtime::Runtime::new() {
        Ok(rt) => rt.block_on(f(config)),
        Err(e) => {
            eprintln!("pecora: cannot start the async runtime: {e}");
            ExitCode::from(2)
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match cli.command {
        Command::Check => match load_config(&cli.config) {
            Ok(_) => {
                println!("{}: configuration OK", cli.config.display());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Verify(args) => {
            // The configuration is optional here: only its index path is used.
            let default_index = Config::load(&cli.config).ok().map(|c| c.index.file);
            pecora::cmd::check::run(&args, default_index)
        }
        Command::Keys { cmd } => pecora::cmd::keys::run(cmd, &cli.config),
        Command::Log { cmd } => {
            let config = match load_config(&cli.config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let ctx = pecora::cmd::log::LogContext {
                store_url: config.store.url.clone(),
                certs: std::iter::once(config.keys.certificate.clone()).chain(config.keys.previous_certificates.iter().cloned()).collect(),
                checkpoint_dir: Some(config.store.checkpoint_dir.clone()),
            };
            match tokio::runtime::Runtime::new() {
                Ok(rt) => rt.block_on(pecora::cmd::log::run(cmd, &ctx)),
                Err(e) => {
                    eprintln!("pecora: cannot start the async runtime: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Receipt { cmd } => with_config(&cli.config, |config| async move { pecora::cmd::receipt::run(cmd, &config).await }),
        Command::Outbox { cmd } => with_config(&cli.config, |config| async move { pecora::cmd::outbox::run(cmd, &config).await }),
        Command::Doctor(args) => pecora::cmd::doctor::run(&args, &cli.config),
        Command::Setup { cmd } => pecora::cmd::setup::run(cmd, &cli.config),
        Command::Index { cmd } => pecora::cmd::index::run(cmd, &cli.config),
        Command::Serve => {
            pecora::daemon::serve::ignore_hangup_until_ready();
            let config = match load_config(&cli.config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            if let Err(e) = pecora::daemon::logging::init(config.log.format, &config.log.level) {
                eprintln!("pecora: {e}");
                return ExitCode::from(2);
            }
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("pecora: cannot start the async runtime: {e}");
                    return ExitCode::from(2);
                }
            };
            runtime.block_on(pecora::daemon::serve::run(config, cli.config))
        }
    }
}
