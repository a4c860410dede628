//! `ec2ami boot IMAGE`: boot a disk image locally in QEMU (BIOS, UEFI or both) with a
//! local metadata service, time it from the console, run smoke checks over SSH.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde::Serialize;

use super::history::BuildArgs;
use super::{Failure, GlobalArgs, parse_duration, shutdown_signal};
use ec2ami::ami::{Arch, Imds};
use ec2ami::boot::{
    self, AccelChoice, BootOptions, BootReport, FirmwareChoice, RunReport, parse_marker,
};
use ec2ami::history::BuildInfo;
use ec2ami::state::now_epoch;

#[derive(Debug, Args)]
pub struct BootArgs {
    /// The disk image: raw, qcow2, VMDK, VHD or VHDX (never written).
    image: PathBuf,
    /// Firmware: bios (SeaBIOS), uefi (OVMF; AAVMF on arm64), both, or auto (what the
    /// partition table shows: both for an image with BIOS boot code and an ESP).
    #[arg(long, default_value = "auto")]
    firmware: FirmwareChoice,
    /// Accelerator: kvm, tcg, or auto (KVM only where it really works).
    #[arg(long, default_value = "auto")]
    accel: AccelChoice,
    /// Boots per firmware (the figures are medians).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    runs: u32,
    /// Longest one boot may take, from QEMU's start to the last check.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    timeout: Duration,
    /// A timeline marker: the first console line matching REGEX (repeatable; a default
    /// name, loader, kernel or userland, replaces that marker's pattern).
    #[arg(long = "marker", value_name = "NAME=REGEX", value_parser = parse_marker)]
    markers: Vec<(String, String)>,
    /// A smoke check: a command run over SSH once sshd answers (repeatable).
    #[arg(long = "check", value_name = "COMMAND")]
    checks: Vec<String>,
    /// Smoke checks from a file: one command per line, or a script (starting with #!)
    /// copied to the guest and run.
    #[arg(long = "checks", value_name = "FILE")]
    checks_file: Option<PathBuf>,
    /// The user the checks log in as.
    #[arg(long, default_value = "ec2-user")]
    ssh_user: String,
    /// User data the metadata service serves (made by `ec2ami userdata`; at most 16 KiB,
    /// as on EC2; checked as `ec2ami userdata --check` does, and refused when it finds
    /// an error).
    #[arg(long, value_name = "FILE")]
    user_data: Option<PathBuf>,
    /// Keep every console log in DIR (failed boots' logs are always kept, by default in
    /// $XDG_STATE_HOME/ec2ami/boot-consoles).
    #[arg(long, value_name = "DIR")]
    keep_console: Option<PathBuf>,
    /// Guest memory in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(128..=65536))]
    memory: u32,
    /// Guest CPUs.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    cpus: u32,
    /// The metadata service's IMDS support: v2.0 (tokens required, as ec2ami registers
    /// AMIs) or optional.
    #[arg(long, default_value = "v2.0")]
    imds: Imds,
    /// Do not record the boots in the boot-time history.
    #[arg(long)]
    no_history: bool,
    /// What build the image is (default: from the file name); --arch also chooses the
    /// emulator (amd64/x86_64 or arm64/aarch64; default x86_64).
    #[command(flatten)]
    build: BuildArgs,
}

/// `amd64`, `x86_64`, `arm64`, `aarch64`.
pub fn parse_arch(s: &str) -> Result<Arch, String> {
    match s.to_ascii_lowercase().as_str() {
        "x86_64" | "amd64" => Ok(Arch::X86_64),
        "arm64" | "aarch64" => Ok(Arch::Arm64),
        _ => Err(format!("unknown architecture `{s}` (amd64 or arm64)")),
    }
}

/// The command QEMU runs per metadata connection: this binary's hidden relay.
pub fn relay_command() -> Result<Vec<OsString>, Failure> {
    let exe = std::env::current_exe().map_err(|e| Failure {
        message: format!("cannot find the ec2ami binary for the metadata relay: {e}"),
        interrupted: false,
    })?;
    Ok(vec![exe.into(), "imds".into(), "relay".into()])
}

fn fail(message: String) -> Failure {
    Failure {
        message,
        interrupted: false,
    }
}

/// The JSON document of a boot check.
#[derive(Serialize)]
struct BootOutput<'a> {
    #[serde(flatten)]
    report: &'a BootReport,
    passed: bool,
    build: &'a BuildInfo,
    history_ids: Vec<i64>,
}

