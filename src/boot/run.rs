//! One local boot: a private temporary directory (the ephemeral key, the console and
//! metadata sockets, the UEFI variable store, QEMU's overlay), the metadata service,
//! QEMU in its own process group, the console read as it arrives, the SSH banner
//! probe, the smoke checks; and whatever happens, QEMU's process group killed and the
//! directory removed, the console log kept where asked (always on failure).

use std::future::Future;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::UnixListener;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::accel::{Accel, is_accel_failure};
use super::console::{self, Line, LineSplitter, Mark, Stream, Tracker};
use super::firmware::{Firmware, UefiFiles};
use super::qemu::{self, QemuSpec};
use super::ssh::{self, CheckResult, HostKeyTrust, SshTarget};
use super::{BootError, BootOptions, Prepared};
use crate::ami::Arch;
use crate::imds::{Imds, ImdsRequest, ImdsServer, InstanceMetadata};

/// How long QEMU may take to connect to the console socket.
const QEMU_START: Duration = Duration::from_secs(30);
/// How often the SSH banner is probed.
const BANNER_INTERVAL: Duration = Duration::from_millis(100);
/// After the banner, how long to wait for host keys the console has not printed yet.
const HOST_KEY_WAIT: Duration = Duration::from_secs(5);

/// How a boot ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The SSH banner arrived and every check passed.
    Passed,
    /// The guest failed (the console, QEMU or a check says how).
    Failed(String),
    /// The deadline passed (what was not reached).
    TimedOut(String),
    /// The accelerator failed, not the image ("KVM internal error").
    AccelFailed(String),
    /// Ctrl-C or SIGTERM.
    Interrupted,
}

impl Outcome {
    /// `passed`, `failed`, `timed_out`, `accelerator_failed`, `interrupted`.
    pub fn key(&self) -> &'static str {
        match self {
            Outcome::Passed => "passed",
            Outcome::Failed(_) => "failed",
            Outcome::TimedOut(_) => "timed_out",
            Outcome::AccelFailed(_) => "accelerator_failed",
            Outcome::Interrupted => "interrupted",
        }
    }

    /// Why it did not pass.
    pub fn message(&self) -> Option<&str> {
        match self {
            Outcome::Passed | Outcome::Interrupted => None,
            Outcome::Failed(m) | Outcome::TimedOut(m) | Outcome::AccelFailed(m) => Some(m),
        }
    }
}

/// One boot's result.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// 1-based run number (per firmware).
    pub run: usize,
    /// The firmware.
    pub firmware: Firmware,
    /// The accelerator.
    pub accelerator: Accel,
    /// `passed`, `failed`, `timed_out`, `accelerator_failed` or `interrupted`.
    pub status: &'static str,
    /// Why it did not pass.
    pub error: Option<String>,
    #[serde(skip)]
    /// How it ended.
    pub outcome: Outcome,
    /// The timeline: `qemu_started`, `firmware`, `loader`, `kernel`, `userland`, the
    /// user's markers, `ssh`; seconds from just before QEMU was started.
    pub timeline: Vec<Mark>,
    /// The SSH banner.
    pub banner: Option<String>,
    /// How the guest's host keys were trusted for the checks.
    pub host_keys: Option<HostKeyTrust>,
    /// The smoke checks.
    pub checks: Vec<CheckResult>,
    /// The instance id the metadata service gave the guest.
    pub instance_id: String,
    /// The requests the guest made to the metadata service.
    pub metadata_requests: Vec<ImdsRequest>,
    /// The console log kept (on failure, or with --keep-console).
    pub console_log: Option<PathBuf>,
    /// The console's last lines (on failure).
    pub last_lines: Vec<String>,
    /// Wall time of the boot, clean-up included.
    pub seconds: f64,
}

impl RunReport {
    /// Seconds to a mark, if it was reached.
    pub fn at(&self, name: &str) -> Option<f64> {
        self.timeline
            .iter()
            .find(|m| m.name == name)
            .map(|m| m.seconds)
    }

