//! The standard plugins, embedded in the gateway binary as prebuilt components (built from
//! `plugins/` by `plugins/build.sh`; `plugins/dist/MANIFEST` records their sources' hashes).

/// The component of a standard plugin, by name.
pub fn component(name: &str) -> Option<&'static [u8]> {
    let _ = name;
    None
}
