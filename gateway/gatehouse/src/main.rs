//! `gatehouse`: the edge gateway binary. `run` serves a configuration, `validate` checks
//! configuration files without serving them, `plugin` starts and builds plugins of one's own,
//! `demo` serves the shipped configuration with echo backends on its nodes and shows the gateway
//! at work.

mod demo;
mod fleet;
mod logging;
mod plugin_project;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use gatehouse_admin::fleet::Fleet;
use gatehouse_admin::{AdminApp, ConfigStore, ReloadOnHangup};
use gatehouse_config::raw::RawConfig;
use gatehouse_config::{limits, Config, ConfigError, Problem};
use pingora::services::background::background_service;
use pingora::services::listening::Service;

/// mimalloc: on top of the tuned release profile it took a Pingora proxy on this kind of machine
/// from about 19.2 to 17.3 CPU µs per request (the system allocator spends more per allocation).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Has mimalloc return the memory it holds freed to the operating system (forced collection of
/// the calling thread's heap and purge of its arenas).
fn release_freed_memory() {
    // SAFETY: `mi_collect` takes no pointers and may be called from any thread at any time.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

/// Keeps the process on small pages. mimalloc asks the kernel for transparent huge pages for
/// its arenas, so each part of the heap touched costs 2 MiB: idle on the shipped configuration
/// the gateway held 56 MB, 37 MB of them in huge pages, against 29 MB on small pages
/// (bench/README.md has the CPU per request of both). `MIMALLOC_ALLOW_THP=1` keeps huge pages;
/// `gatehouse plugin`, whose compilers gain from them, keeps them too.
///
/// It runs as an early constructor, before the allocator's first use: a page touched before
/// would stay huge. glibc hands such functions the process's `argc` and `argv`.
extern "C" fn use_small_pages(
    argc: libc::c_int,
    argv: *const *const libc::c_char,
    _envp: *const *const libc::c_char,
) {
    // SAFETY: argv holds argc valid C strings (glibc's contract for init_array functions);
    // getenv and prctl take C strings and integers, and nothing here allocates.
    unsafe {
        if argc > 1
            && !argv.is_null()
            && std::ffi::CStr::from_ptr(*argv.add(1)).to_bytes() == b"plugin"
        {
            return;
        }
        if !libc::getenv(c"MIMALLOC_ALLOW_THP".as_ptr()).is_null() {
            return;
        }
        // failure (an old kernel) leaves huge pages on: nothing to report this early
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// Priority 101, the first one programs may use: before the allocator's own constructor.
#[used]
#[link_section = ".init_array.00101"]
static USE_SMALL_PAGES: extern "C" fn(
    libc::c_int,
    *const *const libc::c_char,
    *const *const libc::c_char,
) = use_small_pages;

/// The configuration used when `-c` is not given.
const DEFAULT_CONFIG: &str = "config/gatehouse.yaml";

#[derive(Parser)]
#[command(
    name = "gatehouse",
    version,
    about = "Gatehouse: an edge API gateway for private services"
)]
struct Cli {
    /// Log level (error, warn, info, debug, trace, or a RUST_LOG filter); overrides RUST_LOG.
    #[arg(long, global = true)]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a configuration.
    Run {
        /// The configuration file.
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Take the listening sockets over from the running gatehouse of this configuration:
        /// start this, then send the running one SIGQUIT (in either order, within
        /// instance.upgrade_timeout); it hands its sockets over, finishes its requests in flight
        /// and exits.
        #[arg(long)]
        upgrade: bool,
        /// With --upgrade: listen for the sockets at once, for 5 s, as a running gatehouse of a
        /// version before upgrade_timeout expects (send it SIGQUIT within those 5 s).
        #[arg(long, requires = "upgrade")]
        now: bool,
    },
    /// Check configuration files: exit 0 when all are valid, otherwise print every problem.
    Validate {
        /// Configuration files to check (repeat -c for several).
        #[arg(short, long = "config", default_value = DEFAULT_CONFIG, num_args = 1..)]
        config: Vec<PathBuf>,
        /// Also show what changes from this file to each checked one (upstreams, nodes,
        /// services and APIs added, removed or modified).
        #[arg(long, value_name = "OLD")]
        diff_from: Option<PathBuf>,
    },
    /// Seed, replace or read the shared configuration of a fleet in etcd.
    Config {
        #[command(subcommand)]
        action: fleet::ConfigAction,
    },
    /// Start, test and build a plugin of your own.
    Plugin {
        #[command(subcommand)]
        action: plugin_project::PluginAction,
    },
    /// Serve a configuration with echo backends started on its loopback nodes, and show the
    /// weighted spread, the Host header and a retried dead node.
    Demo {
        /// The configuration file.
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Nodes (host:port) to leave without a backend, to show retries.
        #[arg(long, default_value = "127.0.1.2:9202")]
        down: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_level.as_deref());
    gatehouse_plugin_host::set_release_freed_memory(release_freed_memory);
    match cli.command {
        Command::Run {
            config,
            upgrade,
            now,
        } => {
            let sockets = match (upgrade, now) {
                (false, _) => gatehouse_proxy::Sockets::Bind,
                (true, false) => gatehouse_proxy::Sockets::Upgrade,
                (true, true) => gatehouse_proxy::Sockets::UpgradeNow,
            };
            run(&config, None, sockets)
        }
        Command::Validate { config, diff_from } => validate(&config, diff_from.as_deref()),
        Command::Demo { config, down } => run(&config, Some(down), gatehouse_proxy::Sockets::Bind),
        Command::Config { action } => fleet::config(action),
        Command::Plugin { action } => plugin_project::run(action),
    }
}

/// Serves `path`; with `demo`, first starts echo backends on its nodes (except the ones listed).
fn run(path: &Path, demo: Option<Vec<String>>, sockets: gatehouse_proxy::Sockets) -> ExitCode {
    let upgrade = sockets != gatehouse_proxy::Sockets::Bind;
    let (raw, config, fleet) = match load_any(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("gatehouse: {e}");
            return ExitCode::from(2);
        }
    };
    gatehouse_config::secrets::remember_all(&raw);
    let admin = config.instance.admin;
    let admin_tls = config.instance.admin_tls.clone();
    let file_roots = config.instance.file_roots.clone();
    let signals = gatehouse_proxy::server::Signals {
        upgrade_socket: config.instance.upgrade_socket.clone(),
        upgrade_timeout: config.instance.upgrade_timeout,
    };
    let token = match admin_token(&config) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("gatehouse: {e}");
            return ExitCode::from(2);
        }
    };
    let tour = match demo {
        Some(down) => match demo::start_backends(&config, &down) {
            Ok(tour) => Some(tour),
            Err(e) => {
                eprintln!("gatehouse demo: {e}");
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    let (mut server, runtime) = match gatehouse_proxy::build(config, sockets) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("gatehouse: {e}");
            return ExitCode::FAILURE;
        }
    };
    let store = Arc::new(match &fleet {
        Some(f) => ConfigStore::with_fleet(path.to_owned(), raw, runtime.clone(), f.clone()),
        None => ConfigStore::new(path.to_owned(), raw, runtime.clone()),
    });
    if let Some(f) = &fleet {
        f.start(store.clone());
    }
    server.add_service(background_service(
        "gatehouse reload on SIGHUP",
        ReloadOnHangup(store.clone()),
    ));
    let admin_on = token.is_some();
    match token {
        Some(token) => {
            gatehouse_config::secrets::remember(&token);
            if let Err(e) = std::net::TcpListener::bind(admin).map(drop).or_else(|e| {
                // an upgrade takes the admin socket over with the others
                if upgrade {
                    Ok(())
                } else {
                    Err(e)
                }
            }) {
                eprintln!("gatehouse: cannot serve the admin API on {admin}: {e}");
                return ExitCode::FAILURE;
            }
            let mut service =
                Service::new("gatehouse admin".to_owned(), AdminApp::new(store, token));
            match &admin_tls {
                Some(tls) => {
                    if let Err(e) = admin_tls_listener(&mut service, admin, tls, &file_roots) {
                        eprintln!("gatehouse: cannot serve the admin API over TLS: {e}");
                        return ExitCode::FAILURE;
                    }
                    log::info!("admin API on https://{admin}");
                }
                None => {
                    service.add_tcp(&admin.to_string());
                    if !admin.ip().is_loopback() {
                        log::warn!(
                            "the admin API listens on {admin}, beyond loopback, without TLS: its \
                             token crosses the network in clear; set instance.admin_tls"
                        );
                    }
                    log::info!("admin API on http://{admin}");
                }
            }
            server.add_service(service);
        }
        None => log::info!(
            "admin API disabled: set instance.admin_token or GATEHOUSE_ADMIN_TOKEN to enable it"
        ),
    }
    if let Some(mut tour) = tour {
        if admin_on {
            tour = tour.with_console(admin);
        }
        tour.show_when_ready(runtime.clone());
    }
    log::info!(
        "gatehouse {} serving {}",
        env!("CARGO_PKG_VERSION"),
        path.display()
    );
    // the sockets are bound (or taken over): tell a service manager this process is the one
    notify_service_manager();
    server.run(pingora::server::RunArgs {
        shutdown_signal: Box::new(signals),
    });
    std::process::exit(0)
}

