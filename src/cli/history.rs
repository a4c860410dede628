//! `ec2ami history import|list|show|check` and `ec2ami report`.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde::Serialize;

use super::{Failure, GlobalArgs};
use ec2ami::bench::{self, Phase, PhaseSummary};
use ec2ami::history::check::{self, CheckOptions};
use ec2ami::history::{self, Benchmark, BuildInfo, Selection, dashed, import, is_yyyymmdd, report};
use ec2ami::state::now_epoch;

/// What build an AMI is, given on the command line (each overrides what the AMI's
/// tags or name say).
#[derive(Debug, Args, Default)]
pub struct BuildArgs {
    /// Image name.
    #[arg(long, value_name = "NAME")]
    image_name: Option<String>,
    /// OS version, e.g. 14.1.
    #[arg(long = "os-version", value_name = "VERSION")]
    version: Option<String>,
    /// Branch, e.g. 14-STABLE (or STABLE with --os-version).
    #[arg(long)]
    branch: Option<String>,
    /// Flavour: base, cloud-init, small, builder...
    #[arg(long)]
    flavour: Option<String>,
    /// Filesystem: ufs or zfs.
    #[arg(long)]
    fs: Option<String>,
    /// Architecture: amd64 or arm64.
    #[arg(long, value_name = "ARCH")]
    arch: Option<String>,
    /// Build date, YYYYMMDD.
    #[arg(long, value_name = "YYYYMMDD", value_parser = parse_yyyymmdd)]
    build_date: Option<String>,
}

impl BuildArgs {
    /// The build as given (unnormalised; unknown fields `None`).
    pub fn info(&self) -> BuildInfo {
        BuildInfo {
            image_name: self.image_name.clone(),
            version: self.version.clone(),
            branch: self.branch.clone(),
            flavour: self.flavour.clone(),
            fs: self.fs.clone(),
            arch: self.arch.clone(),
            build_date: self.build_date.clone(),
        }
    }
}

/// Parse `YYYYMMDD` or `YYYY-MM-DD` into `YYYYMMDD`.
fn parse_yyyymmdd(s: &str) -> Result<String, String> {
    let d = s.replace('-', "");
    if is_yyyymmdd(&d) {
        Ok(d)
    } else {
        Err(format!("`{s}` is not a date (YYYYMMDD or YYYY-MM-DD)"))
    }
}

/// Which benchmarks (the global --region also selects).
#[derive(Debug, Args, Default)]
pub struct SelectionArgs {
    /// Only this AMI.
    #[arg(long = "image", value_name = "AMI_ID")]
    image_id: Option<String>,
    /// Only this branch (e.g. 14-STABLE).
    #[arg(long)]
    branch: Option<String>,
    /// Only this flavour.
    #[arg(long)]
    flavour: Option<String>,
    /// Only this filesystem.
    #[arg(long)]
    fs: Option<String>,
    /// Only this architecture.
    #[arg(long, value_name = "ARCH")]
    arch: Option<String>,
    /// Only this instance type.
    #[arg(long)]
    instance_type: Option<String>,
    /// Only builds from this date on (YYYYMMDD).
    #[arg(long, value_name = "YYYYMMDD", value_parser = parse_yyyymmdd)]
    since: Option<String>,
}

impl SelectionArgs {
    fn selection(&self, g: &GlobalArgs) -> Selection {
        Selection {
            image_id: self.image_id.clone(),
            branch: self.branch.clone(),
            flavour: self.flavour.clone(),
            fs: self.fs.clone(),
            arch: self.arch.clone(),
            instance_type: self.instance_type.clone(),
            region: g.region.clone(),
            since: self.since.clone(),
        }
    }
}

/// The regression check's knobs.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// A build is a regression above this multiple of the baseline.
    #[arg(long, default_value_t = 1.5, value_parser = parse_threshold)]
    threshold: f64,
    /// Builds before the newest whose median makes the baseline.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    window: u32,
}

impl CheckArgs {
    fn options(&self) -> CheckOptions {
        CheckOptions {
            threshold: self.threshold,
            window: self.window as usize,
        }
    }
}

fn parse_threshold(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(t) if t.is_finite() && t > 1.0 => Ok(t),
        _ => Err(format!("`{s}` is not a threshold above 1 (e.g. 1.5)")),
    }
}

#[derive(Debug, Subcommand)]
pub enum HistoryCommand {
    /// Load ec2-boot-bench output (its four lines per run) for an AMI, to backfill the
    /// history. The global --region names where it was measured.
    Import(ImportArgs),
    /// List benchmarks, oldest first.
    List(ListArgs),
    /// Show benchmarks with every run: by history id or by AMI id.
    Show(ShowArgs),
    /// Compare each series' newest build with the median of the builds before it;
    /// exit 1 naming the series, last good and first bad build on a regression.
    Check(CheckCmdArgs),
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Files of ec2-boot-bench output (each may hold several runs, one after another).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// The AMI that was measured.
    #[arg(long = "ami", value_name = "AMI_ID")]
    image_id: String,
    /// The instance type it ran on.
    #[arg(long)]
    instance_type: String,
    /// When it was measured (YYYYMMDD; default: each file's modification time).
    #[arg(long, value_name = "YYYYMMDD", value_parser = parse_yyyymmdd)]
    measured_on: Option<String>,
    /// The first run of each file was a warm-up: keep it out of the statistics.
    #[arg(long)]
    discard_first: bool,
    /// What build the AMI is (give at least the branch, flavour, fs, arch and build
    /// date, or a FreeBSD-style --image-name they can be read from).
    #[command(flatten)]
    build: BuildArgs,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    selection: SelectionArgs,
    /// Only the newest N.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// A history id (from `history list`) or an AMI id.
    id: String,
}

