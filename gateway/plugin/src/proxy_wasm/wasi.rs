//! WASI preview 1 for filters built for `wasm32-wasip1` (most filters built for Envoy), with
//! nothing behind it: no arguments, an empty environment, no preopened directory, no file and no
//! socket. Standard output and error go to the plugin's log; the clocks and random bytes come
//! from the host. Every other function answers `ENOSYS` (or `EBADF` for a file descriptor).
//!
//! wasmtime's own WASI implementation is not used: its synchronous preview 1 functions run their
//! work on the calling thread's Tokio runtime with `block_on`, which panics on the gateway's
//! worker threads (they are inside a runtime); its asynchronous form would make every plugin call
//! asynchronous. The few functions here give a filter exactly as much.

use rand::RngCore;
use wasmtime::{Caller, FuncType, Linker, Memory, Val};

use crate::bindings::HostState;

/// WASI errno values.
mod errno {
    pub const SUCCESS: i32 = 0;
    pub const BADF: i32 = 8;
    pub const FAULT: i32 = 21;
    pub const INVAL: i32 = 28;
    pub const NOSYS: i32 = 52;
}

/// Every function of WASI preview 1.
const WASI_FUNCTIONS: &[&str] = &[
    "args_get",
    "args_sizes_get",
    "environ_get",
    "environ_sizes_get",
    "clock_res_get",
    "clock_time_get",
    "fd_advise",
    "fd_allocate",
    "fd_close",
    "fd_datasync",
    "fd_fdstat_get",
    "fd_fdstat_set_flags",
    "fd_fdstat_set_rights",
    "fd_filestat_get",
    "fd_filestat_set_size",
    "fd_filestat_set_times",
    "fd_pread",
    "fd_prestat_get",
    "fd_prestat_dir_name",
    "fd_pwrite",
    "fd_read",
    "fd_readdir",
    "fd_renumber",
    "fd_seek",
    "fd_sync",
    "fd_tell",
    "fd_write",
    "path_create_directory",
    "path_filestat_get",
    "path_filestat_set_times",
    "path_link",
    "path_open",
    "path_readlink",
    "path_remove_directory",
    "path_rename",
    "path_symlink",
    "path_unlink_file",
    "poll_oneoff",
    "proc_exit",
    "proc_raise",
    "sched_yield",
    "random_get",
    "sock_accept",
    "sock_recv",
    "sock_send",
    "sock_shutdown",
];

/// The functions of [`WASI_FUNCTIONS`] given here; the others answer `ENOSYS` or `EBADF`.
const IMPLEMENTED: &[&str] = &[
    "args_get",
    "args_sizes_get",
    "environ_get",
    "environ_sizes_get",
    "clock_res_get",
    "clock_time_get",
    "fd_write",
    "proc_exit",
    "sched_yield",
    "random_get",
];

pub(crate) fn is_wasi_function(name: &str) -> bool {
    WASI_FUNCTIONS.contains(&name)
}

pub(crate) fn implements(name: &str) -> bool {
    IMPLEMENTED.contains(&name)
}

/// The stand-in for a WASI function with nothing behind it: `EBADF` for the file descriptor
/// functions (there is no file), `ENOSYS` for the others.
pub(crate) fn unavailable(
    function: &str,
    ty: &FuncType,
) -> impl Fn(Caller<'_, HostState>, &[Val], &mut [Val]) -> wasmtime::Result<()> + Send + Sync + 'static
{
    let code = if function.starts_with("fd_") {
        errno::BADF
    } else {
        errno::NOSYS
    };
    let results = ty.results().len();
    move |_caller, _params, out| {
        for slot in out.iter_mut().take(results) {
            *slot = Val::I32(code);
        }
        Ok(())
    }
}

type Ctx<'a> = Caller<'a, HostState>;

fn memory(caller: &mut Ctx<'_>) -> Option<Memory> {
    caller.get_export("memory")?.into_memory()
}

fn write(caller: &mut Ctx<'_>, ptr: i32, bytes: &[u8]) -> i32 {
    match memory(caller) {
        Some(mem) if mem.write(&mut *caller, ptr as u32 as usize, bytes).is_ok() => errno::SUCCESS,
        _ => errno::FAULT,
    }
}

/// Writes two zero sizes (no arguments, no environment).
fn no_entries(mut c: Ctx<'_>, count: i32, size: i32) -> i32 {
    match write(&mut c, count, &0u32.to_le_bytes()) {
        errno::SUCCESS => write(&mut c, size, &0u32.to_le_bytes()),
        e => e,
    }
}

/// Gathers the bytes of an iovec list (`fd_write`), at most `limit` of them.
fn gather(c: &mut Ctx<'_>, iovs: i32, count: i32, limit: usize) -> Option<(Vec<u8>, usize)> {
    let mem = memory(c)?;
    let data = mem.data(&*c);
    let word = |at: usize| -> Option<usize> {
        Some(u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?) as usize)
    };
    let (mut out, mut total) = (Vec::new(), 0usize);
    for i in 0..count.max(0) as usize {
        let at = (iovs as u32 as usize).checked_add(i * 8)?;
        let (ptr, len) = (word(at)?, word(at + 4)?);
        let bytes = data.get(ptr..ptr.checked_add(len)?)?;
        total += len;
        let room = limit.saturating_sub(out.len());
        out.extend_from_slice(&bytes[..len.min(room)]);
    }
    Some((out, total))
}

