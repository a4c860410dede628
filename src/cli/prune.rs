//! `ec2ami prune` and `ec2ami deprecate`.

use std::path::PathBuf;
use std::time::Duration;

use aws_smithy_types::DateTime;
use aws_smithy_types::date_time::Format;
use clap::Args;
use serde::Serialize;

use super::{Failure, GlobalArgs, OutputFormat, connect, parse_duration, shutdown_signal};
use ec2ami::ami;
use ec2ami::prune::deprecate::{self, Target};
use ec2ami::prune::{
    self, DEFAULT_PRICE_PER_GB_MONTH, DEFAULT_RATE, ExecuteOptions, Flags, Glob, PlanOptions,
    Policy, SeriesPattern,
};
use ec2ami::state::{Deleted, record_prune, recorded_parameters};
use ec2ami::units::parse_date;

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Regions: `all` (every enabled region) or a comma-separated list.
    #[arg(long, value_delimiter = ',', default_value = "all", value_parser = ec2ami::validate_input::region_or_all)]
    regions: Vec<String>,
    /// Candidates are the images named like this (glob with * and ?; repeatable).
    /// Without it, the images carrying ec2ami's ownership tag.
    #[arg(long = "name", value_name = "GLOB")]
    names: Vec<String>,
    /// With --name: only images that also carry ec2ami's ownership tag.
    #[arg(long)]
    managed: bool,
    /// A regex with a named group `date` (and optionally `series`) that splits names
    /// into series and build dates (default: the YYYYMMDD in the name).
    #[arg(long, value_name = "REGEX", value_parser = SeriesPattern::parse)]
    series_pattern: Option<SeriesPattern>,
    /// Keep the N newest images of each series.
    #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = parse_keep)]
    keep: Option<i64>,
    /// Never touch anything younger than this [default: 1d].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    min_age: Option<Duration>,
    /// Also delete images older than this, even among the newest N.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    max_age: Option<Duration>,
    /// A TOML file of per-series rules (its defaults yield to --keep, --min-age and
    /// --max-age).
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// Guard images the SSM parameters under this path point at (recursive,
    /// repeatable), besides those the publish journal recorded.
    #[arg(long = "ssm-path", value_name = "PATH")]
    ssm_paths: Vec<String>,
    /// Prune public images too (by default they are guarded).
    #[arg(long)]
    include_public: bool,
    /// Disable the deregistration protection of images the policy deletes (by default
    /// they are guarded); with the 24-hour cooldown the plan says when each becomes
    /// deletable and a later run deletes it.
    #[arg(long)]
    unprotect: bool,
    /// Keep images launched within this window (EC2's LastLaunchedTime, which reports a
    /// launch up to 24 hours late), e.g. launches by other accounts.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    unused_for: Option<Duration>,
    /// Staged retirement: disable images the policy lets go once they are older than
    /// this (0d: at once); a later run deletes them (--delete-after).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    disable_after: Option<Duration>,
    /// Staged retirement: deregister a disabled image this long after it was disabled.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    delete_after: Option<Duration>,
    /// Do not look for orphaned snapshots.
    #[arg(long)]
    skip_orphans: bool,
    /// Snapshot storage price for the estimate, USD per GB-month.
    #[arg(long, value_name = "USD", default_value_t = DEFAULT_PRICE_PER_GB_MONTH, value_parser = parse_price)]
    price_per_gb_month: f64,
    /// Deletions per second in one region (regions run concurrently).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_RATE, value_parser = parse_rate)]
    rate: f64,
    /// Delete what the plan lists. Without it, prune prints the plan and changes nothing.
    #[arg(long)]
    yes: bool,
}

