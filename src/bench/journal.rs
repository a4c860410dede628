//! The journal of launched instances: a row is written before RunInstances is sent
//! (keyed by the launch's ClientToken, which is also a tag on the instance), gets the
//! instance id as soon as AWS names it, and is deleted only once TerminateInstances
//! was accepted. Whatever a killed process leaves is found here by the next start or
//! by `ec2ami bench --cleanup`.

use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use crate::state::{Schema, StateDb, StateError, now_epoch};

/// The journal's table.
pub const SCHEMA: Schema = Schema {
    name: "bench instances",
    ddl: "
CREATE TABLE IF NOT EXISTS bench_instances (
    token       TEXT PRIMARY KEY,   -- RunInstances ClientToken and ec2ami:bench-token tag
    region      TEXT NOT NULL,
    endpoint    TEXT NOT NULL,      -- endpoint override ('' = AWS)
    profile     TEXT NOT NULL,      -- named profile ('' = default chain)
    instance_id TEXT,               -- NULL until RunInstances answered
    owner       TEXT NOT NULL,      -- host:pid:start-time of the process that launched it
    launched_at INTEGER NOT NULL
);
",
};

/// Which account and endpoint rows belong to: a row is only cleaned up by a process
/// talking to the same place, so a test endpoint's fake ids never reach AWS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    /// Endpoint override ('' = AWS).
    pub endpoint: String,
    /// Named profile ('' = the default chain).
    pub profile: String,
}

/// One journaled launch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Launch {
    /// ClientToken of the launch; also the `ec2ami:bench-token` tag.
    pub token: String,
    /// Region.
    pub region: String,
    /// The instance, once RunInstances answered.
    pub instance_id: Option<String>,
    /// host:pid:start-time of the launching process.
    pub owner: String,
    /// Unix time of the launch.
    pub launched_at: i64,
}

/// This process, as recorded in [`Launch::owner`]: host, pid and the kernel's start
/// time of the process (so a recycled pid is not mistaken for us).
pub fn this_process() -> String {
    let pid = std::process::id();
    format!(
        "{}:{pid}:{}",
        hostname(),
        start_time(pid).unwrap_or_default()
    )
}

/// Whether the process recorded as `owner` may still be running: true for another
/// host (we cannot tell), true when the same pid with the same start time exists here.
pub fn owner_alive(owner: &str) -> bool {
    let mut parts = owner.rsplitn(3, ':');
    let (Some(start), Some(pid), Some(host)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    if host != hostname() {
        return true;
    }
    match pid.parse::<u32>() {
        Ok(pid) => start_time(pid).is_some_and(|s| s == start),
        Err(_) => false,
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Field 22 of /proc/PID/stat: start time in clock ticks since boot.
fn start_time(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19).map(str::to_string)
}

/// Record a launch about to be sent.
pub fn begin(db: &StateDb, scope: &Scope, token: &str, region: &str) -> Result<(), StateError> {
    db.with_schema(&SCHEMA, |c| {
        c.execute(
            "INSERT OR REPLACE INTO bench_instances
             (token, region, endpoint, profile, instance_id, owner, launched_at)
             VALUES (?1, ?2, ?3, ?4, NULL, ?5, ?6)",
            params![
                token,
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

/// Record the instance a launch made.
pub fn launched(db: &StateDb, token: &str, instance_id: &str) -> Result<(), StateError> {
    db.with_schema(&SCHEMA, |c| {
        c.execute(
            "UPDATE bench_instances SET instance_id = ?2 WHERE token = ?1",
            params![token, instance_id],
        )
        .map(|_| ())
    })
}

/// Forget a launch whose instance was terminated (or never made).
pub fn finished(db: &StateDb, token: &str) -> Result<(), StateError> {
    db.with_schema(&SCHEMA, |c| {
        c.execute("DELETE FROM bench_instances WHERE token = ?1", [token])
            .map(|_| ())
    })
}

/// One launch by token.
pub fn get(db: &StateDb, token: &str) -> Result<Option<Launch>, StateError> {
    db.with_schema(&SCHEMA, |c| {
        c.query_row(
            "SELECT token, region, instance_id, owner, launched_at FROM bench_instances
             WHERE token = ?1",
            [token],
            row,
        )
        .optional()
    })
}

/// Every journaled launch in `scope`, oldest first.
pub fn pending(db: &StateDb, scope: &Scope) -> Result<Vec<Launch>, StateError> {
    db.with_schema(&SCHEMA, |c| {
        let mut st = c.prepare(
            "SELECT token, region, instance_id, owner, launched_at FROM bench_instances
             WHERE endpoint = ?1 AND profile = ?2 ORDER BY launched_at, token",
        )?;
        let rows = st.query_map(params![scope.endpoint, scope.profile], row)?;
        rows.collect()
    })
}

/// How many journaled launches belong to other scopes (reported, never touched).
pub fn other_scopes(db: &StateDb, scope: &Scope) -> Result<u64, StateError> {
    db.with_schema(&SCHEMA, |c| {
        c.query_row(
            "SELECT COUNT(*) FROM bench_instances WHERE endpoint != ?1 OR profile != ?2",
            params![scope.endpoint, scope.profile],
            |r| r.get(0),
        )
    })
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Launch> {
    Ok(Launch {
        token: r.get(0)?,
        region: r.get(1)?,
        instance_id: r.get(2)?,
        owner: r.get(3)?,
        launched_at: r.get(4)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launches_are_journaled_and_forgotten() {
        let db = StateDb::in_memory().unwrap();
        let scope = Scope {
            endpoint: "http://127.0.0.1:1".into(),
            profile: String::new(),
        };
        begin(&db, &scope, "t1", "us-east-1").unwrap();
        begin(&db, &Scope::default(), "t2", "eu-west-1").unwrap();
        let rows = pending(&db, &scope).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].instance_id, None);
        assert_eq!(rows[0].owner, this_process());
        launched(&db, "t1", "i-1").unwrap();
        assert_eq!(
            get(&db, "t1").unwrap().unwrap().instance_id.as_deref(),
            Some("i-1")
        );
        assert_eq!(other_scopes(&db, &scope).unwrap(), 1);
        finished(&db, "t1").unwrap();
        assert!(pending(&db, &scope).unwrap().is_empty());
    }

    #[test]
    fn this_process_is_alive_a_made_up_one_is_not() {
        assert!(owner_alive(&this_process()));
        let host = hostname();
        assert!(!owner_alive(&format!("{host}:{}:1", std::process::id())));
        assert!(!owner_alive(&format!("{host}:4000000000:1")));
        assert!(owner_alive("some-other-host:1:1"));
        assert!(!owner_alive("garbage"));
    }
}
