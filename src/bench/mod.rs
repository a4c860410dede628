//! Boot benchmark: launch instances of an AMI and time each boot in the four phases
//! ec2-boot-bench defines (RunInstances; pending -> running; running -> port closed;
//! port closed -> port open), always terminating what was launched.
//!
//! Entry point: [`run`]. Every launch is journaled in the state database before
//! RunInstances is sent ([`journal`]), so instances are terminated on success, on
//! error, on a phase timeout and on Ctrl-C, and whatever a killed process leaves is
//! terminated by [`cleanup`] (run at the next start and by `ec2ami bench --cleanup`).

pub(crate) mod journal;
pub(crate) mod launch;
pub(crate) mod phases;
pub(crate) mod probe;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use futures_util::StreamExt;
use serde::Serialize;
use serde::ser::SerializeStruct;
use tokio::time::Instant;

use crate::aws::{AwsError, Clients, RetryPolicy};
use crate::state::{StateDb, StateError, now_epoch};

pub use journal::Scope;
pub use launch::{LaunchSpec, PollOptions};
pub use phases::{
    Marks, Phase, PhaseSummary, Phases, RunStatus, Summary, ec2_boot_bench_lines, summary_table,
};
pub use probe::{PortWatch, ProbeOptions, watch_port};

/// What build `image_id` is: `given` (the command line's) first, then the AMI's
/// `ec2ami:*` tags, then its name; `None` when the AMI does not exist in the clients'
/// region. Bench and test look before they launch anything.
pub async fn build_of(
    clients: &Clients,
    image_id: &str,
    given: crate::history::BuildInfo,
    retry: &RetryPolicy,
) -> Result<Option<crate::history::BuildInfo>, AwsError> {
    let Some(image) = crate::ami::describe(clients, image_id, retry).await? else {
        return Ok(None);
    };
    let tags: Vec<(String, String)> = image.tags.clone().into_iter().collect();
    Ok(Some(
        given
            .or(crate::history::BuildInfo::from_image(
                Some(&image.name),
                &tags,
            ))
            .normalized(),
    ))
}

/// A journaled launch younger than this whose instance cannot be found yet may still
/// appear (EC2 is eventually consistent): it is kept for a later clean-up.
const YOUNG_LAUNCH_SECS: i64 = 600;

/// Everything a benchmark needs to know.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// What to launch.
    pub launch: LaunchSpec,
    /// Runs in all, the discarded one included.
    pub runs: usize,
    /// Run the first launch alone and leave it out of the statistics (it warms the
    /// snapshot behind a new AMI, which EBS loads lazily).
    pub discard_first: bool,
    /// Runs in parallel.
    pub concurrency: usize,
    /// TCP port to probe (sshd: 22).
    pub port: u16,
    /// Longest any one phase may last.
    pub phase_timeout: Duration,
    /// Send the probe here instead of the instance's address (tests: 127.0.0.1).
    pub connect_to: Option<SocketAddr>,
    /// DescribeInstances polling.
    pub poll: PollOptions,
    /// TCP probing.
    pub probe: ProbeOptions,
    /// RunInstances / TerminateInstances / lookups.
    pub retry: RetryPolicy,
    /// Which endpoint and profile the journal entries belong to.
    pub scope: Scope,
    /// Console screenshots at an interval and the console output, kept per run.
    pub capture: Option<CaptureOptions>,
}

/// What `bench --capture` keeps of each run (as ec2-boot-bench's `--bootvideo`).
#[derive(Debug, Clone)]
pub struct CaptureOptions {
    /// Time between two screenshots.
    pub interval: Duration,
    /// Where each run's directory goes (`run-N-INSTANCE/`).
    pub dir: std::path::PathBuf,
}

/// What was captured of one run.
#[derive(Debug, Clone, Serialize)]
pub struct RunCapture {
    /// The run.
    pub run: usize,
    /// Its directory: `frame-NNNN.png`, `console.txt`, `boot.mp4` when ffmpeg exists.
    pub dir: std::path::PathBuf,
    /// Screenshots kept.
    pub frames: usize,
    /// The console output was kept.
    pub console_output: bool,
    /// The video made from the frames (only when ffmpeg is installed).
    pub video: Option<std::path::PathBuf>,
}

