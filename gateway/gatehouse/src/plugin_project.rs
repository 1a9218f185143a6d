//! `gatehouse plugin new` and `gatehouse plugin build`: start a plugin project anywhere on disk
//! and build it into a component this gateway loads.
//!
//! The binary carries what a project needs to build without a checkout of the gateway's sources:
//! the templates, the Rust SDK with the contract it implements, and the toolchain script that
//! `plugins/build.sh` uses for the standard plugins (finding and installing the tools, compiling).
//! So a plugin is built with the SDK and contract of the gateway that will load it.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use clap::{Subcommand, ValueEnum};

#[derive(Subcommand)]
pub enum PluginAction {
    /// Create a plugin project from a template: it builds with `gatehouse plugin build`, with
    /// nothing else of Gatehouse on the machine.
    New {
        /// The plugin's name: lower case letters, digits and `-`, starting with a letter. It
        /// names the project's folder, its crate and the component file.
        name: String,
        /// The language of the plugin.
        #[arg(long, value_enum, default_value_t = Lang::Rust)]
        lang: Lang,
        /// The folder to create (default: ./NAME); it must not exist or be empty.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Test and build the plugin project in DIR into DIR/NAME.wasm, then load it with
    /// DIR/gatehouse.yaml when there is one. Installs the WebAssembly toolchain when it is
    /// missing.
    Build {
        /// The project's folder.
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Skip the project's tests.
        #[arg(long)]
        no_test: bool,
        /// Where builds are kept, shared between plugins (the standard library for WebAssembly
        /// is built once there).
        #[arg(long, env = "GATEHOUSE_PLUGIN_TARGET_DIR")]
        target_dir: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Lang {
    Rust,
    C,
}

/// A file of a new project: where it goes and its bytes (`{{name}}` is replaced in text).
struct Template {
    path: &'static str,
    bytes: &'static [u8],
}

macro_rules! carried {
    ($path:literal, $source:literal) => {
        Template {
            path: $path,
            bytes: include_bytes!(concat!("../../../", $source)),
        }
    };
}

/// What every project has: the contract (where the Rust SDK reads it, `../../wit` from its
/// folder), a gateway configuration that uses the plugin, and what version control ignores.
const SHARED: &[Template] = &[
    carried!("wit/plugin.wit", "wit/plugin.wit"),
    carried!("wit/README.md", "wit/README.md"),
    carried!("gatehouse.yaml", "plugins/templates/gatehouse.yaml"),
    carried!(".gitignore", "plugins/templates/gitignore"),
];

/// The Rust project. Its lock file is the standard plugins' (versions known to build with the
/// SDK; Cargo drops the entries this project does not use).
const RUST: &[Template] = &[
    carried!("Cargo.toml", "plugins/templates/rust/Cargo.toml"),
    carried!("Cargo.lock", "plugins/Cargo.lock"),
    carried!("src/lib.rs", "plugins/templates/rust/src/lib.rs"),
    carried!("README.md", "plugins/templates/rust/README.md"),
];

/// The Rust SDK.
const RUST_SDK: &[Template] = &[
    carried!(
        "vendor/gatehouse-plugin-sdk/Cargo.toml",
        "plugins/sdk/Cargo.toml"
    ),
    carried!(
        "vendor/gatehouse-plugin-sdk/src/lib.rs",
        "plugins/sdk/src/lib.rs"
    ),
    carried!(
        "vendor/gatehouse-plugin-sdk/src/config.rs",
        "plugins/sdk/src/config.rs"
    ),
    carried!(
        "vendor/gatehouse-plugin-sdk/src/counters.rs",
        "plugins/sdk/src/counters.rs"
    ),
    carried!(
        "vendor/gatehouse-plugin-sdk/src/double.rs",
        "plugins/sdk/src/double.rs"
    ),
    carried!(
        "vendor/gatehouse-plugin-sdk/src/guest.rs",
        "plugins/sdk/src/guest.rs"
    ),
    carried!(
        "vendor/gatehouse-plugin-sdk/src/log.rs",
        "plugins/sdk/src/log.rs"
    ),
    carried!(
        "vendor/gatehouse-plugin-sdk/src/types.rs",
        "plugins/sdk/src/types.rs"
    ),
];

/// The C project.
const C: &[Template] = &[
    carried!("src/plugin.c", "plugins/templates/c/src/plugin.c"),
    carried!(
        "tests/test_plugin.c",
        "plugins/templates/c/tests/test_plugin.c"
    ),
    carried!("README.md", "plugins/templates/c/README.md"),
];

/// The C SDK with the bindings it wraps.
const C_SDK: &[Template] = &[
    carried!("sdk/README.md", "plugins/sdk-c/README.md"),
    carried!("sdk/gatehouse_plugin.h", "plugins/sdk-c/gatehouse_plugin.h"),
    carried!(
        "sdk/gatehouse_plugin_test.h",
        "plugins/sdk-c/gatehouse_plugin_test.h"
    ),
    carried!(
        "sdk/gatehouse_plugin_internal.h",
        "plugins/sdk-c/gatehouse_plugin_internal.h"
    ),
    carried!(
        "sdk/gatehouse_plugin_common.c",
        "plugins/sdk-c/gatehouse_plugin_common.c"
    ),
    carried!(
        "sdk/gatehouse_plugin_wasm.c",
        "plugins/sdk-c/gatehouse_plugin_wasm.c"
    ),
    carried!(
        "sdk/gatehouse_plugin_double.c",
        "plugins/sdk-c/gatehouse_plugin_double.c"
    ),
    carried!("sdk/bindings/plugin.h", "plugins/sdk-c/bindings/plugin.h"),
    carried!("sdk/bindings/plugin.c", "plugins/sdk-c/bindings/plugin.c"),
    carried!(
        "sdk/bindings/plugin_component_type.o",
        "plugins/sdk-c/bindings/plugin_component_type.o"
    ),
    carried!("sdk/bindings/STAMP", "plugins/sdk-c/bindings/STAMP"),
];

/// Finds and installs the tools, and compiles plugins; shared with `plugins/build.sh`.
const TOOLCHAIN: &str = include_str!("../../../plugins/toolchain.sh");

const MAX_NAME_LEN: usize = 64;

pub fn run(action: PluginAction) -> ExitCode {
    let result = match action {
        PluginAction::New { name, lang, dir } => new(&name, lang, dir),
        PluginAction::Build {
            dir,
            no_test,
            target_dir,
        } => build(&dir, !no_test, target_dir),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gatehouse plugin: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Whether `name` can name a crate, a folder and a component file alike.
fn check_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let starts_with_letter = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !starts_with_letter || !rest_ok || name.len() > MAX_NAME_LEN || name.ends_with('-') {
        return Err(format!(
            "{name:?} cannot name a plugin: use lower case letters, digits and `-`, starting \
             with a letter and not ending with `-`, at most {MAX_NAME_LEN} characters \
             (e.g. tenant-check)"
        ));
    }
    Ok(())
}

fn new(name: &str, lang: Lang, dir: Option<PathBuf>) -> Result<ExitCode, String> {
    check_name(name)?;
    let dir = dir.unwrap_or_else(|| PathBuf::from(name));
    if dir.exists() {
        let mut entries =
            std::fs::read_dir(&dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        if entries.next().is_some() {
            return Err(format!(
                "{} exists and is not empty: choose another folder with --dir",
                dir.display()
            ));
        }
    }
    let (project, sdk) = match lang {
        Lang::Rust => (RUST, RUST_SDK),
        Lang::C => (C, C_SDK),
    };
    for file in project.iter().chain(sdk).chain(SHARED) {
        let path = dir.join(file.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        let written = match std::str::from_utf8(file.bytes) {
            Ok(text) => std::fs::write(&path, text.replace("{{name}}", name)),
            Err(_) => std::fs::write(&path, file.bytes),
        };
        written.map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    println!("created the plugin {name} in {}", dir.display());
    println!("next:");
    println!("  cd {}", dir.display());
    println!("  gatehouse plugin build              # tests, builds {name}.wasm, loads it");
    println!("  gatehouse run -c gatehouse.yaml     # serves it on 127.0.0.1:8080 (see README.md)");
    Ok(ExitCode::SUCCESS)
}

/// Where builds are shared between plugin projects when no folder is given.
fn default_target_dir() -> Result<PathBuf, String> {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .ok_or("neither XDG_CACHE_HOME nor HOME is set: give --target-dir")?;
    Ok(cache.join("gatehouse").join("plugin-target"))
}

fn build(dir: &Path, test: bool, target_dir: Option<PathBuf>) -> Result<ExitCode, String> {
    let dir = dir
        .canonicalize()
        .map_err(|e| format!("cannot open {}: {e}", dir.display()))?;
    let lang = if dir.join("Cargo.toml").is_file() {
        Lang::Rust
    } else if dir.join("sdk/gatehouse_plugin.h").is_file() {
        Lang::C
    } else {
        return Err(format!(
            "{} has neither a Cargo.toml nor sdk/gatehouse_plugin.h: not a plugin project \
             (create one with: gatehouse plugin new NAME)",
            dir.display()
        ));
    };
    let target_dir = match target_dir {
        Some(d) => d,
        None => default_target_dir()?,
    };
    std::fs::create_dir_all(&target_dir)
        .map_err(|e| format!("cannot create {}: {e}", target_dir.display()))?;
    let target_dir = target_dir
        .canonicalize()
        .map_err(|e| format!("cannot open {}: {e}", target_dir.display()))?;
    let name = match lang {
        Lang::Rust => package_name(&dir)?,
        // a C project is named by its folder
        Lang::C => dir
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_owned)
            .ok_or_else(|| format!("{} has no usable folder name", dir.display()))?,
    };
    let out = dir.join(format!("{name}.wasm"));
    let (dir_arg, out_arg, target_arg) = (path_arg(&dir)?, path_arg(&out)?, path_arg(&target_dir)?);

    match lang {
        Lang::Rust => toolchain(&["tools"])?,
        Lang::C => toolchain(&["tools", "c"])?,
    }
    if test {
        step("testing", &dir)?;
        let passed = match lang {
            Lang::Rust => Command::new("cargo")
                .arg("test")
                .current_dir(&dir)
                .env("CARGO_TARGET_DIR", &target_dir)
                .status()
                .map_err(|e| format!("cannot run cargo: {e}"))?
                .success(),
            Lang::C => toolchain(&["c-test", dir_arg, &name, target_arg]).is_ok(),
        };
        if !passed {
            return Err("the tests failed (see above); the plugin was not built".into());
        }
    }
    step("building", &dir)?;
    match lang {
        Lang::Rust => toolchain(&["rust", dir_arg, &name, out_arg, target_arg])?,
        Lang::C => toolchain(&["c", dir_arg, out_arg, target_arg])?,
    }
    let size = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    println!("built {} ({size} bytes)", out.display());
    let config = dir.join("gatehouse.yaml");
    if !config.is_file() {
        println!(
            "no gatehouse.yaml in {}: the component was not loaded",
            dir.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    step("loading it with gatehouse.yaml", &dir)?;
    Ok(crate::validate(&[config], None))
}

fn step(what: &str, dir: &Path) -> Result<(), String> {
    println!("== {what} ({})", dir.display());
    use std::io::Write;
    std::io::stdout()
        .flush()
        .map_err(|e| format!("cannot write: {e}"))
}

fn path_arg(path: &Path) -> Result<&str, String> {
    path.to_str()
        .ok_or_else(|| format!("{} is not valid UTF-8", path.display()))
}

/// The package name in a project's Cargo.toml, as Cargo reads it.
fn package_name(dir: &Path) -> Result<String, String> {
    let output = Command::new("cargo")
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .current_dir(dir)
        .output()
        .map_err(|e| format!("cannot run cargo (install Rust: https://rustup.rs): {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "cargo cannot read {}: {}",
            dir.join("Cargo.toml").display(),
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout)
        .map_err(|e| format!("cargo metadata gave no JSON: {e}"))?;
    let manifest = dir.join("Cargo.toml");
    metadata["packages"]
        .as_array()
        .and_then(|packages| {
            packages
                .iter()
                .find(|p| p["manifest_path"].as_str().map(Path::new) == Some(manifest.as_path()))
        })
        .and_then(|p| p["name"].as_str())
        .map(str::to_owned)
        .ok_or_else(|| format!("{} declares no package", manifest.display()))
}

/// Runs the toolchain script with `args`.
fn toolchain(args: &[&str]) -> Result<(), String> {
    let status = Command::new("bash")
        .arg("-c")
        .arg(TOOLCHAIN)
        .arg("gatehouse-plugin-toolchain")
        .args(args)
        .env("TOOLCHAIN_NAME", "gatehouse plugin build")
        .env_remove("GATEHOUSE_TOOLCHAIN_SOURCED")
        .status()
        .map_err(|e| format!("cannot run bash: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{}` failed (see above)", args[0]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_names_must_name_a_crate_a_folder_and_a_file() {
        for good in ["a", "tenant-check", "geo2", "x-1-y"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        let long = "a".repeat(MAX_NAME_LEN + 1);
        for bad in [
            "",
            "Tenant",
            "2fa",
            "-a",
            "a-",
            "a_b",
            "a b",
            "../a",
            "a/b",
            "é",
            long.as_str(),
        ] {
            let err = check_name(bad).unwrap_err();
            assert!(err.contains("lower case letters"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_project_carries_the_whole_sdk_and_the_contract_it_reads() {
        let sdk_sources = std::fs::read_dir(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../plugins/sdk/src"
        ))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect::<Vec<_>>();
        for source in &sdk_sources {
            let carried = format!("vendor/gatehouse-plugin-sdk/src/{source}");
            assert!(
                RUST_SDK.iter().any(|t| t.path == carried),
                "the SDK source {source} is not carried into new projects"
            );
        }
        let guest = RUST_SDK
            .iter()
            .find(|t| t.path.ends_with("guest.rs"))
            .unwrap();
        let guest = std::str::from_utf8(guest.bytes).unwrap();
        assert!(guest.contains("path: \"../../wit\""));
        assert!(SHARED.iter().any(|t| t.path == "wit/plugin.wit"));
        let c_sdk = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../../plugins/sdk-c"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|f| f.ends_with(".c") || f.ends_with(".h"));
        for source in c_sdk {
            let carried = format!("sdk/{source}");
            assert!(
                C_SDK.iter().any(|t| t.path == carried),
                "the C SDK's {source} is not carried into new projects"
            );
        }
    }
}