    /// Whether it passed.
    pub fn passed(&self) -> bool {
        self.outcome == Outcome::Passed
    }
}

/// What the console readers and QEMU's stderr report.
enum Event {
    Line(Line),
    Partial(Line),
    Output(f64),
    Stderr(String),
}

/// The per-boot temporary directory: private (0700), marked with our pid so a later
/// boot can remove it if this process is killed before it does.
fn temp_dir() -> Result<tempfile::TempDir, BootError> {
    let io = |what: &str| {
        let what = what.to_string();
        move |source| BootError::Io { what, source }
    };
    let dir = tempfile::Builder::new()
        .prefix("ec2ami-boot-")
        .tempdir()
        .map_err(io("creating the boot's temporary directory"))?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
        .map_err(io("securing the boot's temporary directory"))?;
    std::fs::write(dir.path().join("owner"), std::process::id().to_string())
        .map_err(io("writing the boot's owner file"))?;
    if !qemu::plain_path(dir.path()) {
        return Err(BootError::Invalid(format!(
            "the temporary directory {} has characters QEMU's options cannot take (spaces, \
             commas, quotes): set TMPDIR to a plain path",
            dir.path().display()
        )));
    }
    Ok(dir)
}

/// Remove the temporary directories of boots whose process is gone (killed with -9).
pub(crate) fn remove_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        if !name.to_string_lossy().starts_with("ec2ami-boot-") {
            continue;
        }
        let Ok(pid) = std::fs::read_to_string(e.path().join("owner")) else {
            continue;
        };
        let alive = pid
            .trim()
            .parse::<u32>()
            .is_ok_and(|p| Path::new(&format!("/proc/{p}")).exists());
        if !alive {
            tracing::info!(
                "removing {}, left by an ec2ami boot that was killed",
                e.path().display()
            );
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Single-quote `s` for /bin/sh.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The program QEMU runs per metadata connection: `exec RELAY... SOCKET` (a wrapper,
/// because QEMU's option parser takes no spaces in the command).
fn write_relay(
    dir: &Path,
    relay: &[std::ffi::OsString],
    socket: &Path,
) -> Result<PathBuf, BootError> {
    let path = dir.join("imds-relay");
    let mut line = String::from("exec");
    for a in relay {
        line.push(' ');
        line.push_str(&sh_quote(&a.to_string_lossy()));
    }
    line.push(' ');
    line.push_str(&sh_quote(&socket.display().to_string()));
    let body = format!("#!/bin/sh\n{line}\n");
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o700)
        .open(&path)
        .and_then(|mut f| f.write_all(body.as_bytes()))
        .map_err(|source| BootError::Io {
            what: "writing the metadata relay".into(),
            source,
        })?;
    Ok(path)
}

/// A free port on 127.0.0.1 (QEMU binds it right after).
fn free_port() -> Result<u16, BootError> {
    std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|source| BootError::Io {
            what: "finding a free port".into(),
            source,
        })
}

/// Kill QEMU's whole process group (QEMU and the relays it started) and reap it.
async fn kill_group(child: &mut Child) {
    if let Some(pid) = child.id() {
        // SAFETY: a signal to the process group we created for QEMU (pgid = its pid).
        unsafe {
            libc::kill(-(pid as i32), libc::SIGKILL);
        }
    }
    let _ = child.kill().await;
    let _ = child.wait().await;
}

/// Read a console socket into lines.
fn read_console(
    mut sock: tokio::net::UnixStream,
    stream: Stream,
    t0: Instant,
    tx: mpsc::UnboundedSender<Event>,
) {
    tokio::spawn(async move {
        let mut split = LineSplitter::new(stream);
        let mut buf = vec![0u8; 8192];
        loop {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let at = t0.elapsed().as_secs_f64();
                    let _ = tx.send(Event::Output(at));
                    for l in split.push(&buf[..n], at) {
                        let _ = tx.send(Event::Line(l));
                    }
                    if let Some(p) = split.partial() {
                        let _ = tx.send(Event::Partial(p));
                    }
                }
            }
        }
        if let Some(l) = split.finish() {
            let _ = tx.send(Event::Line(l));
        }
    });
}

