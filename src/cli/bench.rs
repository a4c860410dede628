//! `ec2ami bench`: boot an AMI, time the four phases, record them in the history.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde::Serialize;

use super::history::BuildArgs;
use super::{Failure, GlobalArgs, connect, parse_duration, shutdown_signal};
use ec2ami::bench::{self, BenchOptions, BenchReport, LaunchSpec, RunStatus, Scope};
use ec2ami::history::{self, Benchmark, BuildInfo, Source};
use ec2ami::state::now_epoch;

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The AMI to boot (in --region).
    #[arg(required_unless_present = "cleanup", value_parser = ec2ami::validate_input::ami_id)]
    image_id: Option<String>,
    /// Instance type, e.g. c5.xlarge.
    #[arg(long, required_unless_present = "cleanup")]
    instance_type: Option<String>,
    /// Runs in all (ec2-boot-bench's method: 10, the first discarded, medians).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    runs: u32,
    /// Leave the first run out of the statistics; it runs alone, warming the AMI's
    /// snapshot (default: on when --runs is more than 1).
    #[arg(long, overrides_with = "no_discard_first")]
    discard_first: bool,
    /// Count the first run like the others.
    #[arg(long, overrides_with = "discard_first")]
    no_discard_first: bool,
    /// Launch into this subnet (default: the default VPC's default subnet).
    #[arg(long, value_name = "SUBNET_ID")]
    subnet: Option<String>,
    /// Security group (repeatable; default: the VPC's default group). It must let the
    /// probe reach --port.
    #[arg(long = "security-group", value_name = "SG_ID")]
    security_groups: Vec<String>,
    /// User data for the instances (e.g. to turn off first-boot updates).
    #[arg(long, value_name = "FILE")]
    user_data: Option<PathBuf>,
    /// Ask for an IPv6 address and probe it (the subnet needs IPv6).
    #[arg(long, overrides_with = "no_ipv6")]
    ipv6: bool,
    /// Probe the public IPv4 address (the default).
    #[arg(long, overrides_with = "ipv6")]
    no_ipv6: bool,
    /// TCP port to probe.
    #[arg(long, default_value_t = 22)]
    port: u16,
    /// Longest any one phase may take before the run counts as timed out.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    timeout: Duration,
    /// Runs in parallel (after the discarded first run).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    concurrency: u32,
    /// Send the TCP probe to ADDR:PORT instead of the instance (for tests against a
    /// local emulator, whose instance addresses are fake); ADDR alone probes --port
    /// there.
    #[arg(long, value_name = "ADDR[:PORT]", value_parser = parse_connect_to)]
    connect_to: Option<ConnectTo>,
    /// Keep console screenshots of every run at --capture-interval (PNG frames, and a
    /// video when ffmpeg is installed) and its console output, as ec2-boot-bench's
    /// --bootvideo does.
    #[arg(long)]
    capture: bool,
    /// Time between two screenshots with --capture.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration, requires = "capture")]
    capture_interval: Duration,
    /// Where --capture keeps each run (default: a new directory per benchmark in
    /// $XDG_STATE_HOME/ec2ami/bench-captures).
    #[arg(long, value_name = "DIR", requires = "capture")]
    capture_dir: Option<PathBuf>,
    /// Do not record the results in the boot-time history.
    #[arg(long)]
    no_history: bool,
    /// Only terminate instances that earlier benchmarks left running (their process
    /// died), then exit.
    #[arg(long, conflicts_with_all = ["image_id", "instance_type"])]
    cleanup: bool,
    /// What build the AMI is (default: from the AMI's ec2ami:* tags, then its name).
    #[command(flatten)]
    build: BuildArgs,
}

/// Where `--connect-to` sends the probe: an address and port, or an address probed at
/// `--port`.
#[derive(Debug, Clone, Copy)]
enum ConnectTo {
    Socket(SocketAddr),
    Address(std::net::IpAddr),
}

