//! Process logging from `log:` (after `SERVAL_LOG` / `SERVAL_LOG_FORMAT` overrides): a
//! `tracing` filter, text or JSON lines on standard error, and the access log (target
//! `access`) switched off with `access_log: false`.

use tracing_subscriber::EnvFilter;

use crate::config::model::{LogFormat, LogSettings};
use crate::relay::ACCESS_LOG_TARGET;

/// The filter `settings` describe.
pub fn filter(settings: &LogSettings) -> Result<EnvFilter, String> {
    let mut directives = settings.level.clone();
    if !settings.access_log {
        directives.push_str(&format!(",{ACCESS_LOG_TARGET}=off"));
    }
    EnvFilter::try_new(&directives).map_err(|e| format!("log.level {:?}: {e}", settings.level))
}

/// Installs the global subscriber. Fails if one is installed already.
pub fn init(settings: &LogSettings) -> Result<(), String> {
    let filter = filter(settings)?;
    // Colours only on a terminal: escape codes in a container's log or a file are noise.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let result = match settings.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    result.map_err(|e| format!("cannot install the logger: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_log_off_adds_a_directive() {
        let mut s = LogSettings {
            access_log: false,
            ..LogSettings::default()
        };
        assert!(filter(&s).unwrap().to_string().contains("access=off"));
        s.level = "info,[".to_owned();
        assert!(filter(&s).is_err());
    }
}
