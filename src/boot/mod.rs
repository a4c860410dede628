//! Local boot checks: boot a disk image in QEMU by BIOS (SeaBIOS) and/or UEFI (OVMF,
//! AAVMF on arm64) with a local instance metadata service, time its boot from the
//! serial console, run smoke checks over SSH, record the runs in the boot-time history
//! — before anything is uploaded (`ec2ami boot`, and `publish`'s pre-flight).
//!
//! Entry point: [`run`] with [`BootOptions`]; [`record_history`] files the runs.
//! [`console`] (the timeline from a console) and [`ssh`] (smoke checks over SSH) know
//! nothing of QEMU, for tests on EC2 to share. The image is never written (QEMU's
//! snapshot mode); every boot has its own 0700 temporary directory, removed after it;
//! QEMU runs in its own process group, killed on success, failure, timeout, Ctrl-C and
//! SIGTERM (and by the kernel if ec2ami itself is killed).

pub(crate) mod accel;
pub(crate) mod console;
pub(crate) mod firmware;
pub(crate) mod preflight;
pub(crate) mod qemu;
mod run;
pub(crate) mod ssh;

use std::ffi::OsString;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::time::Duration;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::ami::Arch;
use crate::bench::{Marks, Phase, Phases, RunResult, RunStatus, Summary};
use crate::history::{self, Benchmark, BuildInfo, Source};
use crate::image::{DiskImage, Format, ImageError};
use crate::state::{StateDb, StateError};
pub use accel::{Accel, AccelChoice, AccelDecision};
use console::Markers;
pub use console::{Mark, parse_marker};
use firmware::{BootPaths, UefiFiles};
pub use firmware::{Firmware, FirmwareChoice};
pub use preflight::PreflightOptions;
pub use qemu::installed as qemu_installed;
pub use run::{Outcome, RunReport};
pub use ssh::{Check, checks_from_file};

/// EC2's limit for user data.
pub const MAX_USER_DATA: usize = 16 * 1024;

/// What to boot and how.
#[derive(Debug, Clone)]
pub struct BootOptions {
    /// The disk image (raw, qcow2, VMDK, VHD, VHDX).
    pub image: PathBuf,
    /// Its architecture.
    pub arch: Arch,
    /// Which firmwares.
    pub firmware: FirmwareChoice,
    /// Which accelerator.
    pub accel: AccelChoice,
    /// Boots per firmware.
    pub runs: usize,
    /// Longest one boot may take, from QEMU's start to the last check.
    pub timeout: Duration,
    /// Extra timeline markers (`NAME`, `REGEX`).
    pub markers: Vec<(String, String)>,
    /// Smoke checks, run over SSH once the banner is there.
    pub checks: Vec<Check>,
    /// User the checks log in as.
    pub ssh_user: String,
    /// User data the metadata service serves.
    pub user_data: Option<Vec<u8>>,
    /// Keep every console log here (failed boots' logs are always kept, in
    /// `failure_dir` when this is not set).
    pub keep_console: Option<PathBuf>,
    /// Where failed boots' console logs go without `keep_console`.
    pub failure_dir: PathBuf,
    /// Guest memory, MiB.
    pub memory_mib: u32,
    /// Virtual CPUs.
    pub cpus: u32,
    /// The region the metadata service says the instance is in.
    pub region: String,
    /// Answer metadata requests without a token (an AMI with IMDS `optional`).
    pub imds_v1: bool,
    /// The command QEMU runs per metadata connection, to which the metadata socket's
    /// path is appended (the binary passes `ec2ami imds relay`).
    pub relay: Vec<OsString>,
    /// Stop at the first boot that does not pass (a pre-flight check).
    pub stop_at_first_failure: bool,
    /// Stand in for an EC2 instance (the tests of `ec2ami test`): serve this public key
    /// instead of the boot's ephemeral one, forward this port, write the serial console
    /// live to a file, and keep the guest running after the banner until `shutdown`.
    pub stand_in: Option<StandIn>,
}