/// One run's outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct RunResult {
    /// 1-based run number.
    pub run: usize,
    /// The instance it launched, if RunInstances answered.
    pub instance_id: Option<String>,
    /// Left out of the statistics (the first run, when asked).
    pub discarded: bool,
    /// How it ended.
    pub status: RunStatus,
    /// The phase durations (`None` where a phase did not end).
    pub phases: Phases,
    /// TCP connects made.
    pub probes: u64,
}

impl Serialize for RunResult {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("RunResult", 10)?;
        st.serialize_field("run", &self.run)?;
        st.serialize_field("instance_id", &self.instance_id)?;
        st.serialize_field("discarded", &self.discarded)?;
        st.serialize_field("status", self.status.key())?;
        let timed_out = match &self.status {
            RunStatus::TimedOut(p) => Some(p.key()),
            _ => None,
        };
        st.serialize_field("timed_out_phase", &timed_out)?;
        let error = match &self.status {
            RunStatus::Failed(e) => Some(e.as_str()),
            _ => None,
        };
        st.serialize_field("error", &error)?;
        st.serialize_field("run_instances_s", &self.phases.get(Phase::RunInstances))?;
        st.serialize_field(
            "pending_to_running_s",
            &self.phases.get(Phase::PendingToRunning),
        )?;
        st.serialize_field(
            "running_to_closed_s",
            &self.phases.get(Phase::RunningToClosed),
        )?;
        st.serialize_field("closed_to_open_s", &self.phases.get(Phase::ClosedToOpen))?;
        st.serialize_field("total_s", &self.phases.total())?;
        st.serialize_field("probes", &self.probes)?;
        st.end()
    }
}

/// What a benchmark measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// The AMI.
    pub image_id: String,
    /// Instance type.
    pub instance_type: String,
    /// Region.
    pub region: String,
    /// Every run that finished, in run order (discarded and failed ones included).
    pub runs: Vec<RunResult>,
    /// Over the complete runs not discarded.
    pub summary: PhaseSummary,
    /// Stopped by Ctrl-C or SIGTERM.
    pub interrupted: bool,
    /// Instances that could not be terminated (also left in the journal for
    /// `ec2ami bench --cleanup`). Empty unless AWS refused.
    pub not_terminated: Vec<String>,
    /// What `capture` kept, per run.
    pub captures: Vec<RunCapture>,
}

impl BenchReport {
    /// Runs that count: complete and not discarded.
    pub fn measured(&self) -> impl Iterator<Item = &RunResult> {
        self.runs
            .iter()
            .filter(|r| !r.discarded && r.status == RunStatus::Ok)
    }

    /// Runs that timed out or failed, with why.
    pub fn problems(&self) -> Vec<String> {
        self.runs
            .iter()
            .filter_map(|r| match &r.status {
                RunStatus::Ok | RunStatus::Interrupted => None,
                RunStatus::TimedOut(p) => Some(format!("run {} timed out in {p}", r.run)),
                RunStatus::Failed(e) => Some(format!("run {} failed: {e}", r.run)),
            })
            .collect()
    }
}

/// Why a benchmark or a clean-up could not proceed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The state database (the instance journal) failed: nothing is launched without it.
    #[error(transparent)]
    State(#[from] StateError),
    /// An AWS call failed.
    #[error(transparent)]
    Aws(#[from] AwsError),
    /// The options make no sense.
    #[error("{0}")]
    Invalid(String),
}

/// What a clean-up did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CleanupReport {
    /// Instances terminated.
    pub terminated: Vec<String>,
    /// Journal entries cleared.
    pub cleared: usize,
    /// Entries of processes still running (left alone).
    pub skipped_running: usize,
    /// Entries kept for later: a recent launch whose instance EC2 does not show yet.
    pub kept: usize,
    /// Entries of other endpoints or profiles (left alone).
    pub other_scopes: u64,
    /// Failures (the entries stay in the journal).
    pub errors: Vec<String>,
}

/// Instances launched by this process that must not outlive it: every launch is
/// journaled before RunInstances is sent and forgotten only once TerminateInstances
/// was accepted, so [`Fleet::finish_all`] (after Ctrl-C) and [`cleanup`] (after kill
/// -9) find everything. The boot benchmark and `ec2ami test` launch through it.
pub(crate) struct Fleet<'a> {
    clients: &'a Clients,
    db: &'a StateDb,
    scope: &'a Scope,
    retry: &'a RetryPolicy,
    /// Launches not yet terminated: token -> (region, instance id once known).
    live: Mutex<HashMap<String, (String, Option<String>)>>,
    not_terminated: Mutex<Vec<String>>,
}

