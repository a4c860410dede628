//! Incremental and resumed uploads (issue 12), same run, same endpoint: the strict EBS
//! endpoint (checksums only, `discard_data`) behind the recording proxy, the real
//! `ec2ami` binary.
//!
//! - A dense image (`EC2AMI_BENCH_INCR_GIB`, default 4 GiB of random data) and a copy of
//!   it with 1 % of its blocks changed: a full upload of the copy, then the same copy
//!   with `--parent` the original's snapshot. Requests (every request the proxy saw) and
//!   wall time of each, and as a baseline the same `--parent` upload against the
//!   parent's index rewritten in version 1 (no BLAKE3: SHA-256s compared).
//! - The copy uploaded again (full), killed with SIGKILL once half its blocks were
//!   acknowledged and every worker's next block is held at the proxy, then rerun:
//!   blocks sent over both runs against a full upload's.
//!
//! Run: `cargo bench --profile dev --bench incremental`.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use ec2ami_testkit::moto::{AWS_ENV_TO_REMOVE, aws_test_env};
use ec2ami_testkit::{FaultProxy, ProxyConfig, StrictEbs, StrictEbsConfig};
use tokio::process::Command;

const BLOCK: u64 = 512 * 1024;
const WORKERS: usize = 64;

fn ec2ami(proxy: &FaultProxy, state: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ec2ami"));
    for k in AWS_ENV_TO_REMOVE {
        cmd.env_remove(k);
    }
    cmd.envs(aws_test_env(&proxy.url(), "us-east-1"))
        .env("XDG_STATE_HOME", state)
        .env("EC2AMI_LOG", "warn")
        .kill_on_drop(true);
    cmd
}

struct Run {
    json: serde_json::Value,
    wall: f64,
    /// CPU seconds of the ec2ami process (user + system), from the reaped children's
    /// rusage.
    cpu: f64,
    requests: usize,
    puts: usize,
}

async fn upload(proxy: &FaultProxy, state: &Path, image: &Path, extra: &[&str]) -> Run {
    proxy.clear_requests();
    let workers = WORKERS.to_string();
    let cpu0 = children_cpu();
    let t0 = Instant::now();
    let out = ec2ami(proxy, state)
        .args([
            "--output",
            "json",
            "upload",
            image.to_str().unwrap(),
            "--workers",
            &workers,
        ])
        .args(extra)
        .output()
        .await
        .unwrap();
    let wall = t0.elapsed().as_secs_f64();
    let cpu = children_cpu() - cpu0;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let requests = proxy.requests();
    Run {
        json: serde_json::from_slice(&out.stdout).unwrap(),
        wall,
        cpu,
        requests: requests.len(),
        puts: requests
            .iter()
            .filter(|r| r.operation == "PutSnapshotBlock" && r.status == 201)
            .count(),
    }
}

/// User + system CPU seconds of this process's reaped children.
fn children_cpu() -> f64 {
    // SAFETY: getrusage writes the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) }, 0);
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(u.ru_utime) + secs(u.ru_stime)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(bench());
}

