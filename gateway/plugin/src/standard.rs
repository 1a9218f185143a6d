//! The standard plugins, embedded in the gateway binary as prebuilt components. They are built
//! from `plugins/` by `plugins/build.sh`, which records their sources' hashes in
//! `plugins/dist/MANIFEST`; CI rebuilds them and refuses stale ones.

macro_rules! embedded {
    ($($name:literal),* $(,)?) => {
        /// Names and components of every standard plugin.
        pub const STANDARD: &[(&str, &[u8])] = &[
            $(($name, include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../plugins/dist/", $name, ".wasm")))),*
        ];
    };
}

embedded!(
    "host-rewrite",
    "headers",
    "path-rewrite",
    "request-id",
    "key-auth",
    "ip-restriction",
    "cors",
    "json-validator",
    "canary",
    "rate-limit",
);

/// The component of a standard plugin, by name.
pub fn component(name: &str) -> Option<&'static [u8]> {
    STANDARD
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, bytes)| *bytes)
}