#[derive(Debug, Args)]
pub struct CheckCmdArgs {
    #[command(flatten)]
    check: CheckArgs,
    #[command(flatten)]
    selection: SelectionArgs,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Directory for index.html and the plots (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    #[command(flatten)]
    check: CheckArgs,
    #[command(flatten)]
    selection: SelectionArgs,
}

pub async fn run(g: &GlobalArgs, cmd: &HistoryCommand) -> Result<(), Failure> {
    match cmd {
        HistoryCommand::Import(a) => import_files(g, a),
        HistoryCommand::List(a) => list(g, a),
        HistoryCommand::Show(a) => show(g, a),
        HistoryCommand::Check(a) => check_cmd(g, a),
    }
}

fn fail(message: String) -> Failure {
    Failure {
        message,
        interrupted: false,
    }
}

/// One imported file, for the output.
fn import_files(g: &GlobalArgs, a: &ImportArgs) -> Result<(), Failure> {
    let region = g
        .region
        .clone()
        .or_else(|| std::env::var("AWS_REGION").ok())
        .ok_or_else(|| fail("pass --region: where the measurements were made".into()))?;
    let build = a
        .build
        .info()
        .or(a
            .build
            .image_name
            .as_deref()
            .map(history::parse_freebsd_name)
            .unwrap_or_default())
        .normalized();
    if build.branch.is_none() && build.flavour.is_none() && build.build_date.is_none() {
        tracing::warn!(
            "the build is unknown (no --branch, --flavour, --build-date or FreeBSD-style \
             --image-name): these runs go to a series of unknown builds"
        );
    }
    let db = g.state_db()?;
    let done = import::import_files(
        &db,
        &import::ImportRequest {
            image_id: &a.image_id,
            build: &build,
            region: &region,
            instance_type: &a.instance_type,
            measured_on: a.measured_on.as_deref(),
            discard_first: a.discard_first,
            files: &a.files,
        },
    )
    .map_err(|e| match e {
        import::ImportError::File(m) => fail(m),
        import::ImportError::State(e) => e.into(),
    })?;
    g.print(&done, || {
        done.iter()
            .map(|d| {
                if d.already_imported {
                    format!("{}: already imported as {}", d.file.display(), d.history_id)
                } else {
                    format!(
                        "{}: {} run(s) imported as {}",
                        d.file.display(),
                        d.runs,
                        d.history_id
                    )
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    });
    Ok(())
}

fn selected(g: &GlobalArgs, sel: &SelectionArgs) -> Result<Vec<Benchmark>, Failure> {
    let db = g.state_db()?;
    let selection = sel.selection(g);
    Ok(history::load_all(&db)?
        .into_iter()
        .filter(|b| selection.matches(b))
        .collect())
}

/// A benchmark in `history list`.
#[derive(Debug, Serialize)]
struct ListEntry<'a> {
    #[serde(flatten)]
    benchmark: &'a Benchmark,
    summary: PhaseSummary,
}

fn list(g: &GlobalArgs, a: &ListArgs) -> Result<(), Failure> {
    let mut all = selected(g, &a.selection)?;
    if let Some(n) = a.limit {
        let skip = all.len().saturating_sub(n);
        all.drain(..skip);
    }
    let entries: Vec<ListEntry> = all
        .iter()
        .map(|b| ListEntry {
            benchmark: b,
            summary: b.summary(),
        })
        .collect();
    g.print(&entries, || {
        let mut rows = vec![
            [
                "id", "measured", "build", "image", "type", "region", "runs", "median s",
            ]
            .map(String::from)
            .to_vec(),
        ];
        for e in &entries {
            let b = e.benchmark;
            rows.push(vec![
                b.id.to_string(),
                dashed(&history::date_of_epoch(b.measured_at)),
                b.build
                    .build_date
                    .as_deref()
                    .map(dashed)
                    .unwrap_or_else(|| "-".into()),
                b.build
                    .image_name
                    .clone()
                    .unwrap_or_else(|| b.image_id.clone()),
                match &b.firmware {
                    Some(fw) => format!("{} ({fw})", b.instance_type),
                    None => b.instance_type.clone(),
                },
                b.region.clone(),
                format!(
                    "{}/{}",
                    e.summary.total.map(|s| s.count).unwrap_or(0),
                    b.runs.len()
                ),
                e.summary
                    .total
                    .map(|s| format!("{:.2}", s.median))
                    .unwrap_or_else(|| "-".into()),
            ]);
        }
        if entries.is_empty() {
            "no benchmarks match".to_string()
        } else {
            table(&rows)
        }
    });
    Ok(())
}

/// Left-aligned columns.
fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(String::len)
                .max()
                .unwrap_or(0)
        })
        .collect();
    rows.iter()
        .map(|r| {
            r.iter()
                .enumerate()
                .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn show(g: &GlobalArgs, a: &ShowArgs) -> Result<(), Failure> {
    let db = g.state_db()?;
    let found: Vec<Benchmark> = history::load_all(&db)?
        .into_iter()
        .filter(|b| b.id.to_string() == a.id || b.image_id == a.id)
        .collect();
    if found.is_empty() {
        return Err(fail(format!(
            "no benchmark with id or AMI `{}` in the history",
            a.id
        )));
    }
    let entries: Vec<ListEntry> = found
        .iter()
        .map(|b| ListEntry {
            benchmark: b,
            summary: b.summary(),
        })
        .collect();
    g.print(&entries, || {
        entries
            .iter()
            .map(show_text)
            .collect::<Vec<_>>()
            .join("\n\n")
    });
    Ok(())
}

fn show_text(e: &ListEntry) -> String {
    let b = e.benchmark;
    let f = |o: &Option<String>| o.clone().unwrap_or_else(|| "?".into());
    let mut out = format!(
        "benchmark {}: {} ({}) on {} in {}, measured {} by {}\n\
         build: version {}, branch {}, flavour {}, fs {}, arch {}, built {}\n",
        b.id,
        b.image_id,
        f(&b.build.image_name),
        b.instance_type,
        b.region,
        dashed(&history::date_of_epoch(b.measured_at)),
        b.tool_version,
        f(&b.build.version),
        f(&b.build.branch),
        f(&b.build.flavour),
        f(&b.build.fs),
        f(&b.build.arch),
        b.build
            .build_date
            .as_deref()
            .map(dashed)
            .unwrap_or_else(|| "?".into()),
    );
    let mut rows = vec![vec!["run".to_string(), "instance".to_string()]];
    rows[0].extend(Phase::ALL.iter().map(|p| p.short().to_string()));
    rows[0].extend(["total".to_string(), "status".to_string()]);
    for r in &b.runs {
        let mut row = vec![
            r.run.to_string(),
            r.instance_id.clone().unwrap_or_else(|| "-".into()),
        ];
        row.extend(Phase::ALL.iter().map(|p| {
            r.phases
                .get(*p)
                .map(|s| format!("{s:.3}"))
                .unwrap_or_else(|| "-".into())
        }));
        row.push(
            r.phases
                .total()
                .map(|s| format!("{s:.3}"))
                .unwrap_or_else(|| "-".into()),
        );
        let mut status = match &r.status {
            ec2ami::bench::RunStatus::TimedOut(p) => format!("timed out in {p}"),
            ec2ami::bench::RunStatus::Failed(e) => format!("failed: {e}"),
            s => s.key().to_string(),
        };
        if r.discarded {
            status.push_str(" (discarded)");
        }
        row.push(status);
        rows.push(row);
    }
    out.push_str(&table(&rows));
    out.push_str("\n\n");
    out.push_str(&bench::summary_table(&e.summary));
    out
}

fn check_cmd(g: &GlobalArgs, a: &CheckCmdArgs) -> Result<(), Failure> {
    let benchmarks = selected(g, &a.selection)?;
    if benchmarks.is_empty() {
        return Err(fail("no boot-time history matches".into()));
    }
    let series = history::series(&benchmarks);
    let checks = check::check_all(&series, &a.check.options());
    g.print(&checks, || {
        checks
            .iter()
            .map(check::describe)
            .collect::<Vec<_>>()
            .join("\n")
    });
    let bad: Vec<&str> = checks
        .iter()
        .filter(|c| c.verdict.is_regression())
        .map(|c| c.series.as_str())
        .collect();
    if bad.is_empty() {
        Ok(())
    } else {
        Err(fail(format!("boot-time regression in {}", bad.join("; "))))
    }
}

pub async fn report_cmd(g: &GlobalArgs, a: &ReportArgs) -> Result<(), Failure> {
    let benchmarks = selected(g, &a.selection)?;
    let series = history::series(&benchmarks);
    let generated = format!(
        "Generated on {} by ec2ami {} from {} benchmark(s) in {} series",
        dashed(&history::date_of_epoch(now_epoch())),
        env!("CARGO_PKG_VERSION"),
        benchmarks.len(),
        series.len()
    );
    let tests = ec2ami::ec2test::matrix_cells(&g.state_db()?, &benchmarks)?;
    let out = a.out.clone();
    let opts = a.check.options();
    // Drawing and encoding PNGs is CPU work: keep it off the async workers.
    let summary = tokio::task::spawn_blocking(move || {
        report::write_report_with_tests(&series, &tests, &out, &opts, &generated)
    })
    .await
    .map_err(|e| fail(format!("report: {e}")))??;
    g.print(&summary, || summary.index.display().to_string());
    Ok(())
}
