//! The publish journal: each release being published, and each of its steps with the
//! resource it created, recorded as soon as AWS names it. A rerun reads it to finish
//! the job instead of starting over, and to clean up what an interrupted step left.

use std::sync::Arc;

use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use super::{Schema, StateDb, StateError, now_epoch};

/// The journal's tables.
pub const SCHEMA: Schema = Schema {
    name: "publish journal",
    ddl: "
CREATE TABLE IF NOT EXISTS releases (
    id          INTEGER PRIMARY KEY,
    key         TEXT NOT NULL UNIQUE,   -- identity: release file path + content hash
    file        TEXT NOT NULL,
    vars        TEXT NOT NULL,          -- JSON: values fixed at the first run (date)
    started_at  INTEGER NOT NULL,
    finished_at INTEGER
);
CREATE TABLE IF NOT EXISTS steps (
    release_id  INTEGER NOT NULL REFERENCES releases(id) ON DELETE CASCADE,
    image       TEXT NOT NULL,          -- the AMI name the step belongs to
    kind        TEXT NOT NULL,          -- snapshot, ami, copy, share, param, ...
    region      TEXT NOT NULL,
    target      TEXT NOT NULL,          -- parameter name, permission... ('' if none)
    resource_id TEXT,
    status      TEXT NOT NULL,          -- started, done, failed
    detail      TEXT,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (release_id, image, kind, region, target)
);
",
    upgrade: None,
};

/// Where one step stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Begun; the resource (if named) may be unfinished.
    Started,
    /// Finished and checked.
    Done,
    /// Failed; the detail says why.
    Failed,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Started => "started",
            Status::Done => "done",
            Status::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Status {
        match s {
            "done" => Status::Done,
            "failed" => Status::Failed,
            _ => Status::Started,
        }
    }
}

/// Which step: of which image, what kind, where, on what.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct StepKey {
    /// The AMI name the step belongs to.
    pub image: String,
    /// snapshot, ami, copy, share, param...
    pub kind: String,
    /// Region ('' when it has none).
    pub region: String,
    /// Parameter name, permission... ('' when none).
    pub target: String,
}

impl StepKey {
    /// A step key.
    pub fn new(image: &str, kind: &str, region: &str, target: &str) -> StepKey {
        StepKey {
            image: image.to_string(),
            kind: kind.to_string(),
            region: region.to_string(),
            target: target.to_string(),
        }
    }
}

/// One recorded step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    /// Which step.
    #[serde(flatten)]
    pub key: StepKey,
    /// The resource it made or uses.
    pub resource_id: Option<String>,
    /// Where it stands.
    pub status: Status,
    /// Why it failed, or a note.
    pub detail: Option<String>,
}

/// A release's journal (cheap to clone: clones share the database).
#[derive(Debug, Clone)]
pub struct Journal {
    db: Arc<StateDb>,
    release: i64,
    vars: String,
    resumed: bool,
}

