//! The one SQLite database ec2ami keeps, and job locks. One file, by default
//! `$XDG_STATE_HOME/ec2ami/state.db` (`~/.local/state/ec2ami/state.db`), shared by the
//! features that keep state: the publish journal ([`journal`]), the instances a boot
//! benchmark launched, the boot-time history.
//!
//! Every write is its own transaction in WAL mode, so a process killed at any moment
//! (kill -9 included) leaves the database consistent and holding every step it
//! recorded. `state` is storage only and knows no feature: each feature owns its tables,
//! declares them as a [`Schema`] and uses them through [`StateDb::with_schema`], which
//! creates them (in one transaction) the first time a connection needs them.

pub mod journal;
pub(crate) mod lifecycle;

pub use journal::recorded_parameters;
pub use lifecycle::{Deleted, last_prune, record_prune};

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{Connection, TransactionBehavior};

/// A feature's tables: a name for errors and the statements that create them, each
/// `CREATE ... IF NOT EXISTS`, so applying them again changes nothing.
#[derive(Debug)]
pub struct Schema {
    /// Whose tables (`boot history`); one name per schema.
    pub name: &'static str,
    /// `CREATE TABLE IF NOT EXISTS ...` statements.
    pub ddl: &'static str,
    /// Brings tables an older ec2ami made up to date (a column added since), run after
    /// `ddl` in the same transaction; it must be idempotent.
    pub upgrade: Option<Upgrade>,
}

/// An idempotent upgrade of a feature's older tables (see [`Schema::upgrade`]).
pub type Upgrade = fn(&Connection) -> rusqlite::Result<()>;

/// What the database says of itself (its id).
const META: Schema = Schema {
    name: "state database",
    ddl: "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);",
    upgrade: None,
};

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
    /// A feature's tables cannot be created.
    #[error("state database {}: creating the {schema} tables: {source}", path.display())]
    Schema {
        /// The database file.
        path: PathBuf,
        /// Whose tables.
        schema: &'static str,
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
    conn: Mutex<Conn>,
    path: PathBuf,
}

