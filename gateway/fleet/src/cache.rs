//! The last good shared configuration of an instance, kept on its disk: an instance restarted
//! while etcd is unreachable serves it. The file holds secrets' references and may hold other
//! sensitive values: it is written owner-only (0600), atomically, in a folder of mode 0700.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::layout::Shared;

/// `config.json` in the cache folder.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cached {
    pub schema: u32,
    /// The prefix it was read from: a cache of another prefix is not used.
    pub prefix: String,
    /// The configuration revision it is.
    pub revision: i64,
    /// When it was written (RFC 3339).
    pub at: String,
    pub shared: Shared,
}

/// The cache folder of an instance.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the files a configuration names are kept, by digest.
    pub fn files(&self) -> PathBuf {
        self.dir.join("files")
    }

    pub fn config_file(&self) -> PathBuf {
        self.dir.join("config.json")
    }

    /// Creates the folders (owner-only).
    pub fn prepare(&self) -> std::io::Result<()> {
        for dir in [self.dir.clone(), self.files()] {
            std::fs::create_dir_all(&dir)?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        }
        Ok(())
    }

    /// The cached configuration of `prefix`, if there is a readable one.
    pub fn load(&self, prefix: &str) -> Result<Option<Cached>, String> {
        let path = self.config_file();
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let cached: Cached = serde_json::from_slice(&text)
            .map_err(|e| format!("{} is not a configuration cache: {e}", path.display()))?;
        if cached.prefix != prefix {
            return Ok(None);
        }
        Ok(Some(cached))
    }

    pub fn store(&self, cached: &Cached) -> std::io::Result<()> {
        self.prepare()?;
        let bytes = serde_json::to_vec_pretty(cached).map_err(std::io::Error::other)?;
        gatehouse_config::files::write_atomically(&self.config_file(), &bytes)
    }

    /// Whether the file of digest `sha256` is here.
    pub fn has_file(&self, sha256: &str) -> bool {
        std::fs::metadata(self.files().join(sha256)).is_ok_and(|m| m.is_file())
    }

    pub fn store_file(&self, sha256: &str, bytes: &[u8]) -> std::io::Result<()> {
        self.prepare()?;
        gatehouse_config::files::write_atomically(&self.files().join(sha256), bytes)
    }
}