/// How a local guest stands in for an EC2 instance (see [`BootOptions::stand_in`]).
#[derive(Debug, Clone)]
pub struct StandIn {
    /// The OpenSSH public key the metadata service serves (the instance's key pair).
    pub public_key: String,
    /// The 127.0.0.1 port forwarded to the guest's port 22.
    pub ssh_port: u16,
    /// The serial console's text, written as it arrives (what GetConsoleOutput shows).
    pub console_file: PathBuf,
}

impl BootOptions {
    /// Defaults: the image's firmwares, the best accelerator, one run, 5 minutes, 1 GiB
    /// of memory, one CPU, `ec2-user`, us-east-1.
    pub fn new(image: &Path, relay: Vec<OsString>) -> BootOptions {
        BootOptions {
            image: image.to_owned(),
            arch: Arch::X86_64,
            firmware: FirmwareChoice::Auto,
            accel: AccelChoice::Auto,
            runs: 1,
            timeout: Duration::from_secs(300),
            markers: Vec::new(),
            checks: Vec::new(),
            ssh_user: "ec2-user".into(),
            user_data: None,
            keep_console: None,
            failure_dir: crate::state::state_dir().join("boot-consoles"),
            memory_mib: 1024,
            cpus: 1,
            region: "us-east-1".into(),
            imds_v1: false,
            relay,
            stop_at_first_failure: false,
            stand_in: None,
        }
    }
}

/// Why a boot check could not be made (a boot that fails is a report, not an error).
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The options or the image make no sense.
    #[error("{0}")]
    Invalid(String),
    /// A tool or firmware is not installed.
    #[error("{0}")]
    Missing(String),
    /// The image cannot be read.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// A local file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The SSH tools failed.
    #[error(transparent)]
    Ssh(#[from] ssh::SshError),
    /// QEMU could not start.
    #[error("{0}")]
    Qemu(String),
}

/// `90s`, `5m`, `1h`.
pub(crate) fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 && s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s >= 60 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        let n = format!("{:.3}", d.as_secs_f64());
        format!("{}s", n.trim_end_matches('0').trim_end_matches('.'))
    }
}

/// Everything worked out before the first boot.
#[derive(Debug, Clone)]
pub(crate) struct Prepared {
    image: PathBuf,
    stem: String,
    format: Format,
    paths: BootPaths,
    qemu: PathBuf,
    uefi: Option<UefiFiles>,
    markers: Markers,
    ami_id: String,
    firmwares: Vec<Firmware>,
    warnings: Vec<String>,
    accel: AccelDecision,
}

