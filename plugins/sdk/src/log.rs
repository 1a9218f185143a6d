//! Writing to the gateway's log, attributed to the plugin and the API.

pub use crate::types::LogLevel;

/// Writes `message` at `level`.
pub fn log(level: LogLevel, message: &str) {
    #[cfg(target_arch = "wasm32")]
    crate::guest::log(level, message);
    #[cfg(not(target_arch = "wasm32"))]
    crate::double::log(level, message);
}

/// Writes `message` at trace level.
pub fn trace(message: &str) {
    log(LogLevel::Trace, message);
}

/// Writes `message` at debug level.
pub fn debug(message: &str) {
    log(LogLevel::Debug, message);
}

/// Writes `message` at info level.
pub fn info(message: &str) {
    log(LogLevel::Info, message);
}

/// Writes `message` at warn level.
pub fn warn(message: &str) {
    log(LogLevel::Warn, message);
}

/// Writes `message` at error level.
pub fn error(message: &str) {
    log(LogLevel::Error, message);
}
