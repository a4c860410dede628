//! Boot-time history: every benchmark (measured by `ec2ami bench` or imported from
//! ec2-boot-bench output) with each of its runs, in the state database; grouped into
//! series (branch x flavour x fs x arch x instance type) of builds for the regression
//! check ([`check`]) and the plots ([`report`]).

pub(crate) mod build;
pub mod check;
pub mod import;
pub mod report;

use std::collections::BTreeMap;
use std::fmt;

use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use crate::bench::{Phase, PhaseSummary, Phases, RunResult, RunStatus};
use crate::state::{Schema, StateDb, StateError};

pub use build::{BuildInfo, dashed, date_of_epoch, day_number, is_yyyymmdd, parse_freebsd_name};

/// The history's tables.
pub const SCHEMA: Schema = Schema {
    name: "boot history",
    ddl: "
CREATE TABLE IF NOT EXISTS boot_benchmarks (
    id            INTEGER PRIMARY KEY,
    image_id      TEXT NOT NULL,
    image_name    TEXT,
    version       TEXT,
    branch        TEXT,
    flavour       TEXT,
    fs            TEXT,
    arch          TEXT,
    build_date    TEXT,               -- YYYYMMDD
    region        TEXT NOT NULL,
    instance_type TEXT NOT NULL,
    measured_at   INTEGER NOT NULL,   -- Unix time
    source        TEXT NOT NULL,      -- bench | import | boot | test
    source_file   TEXT,
    source_hash   TEXT,               -- SHA-256 of an imported file (no double imports)
    tool_version  TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS boot_benchmarks_image ON boot_benchmarks(image_id);
CREATE TABLE IF NOT EXISTS boot_runs (
    benchmark_id      INTEGER NOT NULL REFERENCES boot_benchmarks(id) ON DELETE CASCADE,
    run               INTEGER NOT NULL,
    instance_id       TEXT,
    discarded         INTEGER NOT NULL,
    status            TEXT NOT NULL,  -- ok | timed_out | failed | interrupted
    timed_out_phase   TEXT,
    error             TEXT,
    run_instances     REAL,           -- seconds; NULL: the phase did not end
    pending_running   REAL,
    running_closed    REAL,
    closed_open       REAL,
    probes            INTEGER,
    PRIMARY KEY (benchmark_id, run)
);
-- The whole timeline of local boots (ec2ami boot): every marker of every run.
CREATE TABLE IF NOT EXISTS boot_marks (
    benchmark_id  INTEGER NOT NULL REFERENCES boot_benchmarks(id) ON DELETE CASCADE,
    run           INTEGER NOT NULL,
    name          TEXT NOT NULL,      -- qemu_started | firmware | loader | kernel | userland | ssh | ...
    seconds       REAL NOT NULL,      -- from QEMU's start
    PRIMARY KEY (benchmark_id, run, name)
);
",
    upgrade: Some(upgrade),
};

/// Bring an older history up to date: the `firmware` column (`bios` / `uefi` for local
/// boots; NULL for EC2 benchmarks and rows written before it existed). Idempotent.
fn upgrade(c: &rusqlite::Connection) -> rusqlite::Result<()> {
    let has = c
        .prepare("SELECT 1 FROM pragma_table_info('boot_benchmarks') WHERE name = 'firmware'")?
        .exists([])?;
    if !has {
        c.execute_batch("ALTER TABLE boot_benchmarks ADD COLUMN firmware TEXT")?;
    }
    Ok(())
}

/// Where a benchmark came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Measured by `ec2ami bench`.
    Bench,
    /// Imported from ec2-boot-bench output.
    Import,
    /// A local boot (`ec2ami boot`, publish's pre-flight).
    Boot,
    /// A test on EC2 (`ec2ami test`): its verdict is in the test results.
    Test,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::Bench => "bench",
            Source::Import => "import",
            Source::Boot => "boot",
            Source::Test => "test",
        }
    }
}

