//! What a test run leaves: the matrix as text, JUnit XML for CI systems, and rows in
//! the history database (one benchmark per AMI x instance type, source `test`, with
//! the verdict, the failing check and the kept console output and screenshot in
//! `test_results`, which `report` draws as a matrix per build).

use rusqlite::params;
use serde::Serialize;

use super::{CellReport, TestReport, Verdict};
use crate::bench::{Phase, RunResult, RunStatus};
use crate::history::{self, Benchmark, BuildInfo, Source};
use crate::state::{Schema, StateDb, StateError};

/// The verdicts of tests, beside their benchmark rows.
pub const SCHEMA: Schema = Schema {
    name: "test results",
    ddl: "
CREATE TABLE IF NOT EXISTS test_results (
    benchmark_id   INTEGER PRIMARY KEY REFERENCES boot_benchmarks(id) ON DELETE CASCADE,
    verdict        TEXT NOT NULL,     -- passed | failed | timed_out
    error          TEXT,
    failing_check  TEXT,
    console_output TEXT,              -- path of the kept console output
    screenshot     TEXT               -- path of the kept screenshot
);
",
    upgrade: None,
};

fn fig(v: Option<f64>) -> String {
    v.map(|s| format!("{s:.1}")).unwrap_or_else(|| "-".into())
}

/// The matrix as a table: one row per AMI x instance type.
pub fn matrix_table(r: &TestReport) -> String {
    let mut rows: Vec<[String; 8]> = vec![[
        "image".into(),
        "region".into(),
        "instance type".into(),
        "result".into(),
        "RunInstances s".into(),
        "to running s".into(),
        "to SSH s".into(),
        "failing check / error".into(),
    ]];
    for c in &r.cells {
        let open = match (
            c.phases.get(Phase::RunningToClosed),
            c.phases.get(Phase::ClosedToOpen),
        ) {
            (Some(a), Some(b)) => Some(a + b),
            _ => None,
        };
        let why = match (&c.failing_check, &c.error) {
            (Some(f), _) => format!("`{f}`"),
            (None, Some(e)) => e.clone(),
            (None, None) => String::new(),
        };
        rows.push([
            c.image_id.clone(),
            c.region.clone(),
            c.instance_type.clone(),
            match c.verdict {
                Verdict::Passed => "pass".into(),
                Verdict::Failed => "FAIL".into(),
                Verdict::TimedOut => "TIMEOUT".into(),
                Verdict::Interrupted => "interrupted".into(),
            },
            fig(c.phases.get(Phase::RunInstances)),
            fig(c.phases.get(Phase::PendingToRunning)),
            fig(open),
            why,
        ]);
    }
    let w: Vec<usize> = (0..8)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "{:<w0$}  {:<w1$}  {:<w2$}  {:<w3$}  {:>w4$}  {:>w5$}  {:>w6$}  {}",
                r[0],
                r[1],
                r[2],
                r[3],
                r[4],
                r[5],
                r[6],
                r[7],
                w0 = w[0],
                w1 = w[1],
                w2 = w[2],
                w3 = w[3],
                w4 = w[4],
                w5 = w[5],
                w6 = w[6]
            )
            .trim_end()
            .to_string()
        })
        .collect();
    let passed = r
        .cells
        .iter()
        .filter(|c| c.verdict == Verdict::Passed)
        .count();
    out.push(format!(
        "{passed} of {} test(s) passed; {:.2} instance-minutes; console outputs and screenshots in {}",
        r.cells.len(),
        r.instance_minutes(),
        r.artifacts.display()
    ));
    out.join("\n")
}

/// Escape text for XML.
fn xml(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            // XML 1.0 allows no other control characters.
            c if (c as u32) < 0x20 && !matches!(c, '\n' | '\r' | '\t') => o.push('?'),
            c => o.push(c),
        }
    }
    o
}