async fn bench() {
    let gib: u64 = std::env::var("EC2AMI_BENCH_INCR_GIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (v1, v2) = (dir.path().join("v1.raw"), dir.path().join("v2.raw"));
    let size = gib << 30;
    let blocks = size / BLOCK;
    // v1: dense random data, written in 64 MiB pieces; v2 = v1 with 1 % of the blocks
    // changed (every 100th).
    {
        let f1 = std::fs::File::create(&v1).unwrap();
        let f2 = std::fs::File::create(&v2).unwrap();
        let mut rng = fastrand::Rng::with_seed(12);
        let mut buf = vec![0u8; 64 << 20];
        let mut off = 0;
        while off < size {
            rng.fill(&mut buf);
            f1.write_all_at(&buf, off).unwrap();
            f2.write_all_at(&buf, off).unwrap();
            off += buf.len() as u64;
        }
        let mut changed = 0;
        for b in (0..blocks).step_by(100) {
            f2.write_all_at(&rng.u64(..).to_le_bytes(), b * BLOCK + 17)
                .unwrap();
            changed += 1;
        }
        f1.sync_all().unwrap();
        f2.sync_all().unwrap();
        eprintln!("{gib} GiB images, {blocks} blocks, {changed} changed");
    }
    let ebs = StrictEbs::start(StrictEbsConfig {
        discard_data: true,
        ..StrictEbsConfig::default()
    })
    .await
    .unwrap();
    let proxy = FaultProxy::start(ProxyConfig::new(ebs.url()))
        .await
        .unwrap();

    let r1 = upload(&proxy, &state, &v1, &[]).await;
    let parent = r1.json["snapshot_id"].as_str().unwrap().to_string();
    let full = upload(&proxy, &state, &v2, &[]).await;
    let incr = upload(&proxy, &state, &v2, &["--parent", &parent]).await;
    assert_eq!(
        incr.json["blocks_written"].as_u64().unwrap() as usize,
        incr.puts
    );
    // Baseline in the same run: the parent's index rewritten as version 1 (no BLAKE3
    // field, as indexes were before version 2), so the same upload compares SHA-256s.
    let index = r1.json["index_path"].as_str().unwrap().to_string();
    let v2_text = std::fs::read_to_string(&index).unwrap();
    let v1_text: String = v2_text
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            match f.as_slice() {
                ["ec2ami-block-index", "2"] => "ec2ami-block-index 1".to_string(),
                [i, sha, _] if i.parse::<u64>().is_ok() => format!("{i} {sha}"),
                _ => l.to_string(),
            }
        })
        .map(|l| l + "\n")
        .collect();
    assert_ne!(v1_text, v2_text);
    std::fs::write(&index, &v1_text).unwrap();
    let sha_incr = upload(&proxy, &state, &v2, &["--parent", &parent]).await;
    assert_eq!(sha_incr.puts, incr.puts);
    std::fs::write(&index, &v2_text).unwrap();
    println!("| upload of v2 | requests | PutSnapshotBlock | wall s | CPU s |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    println!(
        "| full (v1 before it: {:.2} s) | {} | {} | {:.2} | {:.2} |",
        r1.wall, full.requests, full.puts, full.wall, full.cpu
    );
    println!(
        "| --parent v1 | {} | {} | {:.2} | {:.2} |",
        incr.requests, incr.puts, incr.wall, incr.cpu
    );
    println!(
        "| --parent v1, its index in version 1 (SHA-256 compared) | {} | {} | {:.2} | {:.2} |",
        sha_incr.requests, sha_incr.puts, sha_incr.wall, sha_incr.cpu
    );
    println!(
        "requests ratio {:.2} %, wall ratio {:.1} % (SHA-256 compared: {:.1} %)",
        100.0 * incr.requests as f64 / full.requests as f64,
        100.0 * incr.wall / full.wall,
        100.0 * sha_incr.wall / full.wall
    );

    // Resume after a kill at 50 %.
    proxy.clear_requests();
    let half = (blocks / 2) as usize;
    let gate = proxy.hold(Some("PutSnapshotBlock"), half);
    let workers = WORKERS.to_string();
    let mut child = ec2ami(&proxy, &state)
        .args(["upload", v2.to_str().unwrap(), "--workers", &workers])
        .spawn()
        .unwrap();
    assert!(gate.arrived(WORKERS, Duration::from_secs(600)).await);
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let held = gate.held();
    drop(gate);
    let first = proxy
        .requests()
        .iter()
        .filter(|r| r.operation == "PutSnapshotBlock" && r.status == 201)
        .count();
    let second = upload(&proxy, &state, &v2, &[]).await;
    assert_eq!(second.json["resumed"], true);
    let both = first + held + second.puts;
    println!(
        "resume after kill at 50 %: killed run {first} acknowledged + {held} in flight; rerun \
         sent {} = {:.1} % of a full upload's {} (target <= 55 % + {WORKERS} in flight) in {:.2} s \
         ({:.1} % of the full upload's time); over both runs {both} = {:.1} % (starting over: {:.1} %)",
        second.puts,
        100.0 * second.puts as f64 / full.puts as f64,
        full.puts,
        second.wall,
        100.0 * second.wall / full.wall,
        100.0 * both as f64 / full.puts as f64,
        100.0 * (first + held + full.puts) as f64 / full.puts as f64,
    );
}