fn parse_connect_to(s: &str) -> Result<ConnectTo, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(ConnectTo::Socket(a));
    }
    let bare = s.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<std::net::IpAddr>()
        .map(ConnectTo::Address)
        .map_err(|_| format!("`{s}` is not ADDR:PORT or ADDR (e.g. 127.0.0.1:2222)"))
}

fn scope(g: &GlobalArgs) -> Scope {
    Scope {
        endpoint: g.endpoint_url.clone().unwrap_or_default(),
        profile: g.profile.clone().unwrap_or_default(),
    }
}

/// The JSON document of a benchmark.
#[derive(Serialize)]
struct BenchOutput<'a> {
    #[serde(flatten)]
    report: &'a BenchReport,
    build: &'a BuildInfo,
    history_id: Option<i64>,
}

pub async fn run(g: &GlobalArgs, a: &BenchArgs) -> Result<(), Failure> {
    let db = g.state_db()?;
    if a.cleanup {
        let clients = connect(g).await?;
        let r = bench::cleanup(&clients, &db, &scope(g), &g.retry()).await?;
        g.print(&r, || cleanup_text(&r));
        if !r.errors.is_empty() {
            return Err(Failure {
                message: format!(
                    "some instances could not be terminated: {}",
                    r.errors.join("; ")
                ),
                interrupted: false,
            });
        }
        return Ok(());
    }
    let (Some(image_id), Some(instance_type)) = (&a.image_id, &a.instance_type) else {
        unreachable!("clap requires them without --cleanup");
    };
    let user_data = match &a.user_data {
        Some(p) => Some(read_user_data(p)?),
        None => None,
    };
    let clients = connect(g).await?;
    let retry = g.retry();
    // Look before launching: the AMI must exist, and its name and tags say what build
    // it is.
    let build = bench::build_of(&clients, image_id, a.build.info(), &retry)
        .await?
        .ok_or_else(|| Failure {
            message: format!("{image_id} not found in {}", clients.region()),
            interrupted: false,
        })?;
    let runs = a.runs as usize;
    let opts = BenchOptions {
        launch: LaunchSpec {
            image_id: image_id.clone(),
            instance_type: instance_type.clone(),
            subnet: a.subnet.clone(),
            security_groups: a.security_groups.clone(),
            user_data,
            ipv6: a.ipv6,
            key_name: None,
            purpose: "bench",
        },
        runs,
        discard_first: if a.discard_first || a.no_discard_first {
            a.discard_first
        } else {
            runs > 1
        },
        concurrency: a.concurrency as usize,
        port: a.port,
        phase_timeout: a.timeout,
        connect_to: a.connect_to.map(|c| match c {
            ConnectTo::Socket(s) => s,
            ConnectTo::Address(ip) => SocketAddr::new(ip, a.port),
        }),
        poll: Default::default(),
        probe: Default::default(),
        retry,
        scope: scope(g),
        capture: a.capture.then(|| bench::CaptureOptions {
            interval: a.capture_interval,
            dir: a.capture_dir.clone().unwrap_or_else(|| {
                let base = g
                    .state
                    .as_ref()
                    .and_then(|s| s.parent())
                    .filter(|d| !d.as_os_str().is_empty())
                    .map(|d| d.to_path_buf())
                    .unwrap_or_else(ec2ami::state::state_dir);
                base.join("bench-captures")
                    .join(format!("{}-{}", now_epoch(), std::process::id()))
            }),
        }),
    };
    let measured_at = now_epoch();
    let report = bench::run(&clients, &db, &opts, shutdown_signal()).await?;
    let history_id = if a.no_history || report.runs.iter().all(|r| r.instance_id.is_none()) {
        None
    } else {
        let b = Benchmark {
            id: 0,
            image_id: image_id.clone(),
            build: build.clone(),
            region: report.region.clone(),
            instance_type: instance_type.clone(),
            firmware: None,
            measured_at,
            source: Source::Bench,
            source_file: None,
            source_hash: None,
            tool_version: format!("ec2ami {}", env!("CARGO_PKG_VERSION")),
            runs: report.runs.clone(),
        };
        Some(history::record(&db, &b)?)
    };
    g.print(
        &BenchOutput {
            report: &report,
            build: &build,
            history_id,
        },
        || bench_text(&report),
    );
    if report.interrupted {
        return Err(Failure {
            message: "interrupted; every instance launched was terminated".into(),
            interrupted: true,
        });
    }
    if !report.not_terminated.is_empty() {
        return Err(Failure {
            message: format!(
                "could not terminate {}: run `ec2ami bench --cleanup` (they are in the journal)",
                report.not_terminated.join(", ")
            ),
            interrupted: false,
        });
    }
    let problems = report.problems();
    if !problems.is_empty() {
        return Err(Failure {
            message: format!(
                "{} of {} runs did not complete: {}",
                problems.len(),
                report.runs.len(),
                problems.join("; ")
            ),
            interrupted: false,
        });
    }
    Ok(())
}

