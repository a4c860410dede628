//! Command-line definitions and output formatting; the work itself is in the library
//! modules each subcommand calls.

mod bench;
mod boot;
mod compat;
mod completions;
mod diff;
mod history;
mod images;
mod imds;
mod import;
mod lifecycle;
mod prune;
mod publish;
mod test;
mod userdata;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;

use ec2ami::aws::{self, AwsOptions, Clients, RetryPolicy, Timeouts};
use ec2ami::image::DiskImage;
use ec2ami::progress::ProgressMode;
use ec2ami::snapshot::{self, DownloadOptions, UploadOptions};

/// Turn an OS disk image into Amazon EC2 machine images.
#[derive(Debug, Parser)]
#[command(name = "ec2ami", version, about, max_term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

/// Options every command shares.
#[derive(Debug, Args)]
struct GlobalArgs {
    /// AWS region (default: the standard chain: AWS_REGION, then the profile).
    #[arg(long, global = true, value_parser = ec2ami::validate_input::region)]
    region: Option<String>,
    /// Named profile from ~/.aws/config and ~/.aws/credentials.
    #[arg(long, global = true)]
    profile: Option<String>,
    /// Send every AWS request to this endpoint (e.g. a local test server).
    #[arg(long, global = true, env = "AWS_ENDPOINT_URL")]
    endpoint_url: Option<String>,
    /// Output format on stdout.
    #[arg(long = "output", global = true, value_enum, default_value_t = OutputFormat::Text)]
    format: OutputFormat,
    /// Print only results and errors (no progress, no info lines).
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// More detail on stderr (-v: debug of ec2ami, -vv: debug of everything).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Time limit for one attempt of one AWS request.
    #[arg(long, global = true, value_name = "DURATION", default_value = "2m", value_parser = parse_duration)]
    attempt_timeout: Duration,
    /// Time limit for one AWS operation, all retries included.
    #[arg(long, global = true, value_name = "DURATION", default_value = "10m", value_parser = parse_duration)]
    operation_timeout: Duration,
    /// The state database: publish journal, launched instances, boot-time history
    /// (default: $XDG_STATE_HOME/ec2ami/state.db).
    #[arg(
        long = "state",
        global = true,
        value_name = "PATH",
        env = "EC2AMI_STATE"
    )]
    state: Option<PathBuf>,
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OutputFormat {
    /// Plain text: ids, one per line.
    Text,
    /// One JSON document.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Upload a disk image to a new EBS snapshot (EBS direct APIs, or through S3 with
    /// --via s3); prints the snapshot id.
    Upload(UploadArgs),
    /// Download a snapshot to a sparse raw file, verifying every block.
    Download(DownloadArgs),
    /// Show which blocks differ between two disks (image files or snapshot ids) and
    /// which partitions of B they fall in; exit 0 when equal, 1 when they differ, 2 on
    /// error.
    Diff(diff::DiffArgs),
    /// Register an AMI from a snapshot (reuses one of the same name and snapshot); prints its id.
    Register(images::RegisterArgs),
    /// Copy an AMI to other regions and wait until every copy is available.
    Copy(images::CopyArgs),
    /// Share AMIs (public, accounts, organizations, OUs) in every region they exist in.
    Share(images::ShareArgs),
    /// SSM parameters naming AMIs: put them, promote one to another.
    #[command(subcommand)]
    Params(publish::ParamsCommand),
    /// Publish a whole release (upload, register, copy, share, parameters); resumable.
    Publish(publish::PublishArgs),
    /// Check every AMI, permission and parameter of a release: Correct, Incorrect,
    /// Missing or Unreachable.
    Validate(publish::ValidateArgs),
    /// Delete old AMIs (every region) and the snapshots only they use, and orphaned
    /// snapshots, by a retention policy; prints the plan, deletes only with --yes.
    Prune(prune::PruneArgs),
    /// Set EC2 deprecation times: one AMI and its copies, or the older images of series.
    Deprecate(prune::DeprecateArgs),
    /// Import manifests (the S3 path): write one, verify one's parts by their URLs.
    #[command(subcommand)]
    Manifest(import::ManifestCommand),
    /// Disable AMIs and their copies (unlaunchable, private; sharing recorded for
    /// `enable`); prints the plan, disables only with --yes.
    Disable(lifecycle::DisableArgs),
    /// Enable disabled AMIs and their copies and re-share what ec2ami recorded they
    /// had; prints the plan, changes only with --yes.
    Enable(lifecycle::EnableArgs),
    /// Bring AMIs and their snapshots back from the Recycle Bin, or exactly what the
    /// last prune deleted (--last-prune).
    Restore(lifecycle::RestoreArgs),
    /// Other tools' command lines, done by ec2ami.
    #[command(subcommand)]
    Compat(compat::CompatCommand),
    /// Boot an AMI and time it as ec2-boot-bench does (launch, running, port closed,
    /// port open); always terminates what it launched; records the boot-time history.
    Bench(bench::BenchArgs),
    /// The boot-time history: import ec2-boot-bench output, list, show, check for
    /// regressions.
    #[command(subcommand)]
    History(history::HistoryCommand),
    /// Plots of boot time per build for every series, and an index.html showing them.
    Report(history::ReportArgs),
    /// User data for FreeBSD's images: make it from packages, services, rc.conf
    /// settings, files and a script (configinit or cloud-init), check a file, or write
    /// the generator page.
    Userdata(userdata::UserdataArgs),
    /// Boot a disk image locally in QEMU (BIOS, UEFI or both) with a local instance
    /// metadata service: boot timeline from the console, SSH smoke checks; records the
    /// boot-time history. Never writes the image.
    Boot(boot::BootArgs),
    /// Test AMIs on EC2: launch each on each instance type with an ephemeral key pair,
    /// wait for SSH, run smoke checks, keep the console output and a screenshot,
    /// terminate; a matrix, JSON, JUnit XML and the history.
    Test(test::TestArgs),
    /// The instance metadata service, from an instance: IMDSv2, IPv4 first, 100 ms
    /// timeouts.
    #[command(subcommand)]
    Imds(imds::ImdsCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish) on stdout.
    Completions(completions::CompletionsArgs),
    /// Write the man pages (ec2ami.1 and one per subcommand) into a directory.
    Man(completions::ManArgs),
}

