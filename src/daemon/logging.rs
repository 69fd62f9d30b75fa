//! tracing setup: human text or JSON lines on stderr, or the systemd journal.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::prelude::*;

use crate::config::LogFormat;

/// Installs the global subscriber. `level` is an EnvFilter directive; RUST_LOG overrides it.
/// indymilter is kept at `warn`: its trace output is protocol noise.
pub fn init(format: LogFormat, level: &str) -> Result<(), String> {
    let directive = std::env::var("RUST_LOG").unwrap_or_else(|_| level.to_string());
    let filter = EnvFilter::try_new(format!("indymilter=warn,{directive}"))
        .map_err(|e| format!("invalid log filter `{directive}`: {e}"))?;
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                    .with_target(false),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr))
            .try_init(),
        LogFormat::Journald => {
            let layer = tracing_journald::layer()
                .map_err(|e| format!("cannot connect to the systemd journal: {e}"))?
                .with_syslog_identifier(crate::NAME.to_string());
            registry.with(layer).try_init()
        }
    };
    result.map_err(|e| format!("cannot install the logger: {e}"))
}
