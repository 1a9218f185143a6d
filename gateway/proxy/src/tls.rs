//! TLS termination on the edge listeners: certificates chosen by SNI, reloaded with the
//! configuration without touching open connections.
//!
//! The certificates are read and checked when a runtime snapshot is built (key matches the
//! certificate, chain parses, names known), off the request path. The listeners' resolver looks
//! the server name up in the current snapshot at each handshake: exact names first, then a
//! wildcard (`*.example.com` matches one label), then the default certificate (the first listed)
//! for clients without SNI or with a name no certificate carries. A reload that brings new
//! certificates is used by the next handshake; established connections keep theirs.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use gatehouse_config::files::{read_confined, MAX_PEM_BYTES};
use gatehouse_config::{ListenerTls, Problem};
use once_cell::sync::Lazy;
use pingora::tls::sign::CertifiedKey;
use pingora::tls::{ClientHello, CryptoProvider, ResolvesServerCert};

use crate::runtime::SharedRuntime;

/// Certificates expiring within this many days are warned about at load.
const EXPIRY_WARNING_DAYS: i64 = 30;

static EXPIRY: Lazy<prometheus::IntGaugeVec> = Lazy::new(|| {
    prometheus::register_int_gauge_vec!(
        "gatehouse_tls_certificate_expiry_seconds",
        "Seconds until a served certificate expires (negative once expired), by certificate file and its first name.",
        &["certificate", "name"]
    )
    .expect("metric registers once")
});