/// A benchmark: one AMI, one instance type, one region, some runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Benchmark {
    /// Row id (0 before it is stored).
    pub id: i64,
    /// The AMI.
    pub image_id: String,
    /// What build it is.
    #[serde(flatten)]
    pub build: BuildInfo,
    /// Region.
    pub region: String,
    /// Instance type.
    pub instance_type: String,
    /// The firmware of a local boot (`bios`, `uefi`); `None` for EC2 benchmarks.
    pub firmware: Option<String>,
    /// Unix time of the measurement.
    pub measured_at: i64,
    /// bench or import.
    pub source: Source,
    /// The imported file.
    pub source_file: Option<String>,
    /// SHA-256 of the imported file.
    #[serde(skip)]
    pub source_hash: Option<String>,
    /// What measured it (`ec2ami 0.1.0`, `ec2-boot-bench`).
    pub tool_version: String,
    /// Every run, in order.
    pub runs: Vec<RunResult>,
}

impl Benchmark {
    /// The build date, or the day it was measured when the build date is unknown.
    pub fn date(&self) -> String {
        self.build
            .build_date
            .clone()
            .unwrap_or_else(|| build::date_of_epoch(self.measured_at))
    }

    /// Complete runs that count (not discarded).
    pub fn measured(&self) -> impl Iterator<Item = &Phases> {
        self.runs
            .iter()
            .filter(|r| !r.discarded && r.status == RunStatus::Ok)
            .map(|r| &r.phases)
    }

    /// Summary of the runs that count.
    pub fn summary(&self) -> PhaseSummary {
        PhaseSummary::of(self.measured())
    }
}

/// Store a benchmark and its runs in one transaction; returns its id.
pub fn record(db: &StateDb, b: &Benchmark) -> Result<i64, StateError> {
    db.with_schema(&SCHEMA, |c| {
        let tx = c.unchecked_transaction()?;
        tx.execute(
            "INSERT INTO boot_benchmarks (image_id, image_name, version, branch, flavour, fs,
             arch, build_date, region, instance_type, measured_at, source, source_file,
             source_hash, tool_version, firmware)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
            params![
                b.image_id,
                b.build.image_name,
                b.build.version,
                b.build.branch,
                b.build.flavour,
                b.build.fs,
                b.build.arch,
                b.build.build_date,
                b.region,
                b.instance_type,
                b.measured_at,
                b.source.as_str(),
                b.source_file,
                b.source_hash,
                b.tool_version,
                b.firmware
            ],
        )?;
        let id = tx.last_insert_rowid();
        for r in &b.runs {
            let (timed_out, error) = match &r.status {
                RunStatus::TimedOut(p) => (Some(p.key()), None),
                RunStatus::Failed(e) => (None, Some(e.as_str())),
                _ => (None, None),
            };
            tx.execute(
                "INSERT INTO boot_runs (benchmark_id, run, instance_id, discarded, status,
                 timed_out_phase, error, run_instances, pending_running, running_closed,
                 closed_open, probes)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                params![
                    id,
                    r.run as i64,
                    r.instance_id,
                    r.discarded,
                    r.status.key(),
                    timed_out,
                    error,
                    r.phases.0[0],
                    r.phases.0[1],
                    r.phases.0[2],
                    r.phases.0[3],
                    r.probes as i64
                ],
            )?;
        }
        tx.commit()?;
        Ok(id)
    })
}

/// Whether a file with this hash was already imported for `image_id`.
pub fn already_imported(
    db: &StateDb,
    image_id: &str,
    hash: &str,
) -> Result<Option<i64>, StateError> {
    db.with_schema(&SCHEMA, |c| {
        c.query_row(
            "SELECT id FROM boot_benchmarks WHERE image_id = ?1 AND source_hash = ?2",
            params![image_id, hash],
            |r| r.get(0),
        )
        .optional()
    })
}

/// Store the timeline of run `run` of benchmark `id` (marker name, seconds).
pub fn record_marks(
    db: &StateDb,
    id: i64,
    run: usize,
    marks: &[(String, f64)],
) -> Result<(), StateError> {
    db.with_schema(&SCHEMA, |c| {
        let tx = c.unchecked_transaction()?;
        for (name, secs) in marks {
            tx.execute(
                "INSERT OR REPLACE INTO boot_marks (benchmark_id, run, name, seconds)
                 VALUES (?1, ?2, ?3, ?4)",
                params![id, run as i64, name, secs],
            )?;
        }
        tx.commit()
    })
}