/// The run as JUnit XML: one test suite per AMI (and region), one test case per
/// instance type, a `<failure>` for a failed test, an `<error>` for a timed-out one,
/// `<skipped>` for an interrupted one; each check's output in `<system-out>`.
pub fn junit_xml(r: &TestReport) -> String {
    let mut suites: Vec<(String, Vec<&CellReport>)> = Vec::new();
    for c in &r.cells {
        let name = format!("{}.{}", c.region, c.image_id);
        match suites.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => v.push(c),
            None => suites.push((name, vec![c])),
        }
    }
    let count = |v: &[&CellReport], want: Verdict| v.iter().filter(|c| c.verdict == want).count();
    let time = |c: &CellReport| match (c.launched_at, c.terminated_at) {
        (Some(a), Some(b)) => (b - a).max(0.0),
        _ => 0.0,
    };
    let all: Vec<&CellReport> = r.cells.iter().collect();
    let mut o = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    o.push_str(&format!(
        "<testsuites name=\"ec2ami test\" tests=\"{}\" failures=\"{}\" errors=\"{}\" skipped=\"{}\" time=\"{:.3}\">\n",
        all.len(),
        count(&all, Verdict::Failed),
        count(&all, Verdict::TimedOut),
        count(&all, Verdict::Interrupted),
        all.iter().map(|c| time(c)).sum::<f64>()
    ));
    for (name, cells) in &suites {
        o.push_str(&format!(
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\" errors=\"{}\" skipped=\"{}\" time=\"{:.3}\">\n",
            xml(name),
            cells.len(),
            count(cells, Verdict::Failed),
            count(cells, Verdict::TimedOut),
            count(cells, Verdict::Interrupted),
            cells.iter().map(|c| time(c)).sum::<f64>()
        ));
        for c in cells {
            o.push_str(&format!(
                "    <testcase classname=\"{}\" name=\"{}\" time=\"{:.3}\">\n",
                xml(name),
                xml(&c.instance_type),
                time(c)
            ));
            let msg = xml(c.error.as_deref().unwrap_or_default());
            match c.verdict {
                Verdict::Passed => {}
                Verdict::Failed => o.push_str(&format!(
                    "      <failure message=\"{msg}\" type=\"{}\">{msg}</failure>\n",
                    if c.failing_check.is_some() {
                        "check"
                    } else {
                        "boot"
                    }
                )),
                Verdict::TimedOut => o.push_str(&format!(
                    "      <error message=\"{msg}\" type=\"timeout\">{msg}</error>\n"
                )),
                Verdict::Interrupted => o.push_str("      <skipped message=\"interrupted\"/>\n"),
            }
            let mut out = String::new();
            if let Some(id) = &c.instance_id {
                out.push_str(&format!("instance {id}\n"));
            }
            for ch in &c.checks {
                out.push_str(&format!(
                    "$ {}\n{}{}[exit {}]\n",
                    ch.check,
                    ch.stdout,
                    ch.stderr,
                    ch.exit_status
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| "-".into())
                ));
            }
            for (what, p) in [
                ("console output", &c.console_output),
                ("screenshot", &c.screenshot),
            ] {
                if let Some(p) = p {
                    out.push_str(&format!("{what}: {}\n", p.display()));
                }
            }
            o.push_str(&format!("      <system-out>{}</system-out>\n", xml(&out)));
            o.push_str("    </testcase>\n");
        }
        o.push_str("  </testsuite>\n");
    }
    o.push_str("</testsuites>\n");
    o
}

/// File the tests in the history: one benchmark per test that launched an instance
/// (source `test`, its phases as one run), and its verdict beside it. Interrupted tests
/// are left out. Returns the benchmark ids.
pub fn record_history(
    db: &StateDb,
    r: &TestReport,
    build_of: impl Fn(&CellReport) -> BuildInfo,
    measured_at: i64,
) -> Result<Vec<i64>, StateError> {
    let mut ids = Vec::new();
    for c in &r.cells {
        if c.instance_id.is_none() || c.verdict == Verdict::Interrupted {
            continue;
        }
        let status = match c.verdict {
            Verdict::Passed => RunStatus::Ok,
            Verdict::TimedOut => RunStatus::TimedOut(
                Phase::ALL
                    .into_iter()
                    .find(|p| c.phases.get(*p).is_none())
                    .unwrap_or(Phase::ClosedToOpen),
            ),
            _ => RunStatus::Failed(c.error.clone().unwrap_or_else(|| "failed".into())),
        };
        let b = Benchmark {
            id: 0,
            image_id: c.image_id.clone(),
            build: build_of(c),
            region: c.region.clone(),
            instance_type: c.instance_type.clone(),
            firmware: None,
            measured_at,
            source: Source::Test,
            source_file: None,
            source_hash: None,
            tool_version: format!("ec2ami {}", env!("CARGO_PKG_VERSION")),
            runs: vec![RunResult {
                run: 1,
                instance_id: c.instance_id.clone(),
                discarded: false,
                status,
                phases: c.phases,
                probes: 0,
            }],
        };
        let id = history::record(db, &b)?;
        db.with_schema(&SCHEMA, |conn| {
            conn.execute(
                "INSERT OR REPLACE INTO test_results
                 (benchmark_id, verdict, error, failing_check, console_output, screenshot)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    id,
                    c.verdict.key(),
                    c.error,
                    c.failing_check,
                    c.console_output.as_ref().map(|p| p.display().to_string()),
                    c.screenshot.as_ref().map(|p| p.display().to_string())
                ],
            )
            .map(|_| ())
        })?;
        ids.push(id);
    }
    Ok(ids)
}

/// One test as the history keeps it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TestRow {
    /// The benchmark row.
    pub benchmark_id: i64,
    /// `passed`, `failed` or `timed_out`.
    pub verdict: String,
    /// Why it did not pass.
    pub error: Option<String>,
    /// The first check that failed.
    pub failing_check: Option<String>,
    /// The kept console output.
    pub console_output: Option<String>,
    /// The kept screenshot.
    pub screenshot: Option<String>,
}