pub async fn run(g: &GlobalArgs, a: &BootArgs) -> Result<(), Failure> {
    let build_in = a.build.info();
    let arch = match &build_in.arch {
        Some(s) => parse_arch(s).map_err(fail)?,
        None => Arch::X86_64,
    };
    let checks = super::test::checks_of(&a.checks, a.checks_file.as_ref())?;
    let user_data = match &a.user_data {
        Some(p) => Some(super::test::read_checked_user_data(p)?),
        None => None,
    };
    // The state database opens before the first boot: a broken one is said at once.
    let db = if a.no_history {
        None
    } else {
        Some(g.state_db()?)
    };
    let mut opts = BootOptions::new(&a.image, relay_command()?);
    opts.arch = arch;
    opts.firmware = a.firmware;
    opts.accel = a.accel;
    opts.runs = a.runs as usize;
    opts.timeout = a.timeout;
    opts.markers = a.markers.clone();
    opts.checks = checks;
    opts.ssh_user = a.ssh_user.clone();
    opts.user_data = user_data;
    opts.keep_console = a.keep_console.clone();
    opts.memory_mib = a.memory;
    opts.cpus = a.cpus;
    opts.imds_v1 = a.imds == Imds::Optional;
    if let Some(r) = &g.region {
        opts.region = r.clone();
    }
    if let Some(state) = &g.state
        && let Some(dir) = state.parent().filter(|d| !d.as_os_str().is_empty())
    {
        opts.failure_dir = dir.join("boot-consoles");
    }
    let file_name = a
        .image
        .file_name()
        .map(|n| n.to_string_lossy().into_owned());
    let build = build_in
        .or(BuildInfo::from_image(file_name.as_deref(), &[]))
        .normalized();
    let measured_at = now_epoch();
    let report = boot::run(&opts, shutdown_signal()).await?;
    let history_ids = match &db {
        Some(db) if !report.runs.is_empty() => {
            boot::record_history(db, &report, &build, measured_at)?
        }
        _ => Vec::new(),
    };
    g.print(
        &BootOutput {
            report: &report,
            passed: report.passed(),
            build: &build,
            history_ids,
        },
        || boot_text(&report),
    );
    if report.interrupted {
        return Err(Failure {
            message: "interrupted; QEMU was stopped and its files removed".into(),
            interrupted: true,
        });
    }
    if !report.passed() {
        let mut msg = format!(
            "{} of {} boot(s) did not pass:",
            report.runs.iter().filter(|r| !r.passed()).count(),
            report.runs.len()
        );
        for r in report.runs.iter().filter(|r| !r.passed()) {
            msg.push_str(&format!(
                "\n{} run {}: {}",
                r.firmware,
                r.run,
                r.error.as_deref().unwrap_or("failed")
            ));
            if let Some(p) = &r.console_log {
                msg.push_str(&format!("\n  console log: {}", p.display()));
            }
            if !r.last_lines.is_empty() {
                msg.push_str("\n  last console lines:");
                for l in &r.last_lines {
                    msg.push_str(&format!("\n    {l}"));
                }
            }
        }
        return Err(fail(msg));
    }
    Ok(())
}

/// The names of the timeline marks, as shown.
fn label(name: &str) -> &str {
    match name {
        "qemu_started" => "QEMU started",
        "firmware" => "firmware output",
        "loader" => "boot loader",
        "kernel" => "kernel",
        "userland" => "userland",
        "ssh" => "SSH banner",
        other => other,
    }
}

fn run_text(r: &RunReport) -> String {
    let mut out = format!(
        "{} boot {} ({}): {}",
        r.firmware,
        r.run,
        r.accelerator,
        r.status.replace('_', " ")
    );
    if let Some(e) = &r.error {
        out.push_str(&format!(": {e}"));
    }
    let width = r
        .timeline
        .iter()
        .map(|m| label(&m.name).len())
        .max()
        .unwrap_or(0);
    for m in &r.timeline {
        let line = if m.line.is_empty() {
            String::new()
        } else {
            let short: String = m.line.chars().take(70).collect();
            format!("  {short}")
        };
        out.push_str(&format!(
            "\n  {:<width$}  {:8.3} s{line}",
            label(&m.name),
            m.seconds
        ));
    }
    if let Some(t) = &r.host_keys {
        out.push_str(&format!("\n  {t}"));
    }
    for c in &r.checks {
        let how = if c.passed {
            format!("passed (exit 0, {:.1} s)", c.seconds)
        } else {
            c.error
                .clone()
                .unwrap_or_else(|| format!("failed (exit {})", c.exit_status.unwrap_or(-1)))
        };
        out.push_str(&format!("\n  check `{}`: {how}", c.check));
        for l in c.stdout.lines().chain(c.stderr.lines()).take(40) {
            out.push_str(&format!("\n    | {l}"));
        }
    }
    out
}

fn boot_text(r: &BootReport) -> String {
    let mut parts: Vec<String> = r.runs.iter().map(run_text).collect();
    if r.runs.len() > r.firmwares.len() {
        for s in &r.summary {
            let mut rows = vec![[
                format!("{} ({} of {} passed)", s.firmware, s.passed, s.runs),
                "min s".to_string(),
                "median s".to_string(),
                "max s".to_string(),
            ]];
            for m in &s.marks {
                rows.push([
                    label(&m.name).to_string(),
                    format!("{:.3}", m.summary.min),
                    format!("{:.3}", m.summary.median),
                    format!("{:.3}", m.summary.max),
                ]);
            }
            let w = |i: usize| rows.iter().map(|r| r[i].len()).max().unwrap_or(0);
            let (w0, w1, w2, w3) = (w(0), w(1), w(2), w(3));
            parts.push(
                rows.iter()
                    .map(|r| format!("{:<w0$}  {:>w1$}  {:>w2$}  {:>w3$}", r[0], r[1], r[2], r[3]))
                    .collect::<Vec<_>>()
                    .join("\n"),
            );
        }
    }
    let verdicts: Vec<String> = r
        .summary
        .iter()
        .map(|s| {
            let v = if s.runs > 0 && s.passed == s.runs {
                "passed"
            } else if s.runs == 0 {
                "not booted"
            } else {
                "FAILED"
            };
            format!("{} {v}", s.firmware)
        })
        .collect();
    parts.push(format!(
        "{}: {} ({})",
        r.image.display(),
        verdicts.join(", "),
        r.accelerator.reason
    ));
    parts.join("\n")
}