/// Tells systemd (`Type=notify`, `NOTIFY_SOCKET`) that this process is ready and is the service's
/// main process: after `gatehouse run --upgrade` the new process takes that role from the old
/// one. Does nothing without a service manager.
fn notify_service_manager() {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name),
        None => SocketAddr::from_pathname(std::path::Path::new(&path)),
    };
    let message = format!("READY=1\nMAINPID={}\n", std::process::id());
    let sent = addr.and_then(|addr| {
        UnixDatagram::unbound().and_then(|s| s.send_to_addr(message.as_bytes(), &addr))
    });
    if let Err(e) = sent {
        log::warn!(
            "cannot notify the service manager at {}: {e}",
            path.to_string_lossy()
        );
    }
}

/// Reads a configuration file, and for a fleet instance the shared configuration from etcd (or
/// its cache): the file's schema (kept for the admin API), the validated model, and the fleet.
fn load_any(path: &Path) -> Result<(RawConfig, Config, Option<Arc<Fleet>>), String> {
    let local = read_raw(path).map_err(|e| e.to_string())?;
    if local.instance.etcd.is_none() {
        let (raw, config) = load(path).map_err(|e| e.to_string())?;
        return Ok((raw, config, None));
    }
    let fleet = fleet::connect(path, &local)?;
    let initial = gatehouse_admin::store::initial(&fleet, path, &local)?;
    fleet.served(initial.revision, initial.from_cache);
    log::info!(
        "shared configuration revision {} from {}",
        initial.revision,
        if initial.from_cache {
            "the cache (etcd unreachable)"
        } else {
            "etcd"
        }
    );
    Ok((initial.raw, initial.config, Some(fleet)))
}