#[derive(Debug, Args)]
struct UploadArgs {
    /// Raw disk image or block device; qcow2, VMDK, VHD and VHDX are converted with qemu-img.
    image: PathBuf,
    /// Snapshot description.
    #[arg(long)]
    description: Option<String>,
    /// Follow the backing file, external data file or extent files the image names
    /// (their content is uploaded as part of the image); refused by default.
    #[arg(long)]
    allow_backing_file: bool,
    /// Tag the snapshot (repeatable).
    #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = parse_user_tag)]
    tags: Vec<(String, String)>,
    /// Encrypt the snapshot with the account's default EBS key (every block is written).
    #[arg(long)]
    encrypted: bool,
    /// Encrypt with this KMS key (ARN); implies --encrypted.
    #[arg(long, value_name = "ARN")]
    kms_key_id: Option<String>,
    /// Concurrent block uploads.
    #[arg(long, default_value_t = snapshot::DEFAULT_WORKERS, value_parser = parse_workers)]
    workers: usize,
    /// Keep the unfinished snapshot if the upload fails or is interrupted.
    #[arg(long)]
    keep_on_failure: bool,
    /// Return after CompleteSnapshot without waiting for the snapshot to be `completed`.
    #[arg(long)]
    no_wait: bool,
    /// How long to wait for the snapshot to become `completed`.
    #[arg(long, value_name = "DURATION", default_value = "60m", value_parser = parse_duration)]
    wait_timeout: Duration,
    /// Where the per-block index (SHA-256 and BLAKE3) is kept (default: $XDG_STATE_HOME/ec2ami/blocks).
    #[arg(long, value_name = "DIR")]
    index_dir: Option<PathBuf>,
    /// Idempotency token for StartSnapshot (default: a new random one).
    #[arg(long, value_name = "TOKEN")]
    client_token: Option<String>,
    /// Upload incrementally: the new snapshot is a child of this completed snapshot and
    /// only the blocks that differ from it are sent.
    #[arg(long, value_name = "SNAP_ID")]
    parent: Option<String>,
    /// How long AWS keeps the pending snapshot of an interrupted upload (StartSnapshot's
    /// Timeout, 10m to 72h): rerunning the same command within it continues the upload.
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_resume_window)]
    resume_window: Duration,
    #[command(flatten)]
    s3: import::ViaArgs,
}

