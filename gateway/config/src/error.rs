//! Errors of loading a configuration: the file could not be read, it is not the YAML we expect,
//! or it broke one or more rules (each reported with its path and the fix).

use std::fmt;
use std::path::PathBuf;

/// One broken rule: where it is (`upstreams[1].nodes[3].weight`), what is wrong and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Path of the offending key, in the file's own terms: `services[0].apis[2].path`.
    pub path: String,
    /// What is wrong, with the offending value.
    pub message: String,
    /// What to change to make the configuration valid.
    pub fix: String,
}

impl Problem {
    pub fn new(
        path: impl Into<String>,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
            fix: fix.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} (fix: {})", self.path, self.message, self.fix)
    }
}

/// Every problem found in one configuration, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(f, "{n} problem{}", if n == 1 { "" } else { "s" })?;
        for p in &self.0 {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The text is not YAML of the expected shape (syntax error, unknown key, wrong type).
    #[error("{origin}: {message}")]
    Parse { origin: String, message: String },
    /// The YAML has the right shape but breaks rules.
    #[error("{origin}: invalid configuration, {problems}")]
    Invalid { origin: String, problems: Problems },
}

impl ConfigError {
    /// The individual problems, when the configuration was parsed but broke rules.
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid { problems, .. } => &problems.0,
            _ => &[],
        }
    }
}
