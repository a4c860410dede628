//! `ec2ami publish`, `validate` and `params put|promote`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::{Failure, GlobalArgs, OutputFormat, connect, parse_duration, parse_tag};
use ec2ami::aws::Clients;
use ec2ami::image::ImageOptions;
use ec2ami::params::{self, PutOptions};
use ec2ami::publish::{self, PublishError, PublishOptions, Release, ReleaseFile, plan, validate};
use ec2ami::snapshot;
use ec2ami::state::StateDb;
use ec2ami::units::today;

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// The release file (TOML): regions, sharing, parameters and the images.
    release: PathBuf,
    /// Print every action the publish would take and change nothing.
    #[arg(long)]
    plan: bool,
    /// Follow the backing files, external data files and extent files that images name
    /// (their content is uploaded as part of the image); refused by default.
    #[arg(long)]
    allow_backing_file: bool,
    /// Deregister and publish again the AMIs made from an earlier version of their image
    /// file (only AMIs ec2ami made, with their copies and snapshots); without --yes, only
    /// print what would be deregistered and deleted.
    #[arg(long)]
    replace: bool,
    /// With --replace: deregister and delete what the plan lists.
    #[arg(long, requires = "replace")]
    yes: bool,
    #[command(flatten)]
    run: RunArgs,
}

/// Options of a publish run.
#[derive(Debug, Args)]
struct RunArgs {
    /// Concurrent block uploads per image.
    #[arg(long, default_value_t = snapshot::DEFAULT_WORKERS, value_parser = super::parse_workers)]
    workers: usize,
    /// How long to wait for each snapshot, AMI and copy to become available.
    #[arg(long, value_name = "DURATION", default_value = "60m", value_parser = parse_duration)]
    wait_timeout: Duration,
    /// Where upload block indexes are kept (default: $XDG_STATE_HOME/ec2ami/blocks).
    #[arg(long, value_name = "DIR")]
    index_dir: Option<PathBuf>,
    /// Do not boot the images locally before their upload (see `preflight` in the
    /// release file).
    #[arg(long)]
    skip_preflight: bool,
    /// Longest one pre-flight boot may take.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    preflight_timeout: Duration,
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
    #[arg(long, value_name = "AMI_ID", value_parser = ec2ami::validate_input::ami_id)]
    image: String,
    /// Parameter names; {region}, {name} and the AMI's ec2ami:* build tags ({version},
    /// {branch}, {flavour}, {fs}, {arch}) are variables, plus --var ones.
    #[arg(required = true, value_name = "NAME_TEMPLATE")]
    names: Vec<String>,
    /// Regions: `all` or a comma-separated list.
    #[arg(long, value_delimiter = ',', default_value = "all", value_parser = ec2ami::validate_input::region_or_all)]
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
    #[arg(long, value_delimiter = ',', default_value = "all", value_parser = ec2ami::validate_input::region_or_all)]
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
    /// How long to wait for each written value to read back (SSM checks an AMI id
    /// after answering, and drops a value that is not an AMI of the region).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    wait_timeout: Duration,
}

/// A publish failure, with the interrupted exit status for Ctrl-C.
pub(super) fn publish_failure(e: PublishError) -> Failure {
    Failure {
        interrupted: matches!(e, PublishError::Interrupted),
        message: e.to_string(),
    }
}

/// Whether images are booted locally before their upload: `--skip-preflight` says no;
/// else the release's `preflight`; else `EC2AMI_PREFLIGHT` (`on`/`off`); else whether
/// QEMU is installed. Asked for without QEMU, it is an error before anything is done.
fn preflight_on(release: &Release, a: &RunArgs) -> Result<bool, Failure> {
    if a.skip_preflight {
        return Ok(false);
    }
    let installed = ec2ami::boot::qemu_installed();
    let on = match release.preflight {
        Some(v) => v,
        None => match std::env::var("EC2AMI_PREFLIGHT").ok().as_deref() {
            Some("off" | "0" | "no" | "false") => false,
            Some("on" | "1" | "yes" | "true") => true,
            _ => installed,
        },
    };
    if on && !installed {
        return Err(Failure {
            message: format!(
                "{}: pre-flight boots need QEMU, which is not installed (Debian: apt-get install \
                 qemu-system-x86 ovmf seabios), or pass --skip-preflight",
                release.path.display()
            ),
            interrupted: false,
        });
    }
    Ok(on)
}

/// The pre-flight boots' options, when they are on.
fn preflight_options(
    g: &GlobalArgs,
    a: &RunArgs,
    release: &Release,
    db: &Arc<StateDb>,
) -> Result<Option<ec2ami::boot::PreflightOptions>, Failure> {
    if release.preflight != Some(true) {
        return Ok(None);
    }
    let state = db.path().parent().unwrap_or(std::path::Path::new("."));
    Ok(Some(ec2ami::boot::PreflightOptions {
        relay: super::boot::relay_command()?,
        timeout: a.preflight_timeout,
        failure_dir: state.join("boot-consoles"),
        region: release
            .source_region
            .clone()
            .or_else(|| g.region.clone())
            .unwrap_or_else(|| "us-east-1".into()),
        history: Some(db.clone()),
    }))
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
            .unwrap_or_else(snapshot::default_index_dir),
        preflight: None,
        image: Default::default(),
        events: None,
        replace: false,
    }
}

pub async fn publish(g: &GlobalArgs, a: &PublishArgs) -> Result<(), Failure> {
    let image_opts = ImageOptions {
        allow_backing_file: a.allow_backing_file,
    };
    let file = ReleaseFile::read(&a.release)?.with_image_options(image_opts);
    // Every check of the file (templates, names, images) before anything else.
    let first = file.resolve(&today(), true)?;
    let preflight = preflight_on(&first, &a.run)?;
    let db = Arc::new(g.state_db()?);
    let label = a.release.display().to_string();
    if a.plan {
        let (journal, date) = publish::recorded(&db, &file.key)?;
        let mut release = file.resolve(&date, true)?;
        release.preflight = Some(preflight);
        let clients = connect(g).await?;
        let index_dir = a
            .run
            .index_dir
            .clone()
            .unwrap_or_else(snapshot::default_index_dir);
        let plan = plan::plan_with(
            &clients,
            &release,
            journal.as_ref(),
            a.replace,
            &g.retry(),
            &index_dir,
            Some(&db.id()?),
        )
        .await?;
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
    let mut release = file.resolve(&session.date, true)?;
    release.preflight = Some(preflight);
    if a.replace && !a.yes {
        // Deregistering is destructive: without --yes, say what would go and stop.
        let plan = plan::plan(&clients, &release, Some(&session.journal), true, &g.retry()).await?;
        let doomed: Vec<String> = plan
            .actions
            .iter()
            .filter(|x| x.replaces)
            .map(|x| format!("  {} {} {}: {}", x.step, x.region, x.image, x.detail))
            .collect();
        if !doomed.is_empty() {
            return Err(Failure {
                message: format!(
                    "--replace would deregister and delete:\n{}\nnothing was changed: run again \
                     with --replace --yes to replace them",
                    doomed.join("\n")
                ),
                interrupted: false,
            });
        }
    }
    let mut opts = publish_options(g, &a.run);
    opts.replace = a.replace && a.yes;
    opts.preflight = preflight_options(g, &a.run, &release, &db)?;
    opts.image = image_opts;
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
    let (journal, date) = publish::recorded(&db, &file.key)?;
    let release = file.resolve(&date, false)?;
    let clients = connect(g).await?;
    let v = validate::validate(&clients, &release, journal.as_ref(), &g.retry()).await?;
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
        read_back: write.wait_timeout,
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