impl<'a> Fleet<'a> {
    /// A fleet launching through `clients` (any region: see [`Fleet::launch`]).
    pub(crate) fn new(
        clients: &'a Clients,
        db: &'a StateDb,
        scope: &'a Scope,
        retry: &'a RetryPolicy,
    ) -> Fleet<'a> {
        Fleet {
            clients,
            db,
            scope,
            retry,
            live: Mutex::new(HashMap::new()),
            not_terminated: Mutex::new(Vec::new()),
        }
    }

    /// Journal a launch, then launch `spec` with `clients` (the fleet's, or another
    /// region's). Returns the launch token and the instance; when RunInstances fails,
    /// whatever it may have made is terminated before the error is returned.
    pub(crate) async fn launch(
        &self,
        clients: &Clients,
        spec: &LaunchSpec,
    ) -> Result<(String, launch::Launched), String> {
        let token = uuid::Uuid::new_v4().to_string();
        let region = clients.region().to_string();
        // Journaled before the request leaves, so no instance can exist that the
        // journal does not know about.
        journal::begin(self.db, self.scope, &token, &region)
            .map_err(|e| format!("not launched: {e}"))?;
        lock(&self.live).insert(token.clone(), (region.clone(), None));
        match launch::run_instance(clients, spec, &token, self.retry).await {
            Err(e) => {
                // The call may have launched an instance whose answer was lost.
                self.finish(&token, None).await;
                Err(e.to_string())
            }
            Ok(launched) => {
                let id = launched.instance_id.clone();
                if let Err(e) = journal::launched(self.db, &token, &id) {
                    // The token tag still finds it; carry on.
                    tracing::warn!("journal: {e}");
                }
                lock(&self.live).insert(token.clone(), (region, Some(id)));
                Ok((token, launched))
            }
        }
    }

    /// Terminate what launch `token` made (the known instance, and any other instance
    /// carrying its token tag), then clear it from the journal. A failure is reported
    /// and the journal entry kept.
    pub(crate) async fn finish(&self, token: &str, instance_id: Option<&str>) {
        let region = lock(&self.live)
            .get(token)
            .map(|(r, _)| r.clone())
            .unwrap_or_else(|| self.clients.region().to_string());
        let clients = self.clients.in_region(&region);
        match terminate_launch(&clients, token, instance_id, 0, self.retry).await {
            Ok(Outcome::Done(ids)) => {
                for id in &ids {
                    tracing::info!("terminated {id}");
                }
                if let Err(e) = journal::finished(self.db, token) {
                    tracing::warn!("journal: {e}");
                }
            }
            Ok(Outcome::NotYetVisible) => tracing::warn!(
                "launch {token}: no instance visible yet; kept in the journal for `ec2ami bench --cleanup`"
            ),
            Err(e) => {
                let what = instance_id.unwrap_or(token).to_string();
                tracing::error!(
                    "could not terminate {what}: {e}; it stays in the journal for `ec2ami bench --cleanup`"
                );
                lock(&self.not_terminated).push(what);
            }
        }
        lock(&self.live).remove(token);
    }

    /// Terminate every launch not finished yet (after the work was dropped mid-way).
    pub(crate) async fn finish_all(&self) {
        let live: Vec<(String, Option<String>)> = lock(&self.live)
            .iter()
            .map(|(t, (_, id))| (t.clone(), id.clone()))
            .collect();
        let ends = live
            .iter()
            .map(|(token, id)| self.finish(token, id.as_deref()));
        futures_util::future::join_all(ends).await;
    }

    /// Instances that could not be terminated.
    pub(crate) fn not_terminated(&self) -> Vec<String> {
        lock(&self.not_terminated).clone()
    }
}

/// What one run shares with the others.
struct Ctx<'a> {
    fleet: Fleet<'a>,
    opts: &'a BenchOptions,
    results: Mutex<Vec<RunResult>>,
    captures: Mutex<Vec<RunCapture>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Benchmark `opts.launch.image_id`: first terminate what earlier processes left
