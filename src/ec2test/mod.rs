//! `ec2ami test`: the weekly tests of published AMIs on EC2. For each AMI (in each of
//! its regions) and instance type: launch it with an ephemeral key pair imported for
//! the run, wait for the SSH banner, run the smoke checks over SSH (the same as
//! `ec2ami boot`'s, [`crate::boot::ssh`]), keep the console output and a screenshot
//! (always on failure, on success with `capture`), terminate.
//!
//! Entry point: [`run`]. Instances are launched through the boot benchmark's journaled
//! fleet, so the benchmark's guarantees hold: every instance is terminated on success,
//! failure, timeout and Ctrl-C, and what a killed process left is terminated at the
//! next start. The key pairs have a journal of their own ([`keys`]): deleted at the end
//! of the run, on Ctrl-C, and at the next start after kill -9. The private key lives in
//! a 0600 file in a 0700 temporary directory removed at the end and is never printed.

pub(crate) mod keys;
pub(crate) mod results;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::aws::{Clients, RetryPolicy, ec2};
use crate::bench::launch::{self, LaunchSpec, PollError, PollOptions};
use crate::bench::{self, Fleet, Marks, Phases, Scope};
use crate::boot::console;
use crate::boot::ssh::{self, Check, CheckResult, HostKeyTrust, SshTarget};
use crate::state::{StateDb, StateError};

pub use results::{junit_xml, matrix_cells, matrix_table, record_history};

/// How often the SSH banner is tried.
const BANNER_INTERVAL: Duration = Duration::from_millis(250);

/// One AMI to test, in its region.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Target {
    /// Region.
    pub region: String,
    /// The AMI.
    pub image_id: String,
    /// Its name, when known (the build it is).
    pub name: Option<String>,
}

/// Everything a test run needs.
#[derive(Debug, Clone)]
pub struct TestOptions {
    /// The AMIs.
    pub targets: Vec<Target>,
    /// Instance types; every AMI is tested on each.
    pub instance_types: Vec<String>,
    /// Smoke checks run over SSH.
    pub checks: Vec<Check>,
    /// The user the checks log in as.
    pub ssh_user: String,
    /// Subnet (default: the default VPC's).
    pub subnet: Option<String>,
    /// Security groups (default: the VPC's default group).
    pub security_groups: Vec<String>,
    /// User data for the instances.
    pub user_data: Option<Vec<u8>>,
    /// Longest one test may take, from RunInstances to the last check.
    pub timeout: Duration,
    /// Send the SSH banner probe and SSH here instead of the instance (tests).
    pub connect_to: Option<SocketAddr>,
    /// Keep the console output and a screenshot of passing tests too.
    pub capture: bool,
    /// Where the console outputs and screenshots go.
    pub artifacts: PathBuf,
    /// DescribeInstances polling.
    pub poll: PollOptions,
    /// Every AWS call.
    pub retry: RetryPolicy,
    /// Which endpoint and profile the journals' rows belong to.
    pub scope: Scope,
}

/// How one test ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The banner arrived and every check passed.
    Passed,
    /// Launch, boot or a check failed (the error says which).
    Failed,
    /// It did not finish within the timeout.
    TimedOut,
    /// Ctrl-C or SIGTERM.
    Interrupted,
}

impl Verdict {
    /// `passed`, `failed`, `timed_out`, `interrupted`.
    pub fn key(self) -> &'static str {
        match self {
            Verdict::Passed => "passed",
            Verdict::Failed => "failed",
            Verdict::TimedOut => "timed_out",
            Verdict::Interrupted => "interrupted",
        }
    }
}

/// One AMI on one instance type.
#[derive(Debug, Clone, Serialize)]
pub struct CellReport {
    /// Region.
    pub region: String,
    /// The AMI.
    pub image_id: String,
    /// Its name, when known.
    pub image_name: Option<String>,
    /// Instance type.
    pub instance_type: String,
    /// The instance launched, if RunInstances answered.
    pub instance_id: Option<String>,
    /// How it ended.
    pub verdict: Verdict,
    /// Why it did not pass.
    pub error: Option<String>,
    /// The first check that failed.
    pub failing_check: Option<String>,
    /// The boot's phases: RunInstances, pending -> running, running -> SSH banner (the
    /// banner stands for the open port: behind a forwarding proxy a SYN/ACK proves
    /// nothing, and a port never seen closed is taken closed when seen open).
    pub phases: Phases,
    /// The SSH banner.
    pub banner: Option<String>,
    /// How the host keys were trusted.
    pub host_keys: Option<HostKeyTrust>,
    /// The smoke checks.
    pub checks: Vec<CheckResult>,
    /// The console output kept (always on failure; with `capture` on success).
    pub console_output: Option<PathBuf>,
    /// The screenshot kept.
    pub screenshot: Option<PathBuf>,
    /// Unix time (fractional) RunInstances was sent.
    pub launched_at: Option<f64>,
    /// Unix time TerminateInstances was accepted.
    pub terminated_at: Option<f64>,
}