/// The console log file and the tracker, fed together.
struct Console {
    tracker: Tracker,
    /// Written a line at a time: the log can be followed while the guest boots.
    log: std::io::LineWriter<std::fs::File>,
    path: PathBuf,
    /// The serial console's text as it arrives (a stand-in guest's console file).
    live: Option<std::fs::File>,
}

impl Console {
    /// Take an event; returns why the boot must stop, if it must.
    fn take(&mut self, ev: Event, ctx: &Ctx<'_>) -> Option<Outcome> {
        match ev {
            Event::Output(at) => self.tracker.output_at(at),
            Event::Line(l) => {
                let _ = writeln!(self.log, "{}", l.logged());
                if let (Some(f), Stream::Serial) = (&mut self.live, l.stream) {
                    let _ = writeln!(f, "{}", l.text);
                }
                // SeaBIOS jumping into an MBR whose code area is zeros: nothing will
                // ever run.
                let dead_mbr = ctx.firmware == Firmware::Bios
                    && !ctx.prepared.paths.bios
                    && l.text.contains("Booting from 0000:7c00");
                let text = l.text.clone();
                if let Some(f) = self.tracker.line(l) {
                    return Some(Outcome::Failed(format!("{}: `{}`", f.reason, f.line.text)));
                }
                if dead_mbr {
                    return Some(Outcome::Failed(format!(
                        "the BIOS started the MBR, which holds no boot code: `{text}`"
                    )));
                }
            }
            Event::Partial(l) => {
                if let Some(f) = self.tracker.partial(&l) {
                    return Some(Outcome::Failed(format!("{}: `{}`", f.reason, f.line.text)));
                }
            }
            Event::Stderr(l) => {
                let _ = writeln!(self.log, "qemu| {l}");
                if is_accel_failure(&l) {
                    return Some(Outcome::AccelFailed(format!(
                        "the {} accelerator failed, not the image: `{l}` (try --accel tcg)",
                        ctx.accel
                    )));
                }
            }
        }
        None
    }
}

/// What one boot works with.
struct Ctx<'a> {
    prepared: &'a Prepared,
    opts: &'a BootOptions,
    firmware: Firmware,
    accel: Accel,
}

