//! Temporary files and folders to remove if the process is interrupted, and stale ones left
//! by a process that was killed.
//!
//! Partial outputs and staging prefixes are normally removed when their owners are dropped;
//! an interrupt (Ctrl-C, `docker stop`) ends the process without drops. Each temporary is
//! registered here while it exists, and the binary's signal handler calls [`remove_all`]
//! before exiting, so an interrupted pack leaves nothing behind.
//!
//! `kill -9` runs no handler. Every registered temporary is also locked (`flock` on the file
//! or folder itself) while its owner lives, so a later run can tell a stale temporary (its
//! lock can be taken) from one another run is writing (locked), whatever their ages:
//! [`sweep`] removes the stale ones.
//!
//! Publishing an output (the final rename) and the interrupt exclude each other: either the
//! output appears complete and the handler says so, or it never appears.
//!
//! Child processes that write into a temporary (pip and uv in the staging prefix) run through
//! [`output`]: each in a process group of its own, which an interrupt stops (and waits for)
//! before anything is removed, so no process is left writing into a removed folder. The group
//! is first sent SIGINT, as Ctrl-C in a terminal would (pip then removes what it made, a build
//! backend included), and killed when it has not ended within [`CHILD_GRACE`].

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, WaitId, WaitIdOptions};

static REGISTERED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
/// Folders made for an output (its missing parents), removed on interrupt only when empty.
static FOLDERS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static PUBLISHED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
/// The running children, each the leader of its process group.
static CHILDREN: Mutex<Vec<Pid>> = Mutex::new(Vec::new());
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Keeps a path registered (and locked) until dropped.
#[derive(Debug)]
pub struct Guard {
    path: PathBuf,
    _lock: Option<std::fs::File>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(mut r) = REGISTERED.lock()
            && let Some(i) = r.iter().position(|p| p == &self.path)
        {
            r.swap_remove(i);
        }
    }
}

/// Makes a temporary (a file or a folder) with `make` and registers the path `path` names in
/// it for removal on interrupt, locked so that [`sweep`] leaves it alone while this process
/// lives. One step: an interrupt arrives before (nothing is made: once the handler runs, this
/// call blocks until the process exits) or after (it is removed), never between the two.
pub fn create<T>(
    make: impl FnOnce() -> std::io::Result<T>,
    path: impl FnOnce(&T) -> &Path,
) -> std::io::Result<(T, Guard)> {
    let mut registry = REGISTERED.lock().unwrap_or_else(PoisonError::into_inner);
    let temporary = make()?;
    let path = path(&temporary).to_path_buf();
    let lock = std::fs::File::open(&path)
        .ok()
        .filter(|f| f.try_lock().is_ok());
    registry.push(path.clone());
    Ok((temporary, Guard { path, _lock: lock }))
}

/// Keeps a folder made by [`create_folder`] registered until dropped.
#[derive(Debug)]
pub struct FolderGuard {
    path: PathBuf,
}

impl FolderGuard {
    /// The folder.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for FolderGuard {
    fn drop(&mut self) {
        let mut f = FOLDERS.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(i) = f.iter().rposition(|p| p == &self.path) {
            f.remove(i);
        }
    }
}

/// Removes the folders `made` (outermost first, as [`create_folder`] made them), innermost
/// first, each only if it is empty: what a failed run made for its output and left empty.
pub fn remove_made(made: &[FolderGuard]) {
    for f in made.iter().rev() {
        let _ = std::fs::remove_dir(f.path());
    }
}

/// Makes the folder `path` (its parent must exist) and registers it, in one step, to be
/// removed on interrupt if it is empty then (after the temporaries): a missing parent of an
/// output. Never removed when it holds anything, such as a complete output or another
/// process's files.
pub fn create_folder(path: &Path) -> std::io::Result<FolderGuard> {
    let _registry = REGISTERED.lock().unwrap_or_else(PoisonError::into_inner);
    std::fs::create_dir(path)?;
    FOLDERS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(path.to_path_buf());
    Ok(FolderGuard {
        path: path.to_path_buf(),
    })
}

/// Whether an interrupt arrived: the main thread then leaves the exit to the handler.
#[must_use]
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Runs `publish` (the rename that makes an output appear) so that an interrupt cannot cut
/// it: the handler waits for it, and then names `output` as complete.
pub fn publishing<E>(output: &Path, publish: impl FnOnce() -> Result<(), E>) -> Result<(), E> {
    let guard = REGISTERED.lock();
    let result = publish();
    if result.is_ok()
        && let Ok(mut p) = PUBLISHED.lock()
    {
        p.push(output.to_path_buf());
    }
    drop(guard);
    result
}

/// Runs `cmd` to its end and returns what it printed, as [`Command::output`] does (stdin
/// null), with the child in a process group of its own that [`remove_all`] kills: its own
/// children (a build backend, uv's interpreter) included. Once an interrupt arrived, no
/// child is started (this call blocks until the process exits).
pub fn output(cmd: &mut Command) -> std::io::Result<Output> {
    use std::os::unix::process::CommandExt;
    cmd.process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = {
        let mut children = CHILDREN.lock().unwrap_or_else(PoisonError::into_inner);
        let child = cmd.spawn()?;
        children.push(Pid::from_child(&child));
        child
    };
    let pid = Pid::from_child(&child);
    let (mut stdout, mut stderr) = (child.stdout.take(), child.stderr.take());
    let (out, err) = std::thread::scope(|s| {
        let err = s.spawn(move || read_all(stderr.as_mut()));
        (read_all(stdout.as_mut()), err.join().unwrap_or_default())
    });
    // Ended but not reaped: its PID (and group) cannot be reused while it is registered.
    wait_exited(pid);
    CHILDREN
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .retain(|p| *p != pid);
    Ok(Output {
        status: child.wait()?,
        stdout: out,
        stderr: err,
    })
}

