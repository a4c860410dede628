//! The one SQLite database ec2ami keeps: the publish journal, the instances a boot
//! benchmark launched, the boot-time history. One file, by default
//! `$XDG_STATE_HOME/ec2ami/state.db` (`~/.local/state/ec2ami/state.db`).
//!
//! Every write is its own transaction in WAL mode, so a process killed at any moment
//! (kill -9 included) leaves the database consistent and holding every step it
//! recorded. Each feature owns its tables and declares them in [`SCHEMAS`]; they are
//! created when the database is opened.

pub mod journal;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::Connection;

/// Each feature's tables (`CREATE TABLE IF NOT EXISTS ...`), created on open.
const SCHEMAS: &[(&str, &str)] = &[
    ("journal", journal::SCHEMA),
    ("bench instances", crate::bench::journal::SCHEMA),
    ("boot history", crate::history::SCHEMA),
];

/// Upgrades of older databases, run after the schemas on open (each idempotent).
type Upgrade = fn(&Connection) -> rusqlite::Result<()>;
const UPGRADES: &[(&str, Upgrade)] = &[("boot history firmware", crate::history::upgrade)];

/// A failure of the state database, with the file it concerns.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// SQLite refused.
    #[error("state database {}: {source}", path.display())]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },
    /// Its directory cannot be made.
    #[error("state directory {}: {source}", path.display())]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// The state database.
#[derive(Debug)]
pub struct StateDb {
    conn: Mutex<Connection>,
    path: PathBuf,
}

/// `$XDG_STATE_HOME/ec2ami` (`~/.local/state/ec2ami`): where ec2ami keeps its state.
pub fn state_dir() -> PathBuf {
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("ec2ami")
}

/// The default database file.
pub fn default_path() -> PathBuf {
    state_dir().join("state.db")
}

impl StateDb {
    /// Open (creating it and its directory if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<StateDb, StateError> {
        let err = |source| StateError::Sqlite {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StateError::Dir {
                path: dir.to_owned(),
                source,
            })?;
        }
        let conn = Connection::open(path).map_err(err)?;
        // Several ec2ami processes may share the file (a publish and a bench): wait for
        // each other's short transactions instead of failing.
        conn.busy_timeout(Duration::from_secs(30)).map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        // NORMAL is durable against the process dying (only a power loss can drop the
        // last transactions), which is what a kill -9 in the middle of a publish needs.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(err)?;
        for (_, ddl) in SCHEMAS {
            conn.execute_batch(ddl).map_err(err)?;
        }
        for (_, up) in UPGRADES {
            up(&conn).map_err(err)?;
        }
        Ok(StateDb {
            conn: Mutex::new(conn),
            path: path.to_owned(),
        })
    }

    /// An in-memory database (tests).
    pub fn in_memory() -> Result<StateDb, StateError> {
        let path = PathBuf::from(":memory:");
        let err = |source| StateError::Sqlite {
            path: path.clone(),
            source,
        };
        let conn = Connection::open_in_memory().map_err(err)?;
        for (_, ddl) in SCHEMAS {
            conn.execute_batch(ddl).map_err(err)?;
        }
        for (_, up) in UPGRADES {
            up(&conn).map_err(err)?;
        }
        Ok(StateDb {
            conn: Mutex::new(conn),
            path,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Run `f` on the connection. Calls are short (a few rows), so they run inline.
    pub fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StateError> {
        let conn = self.lock();
        f(&conn).map_err(|source| StateError::Sqlite {
            path: self.path.clone(),
            source,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent (every
        // statement is atomic), so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// An exclusive lock on a named job (a release being published), held until dropped.
/// The kernel releases it when the process dies, even by kill -9.
#[derive(Debug)]
pub struct JobLock {
    _file: std::fs::File,
}

impl JobLock {
    /// Take the lock `name` under `dir`, or say who holds it.
    pub fn acquire(dir: &Path, name: &str) -> Result<Option<JobLock>, StateError> {
        use std::os::fd::AsRawFd;
        let dir = dir.join("locks");
        let io = |source| StateError::Dir {
            path: dir.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(io)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(format!("{name}.lock")))
            .map_err(io)?;
        // SAFETY: flock on a descriptor we own; no memory is involved.
        let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if r == 0 {
            Ok(Some(JobLock { _file: file }))
        } else {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                Ok(None)
            } else {
                Err(io(e))
            }
        }
    }
}

/// Seconds since the Unix epoch, for timestamps in the database.
pub fn now_epoch() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_creates_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("deep/er/state.db");
        {
            let db = StateDb::open(&path).unwrap();
            let mode: String = db
                .with(|c| c.query_row("PRAGMA journal_mode", [], |r| r.get(0)))
                .unwrap();
            assert_eq!(mode, "wal");
        }
        assert!(path.exists());
        // Reopening applies the schemas again without error.
        StateDb::open(&path).unwrap();
    }

    #[test]
    fn a_job_lock_is_exclusive_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let a = JobLock::acquire(dir.path(), "rel").unwrap();
        assert!(a.is_some());
        assert!(JobLock::acquire(dir.path(), "rel").unwrap().is_none());
        assert!(JobLock::acquire(dir.path(), "other").unwrap().is_some());
        drop(a);
        assert!(JobLock::acquire(dir.path(), "rel").unwrap().is_some());
    }

    #[test]
    fn unopenable_path_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain-file");
        std::fs::write(&file, b"x").unwrap();
        let e = StateDb::open(&file.join("state.db")).unwrap_err();
        assert!(e.to_string().contains("plain-file"), "{e}");
    }
}