/// Check the options, the image and the tools; nothing is started.
fn prepare(opts: &BootOptions) -> Result<Prepared, BootError> {
    if opts.runs == 0 {
        return Err(BootError::Invalid("--runs must be at least 1".into()));
    }
    if opts.timeout.is_zero() {
        return Err(BootError::Invalid("--timeout must be more than 0".into()));
    }
    if opts.relay.is_empty() {
        return Err(BootError::Invalid("no metadata relay command".into()));
    }
    if let Some(u) = &opts.user_data
        && u.len() > MAX_USER_DATA
    {
        return Err(BootError::Invalid(format!(
            "user data is {} bytes, more than EC2's limit of {MAX_USER_DATA}",
            u.len()
        )));
    }
    if opts.stand_in.is_some() && !opts.checks.is_empty() {
        return Err(BootError::Invalid(
            "a stand-in guest gets another key than the boot's: it runs no checks".into(),
        ));
    }
    let markers = Markers::new(&opts.markers).map_err(BootError::Invalid)?;
    let (_, format) = DiskImage::check(&opts.image)?;
    let image = std::path::absolute(&opts.image).map_err(|source| BootError::Io {
        what: format!("resolving {}", opts.image.display()),
        source,
    })?;
    let scratch = tempfile::Builder::new()
        .prefix("ec2ami-boot-head-")
        .tempdir()
        .map_err(|source| BootError::Io {
            what: "creating a temporary directory".into(),
            source,
        })?;
    let head = firmware::read_head(&image, format, firmware::HEAD_BYTES, scratch.path()).map_err(
        |source| BootError::Io {
            what: format!("reading the partition table of {}", image.display()),
            source,
        },
    )?;
    let paths = firmware::inspect(&head);
    let (firmwares, warnings) = firmware::choose(opts.firmware, &paths, opts.arch)
        .map_err(|e| BootError::Invalid(format!("{}: {e}", opts.image.display())))?;
    let qemu = qemu::binary(opts.arch).map_err(BootError::Missing)?;
    let uefi = if firmwares.contains(&Firmware::Uefi) {
        Some(firmware::uefi_files(opts.arch).map_err(BootError::Missing)?)
    } else {
        None
    };
    if firmwares.contains(&Firmware::Bios) {
        firmware::check_bios().map_err(BootError::Missing)?;
    }
    let accel = accel::decide(opts.accel, opts.arch, &accel::probe_host());
    let name = image
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    let stem: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let digest = Sha256::digest(image.as_os_str().as_encoded_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    Ok(Prepared {
        image,
        stem,
        format,
        paths,
        qemu,
        uefi,
        markers,
        ami_id: format!("ami-{}", &hex[..17]),
        firmwares,
        warnings,
        accel,
    })
}

/// Figures of one mark over the passed runs of one firmware.
#[derive(Debug, Clone, Serialize)]
pub struct MarkSummary {
    /// The mark.
    pub name: String,
    /// Its figures (seconds from QEMU's start).
    #[serde(flatten)]
    pub summary: Summary,
}

/// One firmware's runs.
#[derive(Debug, Clone, Serialize)]
pub struct FirmwareSummary {
    /// The firmware.
    pub firmware: Firmware,
    /// Runs made.
    pub runs: usize,
    /// Runs passed.
    pub passed: usize,
    /// Per mark, over the passed runs, in timeline order.
    pub marks: Vec<MarkSummary>,
}

/// What a boot check found.
#[derive(Debug, Clone, Serialize)]
pub struct BootReport {
    /// The image.
    pub image: PathBuf,
    /// Its format.
    pub format: String,
    /// Its architecture.
    pub arch: Arch,
    /// What its partition table says.
    pub boot_paths: BootPaths,
    /// The firmwares booted.
    pub firmwares: Vec<Firmware>,
    /// The accelerator chosen and why.
    pub accelerator: AccelDecision,
    /// Warnings (a firmware asked for that the image does not support...).
    pub warnings: Vec<String>,
    /// Every boot, in order.
    pub runs: Vec<RunReport>,
    /// Per firmware.
    pub summary: Vec<FirmwareSummary>,
    /// Stopped by Ctrl-C or SIGTERM.
    pub interrupted: bool,
}

impl BootReport {
    /// Every boot passed (and there was one).
    pub fn passed(&self) -> bool {
        !self.interrupted && !self.runs.is_empty() && self.runs.iter().all(RunReport::passed)
    }

    /// The boots that did not pass, each with why and its console log.
    pub fn failures(&self) -> Vec<String> {
        self.runs
            .iter()
            .filter(|r| !r.passed() && r.outcome != Outcome::Interrupted)
            .map(|r| {
                let mut s = format!(
                    "{} run {}: {}",
                    r.firmware,
                    r.run,
                    r.error.as_deref().unwrap_or("failed")
                );
                if let Some(p) = &r.console_log {
                    s.push_str(&format!(" (console log {})", p.display()));
                }
                s
            })
            .collect()
    }
}

fn summarise(runs: &[RunReport], firmwares: &[Firmware]) -> Vec<FirmwareSummary> {
    firmwares
        .iter()
        .map(|fw| {
            let mine: Vec<&RunReport> = runs.iter().filter(|r| r.firmware == *fw).collect();
            let passed: Vec<&&RunReport> = mine.iter().filter(|r| r.passed()).collect();
            let mut names: Vec<String> = Vec::new();
            for r in &passed {
                for m in &r.timeline {
                    if !names.contains(&m.name) {
                        names.push(m.name.clone());
                    }
                }
            }
            let mut marks: Vec<MarkSummary> = names
                .into_iter()
                .filter_map(|n| {
                    Summary::of(passed.iter().filter_map(|r| r.at(&n)))
                        .map(|summary| MarkSummary { name: n, summary })
                })
                .collect();
            marks.sort_by(|a, b| a.summary.median.total_cmp(&b.summary.median));
            FirmwareSummary {
                firmware: *fw,
                runs: mine.len(),
                passed: passed.len(),
                marks,
            }
        })
        .collect()
}

/// Boot `opts.image` in each firmware, `opts.runs` times (the firmwares interleaved,
/// so both see the same machine load). When `shutdown` resolves the boot in progress
/// is stopped and cleaned up and the report says `interrupted`.
pub async fn run(
    opts: &BootOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<BootReport, BootError> {
    run::remove_stale_dirs();
    let prepared = prepare(opts)?;
    for w in &prepared.warnings {
        tracing::warn!("{w}");
    }
    tracing::info!(
        "booting {} ({}) by {}; {}",
        opts.image.display(),
        prepared.format,
        prepared
            .firmwares
            .iter()
            .map(|f| f.to_string())
            .collect::<Vec<_>>()
            .join(" and "),
        prepared.accel.reason
    );
    let mut shutdown = pin!(shutdown);
    let mut accel = prepared.accel.accel;
    let mut runs = Vec::new();
    let mut interrupted = false;
    'all: for i in 1..=opts.runs {
        for &fw in &prepared.firmwares {
            tracing::info!("{fw} boot {i}/{} ({accel})", opts.runs);
            let mut r = run::boot_once(&prepared, opts, fw, accel, i, &mut shutdown).await?;
            if matches!(r.outcome, Outcome::AccelFailed(_))
                && opts.accel == AccelChoice::Auto
                && accel == accel::Accel::Kvm
            {
                tracing::warn!(
                    "{}; falling back to TCG for this and the remaining boots",
                    r.error.as_deref().unwrap_or("KVM failed")
                );
                accel = accel::Accel::Tcg;
                r = run::boot_once(&prepared, opts, fw, accel, i, &mut shutdown).await?;
            }
            log_run(&r);
            let stop =
                r.outcome == Outcome::Interrupted || (!r.passed() && opts.stop_at_first_failure);
            interrupted = r.outcome == Outcome::Interrupted;
            runs.push(r);
            if stop {
                break 'all;
            }
        }
    }
    Ok(BootReport {
        image: opts.image.clone(),
        format: prepared.format.to_string(),
        arch: opts.arch,
        boot_paths: prepared.paths,
        summary: summarise(&runs, &prepared.firmwares),
        firmwares: prepared.firmwares,
        accelerator: AccelDecision {
            accel,
            reason: prepared.accel.reason,
        },
        warnings: prepared.warnings,
        runs,
        interrupted,
    })
}

fn log_run(r: &RunReport) {
    let at = |n: &str| {
        r.at(n)
            .map(|s| format!("{s:.2}"))
            .unwrap_or_else(|| "-".into())
    };
    match &r.outcome {
        Outcome::Passed => tracing::info!(
            "{} run {}: passed; kernel {} s, userland {} s, SSH banner {} s",
            r.firmware,
            r.run,
            at("kernel"),
            at("userland"),
            at("ssh")
        ),
        Outcome::Interrupted => tracing::warn!("{} run {}: interrupted", r.firmware, r.run),
        o => tracing::warn!(
            "{} run {}: {}",
            r.firmware,
            r.run,
            o.message().unwrap_or_default()
        ),
    }
}

/// The four phases the history keeps for EC2 boots, from a local timeline: QEMU's
/// start stands for RunInstances, its first console output for `running`, the kernel's
/// first line for "port closed" (the network stack comes up with the kernel) and the
/// SSH banner for "port open". A marker not seen is taken from the next one.
pub fn phases(r: &RunReport) -> Phases {
    let launched = r.at("qemu_started");
    let running = r.at("firmware").or(r.at("loader")).or(r.at("kernel"));
    let closed = r.at("kernel").or(r.at("userland")).or(r.at("ssh"));
    let open = r.at("ssh");
    Phases::from_marks(&Marks {
        launched,
        running,
        closed,
        open,
    })
}

fn run_result(r: &RunReport) -> RunResult {
    let phases = phases(r);
    let status = match &r.outcome {
        Outcome::Passed => RunStatus::Ok,
        Outcome::TimedOut(_) => RunStatus::TimedOut(
            Phase::ALL
                .into_iter()
                .find(|p| phases.get(*p).is_none())
                .unwrap_or(Phase::ClosedToOpen),
        ),
        Outcome::Interrupted => RunStatus::Interrupted,
        Outcome::Failed(m) | Outcome::AccelFailed(m) => RunStatus::Failed(m.clone()),
    };
    RunResult {
        run: r.run,
        instance_id: Some(r.instance_id.clone()),
        discarded: false,
        status,
        phases,
        probes: 0,
    }
}

/// File a boot check's runs in the boot-time history: one benchmark per firmware and
/// accelerator (instance type `qemu-tcg` or `qemu-kvm`, region `local`, the firmware as
/// its own dimension), each run's phases and its whole timeline. Interrupted runs are
/// left out. Returns the benchmark ids.
pub fn record_history(
    db: &StateDb,
    report: &BootReport,
    build: &BuildInfo,
    measured_at: i64,
) -> Result<Vec<i64>, StateError> {
    let name = report
        .image
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut ids = Vec::new();
    let mut groups: Vec<(Firmware, accel::Accel)> = Vec::new();
    for r in &report.runs {
        if r.outcome != Outcome::Interrupted && !groups.contains(&(r.firmware, r.accelerator)) {
            groups.push((r.firmware, r.accelerator));
        }
    }
    for (fw, acc) in groups {
        let runs: Vec<&RunReport> = report
            .runs
            .iter()
            .filter(|r| {
                r.firmware == fw && r.accelerator == acc && r.outcome != Outcome::Interrupted
            })
            .collect();
        let b = Benchmark {
            id: 0,
            image_id: format!("local:{name}"),
            build: build.clone(),
            region: "local".into(),
            instance_type: acc.instance_type().into(),
            firmware: Some(fw.key().into()),
            measured_at,
            source: Source::Boot,
            source_file: Some(report.image.display().to_string()),
            source_hash: None,
            tool_version: format!("ec2ami {}", env!("CARGO_PKG_VERSION")),
            runs: runs.iter().map(|r| run_result(r)).collect(),
        };
        let id = history::record(db, &b)?;
        for r in &runs {
            let marks: Vec<(String, f64)> = r
                .timeline
                .iter()
                .map(|m| (m.name.clone(), m.seconds))
                .collect();
            history::record_marks(db, id, r.run, &marks)?;
        }
        ids.push(id);
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use console::Mark;

    fn report(fw: Firmware, run: usize, marks: &[(&str, f64)], outcome: Outcome) -> RunReport {
        RunReport {
            run,
            firmware: fw,
            accelerator: accel::Accel::Tcg,
            status: outcome.key(),
            error: outcome.message().map(str::to_string),
            outcome,
            timeline: marks
                .iter()
                .map(|(n, s)| Mark {
                    name: n.to_string(),
                    seconds: *s,
                    line: String::new(),
                })
                .collect(),
            banner: None,
            host_keys: None,
            checks: vec![],
            instance_id: "i-0123456789abcdef0".into(),
            metadata_requests: vec![],
            console_log: None,
            last_lines: vec![],
            seconds: 30.0,
        }
    }

    const FULL: &[(&str, f64)] = &[
        ("qemu_started", 0.01),
        ("firmware", 0.5),
        ("loader", 2.0),
        ("kernel", 4.0),
        ("userland", 9.0),
        ("ssh", 25.0),
    ];

    #[test]
    fn local_timelines_map_to_the_four_phases() {
        let p = phases(&report(Firmware::Uefi, 1, FULL, Outcome::Passed));
        let close = |a: Option<f64>, b: f64| (a.unwrap() - b).abs() < 1e-9;
        assert!(close(p.get(Phase::RunInstances), 0.01));
        assert!(close(p.get(Phase::PendingToRunning), 0.49));
        assert!(close(p.get(Phase::RunningToClosed), 3.5));
        assert!(close(p.get(Phase::ClosedToOpen), 21.0));
        assert!(close(p.total(), 25.0));
        // Without a firmware line (SeaBIOS on serial only) the loader stands in.
        let no_fw = &[
            ("qemu_started", 0.01),
            ("loader", 1.0),
            ("kernel", 3.0),
            ("ssh", 20.0),
        ];
        let p = phases(&report(Firmware::Bios, 1, no_fw, Outcome::Passed));
        assert!(close(p.get(Phase::PendingToRunning), 0.99));
        let r = run_result(&report(
            Firmware::Bios,
            1,
            &FULL[..5],
            Outcome::TimedOut("no SSH banner".into()),
        ));
        assert_eq!(r.status, RunStatus::TimedOut(Phase::ClosedToOpen));
    }

    #[test]
    fn summaries_per_firmware_over_passed_runs() {
        let mut slow = FULL.to_vec();
        slow[5].1 = 31.0;
        let runs = vec![
            report(Firmware::Bios, 1, FULL, Outcome::Passed),
            report(Firmware::Uefi, 1, FULL, Outcome::Failed("x".into())),
            report(Firmware::Bios, 2, &slow, Outcome::Passed),
        ];
        let s = summarise(&runs, &[Firmware::Bios, Firmware::Uefi]);
        assert_eq!((s[0].runs, s[0].passed), (2, 2));
        let ssh = s[0].marks.iter().find(|m| m.name == "ssh").unwrap();
        assert_eq!(ssh.summary.median, 28.0);
        assert_eq!(s[0].marks[0].name, "qemu_started");
        assert_eq!((s[1].runs, s[1].passed), (1, 0));
        assert!(s[1].marks.is_empty());
    }

    #[test]
    fn history_rows_per_firmware() {
        let db = StateDb::in_memory().unwrap();
        let r = BootReport {
            image: "/x/polyglot.raw".into(),
            format: "raw".into(),
            arch: Arch::X86_64,
            boot_paths: BootPaths {
                table: firmware::PartitionTable::Gpt,
                bios: true,
                esp: true,
            },
            firmwares: vec![Firmware::Bios, Firmware::Uefi],
            accelerator: AccelDecision {
                accel: accel::Accel::Tcg,
                reason: "test".into(),
            },
            warnings: vec![],
            runs: vec![
                report(Firmware::Bios, 1, FULL, Outcome::Passed),
                report(Firmware::Uefi, 1, FULL, Outcome::Passed),
                report(Firmware::Uefi, 2, FULL, Outcome::Interrupted),
            ],
            summary: vec![],
            interrupted: true,
        };
        let ids = record_history(&db, &r, &BuildInfo::default(), 1_700_000_000).unwrap();
        assert_eq!(ids.len(), 2);
        let all = history::load_all(&db).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].instance_type, "qemu-tcg");
        assert_eq!(all[0].firmware.as_deref(), Some("bios"));
        assert_eq!(all[1].firmware.as_deref(), Some("uefi"));
        assert_eq!(all[1].runs.len(), 1, "the interrupted run is not filed");
        assert_eq!(all[0].region, "local");
        assert_eq!(all[0].source, Source::Boot);
        let marks = history::load_marks(&db, ids[0]).unwrap();
        assert_eq!(marks.len(), 6);
        assert_eq!(marks[5], (1, "ssh".to_string(), 25.0));
    }

    #[test]
    fn durations_read_as_written() {
        assert_eq!(human(Duration::from_secs(300)), "5m");
        assert_eq!(human(Duration::from_secs(90)), "90s");
        assert_eq!(human(Duration::from_millis(1500)), "1.5s");
        assert_eq!(human(Duration::from_secs(7200)), "2h");
    }
}
