//! `gatehouse config push | pull`: the shared configuration of a fleet, from and to YAML files.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Subcommand};
use gatehouse_admin::fleet::Fleet;
use gatehouse_config::raw::{RawConfig, RawEtcd, RawInstance, RawService, RawUpstream, RawVpc};
use gatehouse_config::{limits, EtcdSource};
use gatehouse_fleet::{refs, Shared, Store};

#[derive(Subcommand)]
pub enum ConfigAction {
    /// Validate a configuration file and make its shared sections (VPCs, connections,
    /// upstreams, services) the fleet's configuration, in one change; files it names are stored
    /// by content.
    Push {
        /// The file to push: the shared sections, with or without an `instance` section.
        #[arg(short, long)]
        config: PathBuf,
        #[command(flatten)]
        source: SourceArgs,
        /// Show what would change, write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Replace a stored configuration this version cannot read (another layout schema,
        /// unreadable entries) instead of refusing.
        #[arg(long)]
        force: bool,
    },
    /// Write the fleet's shared configuration as YAML.
    Pull {
        #[command(flatten)]
        source: SourceArgs,
        /// The file to write (standard output without it).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
}

#[derive(Args)]
pub struct SourceArgs {
    /// An instance's local file: its `instance.etcd` says where the fleet's etcd is (and its
    /// `instance` section is what a pushed file is validated against).
    #[arg(long)]
    local: Option<PathBuf>,
    /// etcd client URLs, comma-separated (instead of --local).
    #[arg(long, value_delimiter = ',')]
    etcd: Vec<String>,
    /// Key prefix, with --etcd.
    #[arg(long, default_value = limits::DEFAULT_ETCD_PREFIX)]
    prefix: String,
}

/// A file `config push` reads: a configuration whose `instance` section is optional.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PushFile {
    instance: Option<RawInstance>,
    #[serde(default)]
    vpcs: Vec<RawVpc>,
    #[serde(default)]
    connections: Vec<Vec<String>>,
    #[serde(default)]
    upstreams: Vec<RawUpstream>,
    #[serde(default)]
    services: Vec<RawService>,
}

/// The fleet link of an instance whose local file is `path`.
pub fn connect(path: &Path, local: &RawConfig) -> Result<Arc<Fleet>, String> {
    let sections = Shared::sections_in(local);
    if !sections.is_empty() {
        return Err(gatehouse_admin::store::local_sections_message(
            path, &sections,
        ));
    }
    let source = source_of(path, local)?;
    Fleet::new(source, local.instance.id.clone())
        .map_err(|e| format!("cannot start the etcd client: {e}"))
}

fn source_of(path: &Path, local: &RawConfig) -> Result<EtcdSource, String> {
    let raw = local
        .instance
        .etcd
        .as_ref()
        .ok_or_else(|| format!("{}: instance.etcd is not set", path.display()))?;
    gatehouse_config::validate::etcd_source(raw, &local.instance.file_roots, &folder(path)).map_err(
        |problems| {
            let lines: Vec<String> = problems.iter().map(|p| format!("  {p}")).collect();
            format!(
                "{}: invalid configuration, {} problem(s)\n{}",
                path.display(),
                problems.len(),
                lines.join("\n")
            )
        },
    )
}

fn folder(path: &Path) -> PathBuf {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."))
        .to_owned()
}

/// Where the fleet's etcd is, and the local file (its folder and content) if one was named.
fn resolve(args: &SourceArgs) -> Result<(EtcdSource, Option<(PathBuf, RawConfig)>), String> {
    match (&args.local, args.etcd.is_empty()) {
        (Some(_), false) => Err("give --local or --etcd, not both".into()),
        (None, true) => {
            Err("say where the fleet's etcd is: --etcd URL[,URL] or --local FILE".into())
        }
        (Some(local), true) => {
            let text = std::fs::read_to_string(local)
                .map_err(|e| format!("cannot read {}: {e}", local.display()))?;
            let raw = gatehouse_config::parse_raw(&text, &local.display().to_string())
                .map_err(|e| e.to_string())?;
            Ok((source_of(local, &raw)?, Some((folder(local), raw))))
        }
        (None, false) => {
            let raw = RawEtcd {
                endpoints: args.etcd.clone(),
                prefix: Some(args.prefix.clone()),
                username: None,
                password: None,
                password_file: None,
                tls: None,
                cache_dir: None,
                timeout: None,
            };
            let source = gatehouse_config::validate::etcd_source(&raw, &[], Path::new("."))
                .map_err(|problems| {
                    problems
                        .iter()
                        .map(|p| p.to_string())
                        .collect::<Vec<_>>()
                        .join("; ")
                })?;
            Ok((source, None))
        }
    }
}