/// behind, then the runs (the first alone when it is discarded, the rest
/// `concurrency` at a time). When `shutdown` resolves, every launched instance is
/// terminated and the report says `interrupted`.
pub async fn run(
    clients: &Clients,
    db: &StateDb,
    opts: &BenchOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<BenchReport, BenchError> {
    validate(opts)?;
    let ctx = Ctx {
        fleet: Fleet::new(clients, db, &opts.scope, &opts.retry),
        opts,
        results: Mutex::new(Vec::new()),
        captures: Mutex::new(Vec::new()),
    };
    let work = async {
        let leftovers = cleanup(clients, db, &opts.scope, &opts.retry).await?;
        if !leftovers.terminated.is_empty() {
            tracing::warn!(
                "terminated {} instance(s) an earlier benchmark left running: {}",
                leftovers.terminated.len(),
                leftovers.terminated.join(", ")
            );
        }
        for e in &leftovers.errors {
            tracing::warn!("clean-up of an earlier benchmark: {e}");
        }
        let mut first = 1;
        if opts.discard_first && opts.runs > 1 {
            one_run(&ctx, 1, true).await;
            first = 2;
        }
        futures_util::stream::iter(first..=opts.runs)
            .map(|i| one_run(&ctx, i, false))
            .buffer_unordered(opts.concurrency.max(1))
            .for_each(|_| async {})
            .await;
        Ok::<(), BenchError>(())
    };
    // One select over the clean-up and the runs: the signal is being listened for
    // before the first request leaves.
    let interrupted = tokio::select! {
        r = work => {
            r?;
            false
        }
        _ = shutdown => true,
    };
    if interrupted {
        // The runs were dropped mid-way: terminate everything they launched.
        ctx.fleet.finish_all().await;
    }
    let mut runs = std::mem::take(&mut *lock(&ctx.results));
    runs.sort_by_key(|r| r.run);
    let summary = PhaseSummary::of(
        runs.iter()
            .filter(|r| !r.discarded && r.status == RunStatus::Ok)
            .map(|r| &r.phases),
    );
    Ok(BenchReport {
        image_id: opts.launch.image_id.clone(),
        instance_type: opts.launch.instance_type.clone(),
        region: clients.region().to_string(),
        runs,
        summary,
        interrupted,
        not_terminated: ctx.fleet.not_terminated(),
        captures: {
            let mut c = std::mem::take(&mut *lock(&ctx.captures));
            c.sort_by_key(|c| c.run);
            c
        },
    })
}

fn validate(opts: &BenchOptions) -> Result<(), BenchError> {
    if opts.runs == 0 {
        return Err(BenchError::Invalid("--runs must be at least 1".into()));
    }
    if opts.concurrency == 0 {
        return Err(BenchError::Invalid(
            "--concurrency must be at least 1".into(),
        ));
    }
    if opts.phase_timeout.is_zero() {
        return Err(BenchError::Invalid("--timeout must be more than 0".into()));
    }
    Ok(())
}

/// One run: journal, launch, measure, terminate. Never returns with its instance
/// still running unless AWS refused to terminate it (then it is reported).
async fn one_run(ctx: &Ctx<'_>, run: usize, discarded: bool) {
    let opts = ctx.opts;
    let total = opts.runs;
    let mut result = RunResult {
        run,
        instance_id: None,
        discarded,
        status: RunStatus::Ok,
        phases: Phases::default(),
        probes: 0,
    };
    match ctx.fleet.launch(ctx.fleet.clients, &opts.launch).await {
        Err(e) => result.status = RunStatus::Failed(e),
        Ok((token, launched)) => {
            let id = launched.instance_id.clone();
            tracing::info!("run {run}/{total}: launched {id}");
            result.instance_id = Some(id.clone());
            let (marks, status, probes) = match &opts.capture {
                None => measure(ctx, &launched).await,
                Some(c) => {
                    let dir = c.dir.join(format!("run-{run}-{id}"));
                    let mut frames = 0usize;
                    let out = {
                        // The loop is told to stop when the phases are measured and
                        // finishes the screenshot it is taking, so that every screenshot
                        // EC2 answered is kept (never dropped mid-request).
                        let (stop, stopped) = tokio::sync::watch::channel(false);
                        let shots =
                            capture_frames(ctx, &id, c.interval, &dir, &mut frames, stopped);
                        let measured = async {
                            let r = measure(ctx, &launched).await;
                            stop.send_replace(true);
                            r
                        };
                        tokio::join!(measured, shots).0
                    };
                    let cap = finish_capture(ctx, &id, &dir, frames, c.interval).await;
                    lock(&ctx.captures).push(RunCapture { run, ..cap });
                    out
                }
            };
            result.phases = Phases::from_marks(&marks);
            result.status = status;
            result.probes = probes;
            ctx.fleet.finish(&token, Some(&id)).await;
        }
    }
    log_result(&result, total);
    lock(&ctx.results).push(result);
}

fn log_result(r: &RunResult, total: usize) {
    let fig = |p: Phase| {
        r.phases
            .get(p)
            .map(|s| format!("{s:.3}"))
            .unwrap_or_else(|| "-".into())
    };
    let note = if r.discarded { " (discarded)" } else { "" };
    match &r.status {
        RunStatus::Ok => tracing::info!(
            "run {}/{total}{note}: {} + {} + {} + {} = {:.3} s",
            r.run,
            fig(Phase::RunInstances),
            fig(Phase::PendingToRunning),
            fig(Phase::RunningToClosed),
            fig(Phase::ClosedToOpen),
            r.phases.total().unwrap_or(0.0)
        ),
        RunStatus::TimedOut(p) => tracing::warn!("run {}/{total}: timed out in {p}", r.run),
        RunStatus::Failed(e) => tracing::warn!("run {}/{total}: {e}", r.run),
        RunStatus::Interrupted => {}
    }
}

/// Take a screenshot every `interval` into `dir/frame-NNNN.png` until `stop` turns
/// true; a screenshot under way then is finished and kept.
async fn capture_frames(
    ctx: &Ctx<'_>,
    instance_id: &str,
    interval: Duration,
    dir: &std::path::Path,
    frames: &mut usize,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    if let Err(e) = std::fs::create_dir_all(dir) {
        tracing::warn!("--capture: cannot create {}: {e}", dir.display());
        return;
    }
    let once = RetryPolicy {
        max_attempts: 1,
        ..ctx.opts.retry
    };
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => return,
            _ = tick.tick() => {}
        }
        let shot = crate::aws::ec2::console_screenshot(ctx.fleet.clients, instance_id, &once).await;
        match shot {
            Ok(png) => {
                let p = dir.join(format!("frame-{:04}.png", *frames + 1));
                if std::fs::write(&p, png).is_ok() {
                    *frames += 1;
                }
            }
            // Not available yet (the instance is still pending) or throttled: next tick.
            Err(e) => tracing::debug!("screenshot of {instance_id}: {e}"),
        }
    }
}