impl CellReport {
    /// Instance-minutes from the launch and terminate stamps.
    pub fn instance_minutes(&self) -> Option<f64> {
        match (self.launched_at, self.terminated_at) {
            (Some(a), Some(b)) => Some((b - a).max(0.0) / 60.0),
            _ => None,
        }
    }
}

/// What a test run found.
#[derive(Debug, Clone, Serialize)]
pub struct TestReport {
    /// The ephemeral key pair's name (deleted at the end).
    pub key_name: String,
    /// Every test, in order.
    pub cells: Vec<CellReport>,
    /// Stopped by Ctrl-C or SIGTERM.
    pub interrupted: bool,
    /// Instances that could not be terminated (left in the journal).
    pub not_terminated: Vec<String>,
    /// Key pairs that could not be deleted (left in the journal).
    pub key_pairs_left: Vec<String>,
    /// Where the console outputs and screenshots are.
    pub artifacts: PathBuf,
}

impl TestReport {
    /// Every test passed (and there was one).
    pub fn passed(&self) -> bool {
        !self.interrupted
            && !self.cells.is_empty()
            && self.cells.iter().all(|c| c.verdict == Verdict::Passed)
    }

    /// Instance-minutes of the whole run.
    pub fn instance_minutes(&self) -> f64 {
        self.cells
            .iter()
            .filter_map(CellReport::instance_minutes)
            .sum()
    }
}

