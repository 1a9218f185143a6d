//! Gatehouse configuration: the YAML schema ([`raw`]), the rules it must follow ([`validate`]) and
//! the validated model the gateway runs ([`model`]).
//!
//! This crate knows nothing of Pingora or wasmtime and does no I/O beyond reading the file it is
//! asked to load: validation is pure, so it is fast to test and safe to run anywhere
//! (`gatehouse validate`). It reports every problem at once, each with its path and the fix.

pub mod canonical;
pub mod diff;
pub mod error;
pub mod files;
pub mod model;
pub mod pattern;
pub mod raw;
pub mod secrets;
pub mod validate;

use std::path::Path;

use sha2::{Digest, Sha256};

pub use error::{ConfigError, Problem, Problems};
pub use model::*;
pub use pattern::{PathPattern, PathTemplate, Segment, TemplatePart};

/// Reads and validates the configuration file at `path`. Relative paths inside it are resolved
/// against the file's folder.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let base = path.parent().unwrap_or_else(|| Path::new("."));
    parse(&text, &path.display().to_string(), base)
}

/// Parses and validates configuration text. `origin` names the text in errors (usually the file
/// path); relative paths are resolved against `base_dir`.
pub fn parse(text: &str, origin: &str, base_dir: &Path) -> Result<Config, ConfigError> {
    from_raw(&parse_raw(text, origin)?, origin, base_dir)
}

/// Parses configuration text into the file's schema, without validating it.
pub fn parse_raw(text: &str, origin: &str) -> Result<raw::RawConfig, ConfigError> {
    serde_yaml::from_str(text).map_err(|e| ConfigError::Parse {
        origin: origin.to_owned(),
        message: e.to_string(),
    })
}

/// Validates a configuration in the file's schema.
pub fn from_raw(
    raw: &raw::RawConfig,
    origin: &str,
    base_dir: &Path,
) -> Result<Config, ConfigError> {
    validate::validate(raw, base_dir, digest(&to_yaml(raw))).map_err(|problems| {
        ConfigError::Invalid {
            origin: origin.to_owned(),
            problems: Problems(problems),
        }
    })
}

/// Writes a configuration back as YAML (comments of the original file are not kept).
pub fn to_yaml(raw: &raw::RawConfig) -> String {
    serde_yaml::to_string(raw).unwrap_or_default()
}

/// First 16 hex digits of the SHA-256 of `text`.
fn digest(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}