impl Journal {
    /// The journal of release `key` (the identity of a release file and its content):
    /// the one an earlier run left, or a new one recording `vars` (JSON: the values
    /// fixed at the first run, such as the date). A resumed journal keeps its vars.
    pub fn open(
        db: &Arc<StateDb>,
        key: &str,
        file: &str,
        vars: &str,
    ) -> Result<Journal, StateError> {
        db.with_schema(&SCHEMA, |c| {
            let found: Option<(i64, String)> = c
                .query_row("SELECT id, vars FROM releases WHERE key = ?1", [key], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()?;
            if let Some((release, vars)) = found {
                return Ok(Journal {
                    db: db.clone(),
                    release,
                    vars,
                    resumed: true,
                });
            }
            c.execute(
                "INSERT INTO releases (key, file, vars, started_at) VALUES (?1, ?2, ?3, ?4)",
                params![key, file, vars, now_epoch()],
            )?;
            Ok(Journal {
                db: db.clone(),
                release: c.last_insert_rowid(),
                vars: vars.to_string(),
                resumed: false,
            })
        })
    }

    /// The journal an earlier run of release `key` left, if any (creates nothing).
    pub fn find(db: &Arc<StateDb>, key: &str) -> Result<Option<Journal>, StateError> {
        db.with_schema(&SCHEMA, |c| {
            c.query_row("SELECT id, vars FROM releases WHERE key = ?1", [key], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()
        })
        .map(|found| {
            found.map(|(release, vars)| Journal {
                db: db.clone(),
                release,
                vars,
                resumed: true,
            })
        })
    }

    /// The id of the state database holding this journal ([`StateDb::id`]).
    pub fn state_id(&self) -> Result<String, StateError> {
        self.db.id()
    }

    /// The variables fixed at the first run (JSON).
    pub fn vars(&self) -> &str {
        &self.vars
    }

    /// True when an earlier run of the same release left this journal.
    pub fn resumed(&self) -> bool {
        self.resumed
    }

    /// The recorded state of `key`.
    pub fn get(&self, key: &StepKey) -> Result<Option<Step>, StateError> {
        self.db.with_schema(&SCHEMA, |c| {
            c.query_row(
                "SELECT resource_id, status, detail FROM steps
                 WHERE release_id = ?1 AND image = ?2 AND kind = ?3 AND region = ?4 AND target = ?5",
                params![self.release, key.image, key.kind, key.region, key.target],
                |r| {
                    Ok(Step {
                        key: key.clone(),
                        resource_id: r.get(0)?,
                        status: Status::parse(&r.get::<_, String>(1)?),
                        detail: r.get(2)?,
                    })
                },
            )
            .optional()
        })
    }

    /// Record `key` as `status`, with its resource when known (a `None` keeps the one
    /// recorded before).
    pub fn record(
        &self,
        key: &StepKey,
        status: Status,
        resource_id: Option<&str>,
        detail: Option<&str>,
    ) -> Result<(), StateError> {
        self.db.with_schema(&SCHEMA, |c| {
            c.execute(
                "INSERT INTO steps (release_id, image, kind, region, target, resource_id, status, detail, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT (release_id, image, kind, region, target) DO UPDATE SET
                   resource_id = COALESCE(excluded.resource_id, steps.resource_id),
                   status = excluded.status, detail = excluded.detail,
                   updated_at = excluded.updated_at",
                params![
                    self.release,
                    key.image,
                    key.kind,
                    key.region,
                    key.target,
                    resource_id,
                    status.as_str(),
                    detail,
                    now_epoch()
                ],
            )
            .map(|_| ())
        })
    }

    /// Forget `key` (its resource is gone).
    pub fn forget(&self, key: &StepKey) -> Result<(), StateError> {
        self.db.with_schema(&SCHEMA, |c| {
            c.execute(
                "DELETE FROM steps WHERE release_id = ?1 AND image = ?2 AND kind = ?3
                 AND region = ?4 AND target = ?5",
                params![self.release, key.image, key.kind, key.region, key.target],
            )
            .map(|_| ())
        })
    }

    /// Every recorded step, in key order.
    pub fn steps(&self) -> Result<Vec<Step>, StateError> {
        self.db.with_schema(&SCHEMA, |c| {
            let mut st = c.prepare(
                "SELECT image, kind, region, target, resource_id, status, detail FROM steps
                 WHERE release_id = ?1 ORDER BY image, kind, region, target",
            )?;
            let rows = st.query_map([self.release], |r| {
                Ok(Step {
                    key: StepKey {
                        image: r.get(0)?,
                        kind: r.get(1)?,
                        region: r.get(2)?,
                        target: r.get(3)?,
                    },
                    resource_id: r.get(4)?,
                    status: Status::parse(&r.get::<_, String>(5)?),
                    detail: r.get(6)?,
                })
            })?;
            rows.collect()
        })
    }

    /// Mark the release finished (every step done).
    pub fn finish(&self) -> Result<(), StateError> {
        self.db.with_schema(&SCHEMA, |c| {
            c.execute(
                "UPDATE releases SET finished_at = ?2 WHERE id = ?1",
                params![self.release, now_epoch()],
            )
            .map(|_| ())
        })
    }
}

/// SSM parameter names every journal recorded (with their region), for guards that
/// must not delete an AMI a published parameter points at.
pub fn recorded_parameters(db: &StateDb) -> Result<Vec<(String, String)>, StateError> {
    db.with_schema(&SCHEMA, |c| {
        let mut st = c.prepare(
            "SELECT DISTINCT region, target FROM steps WHERE kind = 'param' ORDER BY 1, 2",
        )?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_recorded_updated_and_resumed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let db = Arc::new(StateDb::open(&path).unwrap());
        let j = Journal::open(&db, "rel-1", "release.toml", r#"{"date":"20261124"}"#).unwrap();
        assert!(!j.resumed());
        let snap = StepKey::new("MyOS 1", "snapshot", "us-east-1", "");
        assert_eq!(j.get(&snap).unwrap(), None);
        j.record(&snap, Status::Started, Some("snap-1"), None)
            .unwrap();
        // A later record without a resource keeps the one recorded.
        j.record(&snap, Status::Done, None, Some("ok")).unwrap();
        let got = j.get(&snap).unwrap().unwrap();
        assert_eq!(got.resource_id.as_deref(), Some("snap-1"));
        assert_eq!(got.status, Status::Done);
        let p = StepKey::new("MyOS 1", "param", "eu-west-1", "/myos/x");
        j.record(&p, Status::Done, Some("ami-1"), None).unwrap();
        drop((j, db));

        // A new process: same key, same journal and vars, whatever vars it offers.
        let db = Arc::new(StateDb::open(&path).unwrap());
        let j = Journal::open(&db, "rel-1", "release.toml", r#"{"date":"20261125"}"#).unwrap();
        assert!(j.resumed());
        assert_eq!(j.vars(), r#"{"date":"20261124"}"#);
        assert_eq!(j.steps().unwrap().len(), 2);
        assert_eq!(
            recorded_parameters(&db).unwrap(),
            vec![("eu-west-1".to_string(), "/myos/x".to_string())]
        );
        j.forget(&snap).unwrap();
        assert_eq!(j.steps().unwrap().len(), 1);
        // Another release is another journal.
        let k = Journal::open(&db, "rel-2", "other.toml", "{}").unwrap();
        assert!(!k.resumed());
        assert!(k.steps().unwrap().is_empty());
    }
}