#[derive(Debug, Args)]
pub struct DeprecateArgs {
    /// The AMI (in --region) to deprecate, with its copies in the other regions.
    #[arg(required_unless_present = "series", conflicts_with = "series", value_parser = ec2ami::validate_input::ami_id)]
    image_id: Option<String>,
    /// Deprecate the images of each series matching this glob (repeatable), all but the
    /// newest --keep; `{date}` stands for the build date in a series name.
    #[arg(long, value_name = "GLOB")]
    series: Vec<String>,
    /// With --series: how many of the newest of each series stay undeprecated.
    #[arg(long, value_name = "N", default_value_t = 1, requires = "series")]
    keep: u32,
    /// With --series: a regex with a named group `date` that splits names into series.
    #[arg(long, value_name = "REGEX", value_parser = SeriesPattern::parse, requires = "series")]
    series_pattern: Option<SeriesPattern>,
    /// When EC2 marks them deprecated: 2027-06-30 or an RFC 3339 time.
    #[arg(long, value_name = "DATE", value_parser = parse_date,
          required_unless_present = "within", conflicts_with = "within")]
    at: Option<DateTime>,
    /// Or this long from now (e.g. 90d).
    #[arg(long = "in", id = "within", value_name = "DURATION", value_parser = parse_duration)]
    within: Option<Duration>,
    /// Regions: `all` or a comma-separated list.
    #[arg(long, value_delimiter = ',', default_value = "all", value_parser = ec2ami::validate_input::region_or_all)]
    regions: Vec<String>,
    /// Print what would be deprecated and change nothing.
    #[arg(long)]
    plan: bool,
}

/// `--keep`: a count, and a clear word for a negative one.
fn parse_keep(s: &str) -> Result<i64, String> {
    let n: i64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of images"))?;
    prune::check_keep(n, "--keep")?;
    Ok(n)
}

fn parse_price(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(p) if p.is_finite() && p >= 0.0 => Ok(p),
        _ => Err(format!("`{s}` is not a price in USD (e.g. 0.05)")),
    }
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 && r <= 1000.0 => Ok(r),
        _ => Err(format!(
            "`{s}` is not a rate of deletions per second: give a number above 0 and at most 1000"
        )),
    }
}

fn now() -> i64 {
    DateTime::from(std::time::SystemTime::now()).secs()
}

#[derive(Serialize)]
struct PlanAndReport<'a> {
    plan: &'a prune::Plan,
    report: &'a prune::Report,
}

pub async fn prune(g: &GlobalArgs, a: &PruneArgs) -> Result<(), Failure> {
    // Everything that can be checked is checked before the first request.
    let file = match &a.policy {
        Some(p) => Some((
            p.clone(),
            std::fs::read_to_string(p).map_err(|source| prune::PolicyError::Read {
                path: p.clone(),
                source,
            })?,
        )),
        None => None,
    };
    let policy = Policy::build(
        &Flags {
            keep: a.keep,
            min_age: a.min_age,
            max_age: a.max_age,
            disable_after: a.disable_after,
            delete_after: a.delete_after,
        },
        file.as_ref().map(|(p, t)| (p.as_path(), t.as_str())),
    )?;
    if let Some(bad) = a.ssm_paths.iter().find(|p| !p.starts_with('/')) {
        return Err(
            prune::PruneError::Invalid(format!("--ssm-path `{bad}` must start with /")).into(),
        );
    }
    let opts = PlanOptions {
        selection: prune::Selection {
            names: a.names.iter().map(|n| Glob::new(n)).collect(),
            managed_only: a.managed,
        },
        pattern: a.series_pattern.clone().unwrap_or_default(),
        policy,
        include_public: a.include_public,
        orphans: !a.skip_orphans,
        price_per_gb_month: a.price_per_gb_month,
        now: now(),
        unprotect: a.unprotect,
        unused_for: a.unused_for,
    };
    // The parameters earlier publishes wrote; a plan does not create the database.
    let state = g.state.clone().unwrap_or_else(ec2ami::state::default_path);
    let journal = if state.exists() {
        recorded_parameters(&g.state_db()?)?
    } else {
        tracing::info!(
            "no state database at {}: no published parameters to guard besides --ssm-path",
            state.display()
        );
        Vec::new()
    };
    let clients = connect(g).await?;
    let retry = g.retry();
    let regions = ami::resolve_regions(&clients, &a.regions, &retry).await?;
    let sources = prune::parameter_sources(&regions, &journal, &a.ssm_paths);
    let plan = tokio::select! {
        p = prune::plan(&clients, &regions, &sources, &opts, &retry) => p,
        _ = shutdown_signal() => return Err(Failure { message: "interrupted while planning; nothing was deleted".into(), interrupted: true }),
    };
    let failed_regions: Vec<String> = plan
        .failed_regions()
        .iter()
        .map(|r| format!("{}: {}", r.region, r.error.as_deref().unwrap_or("")))
        .collect();
    let region_failure = || Failure {
        message: format!(
            "{} region(s) could not be looked at, nothing was planned there: {}",
            failed_regions.len(),
            failed_regions.join("; ")
        ),
        interrupted: false,
    };
    if !a.yes {
        g.print(&plan, || {
            format!(
                "{}\nnothing was deleted: run again with --yes to delete what this plan lists",
                plan.render()
            )
        });
        return if failed_regions.is_empty() {
            Ok(())
        } else {
            Err(region_failure())
        };
    }
    if g.format == OutputFormat::Text {
        super::emit(&plan.render());
    }
    // The state database records what a disable takes away and what this prune
    // deletes (for `ec2ami enable` and `ec2ami restore --last-prune`).
    let db = std::sync::Arc::new(g.state_db()?);
    let exec = ExecuteOptions {
        retry,
        include_public: a.include_public,
        sources,
        rate: a.rate,
        unused_for: a.unused_for,
        db: Some(db.clone()),
    };
    let report = prune::execute(&clients, &plan, &exec, shutdown_signal()).await;
    let deleted: Vec<Deleted> = report
        .outcomes
        .iter()
        .filter(|o| o.status == prune::Status::Deleted)
        .map(|o| Deleted {
            region: o.region.clone(),
            kind: o.kind.to_string(),
            id: o.id.clone(),
            recoverable_until: o.recoverable_until,
        })
        .collect();
    let pruned: Vec<String> = plan.regions.iter().map(|r| r.region.clone()).collect();
    if let Err(e) = record_prune(&db, &pruned, &deleted) {
        tracing::error!(
            "the prune's report could not be journalled ({e}): `restore --last-prune` will not know it"
        );
    }
    match g.format {
        OutputFormat::Text => super::emit(&report.render()),
        OutputFormat::Json => super::emit(
            &serde_json::to_string_pretty(&PlanAndReport {
                plan: &plan,
                report: &report,
            })
            .expect("reports serialise"),
        ),
    }
    if !report.ok() {
        return Err(Failure {
            message: format!(
                "{} planned deletion(s) failed or were not done (see above)",
                report.failed
            ),
            interrupted: report.interrupted,
        });
    }
    if !failed_regions.is_empty() {
        return Err(region_failure());
    }
    Ok(())
}

