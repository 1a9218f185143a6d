//! The embedded standard plugins: every one named by the configuration is present, compiles and
//! links against the host.

use gatehouse_plugin_host::{standard, PluginEngine};

#[test]
fn every_standard_plugin_is_embedded_and_links() {
    let engine = PluginEngine::new(64 * 1024 * 1024).unwrap();
    for name in gatehouse_config::limits::STANDARD_PLUGINS {
        let bytes = standard::component(name).unwrap_or_else(|| panic!("{name} is not embedded"));
        engine
            .load(&format!("standard:{name}"), || Ok(bytes.to_vec()))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    assert_eq!(
        standard::STANDARD.len(),
        gatehouse_config::limits::STANDARD_PLUGINS.len()
    );
}
