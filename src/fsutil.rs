//! Writing files so that a failure never leaves a partial file or destroys anything the user owns.
//!
//! Every output goes through [`write_atomic_with`]: a temporary file beside the target, flushed,
//! then renamed over it. Around that rename sit the rules that keep it safe:
//! - a symlink is written through: the file it points to is replaced, the link stays a link;
//! - only regular files are ever replaced: a device node, FIFO, socket or folder at the path is
//!   refused and left untouched (renaming over `/dev/full` would replace the device);
//! - a read-only file is refused; an existing file's permissions are kept;
//! - temporaries are named `.NAME.tmp-PID`: ones left by dead processes (killed mid-write) are
//!   removed, and SIGINT/SIGTERM remove this process's before it dies.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result, bail};

/// `path` with a final symlink (or chain of them) resolved: where a write really lands.
fn resolve_symlinks(path: &Path) -> Result<PathBuf> {
    let mut p = path.to_path_buf();
    for _ in 0..40 {
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                let target = std::fs::read_link(&p).with_context(|| format!("cannot read the link {}", p.display()))?;
                p = match p.parent() {
                    Some(dir) if target.is_relative() => dir.join(target),
                    _ => target,
                };
            }
            _ => return Ok(p),
        }
    }
    bail!("cannot write {}: too many levels of symbolic links", path.display())
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// What a non-regular file is, for messages.
fn kind_of(ft: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if ft.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if ft.is_char_device() || ft.is_block_device() {
            return "a device";
        }
        if ft.is_socket() {
            return "a socket";
        }
    }
    if ft.is_dir() { "a folder" } else { "not a regular file" }
}

/// Checks that `path` can be written as a file, without touching it: its folder exists and
/// accepts new files, and whatever is at the path (after symlinks) is a writable regular file.
/// Returns the resolved target. Callers use it to fail before long work, not after.
pub fn check_writable(path: &Path) -> Result<PathBuf> {
    let target = resolve_symlinks(path)?;
    let dir = parent_dir(&target);
    let shown = if target == path { String::new() } else { format!(" (a link to {})", target.display()) };
    if !dir.is_dir() {
        bail!("cannot write {}{shown}: the folder {} does not exist", path.display(), dir.display());
    }
    match std::fs::metadata(&target) {
        Ok(m) if !m.file_type().is_file() => {
            bail!(
                "cannot write {}{shown}: it is {}, not a regular file; left untouched",
                path.display(),
                kind_of(&m.file_type())
            )
        }
        Ok(m) if m.permissions().readonly() => {
            bail!("cannot write {}{shown}: the file is read-only; left untouched", path.display())
        }
        _ => {}
    }
    // The folder must accept a new file (the temporary): try it, as root and non-root alike.
    let probe = dir.join(format!(".vitwb-probe-{}", std::process::id()));
    match std::fs::OpenOptions::new().write(true).create_new(true).open(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
        }
        Err(e) => {
            bail!("cannot write {}{shown}: cannot create files in the folder {}: {e}", path.display(), dir.display())
        }
    }
    Ok(target)
}

/// Where `path` would land, for comparing paths: symlinks resolved, the folder canonical.
fn identity(path: &Path) -> PathBuf {
    let target = resolve_symlinks(path).unwrap_or_else(|_| path.to_path_buf());
    if let Ok(c) = std::fs::canonicalize(&target) {
        return c;
    }
    let dir = std::fs::canonicalize(parent_dir(&target)).unwrap_or_else(|_| parent_dir(&target));
    match target.file_name() {
        Some(n) => dir.join(n),
        None => dir,
    }
}

/// Same file on disk (device and inode), or the same place once resolved.
fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(x), Ok(y)) = (std::fs::metadata(a), std::fs::metadata(b)) {
            return x.dev() == y.dev() && x.ino() == y.ino();
        }
    }
    identity(a) == identity(b)
}

/// Refuses output paths that name the same file twice, or that would overwrite an input of the
/// same command (a model, an image): `--csv m.safetensors` must not destroy the model.
/// `outputs`: (flag, path); `inputs`: files and folders read by the command (a folder's files
/// count as inputs too).
pub fn check_outputs_distinct(outputs: &[(&str, &Path)], inputs: &[&Path]) -> Result<()> {
    for (i, (flag, out)) in outputs.iter().enumerate() {
        if let Some((other, _)) = outputs[..i].iter().find(|(_, o)| same_file(o, out)) {
            bail!("{flag} {} names the same file as {other}: give each output its own path", out.display());
        }
        for input in inputs {
            let clash = if input.is_dir() {
                MODEL_FOLDER_FILES.iter().any(|f| same_file(&input.join(f), out))
            } else {
                same_file(input, out)
            };
            if clash {
                bail!(
                    "{flag} {} is also an input of this command ({}); refusing to overwrite it",
                    out.display(),
                    input.display()
                );
            }
        }
    }
    Ok(())
}