/// Parse `--resume-window`: StartSnapshot's Timeout is 10 to 4320 minutes.
fn parse_resume_window(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_secs(600) || d > Duration::from_secs(4320 * 60) {
        return Err(format!(
            "`{s}` is outside the window AWS allows for a pending snapshot (10m to 72h)"
        ));
    }
    Ok(d)
}

#[derive(Debug, Args)]
struct DownloadArgs {
    /// Snapshot to download.
    #[arg(value_parser = ec2ami::validate_input::snapshot_id)]
    snapshot_id: String,
    /// File to write (sparse; written to a temporary name and renamed into place).
    #[arg(value_name = "OUTPUT")]
    dest: PathBuf,
    /// Replace OUTPUT if it exists.
    #[arg(long)]
    force: bool,
    /// Write the whole GiB-rounded volume even if the snapshot records the image size.
    #[arg(long)]
    full_volume: bool,
    /// Concurrent block downloads.
    #[arg(long, default_value_t = snapshot::DEFAULT_WORKERS, value_parser = parse_workers)]
    workers: usize,
}

/// Parse a worker count: 1 to 1000.
fn parse_workers(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=1000).contains(&n) => Ok(n),
        _ => Err(format!("`{s}` is not a worker count from 1 to 1000")),
    }
}

/// Parse `KEY=VALUE`.
fn parse_tag(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got `{s}`")),
    }
}

/// A `--tag KEY=VALUE` a user may set (not a reserved `ec2ami:` or `aws:` key).
fn parse_user_tag(s: &str) -> Result<(String, String), String> {
    let (k, v) = parse_tag(s)?;
    ec2ami::validate_input::user_tag_key(&k)?;
    Ok((k, v))
}

pub use ec2ami::units::parse_duration;

impl GlobalArgs {
    fn aws(&self) -> AwsOptions {
        AwsOptions {
            region: self.region.clone(),
            profile: self.profile.clone(),
            endpoint_url: self.endpoint_url.clone(),
            timeouts: Timeouts {
                attempt: self.attempt_timeout,
                ..Timeouts::default()
            },
            credentials: None,
        }
    }

    fn retry(&self) -> RetryPolicy {
        RetryPolicy {
            deadline: self.operation_timeout,
            ..RetryPolicy::default()
        }
    }

    /// Open the state database.
    fn state_db(&self) -> Result<ec2ami::state::StateDb, Failure> {
        let path = self
            .state
            .clone()
            .unwrap_or_else(ec2ami::state::default_path);
        Ok(ec2ami::state::StateDb::open(&path)?)
    }

    fn progress(&self) -> ProgressMode {
        ProgressMode::detect(self.quiet)
    }

    fn print<T: Serialize>(&self, value: &T, text: impl FnOnce() -> String) {
        match self.format {
            OutputFormat::Text => emit(&text()),
            OutputFormat::Json => {
                emit(&serde_json::to_string_pretty(value).expect("reports serialise"))
            }
        }
    }
}