/// Boot once. Never returns with QEMU running.
pub(crate) async fn boot_once<F: Future<Output = ()>>(
    prepared: &Prepared,
    opts: &BootOptions,
    firmware: Firmware,
    accel: Accel,
    run: usize,
    shutdown: &mut Pin<&mut F>,
) -> Result<RunReport, BootError> {
    let started = Instant::now();
    let dir = temp_dir()?;
    let ctx = Ctx {
        prepared,
        opts,
        firmware,
        accel,
    };
    let io = |what: &str| {
        let what = what.to_string();
        move |source| BootError::Io { what, source }
    };

    // The key, the metadata service, the relay, the sockets, the variable store.
    let key = ssh::generate_key(dir.path(), "ec2ami-boot").await?;
    let mut meta = InstanceMetadata::local(&prepared.ami_id, accel.instance_type(), &opts.region);
    meta.public_key = Some(match &opts.stand_in {
        Some(s) => ("ec2ami-test".into(), s.public_key.clone()),
        None => ("ec2ami-boot".into(), key.public.clone()),
    });
    meta.user_data = opts.user_data.clone();
    meta.allow_v1 = opts.imds_v1;
    meta.architecture = opts.arch.to_string();
    let instance_id = meta.instance_id.clone();
    let imds_sock = dir.path().join("imds.sock");
    let server = ImdsServer::unix(Imds::new(meta), &imds_sock)
        .map_err(io("starting the metadata service"))?;
    let relay = write_relay(dir.path(), &opts.relay, &imds_sock)?;
    let console_sock = dir.path().join("console.sock");
    let console_listener = UnixListener::bind(&console_sock).map_err(io("console socket"))?;
    let fw_sock = dir.path().join("firmware.sock");
    let fw_listener = match opts.arch {
        Arch::X86_64 => Some(UnixListener::bind(&fw_sock).map_err(io("firmware socket"))?),
        Arch::Arm64 => None,
    };
    let uefi = match (firmware, &prepared.uefi) {
        (Firmware::Uefi, Some(u)) => {
            let vars = dir.path().join("uefi-vars.fd");
            std::fs::copy(&u.vars, &vars).map_err(io("copying the UEFI variable store"))?;
            std::fs::set_permissions(&vars, std::fs::Permissions::from_mode(0o600))
                .map_err(io("copying the UEFI variable store"))?;
            Some(UefiFiles {
                code: u.code.clone(),
                vars,
            })
        }
        _ => None,
    };
    let log_path = dir.path().join("console.log");
    let log_file = std::fs::File::create(&log_path).map_err(io("console log"))?;
    let live = match &opts.stand_in {
        Some(s) => Some(std::fs::File::create(&s.console_file).map_err(io("console file"))?),
        None => None,
    };
    let mut console = Console {
        tracker: Tracker::new(prepared.markers.clone()),
        log: std::io::LineWriter::new(log_file),
        path: log_path,
        live,
    };

    let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
    let mut timeline = Vec::new();
    let t0 = Instant::now();
    let deadline = t0 + opts.timeout;

    // QEMU, retried on another port if the one chosen was taken meanwhile.
    let mut spawned = None;
    let mut start_error = String::new();
    for _ in 0..3 {
        let port = match &opts.stand_in {
            Some(s) => s.ssh_port,
            None => free_port()?,
        };
        let spec = QemuSpec {
            arch: opts.arch,
            firmware,
            accel,
            image: prepared.image.clone(),
            format: prepared.format,
            memory_mib: opts.memory_mib,
            cpus: opts.cpus,
            console: console_sock.clone(),
            firmware_log: fw_listener.as_ref().map(|_| fw_sock.clone()),
            uefi: uefi.clone(),
            metadata_relay: relay.clone(),
            ssh_port: port,
        };
        let mut cmd = Command::new(&prepared.qemu);
        cmd.args(qemu::args(&spec))
            .env("TMPDIR", dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        // SAFETY: prctl only, between fork and exec: if this process dies without
        // cleaning up (kill -9), the kernel kills QEMU.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        tracing::debug!("{} {:?}", prepared.qemu.display(), qemu::args(&spec));
        let mut child = cmd.spawn().map_err(|source| BootError::Io {
            what: format!("starting {}", prepared.qemu.display()),
            source,
        })?;
        let qemu_started = t0.elapsed().as_secs_f64();
        let mut stderr = BufReader::new(child.stderr.take().expect("stderr is piped")).lines();
        // QEMU connects to the console sockets while it starts.
        let connect = async {
            let c = console_listener.accept().await?.0;
            let f = match &fw_listener {
                Some(l) => Some(l.accept().await?.0),
                None => None,
            };
            Ok::<_, std::io::Error>((c, f))
        };
        tokio::select! {
            r = tokio::time::timeout(QEMU_START, connect) => match r {
                Ok(Ok((c, f))) => {
                    read_console(c, Stream::Serial, t0, tx.clone());
                    if let Some(f) = f {
                        read_console(f, Stream::Firmware, t0, tx.clone());
                    }
                    let etx = tx.clone();
                    tokio::spawn(async move {
                        while let Ok(Some(l)) = stderr.next_line().await {
                            let _ = etx.send(Event::Stderr(l));
                        }
                    });
                    spawned = Some((child, port, qemu_started));
                    break;
                }
                _ => {
                    kill_group(&mut child).await;
                    start_error = "QEMU did not connect to its console".into();
                }
            },
            status = child.wait() => {
                let mut err = Vec::new();
                while let Ok(Some(l)) = stderr.next_line().await {
                    err.push(l);
                }
                kill_group(&mut child).await;
                start_error = format!(
                    "QEMU exited at once ({}): {}",
                    status.map(|s| s.to_string()).unwrap_or_default(),
                    err.join("; ")
                );
                if start_error.contains("host forwarding") {
                    continue;
                }
                break;
            }
            _ = shutdown.as_mut() => {
                kill_group(&mut child).await;
                start_error.clear();
                break;
            }
        }
    }
    let Some((mut child, port, qemu_started)) = spawned else {
        let outcome = if start_error.is_empty() {
            Outcome::Interrupted
        } else if is_accel_failure(&start_error) {
            Outcome::AccelFailed(start_error)
        } else {
            return Err(BootError::Qemu(start_error));
        };
        return Ok(finish(
            &ctx,
            run,
            outcome,
            console,
            timeline,
            Default::default(),
            server.imds().requests(),
            instance_id,
            started,
        ));
    };
    timeline.push(Mark {
        name: "qemu_started".into(),
        seconds: qemu_started,
        line: String::new(),
    });
    let ssh_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));

    // Until the banner: the console, QEMU, the deadline, the user.
    let mut banner = Box::pin(ssh::wait_for_banner(ssh_addr, deadline, BANNER_INTERVAL));
    let mut banner_line = None;
    let outcome = loop {
        tokio::select! {
            biased;
            _ = shutdown.as_mut() => break Some(Outcome::Interrupted),
            Some(ev) = rx.recv() => {
                if let Some(o) = console.take(ev, &ctx) {
                    break Some(o);
                }
            }
            status = child.wait() => {
                // QEMU's last words may still be in flight (its stderr is read by
                // another task): an accelerator failure there explains the exit.
                let until = Instant::now() + Duration::from_millis(500);
                let mut said = None;
                while let Ok(Some(ev)) = tokio::time::timeout_at(until, rx.recv()).await {
                    if let Some(o) = console.take(ev, &ctx) {
                        said = Some(o);
                        break;
                    }
                }
                break Some(said.unwrap_or_else(|| Outcome::Failed(format!(
                    "QEMU exited before the SSH banner ({}): the guest reset, powered off or crashed",
                    status.map(|s| s.to_string()).unwrap_or_default()
                ))));
            }
            b = &mut banner => match b {
                Some((at, line)) => {
                    timeline_push(&mut timeline, "ssh", at - t0, &line);
                    banner_line = Some(line);
                    break None;
                }
                None => break Some(Outcome::TimedOut(format!(
                    "no SSH banner within {}",
                    super::human(opts.timeout)
                ))),
            },
        }
    };

    // A failure the console showed: let it finish saying so (a panic's trace follows
    // its first line) until it is quiet for half a second, two seconds at most.
    if matches!(outcome, Some(Outcome::Failed(_))) {
        let until = Instant::now() + Duration::from_secs(2);
        loop {
            let quiet = (Instant::now() + Duration::from_millis(500)).min(until);
            match tokio::time::timeout_at(quiet, rx.recv()).await {
                Ok(Some(ev)) => {
                    console.take(ev, &ctx);
                }
                _ => break,
            }
        }
    }

    // The checks, still watching the console, QEMU, the deadline and the user.
    let mut checks = Vec::new();
    let mut trust = None;
    let outcome = match outcome {
        Some(o) => o,
        // A stand-in for an instance: up until the test is done with it.
        None if opts.stand_in.is_some() => tokio::select! {
            biased;
            _ = shutdown.as_mut() => Outcome::Passed,
            status = child.wait() => Outcome::Failed(format!(
                "QEMU exited while standing in for an instance ({})",
                status.map(|s| s.to_string()).unwrap_or_default()
            )),
            ev = drain_console(&mut console, &mut rx, &ctx) => ev,
        },
        None if opts.checks.is_empty() => Outcome::Passed,
        None => {
            let kh = dir.path().join("known_hosts");
            let target = SshTarget {
                addr: ssh_addr,
                user: opts.ssh_user.clone(),
                key: key.private.clone(),
                known_hosts: kh.clone(),
            };
            let mut results = Vec::new();
            let work = async {
                // Give the console a moment to finish printing its host keys.
                let until = Instant::now() + HOST_KEY_WAIT;
                loop {
                    let keys = host_keys_of(&console.tracker);
                    if !keys.keys.is_empty() || Instant::now() >= until {
                        break;
                    }
                    match tokio::time::timeout_at(until, rx.recv()).await {
                        Ok(Some(ev)) => {
                            if let Some(o) = console.take(ev, &ctx) {
                                return Err(o);
                            }
                        }
                        _ => break,
                    }
                }
                let keys = host_keys_of(&console.tracker);
                let t = ssh::known_hosts(ssh_addr, &keys, &kh)
                    .await
                    .map_err(|e| Outcome::Failed(e.to_string()))?;
                trust = Some(t);
                ssh::wait_for_login(&target, deadline).await.map_err(|e| {
                    Outcome::Failed(format!("cannot log in as {}: {e}", opts.ssh_user))
                })?;
                for c in &opts.checks {
                    let r = ssh::run_check(&target, c, deadline).await;
                    tracing::info!(
                        "check `{}`: {}",
                        r.check,
                        if r.passed {
                            "passed".to_string()
                        } else {
                            r.error
                                .clone()
                                .unwrap_or_else(|| format!("exit status {:?}", r.exit_status))
                        }
                    );
                    results.push(r);
                }
                Ok(())
            };
            let o = tokio::select! {
                biased;
                _ = shutdown.as_mut() => Outcome::Interrupted,
                status = child.wait() => Outcome::Failed(format!(
                    "QEMU exited during the checks ({})",
                    status.map(|s| s.to_string()).unwrap_or_default()
                )),
                _ = tokio::time::sleep_until(deadline) => Outcome::TimedOut(format!(
                    "the checks did not finish within {}",
                    super::human(opts.timeout)
                )),
                r = work => match r {
                    Err(o) => o,
                    Ok(()) => Outcome::Passed,
                },
            };
            checks = results;
            match o {
                Outcome::Passed => {
                    let failed: Vec<&CheckResult> = checks.iter().filter(|c| !c.passed).collect();
                    if failed.is_empty() {
                        Outcome::Passed
                    } else {
                        Outcome::Failed(format!(
                            "{} of {} check(s) failed: {}",
                            failed.len(),
                            checks.len(),
                            failed
                                .iter()
                                .map(|c| format!(
                                    "`{}` ({})",
                                    c.check,
                                    c.error.clone().unwrap_or_else(|| format!(
                                        "exit status {}",
                                        c.exit_status.unwrap_or(-1)
                                    ))
                                ))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ))
                    }
                }
                o => o,
            }
        }
    };

    // Stop QEMU, then take in what the console still had in flight.
    kill_group(&mut child).await;
    drop(tx);
    let drain_until = Instant::now() + Duration::from_secs(1);
    while let Ok(Some(ev)) = tokio::time::timeout_at(drain_until, rx.recv()).await {
        console.take(ev, &ctx);
    }
    let requests = server.imds().requests();
    drop(server);
    let _ = banner_line.as_ref();
    let mut report = finish(
        &ctx,
        run,
        outcome,
        console,
        timeline,
        checks,
        requests,
        instance_id,
        started,
    );
    report.banner = banner_line;
    report.host_keys = trust;
    drop(dir);
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Keep taking in the console (a stand-in guest's file stays live) until it shows a
/// failure.
async fn drain_console(
    console: &mut Console,
    rx: &mut mpsc::UnboundedReceiver<Event>,
    ctx: &Ctx<'_>,
) -> Outcome {
    loop {
        match rx.recv().await {
            Some(ev) => {
                if let Some(o) = console.take(ev, ctx) {
                    return o;
                }
            }
            None => std::future::pending::<()>().await,
        }
    }
}

fn host_keys_of(t: &Tracker) -> console::ConsoleHostKeys {
    console::host_keys(
        t.lines()
            .iter()
            .filter(|l| l.stream == Stream::Serial)
            .map(|l| l.text.as_str()),
    )
}

fn timeline_push(timeline: &mut Vec<Mark>, name: &str, at: Duration, line: &str) {
    timeline.push(Mark {
        name: name.into(),
        seconds: at.as_secs_f64(),
        line: line.into(),
    });
}

/// Assemble the report; keep the console log if asked or on failure.
#[allow(clippy::too_many_arguments)]
fn finish(
    ctx: &Ctx<'_>,
    run: usize,
    outcome: Outcome,
    mut console: Console,
    mut timeline: Vec<Mark>,
    checks: Vec<CheckResult>,
    metadata_requests: Vec<ImdsRequest>,
    instance_id: String,
    started: Instant,
) -> RunReport {
    let _ = console.log.flush();
    // Console marks between QEMU's start and the banner, in time order.
    let mut marks = console.tracker.marks();
    marks.append(&mut timeline);
    marks.sort_by(|a, b| a.seconds.total_cmp(&b.seconds));
    let failed = outcome != Outcome::Passed && outcome != Outcome::Interrupted;
    let keep_dir = match (&ctx.opts.keep_console, failed) {
        (Some(d), _) => Some(d.clone()),
        (None, true) => Some(ctx.opts.failure_dir.clone()),
        (None, false) => None,
    };
    let console_log = keep_dir.and_then(|d| {
        let name = format!(
            "{}-{}-run{}-{}.log",
            ctx.prepared.stem,
            ctx.firmware.key(),
            run,
            crate::state::now_epoch()
        );
        let dest = d.join(name);
        let kept = std::fs::create_dir_all(&d).and_then(|()| std::fs::copy(&console.path, &dest));
        match kept {
            Ok(_) => Some(dest),
            Err(e) => {
                tracing::warn!("cannot keep the console log in {}: {e}", d.display());
                None
            }
        }
    });
    let last_lines = if failed {
        console.tracker.tail()
    } else {
        Vec::new()
    };
    RunReport {
        run,
        firmware: ctx.firmware,
        accelerator: ctx.accel,
        status: outcome.key(),
        error: outcome.message().map(str::to_string),
        outcome,
        timeline: marks,
        banner: None,
        host_keys: None,
        checks,
        instance_id,
        metadata_requests,
        console_log,
        last_lines,
        seconds: started.elapsed().as_secs_f64(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_wrapper_quotes_its_words() {
        let dir = tempfile::tempdir().unwrap();
        let p = write_relay(
            dir.path(),
            &["/opt/it's/ec2ami".into(), "imds".into(), "relay".into()],
            Path::new("/tmp/x/imds.sock"),
        )
        .unwrap();
        let body = std::fs::read_to_string(&p).unwrap();
        assert_eq!(
            body,
            "#!/bin/sh\nexec '/opt/it'\\''s/ec2ami' 'imds' 'relay' '/tmp/x/imds.sock'\n"
        );
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn boot_directories_are_private_and_owned() {
        let d = temp_dir().unwrap();
        let mode = std::fs::metadata(d.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let owner = std::fs::read_to_string(d.path().join("owner")).unwrap();
        assert_eq!(owner, std::process::id().to_string());
    }
}