/// The certificates of the TLS listeners, by name.
pub struct Certificates {
    default: Arc<CertifiedKey>,
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// By the part after `*.`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    /// (certificate file, first name, Unix time of expiry)
    expiries: Vec<(String, String, i64)>,
}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificates")
            .field("exact", &self.exact.keys().collect::<Vec<_>>())
            .field("wildcard", &self.wildcard.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Certificates {
    /// Reads and checks every certificate of `tls`; every problem at once, each with its path.
    pub fn load(tls: &ListenerTls, roots: &[std::path::PathBuf]) -> Result<Self, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut loaded = Vec::new();
        for (i, pair) in tls.certificates.iter().enumerate() {
            let path = format!("instance.tls.certificates[{i}]");
            match load_pair(&pair.cert_file, &pair.key_file, roots) {
                Ok(l) => loaded.push((pair.cert_file.display().to_string(), l)),
                Err((field, message)) => problems.push(Problem::new(
                    format!("{path}.{field}"),
                    message,
                    "give a PEM certificate chain (leaf first) and the PEM private key of its leaf",
                )),
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let Some((_, (first, _, _))) = loaded.first() else {
            return Err(vec![Problem::new(
                "instance.tls.certificates",
                "no certificate given",
                "list at least one { cert_file, key_file } pair",
            )]);
        };
        let mut certs = Certificates {
            default: Arc::clone(first),
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            expiries: Vec::new(),
        };
        for (file, (key, names, not_after)) in &loaded {
            for name in names {
                let name = name.to_ascii_lowercase();
                let map = match name.strip_prefix("*.") {
                    Some(rest) => certs.wildcard.entry(rest.to_owned()),
                    None => certs.exact.entry(name.clone()),
                };
                // the first certificate listed for a name wins
                map.or_insert_with(|| Arc::clone(key));
            }
            let first_name = names.first().cloned().unwrap_or_default();
            certs.expiries.push((file.clone(), first_name, *not_after));
        }
        Ok(certs)
    }

    /// Publishes the expiry gauges and warns about certificates close to expiry.
    pub fn report_expiry(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        for (file, name, not_after) in &self.expiries {
            let left = not_after - now;
            EXPIRY.with_label_values(&[file, name]).set(left);
            if left <= 0 {
                log::error!("TLS certificate {file} ({name}) has expired; clients will refuse it");
            } else if left < EXPIRY_WARNING_DAYS * 86_400 {
                log::warn!(
                    "TLS certificate {file} ({name}) expires in {} days",
                    left / 86_400
                );
            }
        }
    }

    /// The certificate for `server_name` (any case), else the default one.
    pub fn choose(&self, server_name: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = server_name.map(str::to_ascii_lowercase) else {
            return Arc::clone(&self.default);
        };
        if let Some(c) = self.exact.get(&name) {
            return Arc::clone(c);
        }
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(c) = self.wildcard.get(parent) {
                return Arc::clone(c);
            }
        }
        Arc::clone(&self.default)
    }
}

/// (certificate and key, names of the leaf, Unix time of its expiry), or the field at fault and
/// why.
type Loaded = (Arc<CertifiedKey>, Vec<String>, i64);

fn load_pair(
    cert_file: &Path,
    key_file: &Path,
    roots: &[std::path::PathBuf],
) -> Result<Loaded, (&'static str, String)> {
    read_pair(cert_file, key_file, roots).map(|p| (p.certified, p.names, p.not_after))
}

/// A client certificate for mutual TLS to the nodes of an upstream, checked like a listener's
/// (the key must be the leaf's); `Err` names the field at fault (`client_cert`, `client_key`).
pub fn client_certificate(
    files: &gatehouse_config::CertFiles,
    roots: &[std::path::PathBuf],
) -> Result<Arc<pingora::utils::tls::CertKey>, (&'static str, String)> {
    let pair = read_pair(&files.cert_file, &files.key_file, roots).map_err(|(field, m)| {
        (
            if field == "key_file" {
                "client_key"
            } else {
                "client_cert"
            },
            m,
        )
    })?;
    let chain = pair.certified.cert.iter().map(|c| c.to_vec()).collect();
    Ok(Arc::new(pingora::utils::tls::CertKey::new(
        chain,
        pair.key_der,
    )))
}

/// A certificate chain and its key, read and checked.
struct Pair {
    certified: Arc<CertifiedKey>,
    key_der: Vec<u8>,
    names: Vec<String>,
    not_after: i64,
}

fn read_pair(
    cert_file: &Path,
    key_file: &Path,
    roots: &[std::path::PathBuf],
) -> Result<Pair, (&'static str, String)> {
    let cert_pem = read_confined(cert_file, roots, MAX_PEM_BYTES)
        .map_err(|e| ("cert_file", format!("{} {e}", cert_file.display())))?;
    let key_pem = read_confined(key_file, roots, MAX_PEM_BYTES)
        .map_err(|e| ("key_file", format!("{} {e}", key_file.display())))?;
    // The parsers' own errors may quote the file: say what is wrong, not what is there.
    let chain = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| {
            (
                "cert_file",
                format!("{} is not a PEM file of certificates", cert_file.display()),
            )
        })?;
    if chain.is_empty() {
        return Err((
            "cert_file",
            format!("{} holds no certificate", cert_file.display()),
        ));
    }
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .ok()
        .flatten()
        .ok_or_else(|| {
            (
                "key_file",
                format!("{} holds no PEM private key", key_file.display()),
            )
        })?;
    let (names, not_after) = {
        let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0]).map_err(|_| {
            (
                "cert_file",
                format!(
                    "the first certificate in {} cannot be parsed",
                    cert_file.display()
                ),
            )
        })?;
        let mut names: Vec<String> = leaf
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        if names.is_empty() {
            if let Some(cn) = leaf
                .subject()
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok())
            {
                names.push(cn.to_owned());
            }
        }
        (names, leaf.validity().not_after.timestamp())
    };
    for (i, der) in chain.iter().enumerate().skip(1) {
        if x509_parser::parse_x509_certificate(der).is_err() {
            return Err((
                "cert_file",
                format!(
                    "certificate {} of the chain in {} cannot be parsed",
                    i + 1,
                    cert_file.display()
                ),
            ));
        }
    }
    pingora::tls::install_default_crypto_provider();
    let provider = CryptoProvider::get_default().ok_or((
        "cert_file",
        "no TLS crypto provider is installed".to_owned(),
    ))?;
    let key_der = key.secret_der().to_vec();
    let certified = CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        (
            "key_file",
            format!(
                "{} is not the key of the certificate in {}: {e}",
                key_file.display(),
                cert_file.display()
            ),
        )
    })?;
    Ok(Pair {
        certified: Arc::new(certified),
        key_der,
        names,
        not_after,
    })
}

/// Checks the certificates as starting would: used by `gatehouse validate`.
pub fn check_files(config: &gatehouse_config::Config) -> Vec<Problem> {
    match &config.instance.tls {
        Some(tls) => Certificates::load(tls, &config.instance.file_roots)
            .err()
            .unwrap_or_default(),
        None => Vec::new(),
    }
}

/// Chooses the certificate of each handshake from the current snapshot.
pub struct Resolver(pub SharedRuntime);

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Resolver")
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let runtime = self.0.load();
        let certs = runtime.certificates.as_ref()?;
        Some(certs.choose(hello.server_name()))
    }
}
