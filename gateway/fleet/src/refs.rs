//! Files a shared configuration names travel with it, by content.
//!
//! In etcd a plugin component (`plugins[].path`), an upstream's CA file (`tls.ca_file`) and its
//! client certificate (`tls.client_cert`) are written `sha256:<hex>`: the digest of the file,
//! whose bytes are stored under `files/<hex>/`. Whoever writes the configuration (`config push`,
//! an admin API write) reads the local file and uploads it; every instance fetches it into its
//! cache folder before it applies the revision that names it. Private keys (`tls.client_key`) are
//! never stored in etcd: they stay paths, and each instance must hold the file.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use gatehouse_config::files::{read_confined, MAX_COMPONENT_BYTES, MAX_PEM_BYTES};
use gatehouse_config::Problem;
use sha2::{Digest, Sha256};

use crate::layout::Shared;

/// How a content reference starts.
pub const PREFIX: &str = "sha256:";

/// A file to store: its digest (lower-case hex) and bytes.
#[derive(Debug, Clone)]
pub struct Upload {
    pub sha256: String,
    pub bytes: Vec<u8>,
}

/// The hex digest of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The digest a value refers to, when it is a well-formed `sha256:<64 hex>` reference.
pub fn parse(value: &str) -> Option<&str> {
    let hex = value.strip_prefix(PREFIX)?;
    (hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    .then_some(hex)
}

/// Calls `f` with the path (for problems), the value and the size cap of every file field that
/// travels with the shared configuration.
fn each_file(shared: &mut Shared, mut f: impl FnMut(String, &mut String, u64)) {
    for upstream in &mut shared.upstreams {
        let Some(tls) = upstream.tls.as_mut() else {
            continue;
        };
        let at = format!("upstreams.{}.tls", upstream.name);
        if let Some(v) = tls.ca_file.as_mut() {
            f(format!("{at}.ca_file"), v, MAX_PEM_BYTES);
        }
        if let Some(v) = tls.client_cert.as_mut() {
            f(format!("{at}.client_cert"), v, MAX_PEM_BYTES);
        }
    }
    for service in &mut shared.services {
        for api in &mut service.apis {
            for (k, plugin) in api.plugins.iter_mut().enumerate() {
                if let Some(v) = plugin.path.as_mut() {
                    let at = format!(
                        "services.{}.apis.{}.plugins[{k}].path",
                        service.name, api.name
                    );
                    f(at, v, MAX_COMPONENT_BYTES);
                }
            }
        }
    }
}

/// Replaces every local file path of `shared` by a reference to its content, read relative to
/// `base` from inside `roots`. Returns the files to store; every file that cannot be read is a
/// problem with its path.
pub fn externalize(
    shared: &mut Shared,
    base: &Path,
    roots: &[PathBuf],
) -> Result<Vec<Upload>, Vec<Problem>> {
    let mut uploads: Vec<Upload> = Vec::new();
    let mut problems = Vec::new();
    each_file(shared, |at, value, cap| {
        if value.starts_with(PREFIX) {
            if parse(value).is_none() {
                problems.push(Problem::new(
                    at,
                    format!("{value:?} is not a content reference"),
                    "write sha256: and the 64 lower-case hex digits of the file's SHA-256, or name a local file",
                ));
            }
            return;
        }
        let path = base.join(&*value);
        match read_confined(&path, roots, cap) {
            Ok(bytes) => {
                let sha256 = digest(&bytes);
                *value = format!("{PREFIX}{sha256}");
                if !uploads.iter().any(|u| u.sha256 == sha256) {
                    uploads.push(Upload { sha256, bytes });
                }
            }
            Err(e) => problems.push(Problem::new(
                at,
                format!("{} {e}", path.display()),
                "name a readable file inside instance.file_roots; it is stored in etcd by its content",
            )),
        }
    });
    if problems.is_empty() {
        Ok(uploads)
    } else {
        Err(problems)
    }
}

/// The digests `shared` refers to.
pub fn referenced(shared: &Shared) -> BTreeSet<String> {
    let mut copy = shared.clone();
    let mut out = BTreeSet::new();
    each_file(&mut copy, |_, value, _| {
        if let Some(hex) = parse(value) {
            out.insert(hex.to_owned());
        }
    });
    out
}

/// Replaces every reference of `shared` by the path of its copy in `dir` (`dir/<hex>`).
pub fn localize(shared: &mut Shared, dir: &Path) {
    each_file(shared, |_, value, _| {
        if let Some(hex) = parse(value) {
            *value = dir.join(hex).display().to_string();
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(path: &str) -> Shared {
        serde_yaml::from_str(&format!(
            r#"
upstreams:
  - name: u
    vpc: v
    protocol: https
    tls: {{ ca_file: ca.pem, client_key: key.pem }}
services:
  - name: s
    apis:
      - name: a
        path: /a
        backend: {{ upstream: u }}
        plugins: [{{ path: "{path}" }}, {{ name: cors }}]
"#
        ))
        .unwrap()
    }

    #[test]
    fn local_files_become_content_references_and_keys_stay_paths() {
        let dir = std::env::temp_dir().join(format!("gatehouse-refs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ca.pem"), b"CA").unwrap();
        std::fs::write(dir.join("p.wasm"), b"\0asm component").unwrap();
        let mut s = shared("p.wasm");
        let uploads = externalize(&mut s, &dir, std::slice::from_ref(&dir)).unwrap();
        assert_eq!(uploads.len(), 2);
        let tls = s.upstreams[0].tls.as_ref().unwrap();
        assert_eq!(
            tls.ca_file.as_deref(),
            Some(&*format!("sha256:{}", digest(b"CA")))
        );
        assert_eq!(tls.client_key.as_deref(), Some("key.pem"));
        assert_eq!(referenced(&s).len(), 2);
        // a second pass keeps the references
        assert!(externalize(&mut s, &dir, std::slice::from_ref(&dir))
            .unwrap()
            .is_empty());
        localize(&mut s, Path::new("/cache/files"));
        let path = s.services[0].apis[0].plugins[0].path.clone().unwrap();
        assert_eq!(path, format!("/cache/files/{}", digest(b"\0asm component")));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_files_and_malformed_references_are_problems() {
        let dir = std::env::temp_dir();
        let mut s = shared("sha256:abc");
        let problems = externalize(&mut s, &dir, std::slice::from_ref(&dir)).unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].path.ends_with("tls.ca_file"));
        assert!(problems[1].message.contains("not a content reference"));
    }
}