/// Reads a configuration file: the file's schema (kept for the admin API) and the validated model.
fn load(path: &Path) -> Result<(RawConfig, Config), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let origin = path.display().to_string();
    let raw = gatehouse_config::parse_raw(&text, &origin)?;
    let base = path.parent().unwrap_or_else(|| Path::new("."));
    let config = gatehouse_config::from_raw(&raw, &origin, base)?;
    Ok((raw, config))
}

/// Environment variable that supplies the admin token (it wins over `instance.admin_token`).
const ADMIN_TOKEN_ENV: &str = "GATEHOUSE_ADMIN_TOKEN";

/// The admin API's token: from the environment, else the file; `None` disables the admin API.
fn admin_token(config: &Config) -> Result<Option<String>, String> {
    match std::env::var(ADMIN_TOKEN_ENV) {
        Ok(token)
            if token.len() < limits::MIN_ADMIN_TOKEN_LEN || token.contains(char::is_whitespace) =>
        {
            Err(format!(
                "{ADMIN_TOKEN_ENV} must be at least {} characters without spaces",
                limits::MIN_ADMIN_TOKEN_LEN
            ))
        }
        Ok(token) => Ok(Some(token)),
        Err(_) => Ok(config.instance.admin_token.clone()),
    }
}

fn validate(paths: &[PathBuf], diff_from: Option<&Path>) -> ExitCode {
    let engine = match gatehouse_proxy::plugin_engine() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("gatehouse: {e}");
            return ExitCode::FAILURE;
        }
    };
    let old = match diff_from.map(read_raw).transpose() {
        Ok(old) => old,
        Err(e) => {
            eprintln!("gatehouse: {e}");
            return ExitCode::from(2);
        }
    };
    let mut failed = false;
    for path in paths {
        if read_raw(path).is_ok_and(|r| r.instance.etcd.is_some()) {
            match load_any(path) {
                Ok((_, config, Some(f))) => {
                    let (problems, uses) = check_all(&engine, &config);
                    let status = f.status();
                    if problems.is_empty() {
                        println!(
                            "{}: valid, with the shared configuration revision {} from {}",
                            path.display(),
                            status.revision,
                            if status.from_cache {
                                "the cache"
                            } else {
                                "etcd"
                            }
                        );
                        print_plugin_uses(&uses);
                        continue;
                    }
                    failed = true;
                    eprintln!("{}: invalid configuration", path.display());
                    for p in problems {
                        eprintln!("  {p}");
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    failed = true;
                    eprintln!("{}: {e}", path.display());
                }
            }
            continue;
        }
        let problems = match gatehouse_config::load(path) {
            Ok(config) => {
                let (problems, uses) = check_all(&engine, &config);
                if problems.is_empty() {
                    let apis: usize = config.services.iter().map(|s| s.apis.len()).sum();
                    println!(
                        "{}: valid ({} upstream{}, {} service{}, {} API{})",
                        path.display(),
                        config.upstreams.len(),
                        plural(config.upstreams.len()),
                        config.services.len(),
                        plural(config.services.len()),
                        apis,
                        plural(apis)
                    );
                    print_plugin_uses(&uses);
                    if let (Some(old), Some(from)) = (&old, diff_from) {
                        match read_raw(path) {
                            Ok(new) => print!(
                                "changes from {}:\n{}",
                                from.display(),
                                gatehouse_config::diff::diff(old, &new)
                            ),
                            Err(e) => eprintln!("gatehouse: {e}"),
                        }
                    }
                    continue;
                }
                problems
            }
            Err(e) => {
                failed = true;
                eprintln!("{e}");
                continue;
            }
        };
        failed = true;
        eprintln!(
            "{}: invalid configuration, {} problem{}",
            path.display(),
            problems.len(),
            plural(problems.len())
        );
        for p in problems {
            eprintln!("  {p}");
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Checks what the model alone cannot: the files a configuration names and its plugins (loaded and
/// configured); also describes each plugin use.
fn check_all(
    engine: &Arc<gatehouse_plugin_host::PluginEngine>,
    config: &Config,
) -> (Vec<Problem>, Vec<gatehouse_proxy::plugins::PluginUse>) {
    let mut problems = gatehouse_proxy::upstream::check_files(config);
    problems.extend(gatehouse_proxy::tls::check_files(config));
    let (plugin_problems, uses) = gatehouse_proxy::plugins::check_uses(engine, config);
    problems.extend(plugin_problems);
    (problems, uses)
}

/// Prints what each plugin use needs and was granted; a warning (on stderr) for each 0.1 plugin
/// running ungranted.
fn print_plugin_uses(uses: &[gatehouse_proxy::plugins::PluginUse]) {
    if uses.is_empty() {
        return;
    }
    println!("plugins:");
    for u in uses {
        println!("  {} {}: {}", u.path, u.plugin, u.needs);
    }
    for u in uses {
        if let Some(warning) = &u.warning {
            eprintln!("warning: {} {}: {warning}", u.path, u.plugin);
        }
    }
}

/// Adds the admin listener with TLS; the certificate and key are read only from inside the
/// file roots, like every file the configuration names.
fn admin_tls_listener(
    service: &mut Service<AdminApp>,
    addr: std::net::SocketAddr,
    tls: &gatehouse_config::CertFiles,
    roots: &[PathBuf],
) -> Result<(), String> {
    use gatehouse_config::files::{read_confined, MAX_PEM_BYTES};
    for file in [&tls.cert_file, &tls.key_file] {
        read_confined(file, roots, MAX_PEM_BYTES).map_err(|e| format!("{} {e}", file.display()))?;
    }
    let (cert, key) = (
        tls.cert_file.display().to_string(),
        tls.key_file.display().to_string(),
    );
    service
        .add_tls(&addr.to_string(), &cert, &key)
        .map_err(|e| format!("{cert} and {key} are not a usable certificate and key: {e}"))
}

/// A configuration file in its own schema, for a diff.
fn read_raw(path: &Path) -> Result<RawConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    gatehouse_config::parse_raw(&text, &path.display().to_string())
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}