/// The connection and the schemas already made sure of on it.
#[derive(Debug)]
struct Conn {
    conn: Connection,
    schemas: HashSet<&'static str>,
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
        Ok(StateDb::new(conn, path.to_owned()))
    }

    /// An in-memory database (tests).
    pub fn in_memory() -> Result<StateDb, StateError> {
        let path = PathBuf::from(":memory:");
        let err = |source| StateError::Sqlite {
            path: path.clone(),
            source,
        };
        let conn = Connection::open_in_memory().map_err(err)?;
        Ok(StateDb::new(conn, path))
    }

    fn new(conn: Connection, path: PathBuf) -> StateDb {
        StateDb {
            conn: Mutex::new(Conn {
                conn,
                schemas: HashSet::new(),
            }),
            path,
        }
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
        f(&conn.conn).map_err(|source| StateError::Sqlite {
            path: self.path.clone(),
            source,
        })
    }

    /// Make sure `schema`'s tables exist: created in one transaction the first time
    /// this connection is asked, a set look-up after that.
    pub fn ensure_schema(&self, schema: &Schema) -> Result<(), StateError> {
        let mut conn = self.lock();
        self.ensure_locked(&mut conn, schema)
    }

    /// Run `f` on the connection once `schema`'s tables exist: how a feature uses its
    /// tables.
    pub fn with_schema<T>(
        &self,
        schema: &Schema,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StateError> {
        let mut conn = self.lock();
        self.ensure_locked(&mut conn, schema)?;
        f(&conn.conn).map_err(|source| StateError::Sqlite {
            path: self.path.clone(),
            source,
        })
    }

    fn ensure_locked(&self, conn: &mut Conn, schema: &Schema) -> Result<(), StateError> {
        if conn.schemas.contains(schema.name) {
            return Ok(());
        }
        let create = |c: &mut Connection| -> rusqlite::Result<()> {
            // IMMEDIATE: take the write lock first, so two processes creating the same
            // tables wait for each other instead of failing on a stale read.
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute_batch(schema.ddl)?;
            if let Some(upgrade) = schema.upgrade {
                upgrade(&tx)?;
            }
            tx.commit()
        };
        create(&mut conn.conn).map_err(|source| StateError::Schema {
            path: self.path.clone(),
            schema: schema.name,
            source,
        })?;
        conn.schemas.insert(schema.name);
        Ok(())
    }

    /// This database's id: a random UUID made the first time it is asked for and kept
    /// in the database, so it is the same for every process and run that uses the file
    /// (and different for a copy made before that, or another file). A publish tags the
    /// snapshots it starts with it, so a rerun knows the pending snapshot of a run killed
    /// before its journal entry for one of its own, not another publisher's.
    pub fn id(&self) -> Result<String, StateError> {
        self.with_schema(&META, |c| {
            c.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('state-id', ?1)",
                [uuid::Uuid::new_v4().to_string()],
            )?;
            c.query_row("SELECT value FROM meta WHERE key = 'state-id'", [], |r| {
                r.get(0)
            })
        })
    }

    fn lock(&self) -> MutexGuard<'_, Conn> {
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

    const THINGS: Schema = Schema {
        name: "things",
        ddl: "CREATE TABLE IF NOT EXISTS things (id INTEGER PRIMARY KEY, what TEXT NOT NULL);
              CREATE INDEX IF NOT EXISTS things_what ON things(what);",
        upgrade: None,
    };

    fn tables(db: &StateDb) -> Vec<String> {
        db.with(|c| {
            let mut st = c.prepare("SELECT name FROM sqlite_master ORDER BY name")?;
            st.query_map([], |r| r.get(0))?.collect()
        })
        .unwrap()
    }

    #[test]
    fn a_feature_schema_is_created_when_first_used_and_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let db = StateDb::open(&path).unwrap();
        // Opening creates no feature's tables.
        assert!(tables(&db).is_empty(), "{:?}", tables(&db));
        db.with_schema(&THINGS, |c| {
            c.execute("INSERT INTO things (what) VALUES ('a')", [])
        })
        .unwrap();
        assert_eq!(tables(&db), vec!["things", "things_what"]);
        // Remembered: dropping the table behind the database's back is not noticed by
        // this connection (a look-up, no DDL)...
        db.with(|c| c.execute_batch("DROP TABLE things")).unwrap();
        db.ensure_schema(&THINGS).unwrap();
        assert!(tables(&db).is_empty());
        // ...while a new connection makes sure again.
        let db = StateDb::open(&path).unwrap();
        let n: i64 = db
            .with_schema(&THINGS, |c| {
                c.query_row("SELECT count(*) FROM things", [], |r| r.get(0))
            })
            .unwrap();
        assert_eq!(n, 0);
        // Applying it again on an existing database keeps the rows.
        db.with_schema(&THINGS, |c| {
            c.execute("INSERT INTO things (what) VALUES ('b')", [])
        })
        .unwrap();
        let db = StateDb::open(&path).unwrap();
        let n: i64 = db
            .with_schema(&THINGS, |c| {
                c.query_row("SELECT count(*) FROM things", [], |r| r.get(0))
            })
            .unwrap();
        assert_eq!(n, 1);
    }

    #[test]
    fn a_broken_schema_names_itself_and_leaves_nothing_half_made() {
        let db = StateDb::in_memory().unwrap();
        let broken = Schema {
            name: "broken",
            ddl: "CREATE TABLE IF NOT EXISTS first (id INTEGER); CREATE TABLE nonsense (;",
            upgrade: None,
        };
        let e = db.ensure_schema(&broken).unwrap_err();
        assert!(e.to_string().contains("creating the broken tables"), "{e}");
        // The first table was rolled back with the failed second one.
        assert!(tables(&db).is_empty(), "{:?}", tables(&db));
        // Not remembered: asked again, it fails again.
        assert!(db.ensure_schema(&broken).is_err());
    }

    #[test]
    fn the_id_is_made_once_and_kept_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let first = StateDb::open(&path).unwrap().id().unwrap();
        assert_eq!(first.len(), 36, "{first}");
        let db = StateDb::open(&path).unwrap();
        assert_eq!(db.id().unwrap(), first);
        assert_eq!(db.id().unwrap(), first);
        // Another file, another id.
        let other = StateDb::open(&dir.path().join("other.db")).unwrap();
        assert_ne!(other.id().unwrap(), first);
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