/// Every test verdict, by benchmark id.
pub fn load(db: &StateDb) -> Result<Vec<TestRow>, StateError> {
    db.with_schema(&history::SCHEMA, |_| Ok(()))?;
    db.with_schema(&SCHEMA, |c| {
        let mut st = c.prepare(
            "SELECT benchmark_id, verdict, error, failing_check, console_output, screenshot
             FROM test_results ORDER BY benchmark_id",
        )?;
        st.query_map([], |r| {
            Ok(TestRow {
                benchmark_id: r.get(0)?,
                verdict: r.get(1)?,
                error: r.get(2)?,
                failing_check: r.get(3)?,
                console_output: r.get(4)?,
                screenshot: r.get(5)?,
            })
        })?
        .collect()
    })
}

/// The report's matrix cells: the tests among `benchmarks` with their verdicts.
pub fn matrix_cells(
    db: &StateDb,
    benchmarks: &[Benchmark],
) -> Result<Vec<history::report::TestCell>, StateError> {
    let rows = load(db)?;
    Ok(benchmarks
        .iter()
        .filter(|b| b.source == Source::Test)
        .filter_map(|b| {
            let r = rows.iter().find(|r| r.benchmark_id == b.id)?;
            Some(history::report::TestCell {
                build: b
                    .build
                    .image_name
                    .clone()
                    .unwrap_or_else(|| b.image_id.clone()),
                region: b.region.clone(),
                image_id: b.image_id.clone(),
                instance_type: b.instance_type.clone(),
                verdict: r.verdict.clone(),
                why: r
                    .failing_check
                    .as_ref()
                    .map(|c| format!("failing check: {c}"))
                    .or_else(|| r.error.clone()),
                console_output: r.console_output.as_ref().map(Into::into),
                screenshot: r.screenshot.as_ref().map(Into::into),
                measured_at: b.measured_at,
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::Phases;
    use std::path::PathBuf;

    fn cell(ty: &str, verdict: Verdict, check: Option<&str>) -> CellReport {
        CellReport {
            region: "us-east-1".into(),
            image_id: "ami-0123456789abcdef0".into(),
            image_name: Some("FreeBSD-15.0-amd64-ufs-20261201".into()),
            instance_type: ty.into(),
            instance_id: Some(format!("i-{ty}")),
            verdict,
            error: (verdict != Verdict::Passed).then(|| "1 of 1 check(s) failed: `x <y>`".into()),
            failing_check: check.map(str::to_string),
            phases: Phases([Some(0.5), Some(2.0), Some(20.0), Some(0.0)]),
            banner: None,
            host_keys: None,
            checks: vec![],
            console_output: (verdict != Verdict::Passed).then(|| PathBuf::from("/r/c.txt")),
            screenshot: None,
            launched_at: Some(1000.0),
            terminated_at: Some(1090.0),
        }
    }

    fn report() -> TestReport {
        TestReport {
            key_name: "ec2ami-test-x".into(),
            cells: vec![
                cell("t3.micro", Verdict::Passed, None),
                cell("m7g.large", Verdict::Failed, Some("x <y>")),
            ],
            interrupted: false,
            not_terminated: vec![],
            key_pairs_left: vec![],
            artifacts: "/r".into(),
        }
    }

    #[test]
    fn junit_counts_and_escapes() {
        let x = junit_xml(&report());
        assert!(
            x.contains("<testsuites name=\"ec2ami test\" tests=\"2\" failures=\"1\" errors=\"0\""),
            "{x}"
        );
        assert!(x.contains("<testcase classname=\"us-east-1.ami-0123456789abcdef0\" name=\"m7g.large\" time=\"90.000\">"), "{x}");
        assert!(
            x.contains(
                "<failure message=\"1 of 1 check(s) failed: `x &lt;y&gt;`\" type=\"check\">"
            ),
            "{x}"
        );
        assert_eq!(x.matches("<failure").count(), 1);
        assert!(x.contains("console output: /r/c.txt"));
    }

    #[test]
    fn table_and_minutes() {
        let r = report();
        let t = matrix_table(&r);
        assert!(t.lines().nth(2).unwrap().contains("FAIL"), "{t}");
        assert!(t.lines().nth(2).unwrap().ends_with("`x <y>`"), "{t}");
        assert!(
            t.contains("1 of 2 test(s) passed; 3.00 instance-minutes"),
            "{t}"
        );
    }

    #[test]
    fn history_rows_with_verdicts() {
        let db = StateDb::in_memory().unwrap();
        let ids = record_history(&db, &report(), |_| BuildInfo::default(), 1_700_000_000).unwrap();
        assert_eq!(ids.len(), 2);
        let all = history::load_all(&db).unwrap();
        assert_eq!(all[0].source, Source::Test);
        assert_eq!(all[1].runs[0].status.key(), "failed");
        let rows = load(&db).unwrap();
        assert_eq!(rows[1].failing_check.as_deref(), Some("x <y>"));
        assert_eq!(rows[1].console_output.as_deref(), Some("/r/c.txt"));
        assert_eq!(rows[0].verdict, "passed");
    }
}