/// The timelines of benchmark `id`: (run, marker, seconds), by run and time.
pub fn load_marks(db: &StateDb, id: i64) -> Result<Vec<(usize, String, f64)>, StateError> {
    db.with_schema(&SCHEMA, |c| {
        let mut st = c.prepare(
            "SELECT run, name, seconds FROM boot_marks WHERE benchmark_id = ?1
             ORDER BY run, seconds",
        )?;
        st.query_map([id], |r| {
            Ok((r.get::<_, i64>(0)? as usize, r.get(1)?, r.get(2)?))
        })?
        .collect()
    })
}

/// Every benchmark with its runs, oldest first.
pub fn load_all(db: &StateDb) -> Result<Vec<Benchmark>, StateError> {
    db.with_schema(&SCHEMA, |c| {
        let mut st = c.prepare(
            "SELECT id, image_id, image_name, version, branch, flavour, fs, arch, build_date,
             region, instance_type, measured_at, source, source_file, source_hash, tool_version,
             firmware
             FROM boot_benchmarks ORDER BY measured_at, id",
        )?;
        let mut benchmarks: Vec<Benchmark> = st
            .query_map([], |r| {
                Ok(Benchmark {
                    id: r.get(0)?,
                    image_id: r.get(1)?,
                    build: BuildInfo {
                        image_name: r.get(2)?,
                        version: r.get(3)?,
                        branch: r.get(4)?,
                        flavour: r.get(5)?,
                        fs: r.get(6)?,
                        arch: r.get(7)?,
                        build_date: r.get(8)?,
                    },
                    region: r.get(9)?,
                    instance_type: r.get(10)?,
                    firmware: r.get(16)?,
                    measured_at: r.get(11)?,
                    source: match r.get::<_, String>(12)?.as_str() {
                        "import" => Source::Import,
                        "boot" => Source::Boot,
                        "test" => Source::Test,
                        _ => Source::Bench,
                    },
                    source_file: r.get(13)?,
                    source_hash: r.get(14)?,
                    tool_version: r.get(15)?,
                    runs: Vec::new(),
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        let mut runs: BTreeMap<i64, Vec<RunResult>> = BTreeMap::new();
        let mut st = c.prepare(
            "SELECT benchmark_id, run, instance_id, discarded, status, timed_out_phase, error,
             run_instances, pending_running, running_closed, closed_open, probes
             FROM boot_runs ORDER BY benchmark_id, run",
        )?;
        let rows = st.query_map([], |r| {
            let status: String = r.get(4)?;
            let timed_out: Option<String> = r.get(5)?;
            let error: Option<String> = r.get(6)?;
            let status = match status.as_str() {
                "ok" => RunStatus::Ok,
                "timed_out" => RunStatus::TimedOut(
                    timed_out
                        .as_deref()
                        .and_then(Phase::from_key)
                        .unwrap_or(Phase::ClosedToOpen),
                ),
                "interrupted" => RunStatus::Interrupted,
                _ => RunStatus::Failed(error.unwrap_or_default()),
            };
            Ok((
                r.get::<_, i64>(0)?,
                RunResult {
                    run: r.get::<_, i64>(1)? as usize,
                    instance_id: r.get(2)?,
                    discarded: r.get(3)?,
                    status,
                    phases: Phases([r.get(7)?, r.get(8)?, r.get(9)?, r.get(10)?]),
                    probes: r.get::<_, Option<i64>>(11)?.unwrap_or(0) as u64,
                },
            ))
        })?;
        for row in rows {
            let (id, run) = row?;
            runs.entry(id).or_default().push(run);
        }
        for b in &mut benchmarks {
            b.runs = runs.remove(&b.id).unwrap_or_default();
        }
        Ok(benchmarks)
    })
}

/// Which benchmarks to look at; `None` fields match anything.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// This AMI.
    pub image_id: Option<String>,
    /// Branch (e.g. `14-STABLE`).
    pub branch: Option<String>,
    /// Flavour.
    pub flavour: Option<String>,
    /// Filesystem.
    pub fs: Option<String>,
    /// Architecture.
    pub arch: Option<String>,
    /// Instance type.
    pub instance_type: Option<String>,
    /// Region.
    pub region: Option<String>,
    /// Builds (or measurements, when the build date is unknown) on or after this
    /// `YYYYMMDD`.
    pub since: Option<String>,
}

impl Selection {
    /// Whether `b` is selected. Text fields compare case-insensitively.
    pub fn matches(&self, b: &Benchmark) -> bool {
        fn eq(want: &Option<String>, have: Option<&str>) -> bool {
            match want {
                None => true,
                Some(w) => have.is_some_and(|h| h.eq_ignore_ascii_case(w)),
            }
        }
        let normal = BuildInfo {
            branch: self.branch.clone(),
            arch: self.arch.clone(),
            ..BuildInfo::default()
        }
        .normalized();
        eq(&self.image_id, Some(&b.image_id))
            && eq(&normal.branch, b.build.branch.as_deref())
            && eq(&self.flavour, b.build.flavour.as_deref())
            && eq(&self.fs, b.build.fs.as_deref())
            && eq(&normal.arch, b.build.arch.as_deref())
            && eq(&self.instance_type, Some(&b.instance_type))
            && eq(&self.region, Some(&b.region))
            && self
                .since
                .as_ref()
                .is_none_or(|s| b.date().as_str() >= s.replace('-', "").as_str())
    }
}

/// A series: the builds of one branch, flavour, filesystem and architecture, measured
/// on one instance type.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct SeriesKey {
    /// Branch.
    pub branch: Option<String>,
    /// Flavour.
    pub flavour: Option<String>,
    /// Filesystem.
    pub fs: Option<String>,
    /// Architecture.
    pub arch: Option<String>,
    /// Instance type.
    pub instance_type: String,
    /// The firmware of local boots (`None` for EC2's).
    pub firmware: Option<String>,
}

impl SeriesKey {
    /// The series `b` belongs to.
    pub fn of(b: &Benchmark) -> SeriesKey {
        SeriesKey {
            branch: b.build.branch.clone(),
            flavour: b.build.flavour.clone(),
            fs: b.build.fs.clone(),
            arch: b.build.arch.clone(),
            instance_type: b.instance_type.clone(),
            firmware: b.firmware.clone(),
        }
    }

    /// A file-name-safe form, e.g. `14-STABLE_base_ufs_amd64_c5.xlarge` (with
    /// `_uefi` or `_bios` after a local boot's instance type).
    pub fn slug(&self) -> String {
        let mut parts = self.parts().to_vec();
        if let Some(f) = &self.firmware {
            parts.push(f);
        }
        parts
            .iter()
            .map(|p| {
                p.chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                            c
                        } else {
                            '-'
                        }
                    })
                    .collect::<String>()
            })
            .collect::<Vec<_>>()
            .join("_")
    }

    fn parts(&self) -> [&str; 5] {
        fn f(o: &Option<String>) -> &str {
            o.as_deref().unwrap_or("unknown")
        }
        [
            f(&self.branch),
            f(&self.flavour),
            f(&self.fs),
            f(&self.arch),
            &self.instance_type,
        ]
    }
}

