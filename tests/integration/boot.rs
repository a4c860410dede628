//! `ec2ami boot`: the real binary boots the test world's real Debian images (built by
//! scripts/build-test-images from Debian's packages) in QEMU, inside the tests'
//! loopback-only namespace. Each image variant is booted as few times as the checks
//! need; a test fails (with the build hint) when the images or QEMU are missing.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use ec2ami_testkit::TestImages;
use serde_json::Value;
use tempfile::TempDir;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};

use crate::common::{Run, nonzero_blocks, write_file};

pub fn images() -> TestImages {
    TestImages::find().unwrap_or_else(|e| panic!("{e}"))
}

/// A scratch world for boots: its own state directory and TMPDIR (so its QEMU
/// processes and temporary files can be told from other tests').
pub struct BootWorld {
    pub dir: TempDir,
}

impl BootWorld {
    pub fn new() -> BootWorld {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("tmp")).unwrap();
        BootWorld { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn tmp(&self) -> PathBuf {
        self.path("tmp")
    }

    pub fn ec2ami(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_ec2ami"));
        c.env("XDG_STATE_HOME", self.path("state"))
            .env("TMPDIR", self.tmp())
            .env("EC2AMI_LOG", "info")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        c
    }

    /// Run to the end (a hang guard of 15 minutes, far beyond any boot's timeout).
    pub async fn run(&self, args: &[&str]) -> Run {
        let out = tokio::time::timeout(Duration::from_secs(900), self.ec2ami().args(args).output())
            .await
            .expect("ec2ami boot finishes")
            .expect("ec2ami runs");
        Run::from(out)
    }

    /// `boot ARGS --output json`: the run and its JSON document.
    pub async fn boot(&self, args: &[&str]) -> (Run, Value) {
        let mut all = vec!["--output", "json", "boot"];
        all.extend_from_slice(args);
        let run = self.run(&all).await;
        let doc = serde_json::from_str(&run.stdout)
            .unwrap_or_else(|e| panic!("{e}: not JSON:\n{}\nstderr:\n{}", run.stdout, run.stderr));
        (run, doc)
    }

    /// Processes whose command line names this world's TMPDIR (QEMU, its relays).
    pub fn processes_left(&self) -> Vec<String> {
        processes_mentioning(&self.tmp().display().to_string())
    }

    /// What is left in this world's TMPDIR.
    pub fn temp_left(&self) -> Vec<String> {
        std::fs::read_dir(self.tmp())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    /// Nothing of a boot is left: no process, no temporary file.
    pub fn assert_clean(&self) {
        let procs = self.processes_left();
        assert!(procs.is_empty(), "processes left: {procs:?}");
        let files = self.temp_left();
        assert!(files.is_empty(), "temporary files left: {files:?}");
    }
}

/// Command lines (of live processes) containing `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if !e
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            continue;
        }
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(needle) {
            out.push(format!("{}: {cmd}", e.file_name().to_string_lossy()));
        }
    }
    out
}

fn str_of<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or_default()
}

/// The run of `firmware` in a boot document.
fn run_of<'a>(doc: &'a Value, firmware: &str) -> &'a Value {
    doc["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["firmware"] == firmware)
        .unwrap_or_else(|| panic!("no {firmware} run in {doc:#}"))
}

fn timeline(run: &Value) -> Vec<(String, f64)> {
    run["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                str_of(m, "name").to_string(),
                m["seconds"].as_f64().unwrap(),
            )
        })
        .collect()
}

