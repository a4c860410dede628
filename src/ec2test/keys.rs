//! The journal of ephemeral key pairs `ec2ami test` imports: a row is written before
//! ImportKeyPair is sent and deleted once DeleteKeyPair was accepted, so a key pair a
//! killed process left is deleted by the next `ec2ami test` (of the same endpoint and
//! profile) whose launching process is gone.

use rusqlite::params;

use crate::aws::{AwsError, Clients, RetryPolicy, ec2};
use crate::bench::Scope;
use crate::bench::journal::{owner_alive, this_process};
use crate::state::{Schema, StateDb, StateError, now_epoch};

/// The journal's table.
pub const SCHEMA: Schema = Schema {
    name: "test key pairs",
    ddl: "
CREATE TABLE IF NOT EXISTS test_key_pairs (
    name        TEXT NOT NULL,      -- the key pair's name (ec2ami-test-...)
    region      TEXT NOT NULL,
    endpoint    TEXT NOT NULL,      -- endpoint override ('' = AWS)
    profile     TEXT NOT NULL,      -- named profile ('' = default chain)
    owner       TEXT NOT NULL,      -- host:pid:start-time of the importing process
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (name, region)
);
",
    upgrade: None,
};

/// Record a key pair about to be imported.
pub fn begin(db: &StateDb, scope: &Scope, name: &str, region: &str) -> Result<(), StateError> {
    db.with_schema(&SCHEMA, |c| {
        c.execute(
            "INSERT OR REPLACE INTO test_key_pairs
             (name, region, endpoint, profile, owner, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                name,
                region,
                scope.endpoint,
                scope.profile,
                this_process(),
                now_epoch()
            ],
        )
        .map(|_| ())
    })
}

/// Forget a key pair that was deleted.
pub fn finished(db: &StateDb, name: &str, region: &str) -> Result<(), StateError> {
    db.with_schema(&SCHEMA, |c| {
        c.execute(
            "DELETE FROM test_key_pairs WHERE name = ?1 AND region = ?2",
            params![name, region],
        )
        .map(|_| ())
    })
}

/// (name, region, owner) of every journaled key pair in `scope`.
pub fn pending(db: &StateDb, scope: &Scope) -> Result<Vec<(String, String, String)>, StateError> {
    db.with_schema(&SCHEMA, |c| {
        let mut st = c.prepare(
            "SELECT name, region, owner FROM test_key_pairs
             WHERE endpoint = ?1 AND profile = ?2 ORDER BY created_at, name",
        )?;
        let rows = st.query_map(params![scope.endpoint, scope.profile], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
        rows.collect()
    })
}

/// Import `public_key` as `name` in `clients`' region, journaled first.
pub async fn import(
    clients: &Clients,
    db: &StateDb,
    scope: &Scope,
    name: &str,
    public_key: &str,
    retry: &RetryPolicy,
) -> Result<(), String> {
    let region = clients.region().to_string();
    begin(db, scope, name, &region).map_err(|e| format!("key pair not imported: {e}"))?;
    if let Err(e) = ec2::import_key_pair(clients, name, public_key, retry).await {
        // The answer may have been lost after the import: delete to be sure.
        let _ = delete(clients, db, name, retry).await;
        return Err(format!("importing key pair {name} in {region}: {e}"));
    }
    Ok(())
}

/// Delete key pair `name` in `clients`' region and forget it.
pub async fn delete(
    clients: &Clients,
    db: &StateDb,
    name: &str,
    retry: &RetryPolicy,
) -> Result<(), AwsError> {
    ec2::delete_key_pair(clients, name, retry).await?;
    if let Err(e) = finished(db, name, clients.region()) {
        tracing::warn!("key pair journal: {e}");
    }
    Ok(())
}

/// Delete the key pairs of earlier tests whose process is gone; returns their names
/// and the errors.
pub async fn cleanup(
    clients: &Clients,
    db: &StateDb,
    scope: &Scope,
    retry: &RetryPolicy,
) -> Result<(Vec<String>, Vec<String>), StateError> {
    let mut deleted = Vec::new();
    let mut errors = Vec::new();
    for (name, region, owner) in pending(db, scope)? {
        if owner_alive(&owner) {
            continue;
        }
        let regional = clients.in_region(&region);
        match delete(&regional, db, &name, retry).await {
            Ok(()) => deleted.push(name),
            Err(e) => errors.push(format!("key pair {name} in {region}: {e}")),
        }
    }
    Ok((deleted, errors))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_pairs_are_journaled_per_scope_and_forgotten() {
        let db = StateDb::in_memory().unwrap();
        let scope = Scope {
            endpoint: "http://127.0.0.1:1".into(),
            profile: String::new(),
        };
        begin(&db, &scope, "ec2ami-test-a", "us-east-1").unwrap();
        begin(&db, &scope, "ec2ami-test-a", "eu-west-1").unwrap();
        begin(&db, &Scope::default(), "ec2ami-test-b", "us-east-1").unwrap();
        let rows = pending(&db, &scope).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].2, this_process());
        finished(&db, "ec2ami-test-a", "us-east-1").unwrap();
        let rows = pending(&db, &scope).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].1, "eu-west-1");
    }
}
