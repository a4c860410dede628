//! What the later life of an image needs remembered: the launch permissions an image
//! had when ec2ami disabled it (AWS drops them and EnableImage does not bring them
//! back), and each prune's report (so `restore --last-prune` undoes exactly the last
//! prune). The permissions a publish granted are read from the publish journal's
//! `share` steps as well.

use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::{Schema, StateDb, StateError, journal, now_epoch};

/// The lifecycle tables.
pub const SCHEMA: Schema = Schema {
    name: "image lifecycle",
    ddl: "
CREATE TABLE IF NOT EXISTS image_sharing (
    region      TEXT NOT NULL,
    image_id    TEXT NOT NULL,
    permissions TEXT NOT NULL,          -- JSON list: public, account:ID, org:ARN, ou:ARN
    recorded_at INTEGER NOT NULL,
    PRIMARY KEY (region, image_id)
);
CREATE TABLE IF NOT EXISTS prune_runs (
    id          INTEGER PRIMARY KEY,
    at          INTEGER NOT NULL,
    regions     TEXT NOT NULL,          -- JSON list of the regions pruned
    deleted     TEXT NOT NULL           -- JSON list of Deleted
);
",
};

/// One image or snapshot a prune deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deleted {
    /// Region.
    pub region: String,
    /// `image` or `snapshot`.
    pub kind: String,
    /// AMI or snapshot id.
    pub id: String,
    /// Until when the Recycle Bin keeps it (epoch seconds), as the plan expected; `None`
    /// when no retention rule covered it.
    pub recoverable_until: Option<i64>,
}

/// A prune run as journalled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PruneRun {
    /// Its row id.
    pub id: i64,
    /// When it ran, epoch seconds.
    pub at: i64,
    /// The regions it pruned.
    pub regions: Vec<String>,
    /// What it deleted.
    pub deleted: Vec<Deleted>,
}

/// Remember the launch permissions of `image_id` before it is disabled. An image with
/// none keeps what was recorded before (disabling twice forgets nothing).
pub fn record_sharing(
    db: &StateDb,
    region: &str,
    image_id: &str,
    permissions: &[String],
) -> Result<(), StateError> {
    if permissions.is_empty() {
        return Ok(());
    }
    let json = serde_json::to_string(permissions).expect("strings serialise");
    db.with_schema(&SCHEMA, |c| {
        c.execute(
            "INSERT INTO image_sharing (region, image_id, permissions, recorded_at)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (region, image_id) DO UPDATE SET
               permissions = excluded.permissions, recorded_at = excluded.recorded_at",
            params![region, image_id, json, now_epoch()],
        )
        .map(|_| ())
    })
}

/// Every launch permission ec2ami recorded for `image_id` in `region`: what `disable`
/// or a prune saw before disabling it, and what publishes granted (their journal's
/// `share` steps name the AMI and the permissions), without repeats, in that order.
pub fn recorded_sharing(
    db: &StateDb,
    region: &str,
    image_id: &str,
) -> Result<Vec<String>, StateError> {
    db.ensure_schema(&journal::SCHEMA)?;
    let (own, published) = db.with_schema(&SCHEMA, |c| {
        let own: Option<String> = c
            .query_row(
                "SELECT permissions FROM image_sharing WHERE region = ?1 AND image_id = ?2",
                params![region, image_id],
                |r| r.get(0),
            )
            .optional()?;
        let mut st = c.prepare(
            "SELECT target FROM steps WHERE kind = 'share' AND region = ?1 AND resource_id = ?2
             ORDER BY updated_at",
        )?;
        let published = st
            .query_map(params![region, image_id], |r| r.get::<_, String>(0))?
            .collect::<rusqlite::Result<Vec<String>>>()?;
        Ok((own, published))
    })?;
    let mut out: Vec<String> = Vec::new();
    let own: Vec<String> = own
        .and_then(|j| serde_json::from_str(&j).ok())
        .unwrap_or_default();
    let from_journal = published
        .iter()
        .flat_map(|t| t.split(',').map(str::trim).map(str::to_string));
    for w in own.into_iter().chain(from_journal) {
        if !w.is_empty() && !out.contains(&w) {
            out.push(w);
        }
    }
    Ok(out)
}

/// Journal a prune's deletions.
pub fn record_prune(
    db: &StateDb,
    regions: &[String],
    deleted: &[Deleted],
) -> Result<i64, StateError> {
    let regions = serde_json::to_string(regions).expect("strings serialise");
    let deleted = serde_json::to_string(deleted).expect("deletions serialise");
    db.with_schema(&SCHEMA, |c| {
        c.execute(
            "INSERT INTO prune_runs (at, regions, deleted) VALUES (?1, ?2, ?3)",
            params![now_epoch(), regions, deleted],
        )?;
        Ok(c.last_insert_rowid())
    })
}

/// The last prune run with `--yes`, if any (it may have deleted nothing).
pub fn last_prune(db: &StateDb) -> Result<Option<PruneRun>, StateError> {
    let row = db.with_schema(&SCHEMA, |c| {
        c.query_row(
            "SELECT id, at, regions, deleted FROM prune_runs ORDER BY id DESC LIMIT 1",
            [],
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                ))
            },
        )
        .optional()
    })?;
    Ok(row.map(|(id, at, regions, deleted)| PruneRun {
        id,
        at,
        regions: serde_json::from_str(&regions).unwrap_or_default(),
        deleted: serde_json::from_str(&deleted).unwrap_or_default(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::journal::{Journal, Status, StepKey};
    use std::sync::Arc;

    #[test]
    fn sharing_comes_from_disable_and_from_the_publish_journal() {
        let db = Arc::new(StateDb::in_memory().unwrap());
        let j = Journal::open(&db, "rel", "r.toml", "{}").unwrap();
        let k = StepKey::new(
            "MyOS 1",
            "share",
            "eu-west-1",
            "public,account:123456789012",
        );
        j.record(&k, Status::Done, Some("ami-1"), None).unwrap();
        assert_eq!(
            recorded_sharing(&db, "eu-west-1", "ami-1").unwrap(),
            ["public", "account:123456789012"]
        );
        assert!(
            recorded_sharing(&db, "us-east-1", "ami-1")
                .unwrap()
                .is_empty()
        );
        record_sharing(
            &db,
            "eu-west-1",
            "ami-1",
            &["org:arn:aws:o".into(), "public".into()],
        )
        .unwrap();
        // Disabling again (no permissions left) forgets nothing.
        record_sharing(&db, "eu-west-1", "ami-1", &[]).unwrap();
        assert_eq!(
            recorded_sharing(&db, "eu-west-1", "ami-1").unwrap(),
            ["org:arn:aws:o", "public", "account:123456789012"]
        );
    }

    #[test]
    fn the_last_prune_is_found() {
        let db = StateDb::in_memory().unwrap();
        assert!(last_prune(&db).unwrap().is_none());
        let d = Deleted {
            region: "us-east-1".into(),
            kind: "image".into(),
            id: "ami-1".into(),
            recoverable_until: Some(5),
        };
        record_prune(&db, &["us-east-1".into()], std::slice::from_ref(&d)).unwrap();
        let last = last_prune(&db).unwrap().unwrap();
        assert_eq!(last.deleted, vec![d]);
        // A later prune that deleted nothing is the last one: nothing to restore.
        record_prune(&db, &["us-east-1".into()], &[]).unwrap();
        assert!(last_prune(&db).unwrap().unwrap().deleted.is_empty());
    }
}