/// Print one result on stdout. When the reader has gone (`ec2ami ... | head -1`), exit
/// quietly with 141 (128 + SIGPIPE) as Unix tools do: the work is done, only its report
/// is not wanted.
pub(crate) fn emit(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{text}").and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(141);
        }
        eprintln!("error: writing to stdout: {e}");
        std::process::exit(1);
    }
}

/// Logging to stderr; `compat` commands print their tool's own progress lines, so
/// ec2ami's info lines are left out unless -v.
fn init_logging(quiet: bool, verbose: u8, compat: bool) {
    use tracing_subscriber::EnvFilter;
    let default = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) if compat => "warn",
        (false, 0) => "warn,ec2ami=info",
        (false, 1) => "info,ec2ami=debug",
        _ => "debug",
    };
    let filter = EnvFilter::try_from_env("EC2AMI_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .compact()
        .init();
}

/// Resolves when the process gets Ctrl-C (SIGINT) or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match term.as_mut() {
                Some(t) => { t.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => {}
    }
    tracing::warn!("interrupted: stopping and cleaning up");
    ec2ami::image::stop_conversions();
}

/// Exit status for an interrupted command (128 + SIGINT).
pub(crate) const EXIT_INTERRUPTED: u8 = 130;

/// Run the command line; returns the process exit code.
pub fn main() -> ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // bsdec2-image-upload's command line has a grammar of its own (its -v is not ours).
    if let Some((cli, raw)) = compat::split(&argv) {
        init_logging(cli.global.quiet, cli.global.verbose, true);
        return compat::main(&cli.global, &raw);
    }
    let cli = match Cli::try_parse_from(argv) {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    // The relay's stdout and stderr may be the guest's connection: no logging there.
    if let Command::Imds(c @ imds::ImdsCommand::Relay { .. }) = &cli.command {
        return imds::main(c);
    }
    if let Command::Compat(compat::CompatCommand::Bsdec2 { args }) = &cli.command {
        init_logging(cli.global.quiet, cli.global.verbose, true);
        return compat::main(&cli.global, args);
    }
    init_logging(cli.global.quiet, cli.global.verbose, false);
    // Their own exit statuses.
    if let Command::Imds(c) = &cli.command {
        return imds::main(c);
    }
    if let Command::Diff(a) = &cli.command {
        return diff::main(&cli.global, a);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure {
            message,
            interrupted,
        }) => {
            // Names and paths may hold control characters (a terminal's escapes, a line
            // break faking another message): every line is shown escaped.
            let shown: Vec<String> = message.lines().map(ec2ami::image::escaped).collect();
            eprintln!("error: {}", shown.join("\n"));
            if interrupted {
                ExitCode::from(EXIT_INTERRUPTED)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// A command line clap refuses. A bad value is one line naming it (with the value's own
/// sentence, or the possible values); other usage errors keep clap's text and usage.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::ValueValidation | ErrorKind::InvalidValue => {
            let text = e.render().to_string();
            let line: Vec<&str> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with("For more information"))
                .collect();
            eprintln!("{}", ec2ami::image::escaped(&line.join(" ")));
            ExitCode::from(2)
        }
        _ => e.exit(),
    }
}

/// A failed command: what to print and whether it was a signal.
struct Failure {
    message: String,
    interrupted: bool,
}

impl<E: std::error::Error> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure {
            message: e.to_string(),
            interrupted: false,
        }
    }
}