pub async fn deprecate(g: &GlobalArgs, a: &DeprecateArgs) -> Result<(), Failure> {
    let at = match (a.at, a.within) {
        (Some(at), _) => at,
        // Whole seconds: EC2 keeps minutes, and the times printed stay readable.
        (None, Some(d)) => {
            DateTime::from_secs(DateTime::from(std::time::SystemTime::now() + d).secs())
        }
        (None, None) => unreachable!("clap requires --at or --in"),
    };
    deprecate::check_time(at, now())?;
    let target = match &a.image_id {
        Some(id) => Target::Image(id.clone()),
        None => Target::Series {
            globs: a.series.iter().map(|s| Glob::new(s)).collect(),
            keep: a.keep,
            pattern: a.series_pattern.clone().unwrap_or_default(),
        },
    };
    let clients = connect(g).await?;
    let retry = g.retry();
    let regions = ami::resolve_regions(&clients, &a.regions, &retry).await?;
    let found = deprecate::find(&clients, &regions, &target, at, &retry).await?;
    let when = at.fmt(Format::DateTime).unwrap_or_default();
    let done = if a.plan {
        found
    } else {
        deprecate::apply(&clients, found, at, &retry).await
    };
    g.print(&done, || {
        let mut lines: Vec<String> = done
            .iter()
            .map(|d| {
                let what = match (&d.error, d.unchanged, a.plan) {
                    (Some(e), _, _) => format!("FAILED: {e}"),
                    (None, true, _) => format!("already deprecated at {when}"),
                    (None, false, true) => format!("would be deprecated at {when}"),
                    (None, false, false) => format!("deprecated at {when}"),
                };
                format!("{:<15} {:<22} `{}` {what}", d.region, d.image_id, d.name)
            })
            .collect();
        if lines.is_empty() {
            lines.push("no image to deprecate".into());
        }
        lines.join("\n")
    });
    let failed = done.iter().filter(|d| d.error.is_some()).count();
    if failed > 0 {
        return Err(Failure {
            message: format!("{failed} image(s) could not be deprecated (see above)"),
            interrupted: false,
        });
    }
    Ok(())
}