/// The last screenshot, the console output, and a video when ffmpeg is installed.
async fn finish_capture(
    ctx: &Ctx<'_>,
    instance_id: &str,
    dir: &std::path::Path,
    mut frames: usize,
    interval: Duration,
) -> RunCapture {
    let retry = &ctx.opts.retry;
    let _ = std::fs::create_dir_all(dir);
    if let Ok(png) =
        crate::aws::ec2::console_screenshot(ctx.fleet.clients, instance_id, retry).await
        && std::fs::write(dir.join(format!("frame-{:04}.png", frames + 1)), png).is_ok()
    {
        frames += 1;
    }
    let console_output =
        match crate::aws::ec2::console_output(ctx.fleet.clients, instance_id, retry).await {
            Ok(text) => std::fs::write(dir.join("console.txt"), text).is_ok(),
            Err(e) => {
                tracing::warn!("console output of {instance_id}: {e}");
                false
            }
        };
    let video = if frames > 0 {
        make_video(dir, interval).await
    } else {
        None
    };
    RunCapture {
        run: 0,
        dir: dir.to_owned(),
        frames,
        console_output,
        video,
    }
}

/// `boot.mp4` from the frames, when ffmpeg is installed (else `None`, said once).
async fn make_video(dir: &std::path::Path, interval: Duration) -> Option<std::path::PathBuf> {
    let out = dir.join("boot.mp4");
    let rate = format!("{:.6}", 1.0 / interval.as_secs_f64().max(0.001));
    let r = tokio::process::Command::new("ffmpeg")
        .args(["-loglevel", "error", "-y", "-framerate", &rate, "-i"])
        .arg(dir.join("frame-%04d.png"))
        .args([
            "-vf",
            "pad=ceil(iw/2)*2:ceil(ih/2)*2",
            "-pix_fmt",
            "yuv420p",
        ])
        .arg(&out)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await;
    match r {
        Ok(o) if o.status.success() => Some(out),
        Ok(o) => {
            tracing::warn!(
                "--capture: ffmpeg failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            None
        }
        Err(_) => {
            tracing::info!("--capture: ffmpeg is not installed; the frames are kept as PNGs");
            None
        }
    }
}

/// Time the phases of a launched instance.
async fn measure(ctx: &Ctx<'_>, launched: &launch::Launched) -> (Marks, RunStatus, u64) {
    let opts = ctx.opts;
    let t0 = launched.sent;
    let secs = |t: Instant| t.saturating_duration_since(t0).as_secs_f64();
    let mut marks = Marks {
        launched: Some(secs(launched.answered)),
        ..Marks::default()
    };
    let deadline = launched.answered + opts.phase_timeout;
    let (running_at, addr) = match launch::wait_running(
        ctx.fleet.clients,
        &launched.instance_id,
        opts.launch.ipv6,
        &opts.poll,
        deadline,
    )
    .await
    {
        Ok(r) => r,
        Err(launch::PollError::TimedOut) => {
            return (marks, RunStatus::TimedOut(Phase::PendingToRunning), 0);
        }
        Err(launch::PollError::Died(m)) => return (marks, RunStatus::Failed(m), 0),
        Err(launch::PollError::Aws(e)) => return (marks, RunStatus::Failed(e.to_string()), 0),
    };
    marks.running = Some(secs(running_at));
    let target = opts
        .connect_to
        .unwrap_or_else(|| SocketAddr::new(addr, opts.port));
    tracing::debug!(
        "{} running at {addr}; probing {target}",
        launched.instance_id
    );
    let watch = probe::watch_port(target, running_at, &opts.probe, opts.phase_timeout).await;
    marks.closed = watch.closed.map(secs);
    marks.open = watch.open.map(secs);
    let status = match watch.timed_out {
        Some(p) => RunStatus::TimedOut(p),
        None => RunStatus::Ok,
    };
    (marks, status, watch.probes)
}

enum Outcome {
    /// These instances were terminated (possibly none: nothing was launched).
    Done(Vec<String>),
    /// A recent launch with no visible instance: check again later.
    NotYetVisible,
}

/// Terminate the instance of a launch, and any other instance tagged with its token.
/// `age_secs` is how long ago the launch was journaled (0 for this process's own).
async fn terminate_launch(
    clients: &Clients,
    token: &str,
    instance_id: Option<&str>,
    age_secs: i64,
    retry: &RetryPolicy,
) -> Result<Outcome, AwsError> {
    let young = age_secs < YOUNG_LAUNCH_SECS;
    let mut done = Vec::new();
    if let Some(id) = instance_id {
        launch::terminate(clients, id, young, retry).await?;
        done.push(id.to_string());
    }
    let others = launch::find_by_token(clients, token, retry).await?;
    for id in others {
        if !done.contains(&id) {
            launch::terminate(clients, &id, false, retry).await?;
            done.push(id);
        }
    }
    if instance_id.is_none() && done.is_empty() && young {
        return Ok(Outcome::NotYetVisible);
    }
    Ok(Outcome::Done(done))
}

/// Terminate every instance the journal holds for `scope` whose launching process is
/// gone (another benchmark still running is left alone).
pub async fn cleanup(
    clients: &Clients,
    db: &StateDb,
    scope: &Scope,
    retry: &RetryPolicy,
) -> Result<CleanupReport, BenchError> {
    let mut report = CleanupReport {
        other_scopes: journal::other_scopes(db, scope)?,
        ..CleanupReport::default()
    };
    let now = now_epoch();
    for launch in journal::pending(db, scope)? {
        if journal::owner_alive(&launch.owner) {
            report.skipped_running += 1;
            continue;
        }
        let regional = clients.in_region(&launch.region);
        let age = now - launch.launched_at;
        match terminate_launch(
            &regional,
            &launch.token,
            launch.instance_id.as_deref(),
            age,
            retry,
        )
        .await
        {
            Ok(Outcome::Done(ids)) => {
                journal::finished(db, &launch.token)?;
                report.cleared += 1;
                report.terminated.extend(ids);
            }
            Ok(Outcome::NotYetVisible) => report.kept += 1,
            Err(e) => report.errors.push(format!(
                "{} in {}: {e}",
                launch.instance_id.as_deref().unwrap_or(&launch.token),
                launch.region
            )),
        }
    }
    Ok(report)
}