fn read_all(r: Option<&mut impl Read>) -> Vec<u8> {
    let mut v = Vec::new();
    if let Some(r) = r {
        let _ = r.read_to_end(&mut v);
    }
    v
}

/// Blocks until the child `pid` has ended, leaving it to be reaped by its owner.
fn wait_exited(pid: Pid) {
    loop {
        match rustix::process::waitid(
            WaitId::Pid(pid),
            WaitIdOptions::EXITED | WaitIdOptions::NOWAIT,
        ) {
            Err(rustix::io::Errno::INTR) => {}
            // Ended (or reaped already: ECHILD).
            _ => return,
        }
    }
}

/// How long an interrupted child has to end after SIGINT before its group is killed. Well
/// within the 10 s `docker stop` leaves between SIGTERM and SIGKILL.
pub const CHILD_GRACE: Duration = Duration::from_secs(3);

/// Stops every registered child: SIGINT to its process group, then, once each child has ended
/// or [`CHILD_GRACE`] has passed, SIGKILL to the group (whatever the child left running in it
/// too), and waits until each child has ended. Holds the registry until the process exits: no
/// child is started after.
fn stop_children() {
    let children = CHILDREN.lock().unwrap_or_else(PoisonError::into_inner);
    for pid in children.iter() {
        let _ = rustix::process::kill_process_group(*pid, Signal::INT);
    }
    let deadline = Instant::now() + CHILD_GRACE;
    while Instant::now() < deadline && !children.iter().all(|pid| has_exited(*pid)) {
        std::thread::sleep(Duration::from_millis(10));
    }
    // The group outlives its leader while anything in it runs; the leader, ended but not
    // reaped, keeps the group's number from being reused.
    for pid in children.iter() {
        let _ = rustix::process::kill_process_group(*pid, Signal::KILL);
    }
    for pid in children.iter() {
        wait_exited(*pid);
    }
    std::mem::forget(children);
}

/// Whether the child `pid` has ended (without reaping it).
fn has_exited(pid: Pid) -> bool {
    match rustix::process::waitid(
        WaitId::Pid(pid),
        WaitIdOptions::EXITED | WaitIdOptions::NOWAIT | WaitIdOptions::NOHANG,
    ) {
        Ok(None) | Err(rustix::io::Errno::INTR) => false,
        // Ended (or reaped already: ECHILD).
        _ => true,
    }
}

/// Removes every registered path (called on interrupt), after stopping the children that may
/// write into them, and returns the outputs that were already complete. Holds the registry
/// until the process exits: nothing is published after.
pub fn remove_all() -> Vec<PathBuf> {
    INTERRUPTED.store(true, Ordering::SeqCst);
    stop_children();
    let registry = REGISTERED.lock();
    let paths = registry.as_ref().map(|r| (*r).clone()).unwrap_or_default();
    for p in paths {
        // Threads may still be writing into a staging folder: retry until it is gone.
        for _ in 0..50 {
            let r = match std::fs::symlink_metadata(&p) {
                Ok(m) if m.is_dir() => std::fs::remove_dir_all(&p),
                Ok(_) => std::fs::remove_file(&p),
                Err(_) => break,
            };
            if r.is_ok() && std::fs::symlink_metadata(&p).is_err() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    // Innermost last made: removed first.
    let folders = FOLDERS.lock().map(|f| f.clone()).unwrap_or_default();
    for f in folders.iter().rev() {
        let _ = std::fs::remove_dir(f);
    }
    // Keep the registry locked: publishing() blocks until the process exits.
    std::mem::forget(registry);
    PUBLISHED.lock().map(|p| p.clone()).unwrap_or_default()
}

/// Removes the stale temporaries in `dir` whose names `is_ours` accepts: those no living
/// process holds locked (left by `kill -9` or a crash). Returns what was removed.
pub fn sweep(dir: &Path, is_ours: impl Fn(&str, &Path) -> bool) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for e in entries.filter_map(Result::ok) {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let path = e.path();
        if !is_ours(name, &path) {
            continue;
        }
        let Ok(file) = std::fs::File::open(&path) else {
            continue;
        };
        if file.try_lock().is_err() {
            continue; // a living process writes it
        }
        let r = if e.file_type().is_ok_and(|t| t.is_dir()) {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        if r.is_ok() {
            removed.push(path);
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_paths_are_removed_until_their_guard_drops() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("partial");
        let dir = d.path().join("staging");
        std::fs::write(&file, "x").unwrap();
        std::fs::create_dir_all(dir.join("env/bin")).unwrap();
        let kept = d.path().join("kept");
        std::fs::write(&kept, "x").unwrap();
        let register = |p: &Path| create(|| Ok(p.to_path_buf()), PathBuf::as_path).unwrap().1;
        let g1 = register(&file);
        let g2 = register(&dir);
        drop(register(&kept));
        // Locked while registered: a sweep leaves them.
        assert!(sweep(d.path(), |n, _| n == "partial" || n == "staging").is_empty());
        drop(g2);
        std::fs::create_dir_all(dir.join("env/bin")).unwrap();
        assert_eq!(sweep(d.path(), |n, _| n == "staging"), vec![dir.clone()]);
        drop(g1);
        assert!(kept.exists(), "an unregistered path was swept");
        assert!(file.exists());
    }
}
