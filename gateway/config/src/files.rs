//! Files the configuration names (plugin components, CA certificates), read safely.
//!
//! Whoever can change the configuration (the admin API's token holder) must not be able to make
//! the gateway read the machine it runs on. A file is read only when, with every symbolic link
//! resolved, it lies inside one of `instance.file_roots`, is a regular file (not a device, FIFO or
//! socket) and is no larger than the cap for its kind. Errors name the path and what is wrong with
//! it, never a byte of its content.

use std::fmt;
use std::io::Read;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// Largest plugin component read.
pub const MAX_COMPONENT_BYTES: u64 = 64 * 1024 * 1024;
/// Largest PEM file (CA certificates, certificates, keys) read.
pub const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// Why a file named by the configuration was not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileError {
    /// The path has a `..` component.
    ParentDir,
    /// The file (symbolic links resolved) is outside every root.
    OutsideRoots {
        resolved: PathBuf,
        roots: Vec<PathBuf>,
    },
    /// Not a regular file.
    NotRegular(&'static str),
    /// Larger than the cap.
    TooLarge { size: u64, cap: u64 },
    /// The file system said no (missing, permissions, ...).
    Io(String),
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileError::ParentDir => f.write_str("'..' is not allowed in file paths"),
            FileError::OutsideRoots { resolved, roots } => write!(
                f,
                "resolves to {}, outside the folders the configuration may read from ({})",
                resolved.display(),
                list(roots)
            ),
            FileError::NotRegular(kind) => write!(f, "is a {kind}, not a regular file"),
            FileError::TooLarge { size, cap } => {
                write!(f, "is {size} bytes, over the limit of {cap} bytes")
            }
            FileError::Io(e) => write!(f, "cannot be read: {e}"),
        }
    }
}

fn list(roots: &[PathBuf]) -> String {
    roots
        .iter()
        .map(|r| r.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether `path` has a `..` component.
pub fn has_parent_dir(path: &Path) -> bool {
    path.components().any(|c| c == Component::ParentDir)
}

/// Whether `path` lies inside one of `roots`, by its text alone (no file system access; symbolic
/// links are checked when the file is read).
pub fn lexically_inside(path: &Path, roots: &[PathBuf]) -> bool {
    !has_parent_dir(path) && roots.iter().any(|r| path.starts_with(r))
}

/// Reads `path` if it is a regular file of at most `cap` bytes inside one of `roots` once every
/// symbolic link is resolved.
pub fn read_confined(path: &Path, roots: &[PathBuf], cap: u64) -> Result<Vec<u8>, FileError> {
    if has_parent_dir(path) {
        return Err(FileError::ParentDir);
    }
    let resolved = std::fs::canonicalize(path).map_err(io)?;
    let inside = roots
        .iter()
        .any(|root| std::fs::canonicalize(root).is_ok_and(|root| resolved.starts_with(root)));
    if !inside {
        return Err(FileError::OutsideRoots {
            resolved,
            roots: roots.to_vec(),
        });
    }
    // Not blocking on a FIFO, not following a link swapped in since the check.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&resolved)
        .map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    let kind = meta.file_type();
    if !kind.is_file() {
        return Err(FileError::NotRegular(if kind.is_fifo() {
            "FIFO"
        } else if kind.is_char_device() || kind.is_block_device() {
            "device"
        } else if kind.is_socket() {
            "socket"
        } else if kind.is_dir() {
            "folder"
        } else {
            "special file"
        }));
    }
    if meta.len() > cap {
        return Err(FileError::TooLarge {
            size: meta.len(),
            cap,
        });
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(cap + 1).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > cap {
        return Err(FileError::TooLarge {
            size: bytes.len() as u64,
            cap,
        });
    }
    Ok(bytes)
}

fn io(e: std::io::Error) -> FileError {
    // The kind only: an OS message never carries file content, but keep it short and uniform.
    FileError::Io(e.kind().to_string())
}

/// Replaces `path` with `bytes` so that a crash leaves either the old or the new content.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    // The file holds secrets: owner-only, or stricter if it already was.
    let mode = std::fs::metadata(path).map_or(0o600, |m| m.permissions().mode() & 0o600);
    // A stale temporary file (a crash) is removed; if it is a symbolic link, the link itself.
    let _ = std::fs::remove_file(&tmp);
    let result = (|| {
        // Created exclusively: never through a link, never someone else's file.
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("gatehouse-files-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn files_inside_the_roots_are_read() {
        let dir = scratch("ok");
        std::fs::write(dir.join("a.pem"), b"hello").unwrap();
        assert_eq!(
            read_confined(&dir.join("a.pem"), std::slice::from_ref(&dir), 10).unwrap(),
            b"hello"
        );
    }

    #[test]
    fn everything_else_is_refused_without_its_content() {
        let dir = scratch("refused");
        let roots = [dir.clone()];
        std::os::unix::fs::symlink("/etc/passwd", dir.join("passwd")).unwrap();
        std::os::unix::fs::symlink("/dev/zero", dir.join("zero")).unwrap();
        let fifo = dir.join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let big = dir.join("big.wasm");
        std::fs::File::create(&big)
            .unwrap()
            .set_len(100 * 1024 * 1024)
            .unwrap();
        let cases: [(PathBuf, &str); 8] = [
            (PathBuf::from("/proc/self/environ"), "outside"),
            (PathBuf::from("/etc/passwd"), "outside"),
            (PathBuf::from("/dev/zero"), "outside"),
            (dir.join("passwd"), "outside"),
            (dir.join("zero"), "outside"),
            (dir.join("../refused/fifo"), "'..'"),
            (fifo, "FIFO"),
            (big, "over the limit"),
        ];
        for (path, expected) in cases {
            let err = read_confined(&path, &roots, MAX_COMPONENT_BYTES)
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{}: {err}", path.display());
            assert!(!err.contains("root:") && !err.contains("PATH="), "{err}");
        }
        let root_dir = PathBuf::from("/");
        let err = read_confined(&PathBuf::from("/dev/zero"), &[root_dir], 10).unwrap_err();
        assert_eq!(err, FileError::NotRegular("device"));
    }
}