async fn connect(global: &GlobalArgs) -> Result<Clients, Failure> {
    Ok(aws::connect(&global.aws()).await?)
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let g = &cli.global;
    match &cli.command {
        Command::Upload(a) => upload(g, a).await,
        Command::Download(a) => download(g, a).await,
        Command::Register(a) => images::register(g, a).await,
        Command::Copy(a) => images::copy(g, a).await,
        Command::Share(a) => images::share(g, a).await,
        Command::Params(c) => publish::params(g, c).await,
        Command::Publish(a) => publish::publish(g, a).await,
        Command::Validate(a) => publish::validate(g, a).await,
        Command::Prune(a) => prune::prune(g, a).await,
        Command::Deprecate(a) => prune::deprecate(g, a).await,
        Command::Manifest(c) => import::manifest(g, c).await,
        Command::Disable(a) => lifecycle::disable(g, a).await,
        Command::Enable(a) => lifecycle::enable(g, a).await,
        Command::Restore(a) => lifecycle::restore(g, a).await,
        Command::Compat(_) => unreachable!("compat command lines are run by compat::main"),
        Command::Bench(a) => bench::run(g, a).await,
        Command::History(c) => history::run(g, c).await,
        Command::Report(a) => history::report_cmd(g, a).await,
        Command::Userdata(a) => userdata::run(g, a),
        Command::Boot(a) => boot::run(g, a).await,
        Command::Test(a) => test::run(g, a).await,
        Command::Imds(_) => unreachable!("run by imds::main"),
        Command::Diff(_) => unreachable!("run by diff::main"),
        Command::Completions(a) => completions::completions(a),
        Command::Man(a) => completions::man(g, a),
    }
}

async fn upload(g: &GlobalArgs, a: &UploadArgs) -> Result<(), Failure> {
    if a.s3.via == import::Via::S3 {
        if let Some(p) = &a.parent {
            return Err(Failure {
                message: format!(
                    "--parent {p}: an incremental upload uses the EBS direct APIs, not --via s3"
                ),
                interrupted: false,
            });
        }
        return import::upload(g, a).await;
    }
    // Every check of the image happens before any AWS call.
    let image = DiskImage::open_with(
        &a.image,
        ec2ami::image::ImageOptions {
            allow_backing_file: a.allow_backing_file,
        },
    )?;
    let clients = connect(g).await?;
    let opts = UploadOptions {
        description: a.description.clone(),
        tags: a.tags.clone(),
        encrypted: a.encrypted,
        kms_key_arn: a.kms_key_id.clone(),
        workers: a.workers,
        keep_on_failure: a.keep_on_failure,
        wait: (!a.no_wait).then_some(a.wait_timeout),
        index_dir: a
            .index_dir
            .clone()
            .unwrap_or_else(snapshot::default_index_dir),
        client_token: a.client_token.clone(),
        pending_timeout_minutes: Some((a.resume_window.as_secs() / 60) as i32),
        parent: a.parent.clone(),
        resume: true,
        retry: g.retry(),
        progress: g.progress(),
    };
    match snapshot::upload(&clients, image, &opts, shutdown_signal()).await {
        Ok(report) => {
            tracing::info!(
                "uploaded {} blocks ({} skipped, {} unchanged from the parent, {} sent by an \
                 interrupted run) to {} in {:.1}s",
                report.blocks_written,
                report.blocks_skipped,
                report.blocks_unchanged,
                report.blocks_resumed,
                report.snapshot_id,
                report.seconds
            );
            g.print(&report, || report.snapshot_id.clone());
            Ok(())
        }
        Err(e) => Err(Failure {
            interrupted: e.interrupted(),
            message: e.to_string(),
        }),
    }
}

async fn download(g: &GlobalArgs, a: &DownloadArgs) -> Result<(), Failure> {
    let clients = connect(g).await?;
    let opts = DownloadOptions {
        workers: a.workers,
        force: a.force,
        full_volume: a.full_volume,
        retry: g.retry(),
        progress: g.progress(),
    };
    match snapshot::download(&clients, &a.snapshot_id, &a.dest, &opts, shutdown_signal()).await {
        Ok(report) => {
            g.print(&report, || report.output.display().to_string());
            Ok(())
        }
        Err(e) => Err(Failure {
            interrupted: e.interrupted(),
            message: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn tags_parse() {
        assert_eq!(parse_tag("a=b=c").unwrap(), ("a".into(), "b=c".into()));
        assert_eq!(parse_tag("k=").unwrap(), ("k".into(), "".into()));
        assert!(parse_tag("=v").is_err());
        assert!(parse_tag("novalue").is_err());
    }
}
