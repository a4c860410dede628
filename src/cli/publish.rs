//! `ec2ami publish`, `validate` and `params put|promote`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::{Failure, GlobalArgs, OutputFormat, connect, parse_duration, parse_tag};
use ec2ami::aws::Clients;
use ec2ami::params::{self, PutOptions};
use ec2ami::publish::{self, PublishError, PublishOptions, Release, ReleaseFile, plan, validate};
use ec2ami::snapshot;
use ec2ami::units::today;

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// The release file (TOML): regions, sharing, parameters and the images.
    release: PathBuf,
    /// Print every action the publish would take and change nothing.
    #[arg(long)]
    plan: bool,
    #[command(flatten)]
    run: RunArgs,
}

/// Options of a publish run.
#[derive(Debug, Args)]
struct RunArgs {
    /// Concurrent block uploads per image.
    #[arg(long, default_value_t = snapshot::upload::DEFAULT_WORKERS, value_parser = super::parse_workers)]
    workers: usize,
    /// How long to wait for each snapshot, AMI and copy to become available.
    #[arg(long, value_name = "DURATION", default_value = "60m", value_parser = parse_duration)]
    wait_timeout: Duration,
    /// Where upload block indexes are kept (default: $XDG_STATE_HOME/ec2ami/blocks).
    #[arg(long, value_name = "DIR")]
    index_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The release file to check against what exists.
    release: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum ParamsCommand {
    /// Point SSM parameters at an AMI, in every region where it (or its copy) exists.
    Put(ParamsPutArgs),
    /// Copy each region's value of parameter FROM into parameter TO.
    Promote(ParamsPromoteArgs),
}

#[derive(Debug, Args)]
pub struct ParamsPutArgs {
    /// The AMI (in --region); its copies are found by their source tag.
    #[arg(long, value_name = "AMI_ID")]
    image: String,
    /// Parameter names; {region}, {name} and the AMI's ec2ami:* build tags ({version},
    /// {branch}, {flavour}, {fs}, {arch}) are variables, plus --var ones.
    #[arg(required = true, value_name = "NAME_TEMPLATE")]
    names: Vec<String>,
    /// Regions: `all` or a comma-separated list.
    #[arg(long, value_delimiter = ',', default_value = "all")]
    regions: Vec<String>,
    /// A template variable (repeatable).
    #[arg(long = "var", value_name = "KEY=VALUE", value_parser = parse_tag)]
    vars: Vec<(String, String)>,
    #[command(flatten)]
    write: WriteArgs,
}

#[derive(Debug, Args)]
pub struct ParamsPromoteArgs {
    /// The parameter whose value is copied.
    from: String,
    /// The parameter that gets it.
    to: String,
    /// Regions: `all` or a comma-separated list.
    #[arg(long, value_delimiter = ',', default_value = "all")]
    regions: Vec<String>,
    #[command(flatten)]
    write: WriteArgs,
}

#[derive(Debug, Args)]
struct WriteArgs {
    /// Overwrite a parameter that holds another value (each change is shown old -> new).
    #[arg(long)]
    allow_clobber: bool,
    /// Show what would change and change nothing.
    #[arg(long)]
    plan: bool,
}

/// A publish failure, with the interrupted exit status for Ctrl-C.
pub(super) fn publish_failure(e: PublishError) -> Failure {
    Failure {
        interrupted: matches!(e, PublishError::Interrupted),
        message: e.to_string(),
    }
}

fn publish_options(g: &GlobalArgs, a: &RunArgs) -> PublishOptions {
    PublishOptions {
        workers: a.workers,
        wait: a.wait_timeout,
        retry: g.retry(),
        progress: g.progress(),
        index_dir: a
            .index_dir
            .clone()
            .unwrap_or_else(snapshot::index::default_dir),
        events: None,
    }
}

pub async fn publish(g: &GlobalArgs, a: &PublishArgs) -> Result<(), Failure> {
    let file = ReleaseFile::read(&a.release)?;
    // Every check of the file (templates, names, images) before anything else.
    file.resolve(&today(), true)?;
    let db = Arc::new(g.state_db()?);
    let label = a.release.display().to_string();
    if a.plan {
        let (journal, date) = publish::recorded(&db, &file.key)?;
        let release = file.resolve(&date, true)?;
        let clients = connect(g).await?;
        let plan = plan::plan(&clients, &release, journal.as_ref(), &g.retry()).await?;
        g.print(&plan, || plan.render());
        let blocking = plan.blocking();
        if !blocking.is_empty() {
            return Err(Failure {
                message: format!(
                    "{} problem(s) would make this publish fail halfway (see the plan): fix \
                     them before publishing",
                    blocking.len()
                ),
                interrupted: false,
            });
        }
        return Ok(());
    }
    let clients = connect(g).await?;
    let session = publish::start(&db, &file.key, &label).map_err(publish_failure)?;
    let release = file.resolve(&session.date, true)?;
    let opts = publish_options(g, &a.run);
    run_release(g, &clients, &release, &session, &opts).await
}

pub(super) async fn run_release(
    g: &GlobalArgs,
    clients: &Clients,
    release: &Release,
    session: &publish::Session,
    opts: &PublishOptions,
) -> Result<(), Failure> {
    let journal = &session.journal;
    let (report, errors) =
        publish::publish(clients, release, journal, opts, super::shutdown_signal())
            .await
            .map_err(publish_failure)?;
    for w in report.images.iter().flat_map(|i| &i.warnings) {
        tracing::warn!("best-effort region failed: {w}");
    }
    match g.format {
        OutputFormat::Text => {
            for line in report.created_lines() {
                super::emit(&line);
            }
        }
        OutputFormat::Json => g.print(&report, String::new),
    }
    if errors.is_empty() {
        tracing::info!(
            "published {} image(s) to {} region(s) in {:.1}s",
            report.images.len(),
            report.regions.len(),
            report.seconds
        );
        Ok(())
    } else {
        Err(Failure {
            message: format!(
                "{} of {} image(s) failed (run the same command again to retry them):\n{}",
                errors.len(),
                release.images.len(),
                errors.join("\n")
            ),
            interrupted: false,
        })
    }
}

pub async fn validate(g: &GlobalArgs, a: &ValidateArgs) -> Result<(), Failure> {
    let file = ReleaseFile::read(&a.release)?;
    let db = Arc::new(g.state_db()?);
    let (_, date) = publish::recorded(&db, &file.key)?;
    let release = file.resolve(&date, false)?;
    let clients = connect(g).await?;
    let v = validate::validate(&clients, &release, &g.retry()).await?;
    g.print(&v, || v.render());
    if v.all_correct() {
        Ok(())
    } else {
        Err(Failure {
            message: "the release is not as it should be (see above)".into(),
            interrupted: false,
        })
    }
}

pub async fn params(g: &GlobalArgs, c: &ParamsCommand) -> Result<(), Failure> {
    let clients = connect(g).await?;
    let retry = g.retry();
    let (wanted, write) = match c {
        ParamsCommand::Put(a) => {
            let w = params::for_image(&clients, &a.image, &a.names, &a.regions, &a.vars, &retry);
            (w.await?, &a.write)
        }
        ParamsCommand::Promote(a) => {
            let w = params::promotion(&clients, &a.from, &a.to, &a.regions, &retry);
            (w.await?, &a.write)
        }
    };
    if wanted.is_empty() {
        return Err(Failure {
            message: "no parameter to write in those regions".into(),
            interrupted: false,
        });
    }
    let opts = PutOptions {
        allow_clobber: write.allow_clobber,
        dry_run: write.plan,
        retry,
        ..PutOptions::default()
    };
    let outcomes = params::put(&clients, &wanted, &opts).await;
    g.print(&outcomes, || {
        outcomes
            .iter()
            .map(params::Outcome::describe)
            .collect::<Vec<_>>()
            .join("\n")
    });
    if !write.plan {
        params::check(&outcomes)?;
    }
    Ok(())
}