pub fn config(action: ConfigAction) -> ExitCode {
    let result = match action {
        ConfigAction::Push {
            config,
            source,
            dry_run,
            force,
        } => push(&config, &source, dry_run, force),
        ConfigAction::Pull { source, output } => pull(&source, output.as_deref()),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gatehouse: {e}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))
}

fn pull(args: &SourceArgs, output: Option<&Path>) -> Result<ExitCode, String> {
    let (source, _) = resolve(args)?;
    let (endpoints, prefix) = (source.endpoints.join(","), source.prefix.clone());
    let store = Store::new(source);
    let snapshot = runtime()?
        .block_on(store.snapshot())
        .map_err(|e| e.to_string())?;
    let shared = snapshot.shared().map_err(|p| {
        format!(
            "revision {} is not readable: {}",
            snapshot.revision(),
            p.join("; ")
        )
    })?;
    let text = format!(
        "# Shared configuration of the fleet at {endpoints} (prefix {prefix}), revision {}.\n\
         # Files are named by content (sha256:...); push this file back as it is, or edit it.\n{}",
        snapshot.revision(),
        serde_yaml::to_string(&shared).unwrap_or_default()
    );
    match output {
        Some(path) => {
            gatehouse_config::files::write_atomically(path, text.as_bytes())
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            eprintln!(
                "revision {} written to {}",
                snapshot.revision(),
                path.display()
            );
        }
        None => print!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}

fn push(file: &Path, args: &SourceArgs, dry_run: bool, force: bool) -> Result<ExitCode, String> {
    let (source, local) = resolve(args)?;
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let pushed: PushFile =
        serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?;
    // validated against the named instance, else the file's own
    let (instance, instance_dir) = match (&local, pushed.instance) {
        (Some((dir, l)), _) => (l.instance.clone(), dir.clone()),
        (None, Some(i)) => (i, folder(file)),
        (None, None) => {
            return Err(format!(
                "{} has no instance section to validate it against: add --local with an instance's file",
                file.display()
            ))
        }
    };
    let mut shared = Shared {
        vpcs: pushed.vpcs,
        connections: pushed.connections,
        upstreams: pushed.upstreams,
        services: pushed.services,
    };
    let mut problems =
        gatehouse_config::secrets::clear_secrets(&shared.clone().with_instance(instance.clone()));
    let base = folder(file);
    let mut roots = vec![std::fs::canonicalize(&base).unwrap_or(base.clone())];
    roots.extend(instance.file_roots.iter().map(|r| instance_dir.join(r)));
    let uploads = match refs::externalize(&mut shared, &base, &roots) {
        Ok(u) => u,
        Err(p) => {
            problems.extend(p);
            Vec::new()
        }
    };
    let shared = match shared.normalized() {
        Ok(s) => s,
        Err(p) => {
            problems.extend(p);
            shared
        }
    };
    let store = Store::new(source);
    let rt = runtime()?;
    let snapshot = rt.block_on(store.snapshot()).map_err(|e| e.to_string())?;
    // validate as an instance would: files from a scratch folder
    let scratch = std::env::temp_dir().join(format!("gatehouse-push-{}", std::process::id()));
    let checked = (|| -> Result<Vec<String>, String> {
        std::fs::create_dir_all(&scratch).map_err(|e| e.to_string())?;
        for upload in &uploads {
            std::fs::write(scratch.join(&upload.sha256), &upload.bytes)
                .map_err(|e| e.to_string())?;
        }
        let mut missing = Vec::new();
        for sha in refs::referenced(&shared) {
            if scratch.join(&sha).exists() {
                continue;
            }
            match rt.block_on(store.fetch_file(&sha)) {
                Ok(Some(bytes)) => {
                    std::fs::write(scratch.join(&sha), bytes).map_err(|e| e.to_string())?
                }
                Ok(None) => missing.push(format!(
                    "sha256:{sha} is named but etcd does not hold it: name the local file instead"
                )),
                Err(e) => return Err(e.to_string()),
            }
        }
        let mut localized = shared.clone();
        refs::localize(&mut localized, &scratch);
        let unset = stand_in_for_unset(&mut localized);
        if !unset.is_empty() {
            println!(
                "note: {} {} not set here; every instance must have {} in its environment",
                unset.join(", "),
                if unset.len() == 1 { "is" } else { "are" },
                if unset.len() == 1 { "it" } else { "them" }
            );
        }
        let mut instance = instance.clone();
        if instance.file_roots.is_empty() {
            instance.file_roots.push(instance_dir.display().to_string());
        }
        instance.file_roots.push(scratch.display().to_string());
        let raw = localized.with_instance(instance);
        match gatehouse_config::from_raw(&raw, &file.display().to_string(), &instance_dir) {
            Ok(config) => {
                let engine = gatehouse_proxy::plugin_engine()?;
                let mut found = gatehouse_proxy::upstream::check_files(&config);
                found.extend(gatehouse_proxy::tls::check_files(&config));
                found.extend(gatehouse_proxy::plugins::check(&engine, &config));
                missing.extend(found.iter().map(|p| p.to_string()));
            }
            Err(gatehouse_config::ConfigError::Invalid { problems, .. }) => {
                missing.extend(problems.0.iter().map(|p| p.to_string()))
            }
            Err(e) => missing.push(e.to_string()),
        }
        Ok(missing)
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    let mut lines: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    lines.extend(checked?);
    if !lines.is_empty() {
        eprintln!(
            "{}: invalid configuration, {} problem{}; nothing was pushed",
            file.display(),
            lines.len(),
            if lines.len() == 1 { "" } else { "s" }
        );
        for line in lines {
            eprintln!("  {line}");
        }
        return Ok(ExitCode::FAILURE);
    }
    let current = match snapshot.shared() {
        Ok(current) => current,
        Err(problems) if force => {
            println!(
                "replacing revision {}, which this version cannot read (--force): {}",
                snapshot.revision(),
                problems.join("; ")
            );
            Shared::default()
        }
        Err(problems) => {
            return Err(format!(
                "etcd holds a configuration (revision {}) this version cannot read: {}; nothing was pushed. If it was written by a newer Gatehouse, push with that version; to replace it anyway, add --force",
                snapshot.revision(),
                problems.join("; ")
            ))
        }
    };
    let diff = gatehouse_config::diff::diff(
        &current.clone().with_instance(instance.clone()),
        &shared.clone().with_instance(instance),
    );
    let unchanged = current.normalized().is_ok_and(|c| c == shared) && snapshot.revision() > 0;
    println!(
        "{}: valid; changes from revision {}:\n{}",
        file.display(),
        snapshot.revision(),
        if unchanged {
            "  (none)\n".to_owned()
        } else {
            diff.to_string()
        }
    );
    if dry_run {
        println!("dry run: nothing was written");
        return Ok(ExitCode::SUCCESS);
    }
    if unchanged {
        println!("nothing to push: revision {} stays", snapshot.revision());
        return Ok(ExitCode::SUCCESS);
    }
    let by = format!("gatehouse config push ({})", hostname());
    let origin = format!("config push {}", file.display());
    match rt.block_on(store.commit(&snapshot, &shared, &uploads, &by, &origin)) {
        Ok(revision) => {
            println!("pushed: revision {revision}");
            Ok(ExitCode::SUCCESS)
        }
        Err(gatehouse_fleet::Error::Conflict) => Err(format!(
            "the configuration changed while this push was prepared (it was revision {}): nothing was pushed; run it again",
            snapshot.revision()
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// Replaces `${NAME}` plugin settings whose variable is not set where the push runs by a stand-in
/// value (the instances resolve them from their own environment); returns the names.
fn stand_in_for_unset(shared: &mut Shared) -> Vec<String> {
    fn walk(value: &mut serde_yaml::Value, names: &mut Vec<String>) {
        match value {
            serde_yaml::Value::String(s) => {
                if let Some(name) = gatehouse_config::secrets::env_reference(s) {
                    if std::env::var_os(name).is_none() {
                        if !names.iter().any(|n| n == name) {
                            names.push(name.to_owned());
                        }
                        *s = format!("stand-in-for-{name}");
                    }
                }
            }
            serde_yaml::Value::Sequence(items) => items.iter_mut().for_each(|v| walk(v, names)),
            serde_yaml::Value::Mapping(map) => map.values_mut().for_each(|v| walk(v, names)),
            _ => {}
        }
    }
    let mut names = Vec::new();
    for api in shared.services.iter_mut().flat_map(|s| s.apis.iter_mut()) {
        for plugin in &mut api.plugins {
            if let Some(config) = plugin.config.as_mut() {
                walk(config, &mut names);
            }
        }
    }
    names
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown host".into())
}