/// Files inside a model folder that loading reads.
const MODEL_FOLDER_FILES: [&str; 4] =
    ["config.json", "preprocessor_config.json", "model.safetensors", "pytorch_model.bin"];

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, flushed to disk,
/// then renamed over the target. On any error the temporary file is removed and `path` keeps
/// its previous content (or stays absent).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |f| f.write_all(bytes).map_err(Into::into))
}

/// Like [`write_atomic`], with the content produced by `fill`.
pub fn write_atomic_with(path: &Path, fill: impl FnOnce(&mut std::fs::File) -> Result<()>) -> Result<()> {
    write_atomic_verified(path, fill, |_| Ok(()))
}

/// Like [`write_atomic_with`]; `verify` reads the finished temporary file before it replaces
/// anything (an export checks that it loads).
pub fn write_atomic_verified(
    path: &Path,
    fill: impl FnOnce(&mut std::fs::File) -> Result<()>,
    verify: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    let target = check_writable(path)?;
    let dir = parent_dir(&target);
    let name = target.file_name().with_context(|| format!("cannot write {}: not a file path", path.display()))?;
    let prefix = format!(".{}.tmp-", name.to_string_lossy());
    remove_stale_temporaries(&dir, &prefix);
    let tmp = dir.join(format!("{prefix}{}", std::process::id()));
    let old_permissions = std::fs::metadata(&target).ok().map(|m| m.permissions());
    let guard = TempGuard::register(tmp.clone());
    let result = (|| -> Result<()> {
        // create_new: never follow a link or reuse a file someone placed at the temporary name.
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .with_context(|| format!("cannot create a file in {}", dir.display()))?;
        fill(&mut f)?;
        if let Some(p) = old_permissions {
            f.set_permissions(p)?;
        }
        f.sync_all()?;
        drop(f);
        verify(&tmp)?;
        std::fs::rename(&tmp, &target)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    drop(guard);
    result.with_context(|| format!("cannot write {}", path.display()))
}

/// Removes `.NAME.tmp-PID` files of processes that no longer exist (killed while writing).
fn remove_stale_temporaries(dir: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let file_name = e.file_name();
        let Some(pid) = file_name.to_str().and_then(|n| n.strip_prefix(prefix)).and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !process_alive(pid) && e.file_type().is_ok_and(|t| t.is_file()) {
            match std::fs::remove_file(e.path()) {
                Ok(()) => log::info!("removed {}, left by a process that no longer runs", e.path().display()),
                Err(err) => log::warn!("cannot remove the stale temporary {}: {err}", e.path().display()),
            }
        }
    }
}

fn process_alive(pid: u32) -> bool {
    #[cfg(unix)]
    {
        // Signal 0 checks existence; EPERM means it exists but is someone else's.
        let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
        r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}

/// Temporaries being written now, removed by the signal handler if the process is interrupted.
static IN_FLIGHT: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

struct TempGuard(PathBuf);

impl TempGuard {
    fn register(path: PathBuf) -> TempGuard {
        install_signal_cleanup();
        IN_FLIGHT.lock().unwrap_or_else(|e| e.into_inner()).push(path.clone());
        TempGuard(path)
    }
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        IN_FLIGHT.lock().unwrap_or_else(|e| e.into_inner()).retain(|p| p != &self.0);
    }
}

/// On the first write, a thread that waits for SIGINT/SIGTERM/SIGHUP, removes the temporaries in
/// flight, then dies of the same signal (the default action, so the exit status is the usual one).
fn install_signal_cleanup() {
    #[cfg(unix)]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
            let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else { return };
            let _ = std::thread::Builder::new().name("temp-cleanup".into()).spawn(move || {
                if let Some(sig) = signals.forever().next() {
                    for p in IN_FLIGHT.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                        let _ = std::fs::remove_file(p);
                    }
                    let _ = signal_hook::low_level::emulate_default_handler(sig);
                    std::process::exit(128 + sig);
                }
            });
        });
    }
}