/// The image's mtime and the hash of every block: what "never written" is checked by.
fn fingerprint(p: &Path) -> (std::time::SystemTime, Vec<(u64, [u8; 32])>) {
    (
        std::fs::metadata(p).unwrap().modified().unwrap(),
        nonzero_blocks(p),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polyglot_image_boots_both_ways_with_the_metadata_service_and_smoke_checks() {
    let img = images();
    let w = BootWorld::new();
    let before = fingerprint(&img.polyglot());
    // A host service the guest must not reach (restrict=on).
    let host = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let host_port = host.local_addr().unwrap().port();
    let ud = w.path("user-data.sh");
    write_file(
        &ud,
        b"#!/bin/sh\necho \"user-data ran as $(id -un)\" > /var/tmp/ec2ami-user-data\n",
    );
    let keep = w.path("consoles");
    let token_get = "t=$(curl -sf -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' \
        http://169.254.169.254/latest/api/token) && curl -sf -H \"X-aws-ec2-metadata-token: $t\" \
        http://169.254.169.254/latest/meta-data/instance-id";
    let no_token = "curl -s -o /dev/null -w '%{http_code}' \
        http://169.254.169.254/latest/meta-data/instance-id";
    let isolated = format!("! curl -s --max-time 3 http://169.254.169.1:{host_port}/");
    let (run, doc) = w
        .boot(&[
            img.polyglot().to_str().unwrap(),
            "--firmware",
            "both",
            "--user-data",
            ud.to_str().unwrap(),
            "--check",
            "cat /var/tmp/ec2ami-user-data",
            "--check",
            token_get,
            "--check",
            no_token,
            "--check",
            &isolated,
            "--keep-console",
            keep.to_str().unwrap(),
            "--image-name",
            "ec2ami-test polyglot",
        ])
        .await;
    run.assert_ok();
    assert_eq!(doc["passed"], true);
    assert_eq!(doc["boot_paths"]["bios"], true);
    assert_eq!(doc["boot_paths"]["esp"], true);
    assert_eq!(doc["firmwares"], serde_json::json!(["bios", "uefi"]));
    for fw in ["bios", "uefi"] {
        let r = run_of(&doc, fw);
        assert_eq!(r["status"], "passed", "{r:#}");
        // The whole timeline, in order.
        let t = timeline(r);
        let names: Vec<&str> = t.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "qemu_started",
                "firmware",
                "loader",
                "kernel",
                "userland",
                "ssh"
            ],
            "{fw}: {t:?}"
        );
        assert!(t.windows(2).all(|p| p[0].1 <= p[1].1), "{t:?}");
        assert!(str_of(r, "banner").starts_with("SSH-2.0-OpenSSH"), "{r:#}");
        assert_eq!(r["host_keys"], "console");
        // The guest configured itself from the metadata service, token first.
        let reqs: Vec<String> = r["metadata_requests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|q| {
                format!(
                    "{} {} {} {}",
                    str_of(q, "method"),
                    str_of(q, "path"),
                    q["status"],
                    q["with_token"]
                )
            })
            .collect();
        assert!(reqs[0].starts_with("PUT /latest/api/token 200"), "{reqs:?}");
        for want in [
            "GET /latest/meta-data/public-keys/0/openssh-key 200 true",
            "GET /latest/user-data 200 true",
            "GET /latest/meta-data/instance-id 401 false",
        ] {
            assert!(reqs.iter().any(|q| q == want), "{want} not in {reqs:?}");
        }
        let checks = r["checks"].as_array().unwrap();
        assert_eq!(checks.len(), 4);
        assert!(checks.iter().all(|c| c["passed"] == true), "{checks:#?}");
        assert_eq!(str_of(&checks[0], "stdout"), "user-data ran as root\n");
        assert_eq!(str_of(&checks[1], "stdout"), str_of(r, "instance_id"));
        assert_eq!(str_of(&checks[2], "stdout"), "401");
        // Kept as asked, timestamped per line.
        let log = std::fs::read_to_string(str_of(r, "console_log")).unwrap();
        assert!(
            log.lines()
                .any(|l| l.starts_with('[') && l.contains("Linux version"))
        );
        assert!(log.contains("-----BEGIN SSH HOST KEY KEYS-----"));
    }
    // UEFI's loader ran under OVMF, BIOS's under SeaBIOS.
    assert!(str_of(&run_of(&doc, "uefi")["timeline"][2], "line").contains("BdsDxe: starting"));
    assert!(
        str_of(&run_of(&doc, "bios")["timeline"][2], "line").contains("Booting from Hard Disk")
    );

    // Two history rows, local, one per firmware, as `report` will plot them.
    let ids = doc["history_ids"].as_array().unwrap();
    assert_eq!(ids.len(), 2);
    let list = w.run(&["--output", "json", "history", "list"]).await;
    list.assert_ok();
    let rows: Value = serde_json::from_str(&list.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{rows:#?}");
    let mut fws: Vec<&str> = rows.iter().map(|b| str_of(b, "firmware")).collect();
    fws.sort();
    assert_eq!(fws, ["bios", "uefi"]);
    for b in rows {
        assert_eq!(b["instance_type"], "qemu-tcg");
        assert_eq!(b["region"], "local");
        assert_eq!(b["image_name"], "ec2ami-test polyglot");
        assert_eq!(b["runs"][0]["status"], "ok");
        assert!(b["summary"]["total"]["median"].as_f64().unwrap() > 0.0);
    }
    let text = w.run(&["history", "list"]).await;
    assert!(text.stdout.contains("qemu-tcg (uefi)"), "{}", text.stdout);

    assert_eq!(
        fingerprint(&img.polyglot()),
        before,
        "the image was written"
    );
    w.assert_clean();
    drop(host);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bios_only_image_boots_by_bios_and_not_by_uefi() {
    let img = images();
    let w = BootWorld::new();
    let (run, doc) = w
        .boot(&[
            img.bios_only().to_str().unwrap(),
            "--firmware",
            "both",
            "--no-history",
        ])
        .await;
    run.assert_failed_with("1 of 2 boot(s) did not pass");
    assert!(
        run.stderr.contains("no EFI System Partition"),
        "{}",
        run.stderr
    );
    assert_eq!(doc["boot_paths"]["esp"], false);
    assert_eq!(run_of(&doc, "bios")["status"], "passed");
    let uefi = run_of(&doc, "uefi");
    assert_eq!(uefi["status"], "failed");
    assert!(
        str_of(uefi, "error").contains("nothing to boot"),
        "{uefi:#}"
    );
    let last: Vec<&str> = uefi["last_lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert!(
        last.iter().any(|l| l.contains("BdsDxe: failed to load")),
        "{last:?}"
    );
    assert!(run.stderr.contains("last console lines:"), "{}", run.stderr);
    // A failed boot's console is always kept.
    let log = PathBuf::from(str_of(uefi, "console_log"));
    assert!(log.starts_with(w.path("state")), "{}", log.display());
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("EFI Internal Shell")
    );
    assert!(run.stderr.contains(&log.display().to_string()));
    w.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_uefi_only_qcow2_image_boots_by_uefi_and_not_by_bios() {
    let img = images();
    let w = BootWorld::new();
    let before = fingerprint(&img.uefi_only());
    let (run, doc) = w
        .boot(&[
            img.uefi_only().to_str().unwrap(),
            "--firmware",
            "both",
            "--no-history",
        ])
        .await;
    run.assert_failed_with("1 of 2 boot(s) did not pass");
    assert_eq!(doc["format"], "qcow2");
    assert_eq!(doc["boot_paths"]["bios"], false);
    assert_eq!(run_of(&doc, "uefi")["status"], "passed");
    let bios = run_of(&doc, "bios");
    assert_eq!(bios["status"], "failed");
    assert!(
        str_of(bios, "error").contains("holds no boot code"),
        "{bios:#}"
    );
    assert!(
        bios["last_lines"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l.as_str().unwrap().contains("Booting from Hard Disk")),
        "{bios:#}"
    );
    assert_eq!(
        fingerprint(&img.uefi_only()),
        before,
        "the image was written"
    );
    w.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_without_sshd_fails_at_the_timeout_and_leaves_nothing() {
    let img = images();
    let w = BootWorld::new();
    let (run, doc) = w
        .boot(&[
            img.no_sshd().to_str().unwrap(),
            "--firmware",
            "bios",
            "--timeout",
            "45s",
            "--no-history",
        ])
        .await;
    run.assert_failed_with("no SSH banner within 45s");
    let r = run_of(&doc, "bios");
    assert_eq!(r["status"], "timed_out");
    // It booted (userland and its login prompt), sshd never answered.
    let names: Vec<String> = timeline(r).into_iter().map(|(n, _)| n).collect();
    assert!(names.contains(&"userland".to_string()), "{names:?}");
    assert!(!names.contains(&"ssh".to_string()));
    // The console log is kept (a failure), and shows the boot got to userland.
    let log = std::fs::read_to_string(str_of(r, "console_log")).unwrap();
    assert!(log.contains("systemd"), "{log}");
    w.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kernel_panic_fails_at_once_and_the_console_shows_it() {
    let img = images();
    let w = BootWorld::new();
    let (run, doc) = w
        .boot(&[
            img.panic().to_str().unwrap(),
            "--firmware",
            "bios",
            "--no-history",
        ])
        .await;
    run.assert_failed_with("the kernel panicked");
    let r = run_of(&doc, "bios");
    assert_eq!(r["status"], "failed");
    // Ended by the console, not by the 5-minute timeout.
    assert!(r["seconds"].as_f64().unwrap() < 150.0, "{r:#}");
    let last = r["last_lines"].as_array().unwrap();
    assert!(
        last.iter()
            .any(|l| l.as_str().unwrap().contains("Kernel panic - not syncing")),
        "{last:?}"
    );
    assert!(
        run.stderr.contains("Kernel panic - not syncing"),
        "{}",
        run.stderr
    );
    w.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_smoke_check_fails_the_boot() {
    let img = images();
    let w = BootWorld::new();
    let script = w.path("checks.sh");
    write_file(
        &script,
        b"#!/bin/sh\necho \"checking as $(id -un)\"\ntest -f /etc/no-such-file\n",
    );
    let (run, doc) = w
        .boot(&[
            img.polyglot().to_str().unwrap(),
            "--firmware",
            "uefi",
            "--check",
            "uname -s",
            "--checks",
            script.to_str().unwrap(),
            "--no-history",
        ])
        .await;
    run.assert_failed_with("1 of 2 check(s) failed");
    let r = run_of(&doc, "uefi");
    assert_eq!(r["status"], "failed");
    let checks = r["checks"].as_array().unwrap();
    assert_eq!(checks[0]["passed"], true);
    assert_eq!(str_of(&checks[0], "stdout"), "Linux\n");
    assert_eq!(checks[1]["check"], "script checks.sh");
    assert_eq!(checks[1]["exit_status"], 1);
    assert_eq!(str_of(&checks[1], "stdout"), "checking as ec2-user\n");
    w.assert_clean();
}

/// Start a boot and wait until its QEMU runs.
async fn boot_until_qemu_runs(
    w: &BootWorld,
    image: &Path,
) -> (Child, tokio::task::JoinHandle<String>) {
    let mut child = w
        .ec2ami()
        .args([
            "boot",
            image.to_str().unwrap(),
            "--firmware",
            "bios",
            "--no-history",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = child.stderr.take().unwrap();
    let reader = tokio::spawn(async move {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s).await;
        s
    });
    let t0 = std::time::Instant::now();
    while !w.processes_left().iter().any(|p| p.contains("qemu-system")) {
        assert!(t0.elapsed() < Duration::from_secs(60), "QEMU never started");
        // sleep-ok: the pace of a poll for a condition (QEMU's process), not a guess.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Mid-boot: the guest has printed its first console line (the firmware or the
    // kernel is running), as the boot's console log shows it.
    while !console_has_a_line(&w.tmp()) {
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "the guest never printed a console line"
        );
        // sleep-ok: the pace of a poll for a condition (a console line), not a guess.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (child, reader)
}

/// A boot's console log (`TMP/ec2ami-boot-*/console.log`) holds a whole line.
fn console_has_a_line(tmp: &Path) -> bool {
    std::fs::read_dir(tmp)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            e.file_name().to_string_lossy().starts_with("ec2ami-boot-")
                && std::fs::read(e.path().join("console.log")).is_ok_and(|log| log.contains(&b'\n'))
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_or_sigterm_mid_boot_stops_qemu_and_removes_everything() {
    let img = images();
    for (signal, code) in [(libc::SIGINT, 130), (libc::SIGTERM, 130)] {
        let w = BootWorld::new();
        let (mut child, reader) = boot_until_qemu_runs(&w, &img.polyglot()).await;
        assert!(
            !w.temp_left().is_empty(),
            "the boot's files exist while it runs"
        );
        let pid = child.id().unwrap() as i32;
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(pid, signal) };
        let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
            .await
            .expect("exits after the signal")
            .unwrap();
        let stderr = reader.await.unwrap();
        assert_eq!(status.code(), Some(code), "signal {signal}: {stderr}");
        assert!(stderr.contains("interrupted"), "{stderr}");
        w.assert_clean();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kvm_is_an_accelerator_failure_where_it_does_not_really_work() {
    // Where KVM works the boot passes; where /dev/kvm is missing or emulating (these
    // machines), it fails as the accelerator's failure, never as the image's.
    let img = images();
    let w = BootWorld::new();
    let (run, doc) = w
        .boot(&[
            img.polyglot().to_str().unwrap(),
            "--firmware",
            "uefi",
            "--accel",
            "kvm",
            "--timeout",
            "3m",
            "--no-history",
        ])
        .await;
    let r = run_of(&doc, "uefi");
    assert_eq!(r["accelerator"], "kvm");
    match str_of(r, "status") {
        "passed" => run.assert_ok(),
        "accelerator_failed" => {
            run.assert_failed_with("accelerator failed, not the image");
        }
        other => panic!("status {other}: {r:#}\n{}", run.stderr),
    }
    // Left to itself, ec2ami does not pick a KVM that does not work.
    let host_has_vmx = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap()
        .split_whitespace()
        .any(|f| f == "vmx" || f == "svm");
    if !host_has_vmx {
        assert_eq!(doc["accelerator"]["accel"], "kvm", "as asked");
        assert_eq!(str_of(r, "status"), "accelerator_failed", "{r:#}");
    }
    w.assert_clean();
}

#[tokio::test]
async fn bad_boot_input_is_refused_clearly_and_leaves_nothing() {
    let w = BootWorld::new();
    let empty = w.path("empty.raw");
    write_file(&empty, b"");
    let blank = w.path("blank.raw");
    std::fs::File::create(&blank)
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    let big = w.path("big-user-data");
    write_file(&big, &vec![b'x'; 16 * 1024 + 1]);
    // configinit would write to a relative path: `ec2ami userdata --check` rejects it.
    let relative = w.path("relative-user-data");
    write_file(&relative, b">etc/rc.conf.local\nsshd_enable=\"YES\"\n");
    let dir = w.path("consoles");
    std::fs::create_dir(&dir).unwrap();
    let missing = w.path("missing.raw");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec![missing.to_str().unwrap()], "cannot open"),
        (vec![empty.to_str().unwrap()], "is empty"),
        (vec![dir.to_str().unwrap()], "not a regular file"),
        (vec![blank.to_str().unwrap()], "shows no way to boot"),
        (
            vec![
                blank.to_str().unwrap(),
                "--firmware",
                "bios",
                "--user-data",
                big.to_str().unwrap(),
            ],
            "more than EC2's limit",
        ),
        (
            vec![
                blank.to_str().unwrap(),
                "--firmware",
                "bios",
                "--user-data",
                relative.to_str().unwrap(),
            ],
            "ec2ami userdata --check",
        ),
        (
            vec![blank.to_str().unwrap(), "--marker", "kernel=("],
            "bad pattern",
        ),
        (
            vec![blank.to_str().unwrap(), "--firmware", "sideways"],
            "unknown firmware",
        ),
        (
            vec![blank.to_str().unwrap(), "--arch", "mips"],
            "unknown architecture",
        ),
    ];
    for (args, want) in cases {
        let mut all = vec!["boot"];
        all.extend(args.iter().copied());
        let r = w.run(&all).await;
        r.assert_failed_with(want);
        assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    }
    // arm64 without its emulator: said plainly (PATH without QEMU stands in for a
    // machine where it is not installed).
    let empty_path = w.path("bin");
    std::fs::create_dir(&empty_path).unwrap();
    let r = Run::from(
        w.ec2ami()
            .env("PATH", &empty_path)
            .args([
                "boot",
                blank.to_str().unwrap(),
                "--arch",
                "arm64",
                "--firmware",
                "uefi",
            ])
            .output()
            .await
            .unwrap(),
    );
    r.assert_failed_with("arm64 images boot with qemu-system-aarch64 and the AAVMF firmware");
    assert!(r.stderr.contains("qemu-efi-aarch64"), "{}", r.stderr);
    w.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_preflight_stops_an_image_that_does_not_boot_as_promised_before_its_upload() {
    use crate::common::World;
    let img = images();
    let world = World::moto().await;
    let tmp = world.path("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let bios_only = img.bios_only();
    let release = world.path("release.toml");
    write_file(
        &release,
        format!(
            r#"regions = ["us-east-1"]
allow_paths_outside = true  # the test images live in their cache
preflight = true

[defaults]
version = "1.0"
branch = "TEST"
date = "20261201"
arch = "x86_64"
fs = "ext4"
name = "ec2ami-test-{{flavour}}-{{date}}"
description = "ec2ami test image {{flavour}}"

[[image]]
path = "{p}"
flavour = "bios"
boot_mode = "legacy-bios"

[[image]]
path = "{p}"
flavour = "promised-uefi"
boot_mode = "uefi-preferred"
"#,
            p = bios_only.display()
        )
        .as_bytes(),
    );
    let rel = release.to_str().unwrap();
    let run = |args: Vec<&str>| {
        let mut c = world.ec2ami();
        c.env("TMPDIR", &tmp).args(args);
        async move { Run::from(c.output().await.unwrap()) }
    };

    // The plan says which boots come first; --skip-preflight drops them.
    let plan = run(vec!["publish", rel, "--plan"]).await;
    plan.assert_ok();
    assert!(
        plan.stdout
            .contains("preflight local           check     boot locally by BIOS\n"),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout
            .contains("check     boot locally by UEFI and by BIOS"),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout.contains("2 to boot locally first"),
        "{}",
        plan.stdout
    );
    let skip = run(vec!["publish", rel, "--plan", "--skip-preflight"]).await;
    skip.assert_ok();
    assert!(!skip.stdout.contains("preflight"), "{}", skip.stdout);
    assert!(mutating_names(&world).is_empty());

    // --preflight-timeout bounds each pre-flight boot: 2 s is far too short to reach
    // SSH under TCG, so the boots time out and nothing is created.
    let short = run(vec!["publish", rel, "--preflight-timeout", "2s"]).await;
    short.assert_failed_with("image(s) failed");
    assert!(
        short.stderr.contains("no SSH banner within 2s"),
        "{}",
        short.stderr
    );
    assert!(mutating_names(&world).is_empty(), "nothing created");

    // From here on, every request the publish makes.
    world.proxy.clear_requests();
    let r = run(vec!["publish", rel]).await;
    r.assert_failed_with("1 of 2 image(s) failed");
    assert!(
        r.stderr.contains("pre-flight boot of")
            && r.stderr
                .contains("nothing of it was uploaded or registered"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("the firmware found nothing to boot"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("console log"), "{}", r.stderr);
    // The first image was published; the second never reached AWS.
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{}", r.stdout);
    assert!(
        lines[0].starts_with("Created AMI in us-east-1 region: ami-"),
        "{}",
        r.stdout
    );
    let bad = "ec2ami-test-promised-uefi-20261201";
    let good = "ec2ami-test-bios-20261201";
    let seen: Vec<String> = world
        .proxy
        .requests()
        .iter()
        .map(|q| String::from_utf8_lossy(q.body.as_deref().unwrap_or_default()).into_owned())
        .collect();
    assert!(seen.iter().any(|b| b.contains(good)));
    // Only the survey's read-only look-ups (made for every image at once, before any
    // boot) may name it: nothing that creates, changes or deletes anything.
    let leaked: Vec<&String> = seen
        .iter()
        .filter(|b| b.contains("promised-uefi") && !b.starts_with("Action=Describe"))
        .collect();
    assert!(
        leaked.is_empty(),
        "requests other than look-ups mentioned the image that failed its pre-flight: {leaked:?}"
    );
    let clients = world.clients().await;
    let images = clients
        .ec2
        .describe_images()
        .owners("self")
        .send()
        .await
        .unwrap();
    let names: Vec<&str> = images.images().iter().filter_map(|i| i.name()).collect();
    assert_eq!(names, [good]);
    let snaps = clients
        .ec2
        .describe_snapshots()
        .owner_ids("self")
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("tag:ec2ami:ami-name")
                .values(bad)
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert!(snaps.snapshots().is_empty(), "{:?}", snaps.snapshots());
    // The pre-flight boots are in the history, as local boots of those builds.
    let list = run(vec!["--output", "json", "history", "list"]).await;
    let rows: Value = serde_json::from_str(&list.stdout).unwrap();
    let rows: Vec<(String, String, String)> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                str_of(b, "image_name").to_string(),
                str_of(b, "firmware").to_string(),
                str_of(&b["runs"][0], "status").to_string(),
            )
        })
        .collect();
    assert!(
        rows.contains(&(good.into(), "bios".into(), "ok".into())),
        "{rows:?}"
    );
    assert!(
        rows.contains(&(bad.into(), "uefi".into(), "failed".into())),
        "{rows:?}"
    );
    assert!(processes_mentioning(&tmp.display().to_string()).is_empty());
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
}

/// Mutating requests the proxy saw.
fn mutating_names(world: &crate::common::World) -> Vec<String> {
    crate::common::mutating(world)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpus_memory_imds_ssh_user_runs_and_build_flags_take_effect_in_the_guest() {
    let img = images();
    let w = BootWorld::new();
    let no_token = "curl -s -o /dev/null -w '%{http_code}' \
        http://169.254.169.254/latest/meta-data/instance-id";
    let (run, doc) = w
        .boot(&[
            img.bios_only().to_str().unwrap(),
            "--firmware",
            "bios",
            "--runs",
            "2",
            "--cpus",
            "2",
            "--memory",
            "768",
            "--imds",
            "optional",
            "--ssh-user",
            "ec2-user",
            "--check",
            "nproc",
            "--check",
            "awk '/MemTotal/ {print $2}' /proc/meminfo",
            "--check",
            no_token,
            "--check",
            "id -un",
            "--os-version",
            "2.0",
            "--branch",
            "2-STABLE",
            "--flavour",
            "tiny",
            "--fs",
            "ext4",
            "--build-date",
            "20260101",
        ])
        .await;
    run.assert_ok();
    let runs = doc["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "--runs 2: {doc:#}");
    for r in runs {
        assert_eq!(r["status"], "passed", "{r:#}");
        let checks = r["checks"].as_array().unwrap();
        assert_eq!(str_of(&checks[0], "stdout"), "2\n", "--cpus 2");
        let kib: u64 = str_of(&checks[1], "stdout").trim().parse().unwrap();
        assert!(
            (512 * 1024..=768 * 1024).contains(&kib),
            "--memory 768: MemTotal {kib} kB"
        );
        // IMDSv1 answered: the service does not require a token.
        assert_eq!(str_of(&checks[2], "stdout"), "200", "--imds optional");
        assert_eq!(str_of(&checks[3], "stdout"), "ec2-user\n");
    }
    let list = w.run(&["--output", "json", "history", "list"]).await;
    list.assert_ok();
    let rows: Value = serde_json::from_str(&list.stdout).unwrap();
    let b = &rows.as_array().unwrap()[0];
    for (k, v) in [
        ("version", "2.0"),
        ("branch", "2-STABLE"),
        ("flavour", "tiny"),
        ("fs", "ext4"),
        ("build_date", "20260101"),
    ] {
        assert_eq!(b[k], v, "{k} in {b}");
    }
    assert_eq!(b["runs"].as_array().unwrap().len(), 2);
    w.assert_clean();
}