/// One run: ec2-boot-bench's four lines. Several: the min / median / max table.
fn bench_text(r: &BenchReport) -> String {
    let mut text = bench_figures(r);
    for c in &r.captures {
        text.push_str(&format!(
            "\nrun {}: {} screenshot(s){}{} in {}",
            c.run,
            c.frames,
            if c.console_output {
                ", console output"
            } else {
                ""
            },
            if c.video.is_some() { ", boot.mp4" } else { "" },
            c.dir.display()
        ));
    }
    text
}

fn bench_figures(r: &BenchReport) -> String {
    if let [only] = r.runs.as_slice() {
        return bench::ec2_boot_bench_lines(&only.phases, &only.status);
    }
    let discarded = r.runs.iter().filter(|x| x.discarded).count();
    let measured = r.measured().count();
    let timed_out = r
        .runs
        .iter()
        .filter(|x| matches!(x.status, RunStatus::TimedOut(_)))
        .count();
    let failed = r
        .runs
        .iter()
        .filter(|x| matches!(x.status, RunStatus::Failed(_)))
        .count();
    format!(
        "{}\n{measured} runs measured ({discarded} discarded, {timed_out} timed out, {failed} failed): \
         {} on {} in {}",
        bench::summary_table(&r.summary),
        r.image_id,
        r.instance_type,
        r.region
    )
}

fn cleanup_text(r: &bench::CleanupReport) -> String {
    let mut lines: Vec<String> = r
        .terminated
        .iter()
        .map(|id| format!("terminated {id}"))
        .collect();
    if r.terminated.is_empty() {
        lines.push("nothing to terminate".into());
    }
    if r.skipped_running > 0 {
        lines.push(format!(
            "{} launch(es) of benchmarks still running left alone",
            r.skipped_running
        ));
    }
    if r.kept > 0 {
        lines.push(format!(
            "{} recent launch(es) with no instance visible yet kept for a later clean-up",
            r.kept
        ));
    }
    if r.other_scopes > 0 {
        lines.push(format!(
            "{} launch(es) made through another endpoint or profile left alone",
            r.other_scopes
        ));
    }
    lines.join("\n")
}

/// Read `--user-data` and check it as the image will read it (`ec2ami userdata
/// --check`): over EC2's limit is refused before anything is launched; other problems
/// are warned about (the AMI may not be one of FreeBSD's).
fn read_user_data(p: &std::path::Path) -> Result<Vec<u8>, Failure> {
    let data = std::fs::read(p).map_err(|e| Failure {
        message: format!("user data {}: {e}", p.display()),
        interrupted: false,
    })?;
    if data.len() > ec2ami::userdata::LIMIT_BYTES {
        return Err(Failure {
            message: format!(
                "user data {}: {} bytes: over EC2's limit of {} bytes",
                p.display(),
                data.len(),
                ec2ami::userdata::LIMIT_BYTES
            ),
            interrupted: false,
        });
    }
    let report = ec2ami::userdata::check(&data, None);
    for e in &report.errors {
        tracing::warn!(
            "user data {}: {e} (ec2ami userdata --check explains)",
            p.display()
        );
    }
    Ok(data)
}