/// Why a test run could not proceed (a test that fails is a report, not an error).
#[derive(Debug, thiserror::Error)]
pub enum TestError {
    /// The options make no sense.
    #[error("{0}")]
    Invalid(String),
    /// The state database failed: nothing is launched without the journals.
    #[error(transparent)]
    State(#[from] StateError),
    /// The benchmark's clean-up failed.
    #[error(transparent)]
    Bench(#[from] bench::BenchError),
    /// The ephemeral key could not be made.
    #[error(transparent)]
    Ssh(#[from] ssh::SshError),
    /// A local file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn epoch_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A file-name-safe form of `s`.
fn slug(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// What the cells share.
struct Ctx<'a> {
    clients: &'a Clients,
    db: &'a StateDb,
    opts: &'a TestOptions,
    fleet: Fleet<'a>,
    key_name: String,
    key: ssh::KeyPair,
    workdir: &'a Path,
    /// Regions the key pair was imported into.
    imported: Mutex<Vec<String>>,
    cells: Mutex<Vec<CellReport>>,
}

fn validate(opts: &TestOptions) -> Result<(), TestError> {
    if opts.targets.is_empty() {
        return Err(TestError::Invalid("no AMI to test".into()));
    }
    if opts.instance_types.is_empty() || opts.instance_types.iter().any(|t| t.trim().is_empty()) {
        return Err(TestError::Invalid(
            "--instance-type needs at least one instance type (T[,T...])".into(),
        ));
    }
    if opts.timeout.is_zero() {
        return Err(TestError::Invalid("--timeout must be more than 0".into()));
    }
    if let Some(u) = &opts.user_data
        && u.len() > crate::userdata::LIMIT_BYTES
    {
        return Err(TestError::Invalid(format!(
            "user data is {} bytes, more than EC2's limit of {}",
            u.len(),
            crate::userdata::LIMIT_BYTES
        )));
    }
    Ok(())
}

/// Test every target on every instance type, one after the other. First what earlier
/// processes left is cleaned up (instances terminated, key pairs deleted). When
/// `shutdown` resolves, the test in progress is stopped, its instance terminated, the
/// key pair deleted, and the report says `interrupted`.
pub async fn run(
    clients: &Clients,
    db: &StateDb,
    opts: &TestOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<TestReport, TestError> {
    validate(opts)?;
    std::fs::create_dir_all(&opts.artifacts).map_err(|source| TestError::Io {
        what: format!("creating {}", opts.artifacts.display()),
        source,
    })?;
    let workdir = tempfile::Builder::new()
        .prefix("ec2ami-test-")
        .tempdir()
        .map_err(|source| TestError::Io {
            what: "creating a temporary directory".into(),
            source,
        })?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(workdir.path(), std::fs::Permissions::from_mode(0o700)).map_err(
            |source| TestError::Io {
                what: "securing the temporary directory".into(),
                source,
            },
        )?;
    }
    let key_name = format!("ec2ami-test-{}", uuid::Uuid::new_v4().simple());
    let key = ssh::generate_key(workdir.path(), &key_name).await?;
    let ctx = Ctx {
        clients,
        db,
        opts,
        fleet: Fleet::new(clients, db, &opts.scope, &opts.retry),
        key_name,
        key,
        workdir: workdir.path(),
        imported: Mutex::new(Vec::new()),
        cells: Mutex::new(Vec::new()),
    };
    let work = async {
        let left = bench::cleanup(clients, db, &opts.scope, &opts.retry).await?;
        if !left.terminated.is_empty() {
            tracing::warn!(
                "terminated {} instance(s) an earlier run left running: {}",
                left.terminated.len(),
                left.terminated.join(", ")
            );
        }
        let (deleted, errors) = keys::cleanup(clients, db, &opts.scope, &opts.retry).await?;
        if !deleted.is_empty() {
            tracing::warn!(
                "deleted {} key pair(s) an earlier test left: {}",
                deleted.len(),
                deleted.join(", ")
            );
        }
        for e in errors {
            tracing::warn!("clean-up of an earlier test: {e}");
        }
        for t in &opts.targets {
            for ty in &opts.instance_types {
                let cell = one_cell(&ctx, t, ty).await;
                log_cell(&cell);
                lock(&ctx.cells).push(cell);
            }
        }
        Ok::<(), TestError>(())
    };
    let interrupted = tokio::select! {
        r = work => {
            if let Err(e) = r {
                finish(&ctx).await;
                return Err(e);
            }
            false
        }
        _ = shutdown => true,
    };
    if interrupted {
        ctx.fleet.finish_all().await;
    }
    let key_pairs_left = finish(&ctx).await;
    let cells = std::mem::take(&mut *lock(&ctx.cells));
    Ok(TestReport {
        key_name: ctx.key_name.clone(),
        cells,
        interrupted,
        not_terminated: ctx.fleet.not_terminated(),
        key_pairs_left,
        artifacts: opts.artifacts.clone(),
    })
}

/// Delete the key pair in every region it was imported into; returns what is left.
async fn finish(ctx: &Ctx<'_>) -> Vec<String> {
    let regions: Vec<String> = std::mem::take(&mut *lock(&ctx.imported));
    let mut left = Vec::new();
    for r in regions {
        let regional = ctx.clients.in_region(&r);
        match keys::delete(&regional, ctx.db, &ctx.key_name, &ctx.opts.retry).await {
            Ok(()) => tracing::info!("deleted key pair {} in {r}", ctx.key_name),
            Err(e) => {
                tracing::error!(
                    "could not delete key pair {} in {r}: {e}; the next `ec2ami test` retries",
                    ctx.key_name
                );
                left.push(format!("{} in {r}", ctx.key_name));
            }
        }
    }
    left
}

fn log_cell(c: &CellReport) {
    let what = format!("{} on {} in {}", c.image_id, c.instance_type, c.region);
    match c.verdict {
        Verdict::Passed => tracing::info!("{what}: passed"),
        Verdict::Interrupted => tracing::warn!("{what}: interrupted"),
        v => tracing::warn!(
            "{what}: {}: {}",
            v.key().replace('_', " "),
            c.error.as_deref().unwrap_or_default()
        ),
    }
}

/// The key pair, imported into `region` once.
async fn ensure_key(ctx: &Ctx<'_>, clients: &Clients) -> Result<(), String> {
    let region = clients.region().to_string();
    if lock(&ctx.imported).contains(&region) {
        return Ok(());
    }
    // Marked before the call: an interrupted import is deleted too.
    lock(&ctx.imported).push(region.clone());
    keys::import(
        clients,
        ctx.db,
        &ctx.opts.scope,
        &ctx.key_name,
        &ctx.key.public,
        &ctx.opts.retry,
    )
    .await
    .inspect_err(|_| lock(&ctx.imported).retain(|r| *r != region))
}

/// One AMI on one instance type. Never returns with its instance running unless AWS
/// refused to terminate it.
async fn one_cell(ctx: &Ctx<'_>, t: &Target, instance_type: &str) -> CellReport {
    let opts = ctx.opts;
    let clients = ctx.clients.in_region(&t.region);
    let mut cell = CellReport {
        region: t.region.clone(),
        image_id: t.image_id.clone(),
        image_name: t.name.clone(),
        instance_type: instance_type.to_string(),
        instance_id: None,
        verdict: Verdict::Failed,
        error: None,
        failing_check: None,
        phases: Phases::default(),
        banner: None,
        host_keys: None,
        checks: Vec::new(),
        console_output: None,
        screenshot: None,
        launched_at: None,
        terminated_at: None,
    };
    if let Err(e) = ensure_key(ctx, &clients).await {
        cell.error = Some(e);
        return cell;
    }
    let spec = LaunchSpec {
        image_id: t.image_id.clone(),
        instance_type: instance_type.to_string(),
        subnet: opts.subnet.clone(),
        security_groups: opts.security_groups.clone(),
        user_data: opts.user_data.clone(),
        ipv6: false,
        key_name: Some(ctx.key_name.clone()),
        purpose: "test",
    };
    let sent_at = epoch_now();
    let (token, launched) = match ctx.fleet.launch(&clients, &spec).await {
        Ok(l) => l,
        Err(e) => {
            cell.error = Some(format!("RunInstances: {e}"));
            return cell;
        }
    };
    let id = launched.instance_id.clone();
    tracing::info!("{} on {instance_type}: launched {id}", t.image_id);
    cell.instance_id = Some(id.clone());
    cell.launched_at = Some(sent_at);
    exercise(ctx, &clients, &launched, &mut cell).await;
    let failed = cell.verdict != Verdict::Passed;
    if failed || opts.capture {
        capture(ctx, &clients, &id, &mut cell).await;
    }
    ctx.fleet.finish(&token, Some(&id)).await;
    cell.terminated_at = Some(epoch_now());
    cell
}

/// Wait for `running`, the banner, log in, run the checks; fills in `cell`.
async fn exercise(
    ctx: &Ctx<'_>,
    clients: &Clients,
    launched: &launch::Launched,
    cell: &mut CellReport,
) {
    let opts = ctx.opts;
    let t0 = launched.sent;
    let secs = |t: Instant| t.saturating_duration_since(t0).as_secs_f64();
    let deadline = launched.sent + opts.timeout;
    let mut marks = Marks {
        launched: Some(secs(launched.answered)),
        ..Marks::default()
    };
    let fail = |cell: &mut CellReport, marks: &Marks, v: Verdict, e: String| {
        cell.phases = Phases::from_marks(marks);
        cell.verdict = v;
        cell.error = Some(e);
    };
    let (running_at, addr) =
        match launch::wait_running(clients, &launched.instance_id, false, &opts.poll, deadline)
            .await
        {
            Ok(r) => r,
            Err(PollError::TimedOut) => {
                let e = format!("not running within {}", human(opts.timeout));
                return fail(cell, &marks, Verdict::TimedOut, e);
            }
            Err(PollError::Died(m)) => return fail(cell, &marks, Verdict::Failed, m),
            Err(PollError::Aws(e)) => return fail(cell, &marks, Verdict::Failed, e.to_string()),
        };
    marks.running = Some(secs(running_at));
    let target = opts.connect_to.unwrap_or_else(|| SocketAddr::new(addr, 22));
    tracing::debug!(
        "{} running at {addr}; SSH at {target}",
        launched.instance_id
    );
    let Some((at, banner)) = ssh::wait_for_banner(target, deadline, BANNER_INTERVAL).await else {
        let e = format!("no SSH banner within {}", human(opts.timeout));
        return fail(cell, &marks, Verdict::TimedOut, e);
    };
    marks.open = Some(secs(at));
    cell.phases = Phases::from_marks(&marks);
    cell.banner = Some(banner);
    if opts.checks.is_empty() {
        cell.verdict = Verdict::Passed;
        return;
    }
    // The host keys the console printed (cloud-init and ec2-scripts print them).
    let printed = match ec2::console_output(clients, &launched.instance_id, &opts.retry).await {
        Ok(text) => console::host_keys(text.lines()),
        Err(e) => {
            tracing::warn!("console output of {}: {e}", launched.instance_id);
            console::host_keys(std::iter::empty())
        }
    };
    let kh = ctx
        .workdir
        .join(format!("known_hosts-{}", launched.instance_id));
    let trust = match ssh::known_hosts(target, &printed, &kh).await {
        Ok(t) => t,
        Err(e) => return fail(cell, &marks, Verdict::Failed, e.to_string()),
    };
    cell.host_keys = Some(trust);
    let ssh_target = SshTarget {
        addr: target,
        user: opts.ssh_user.clone(),
        key: ctx.key.private.clone(),
        known_hosts: kh,
    };
    if let Err(e) = ssh::wait_for_login(&ssh_target, deadline).await {
        let e = format!("cannot log in as {}: {e}", opts.ssh_user);
        return fail(cell, &marks, Verdict::Failed, e);
    }
    for c in &opts.checks {
        let r = ssh::run_check(&ssh_target, c, deadline).await;
        tracing::info!(
            "check `{}`: {}",
            r.check,
            if r.passed { "passed" } else { "failed" }
        );
        let timed_out = r.error.as_deref() == Some("timed out");
        if !r.passed && cell.failing_check.is_none() {
            cell.failing_check = Some(r.check.clone());
        }
        cell.checks.push(r);
        if timed_out {
            break;
        }
    }
    let failed: Vec<&CheckResult> = cell.checks.iter().filter(|c| !c.passed).collect();
    if failed.is_empty() && cell.checks.len() == opts.checks.len() {
        cell.verdict = Verdict::Passed;
    } else if cell.checks.len() < opts.checks.len() {
        cell.verdict = Verdict::TimedOut;
        cell.error = Some(format!(
            "the checks did not finish within {}",
            human(opts.timeout)
        ));
    } else {
        cell.verdict = Verdict::Failed;
        cell.error = Some(format!(
            "{} of {} check(s) failed: {}",
            failed.len(),
            cell.checks.len(),
            failed
                .iter()
                .map(|c| format!(
                    "`{}` ({})",
                    c.check,
                    c.error
                        .clone()
                        .unwrap_or_else(|| format!("exit status {}", c.exit_status.unwrap_or(-1)))
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
}

/// Keep the instance's console output and a screenshot with the run.
async fn capture(ctx: &Ctx<'_>, clients: &Clients, instance_id: &str, cell: &mut CellReport) {
    let opts = ctx.opts;
    let stem = slug(&format!(
        "{}-{}-{}-{instance_id}",
        cell.region, cell.image_id, cell.instance_type
    ));
    match ec2::console_output(clients, instance_id, &opts.retry).await {
        Ok(text) => {
            let p = opts.artifacts.join(format!("{stem}.console.txt"));
            match std::fs::write(&p, text) {
                Ok(()) => cell.console_output = Some(p),
                Err(e) => tracing::warn!("cannot write {}: {e}", p.display()),
            }
        }
        Err(e) => tracing::warn!("console output of {instance_id}: {e}"),
    }
    match ec2::console_screenshot(clients, instance_id, &opts.retry).await {
        Ok(bytes) => {
            let ext = if bytes.starts_with(b"\x89PNG") {
                "png"
            } else {
                "jpg"
            };
            let p = opts.artifacts.join(format!("{stem}.screenshot.{ext}"));
            match std::fs::write(&p, bytes) {
                Ok(()) => cell.screenshot = Some(p),
                Err(e) => tracing::warn!("cannot write {}: {e}", p.display()),
            }
        }
        Err(e) => tracing::warn!("screenshot of {instance_id}: {e}"),
    }
}

/// The AMIs of `release` to test: each image's AMI by name in each of `regions` (the
/// release's source region when empty; `all`: every region of the release that is
/// enabled). An image with no AMI in a region is an error naming it.
pub async fn release_targets(
    clients: &Clients,
    release: &crate::publish::Release,
    regions: &[String],
    retry: &RetryPolicy,
) -> Result<Vec<Target>, TestError> {
    let aws = |e: crate::aws::AwsError| TestError::Invalid(e.to_string());
    let regions: Vec<String> = if regions.is_empty() {
        vec![
            release
                .source_region
                .clone()
                .or_else(|| release.regions.iter().find(|r| *r != "all").cloned())
                .unwrap_or_else(|| clients.region().to_string()),
        ]
    } else {
        let wanted: Vec<String> = if regions.iter().any(|r| r == "all") {
            release.regions.clone()
        } else {
            regions.to_vec()
        };
        ec2::resolve_regions(clients, &wanted, retry)
            .await
            .map_err(aws)?
            .map_err(|e| TestError::Invalid(format!("--regions: {e}")))?
    };
    let mut out = Vec::new();
    for region in &regions {
        let regional = clients.in_region(region);
        for img in &release.images {
            let ami = ec2::image_named(&regional, img.name(), retry)
                .await
                .map_err(aws)?
                .ok_or_else(|| {
                    TestError::Invalid(format!(
                        "{}: no AMI named `{}` in {region} (publish it first)",
                        release.path.display(),
                        img.name()
                    ))
                })?;
            out.push(Target {
                region: region.clone(),
                image_id: ami.id.clone(),
                name: Some(img.name().to_string()),
            });
        }
    }
    Ok(out)
}

fn human(d: Duration) -> String {
    crate::boot::human(d)
}