/// Adds the functions given here to `linker`, under both names of the module.
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    for module in ["wasi_snapshot_preview1", "wasi_unstable"] {
        linker.func_wrap(module, "args_sizes_get", no_entries)?;
        linker.func_wrap(module, "environ_sizes_get", no_entries)?;
        linker.func_wrap(module, "args_get", |_: Ctx<'_>, _: i32, _: i32| {
            errno::SUCCESS
        })?;
        linker.func_wrap(module, "environ_get", |_: Ctx<'_>, _: i32, _: i32| {
            errno::SUCCESS
        })?;
        linker.func_wrap(module, "sched_yield", |_: Ctx<'_>| errno::SUCCESS)?;
        linker.func_wrap(
            module,
            "clock_res_get",
            |mut c: Ctx<'_>, id: i32, ret: i32| -> i32 {
                if !(0..=3).contains(&id) {
                    return errno::INVAL;
                }
                write(&mut c, ret, &1_000u64.to_le_bytes())
            },
        )?;
        linker.func_wrap(
            module,
            "clock_time_get",
            |mut c: Ctx<'_>, id: i32, _precision: i64, ret: i32| -> i32 {
                let nanos = match id {
                    // realtime
                    0 => std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_nanos() as u64),
                    // monotonic, process and thread CPU time: one monotonic clock
                    1..=3 => monotonic_nanos(),
                    _ => return errno::INVAL,
                };
                write(&mut c, ret, &nanos.to_le_bytes())
            },
        )?;
        linker.func_wrap(
            module,
            "random_get",
            |mut c: Ctx<'_>, ptr: i32, len: i32| -> i32 {
                let mut bytes = vec![0u8; len.max(0) as usize];
                c.data_mut().rng.fill_bytes(&mut bytes);
                write(&mut c, ptr, &bytes)
            },
        )?;
        linker.func_wrap(
            module,
            "fd_write",
            |mut c: Ctx<'_>, fd: i32, iovs: i32, count: i32, written: i32| -> i32 {
                if fd != 1 && fd != 2 {
                    return errno::BADF;
                }
                let Some((bytes, total)) = gather(&mut c, iovs, count, MAX_OUTPUT) else {
                    return errno::FAULT;
                };
                let text = String::from_utf8_lossy(&bytes);
                let text = text.trim_end_matches('\n');
                if !text.is_empty() {
                    let level = if fd == 2 {
                        log::Level::Warn
                    } else {
                        log::Level::Info
                    };
                    c.data_mut().write_log(level, text);
                }
                write(&mut c, written, &(total as u32).to_le_bytes())
            },
        )?;
        linker.func_wrap(
            module,
            "proc_exit",
            |_: Ctx<'_>, code: i32| -> wasmtime::Result<()> {
                Err(wasmtime::Error::msg(format!(
                    "the filter exited (proc_exit with code {code})"
                )))
            },
        )?;
    }
    Ok(())
}

/// Bytes of one write to standard output or error that reach the log.
const MAX_OUTPUT: usize = 4096;

fn monotonic_nanos() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_nanos() as u64
}