impl fmt::Display for SeriesKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = self.parts();
        write!(f, "{} {} {} {} on {}", p[0], p[1], p[2], p[3], p[4])?;
        match &self.firmware {
            Some(fw) => write!(f, " ({fw})"),
            None => Ok(()),
        }
    }
}

/// One build in a series: every benchmark of the same image (by name; by AMI id when
/// the name is unknown) pooled, whatever the region.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BuildPoint {
    /// The image name, or the AMI id.
    pub label: String,
    /// Build date (or measurement date), `YYYYMMDD`.
    pub date: String,
    /// Days since 1970-01-01 of `date`.
    pub day: i64,
    /// The AMIs measured (one per region).
    pub image_ids: Vec<String>,
    /// Summary of the complete, counted runs.
    pub stats: PhaseSummary,
    /// Runs that timed out.
    pub timed_out: usize,
    /// Benchmarks pooled.
    pub benchmarks: usize,
}

impl BuildPoint {
    /// Median total boot time, when some run completed.
    pub fn median_total(&self) -> Option<f64> {
        self.stats.total.map(|s| s.median)
    }
}

/// Group benchmarks into series of builds, each series ordered by build date (then by
/// when the build was first measured).
pub fn series(benchmarks: &[Benchmark]) -> Vec<(SeriesKey, Vec<BuildPoint>)> {
    let mut grouped: BTreeMap<SeriesKey, BTreeMap<(String, String), Vec<&Benchmark>>> =
        BTreeMap::new();
    for b in benchmarks {
        let label = b
            .build
            .image_name
            .clone()
            .unwrap_or_else(|| b.image_id.clone());
        grouped
            .entry(SeriesKey::of(b))
            .or_default()
            .entry((b.date(), label))
            .or_default()
            .push(b);
    }
    grouped
        .into_iter()
        .map(|(key, builds)| {
            let mut points: Vec<(i64, BuildPoint)> = builds
                .into_iter()
                .map(|((date, label), bs)| {
                    let first = bs.iter().map(|b| b.measured_at).min().unwrap_or(0);
                    let mut image_ids: Vec<String> =
                        bs.iter().map(|b| b.image_id.clone()).collect();
                    image_ids.sort();
                    image_ids.dedup();
                    let counted = || {
                        bs.iter()
                            .flat_map(|b| b.runs.iter())
                            .filter(|r| !r.discarded)
                    };
                    let stats = PhaseSummary::of(
                        counted()
                            .filter(|r| r.status == RunStatus::Ok)
                            .map(|r| &r.phases),
                    );
                    let timed_out = counted()
                        .filter(|r| matches!(r.status, RunStatus::TimedOut(_)))
                        .count();
                    let day = build::day_number(&date).unwrap_or(0);
                    (
                        first,
                        BuildPoint {
                            label,
                            date,
                            day,
                            image_ids,
                            stats,
                            timed_out,
                            benchmarks: bs.len(),
                        },
                    )
                })
                .collect();
            points.sort_by(|(fa, a), (fb, b)| a.day.cmp(&b.day).then(fa.cmp(fb)));
            (key, points.into_iter().map(|(_, p)| p).collect())
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A benchmark of `label` built on `date` whose runs total `totals` seconds.
    pub fn bench_of(label: &str, date: &str, instance_type: &str, totals: &[f64]) -> Benchmark {
        Benchmark {
            id: 0,
            image_id: format!("ami-{label}"),
            build: BuildInfo {
                image_name: Some(label.to_string()),
                version: Some("14.1".into()),
                branch: Some("14-STABLE".into()),
                flavour: Some("base".into()),
                fs: Some("ufs".into()),
                arch: Some("amd64".into()),
                build_date: Some(date.to_string()),
            },
            region: "us-east-1".into(),
            instance_type: instance_type.into(),
            firmware: None,
            measured_at: 1_700_000_000,
            source: Source::Bench,
            source_file: None,
            source_hash: None,
            tool_version: "test".into(),
            runs: totals
                .iter()
                .enumerate()
                .map(|(i, t)| RunResult {
                    run: i + 1,
                    instance_id: Some(format!("i-{i}")),
                    discarded: false,
                    status: RunStatus::Ok,
                    // 10 % / 20 % / 40 % / 30 % of the total.
                    phases: Phases([Some(t * 0.1), Some(t * 0.2), Some(t * 0.4), Some(t * 0.3)]),
                    probes: 10,
                })
                .collect(),
        }
    }

    #[test]
    fn benchmarks_round_trip_through_the_database() {
        let db = StateDb::in_memory().unwrap();
        let mut b = bench_of("b1", "20241003", "c5.xlarge", &[20.0, 21.0]);
        b.runs[1].status = RunStatus::TimedOut(Phase::RunningToClosed);
        b.runs[1].phases = Phases([Some(1.0), Some(2.0), None, None]);
        b.runs.push(RunResult {
            run: 3,
            instance_id: None,
            discarded: true,
            status: RunStatus::Failed("RunInstances: InsufficientInstanceCapacity".into()),
            phases: Phases::default(),
            probes: 0,
        });
        b.source_hash = Some("abc".into());
        let id = record(&db, &b).unwrap();
        let all = load_all(&db).unwrap();
        assert_eq!(all.len(), 1);
        b.id = id;
        assert_eq!(all[0], b);
        assert_eq!(already_imported(&db, "ami-b1", "abc").unwrap(), Some(id));
        assert_eq!(already_imported(&db, "ami-b2", "abc").unwrap(), None);
    }

    #[test]
    fn an_older_history_gains_the_firmware_dimension() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            // A database written before the firmware column existed.
            let c = rusqlite::Connection::open(&path).unwrap();
            c.execute_batch(SCHEMA.ddl).unwrap();
            c.execute(
                "INSERT INTO boot_benchmarks (image_id, region, instance_type, measured_at,
                 source, tool_version) VALUES ('ami-old', 'us-east-1', 'c5.xlarge', 1, 'bench', 'x')",
                [],
            )
            .unwrap();
        }
        let db = StateDb::open(&path).unwrap();
        let mut local = bench_of("b1", "20241003", "qemu-tcg", &[20.0]);
        local.firmware = Some("uefi".into());
        record(&db, &local).unwrap();
        drop(db);
        // Opening again changes nothing.
        let db = StateDb::open(&path).unwrap();
        let all = load_all(&db).unwrap();
        assert_eq!(all[0].firmware, None);
        assert_eq!(all[1].firmware.as_deref(), Some("uefi"));
        let keys: Vec<SeriesKey> = all.iter().map(SeriesKey::of).collect();
        assert_eq!(keys[1].slug(), "14-STABLE_base_ufs_amd64_qemu-tcg_uefi");
        assert_eq!(
            keys[1].to_string(),
            "14-STABLE base ufs amd64 on qemu-tcg (uefi)"
        );
        assert_eq!(keys[0].slug(), "unknown_unknown_unknown_unknown_c5.xlarge");
    }

    #[test]
    fn builds_group_into_series_in_date_order() {
        let mut us = bench_of("b2", "20241010", "c5.xlarge", &[30.0]);
        let mut eu = bench_of("b2", "20241010", "c5.xlarge", &[32.0]);
        eu.region = "eu-west-1".into();
        eu.image_id = "ami-b2-eu".into();
        us.measured_at += 10;
        let all = vec![
            us,
            bench_of("b1", "20241003", "c5.xlarge", &[20.0, 22.0]),
            eu,
            bench_of("b1", "20241003", "m7g.large", &[10.0]),
        ];
        let s = series(&all);
        assert_eq!(s.len(), 2);
        let (key, builds) = &s[0];
        assert_eq!(key.instance_type, "c5.xlarge");
        assert_eq!(key.slug(), "14-STABLE_base_ufs_amd64_c5.xlarge");
        assert_eq!(builds.len(), 2);
        assert_eq!(builds[0].label, "b1");
        assert_eq!(builds[0].median_total(), Some(21.0));
        // The same build measured in two regions is one point.
        assert_eq!(builds[1].image_ids, vec!["ami-b2", "ami-b2-eu"]);
        assert_eq!(builds[1].median_total(), Some(31.0));
        assert_eq!(builds[1].benchmarks, 2);
    }

    #[test]
    fn selections_filter() {
        let b = bench_of("b1", "20241003", "c5.xlarge", &[20.0]);
        assert!(Selection::default().matches(&b));
        let sel = Selection {
            branch: Some("14-stable".into()),
            arch: Some("x86_64".into()),
            since: Some("2024-10-01".into()),
            ..Selection::default()
        };
        assert!(sel.matches(&b));
        let later = Selection {
            since: Some("20241004".into()),
            ..Selection::default()
        };
        assert!(!later.matches(&b));
        let other = Selection {
            instance_type: Some("m7g.large".into()),
            ..Selection::default()
        };
        assert!(!other.matches(&b));
    }
}
