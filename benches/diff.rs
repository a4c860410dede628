//! `ec2ami diff` of two 16 GiB sparse images differing in one partition (issue 12): wall
//! time and the bytes the `ec2ami` process read, from the kernel's I/O accounting (the
//! `rchar` and `read_bytes` of this process's `/proc/self/io`, which take in a reaped
//! child's counters), against the two files' allocated and apparent sizes. Holes must
//! not be read: `rchar` should be about the allocated bytes, not the apparent 32 GiB.
//!
//! A: a GPT made by sgdisk with four 4 GiB partitions, 64 MiB of random data at the
//! start of each; B: a sparse copy of A with 16 MiB rewritten inside partition 2. Both
//! files are read once by a first, unmeasured diff (page cache warm), then diff runs
//! twice.
//! `EC2AMI_BENCH_DIFF_CMP=1` adds `cmp -l` (the naive full read) in the same run.
//!
//! Run: `cargo bench --profile dev --bench diff`.

use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use ec2ami_testkit::moto::AWS_ENV_TO_REMOVE;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// `rchar` and `read_bytes` of this process (with its reaped children).
fn io() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/self/io").unwrap();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap()
    };
    (field("rchar:"), field("read_bytes:"))
}

/// Run `cmd` to its end: wall seconds, (rchar, read_bytes) of it, its stdout and status.
fn measured(cmd: &mut Command) -> (f64, (u64, u64), Vec<u8>, i32) {
    let before = io();
    let t0 = Instant::now();
    let out = cmd.output().unwrap();
    let wall = t0.elapsed().as_secs_f64();
    let after = io();
    // This process's own reads meanwhile: the child's stdout through the pipe.
    let own = out.stdout.len() as u64 + out.stderr.len() as u64;
    (
        wall,
        (after.0 - before.0 - own, after.1 - before.1),
        out.stdout,
        out.status.code().unwrap_or(-1),
    )
}

fn random(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut v = vec![0u8; len];
    rng.fill(&mut v);
    v
}

fn allocated(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().blocks() * 512
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.raw"), dir.path().join("b.raw"));
    {
        let f = std::fs::File::create(&a).unwrap();
        f.set_len(16 * GIB).unwrap();
    }
    let st = Command::new("sgdisk")
        .args(["-n", "1:0:+4G", "-c", "1:p1"])
        .args(["-n", "2:0:+4G", "-c", "2:p2"])
        .args(["-n", "3:0:+4G", "-c", "3:p3"])
        .args(["-n", "4:0:0", "-c", "4:p4"])
        .arg(&a)
        .output()
        .expect("sgdisk runs (apt-get install gdisk)");
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    // Partition starts: 1 MiB, then 4 GiB apart (sgdisk's 2048-sector alignment).
    let starts: Vec<u64> = (0..4).map(|i| MIB + i * 4 * GIB).collect();
    {
        let f = std::fs::OpenOptions::new().write(true).open(&a).unwrap();
        for (i, s) in starts.iter().enumerate() {
            f.write_all_at(&random(i as u64, 64 * MIB as usize), s + MIB)
                .unwrap();
        }
        f.sync_all().unwrap();
    }
    let st = Command::new("cp")
        .arg("--sparse=always")
        .arg(&a)
        .arg(&b)
        .status()
        .unwrap();
    assert!(st.success());
    {
        let f = std::fs::OpenOptions::new().write(true).open(&b).unwrap();
        f.write_all_at(&random(99, 16 * MIB as usize), starts[1] + 17 * MIB)
            .unwrap();
        f.sync_all().unwrap();
    }
    let (alloc_a, alloc_b) = (allocated(&a), allocated(&b));
    // Warm the page cache with the data (holes are not read: the bench reads only what
    // is allocated, through diff itself).
    let ec2ami = |args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ec2ami"));
        for k in AWS_ENV_TO_REMOVE {
            cmd.env_remove(k);
        }
        cmd.env("XDG_STATE_HOME", dir.path().join("state"))
            .env("EC2AMI_LOG", "warn")
            .args(args);
        cmd
    };
    let args = [
        "--output",
        "json",
        "diff",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
    ];
    let _ = ec2ami(&args).output().unwrap();
    println!(
        "two 16 GiB images, allocated {alloc_a} + {alloc_b} bytes ({:.2} % of the 32 GiB)",
        100.0 * (alloc_a + alloc_b) as f64 / (32 * GIB) as f64
    );
    println!("| what | wall s | rchar | read_bytes |");
    println!("| --- | ---: | ---: | ---: |");
    let mut last = None;
    for run in 1..=2 {
        let (wall, (rchar, read_bytes), out, code) = measured(&mut ec2ami(&args));
        assert_eq!(code, 1, "diff exits 1 when the images differ");
        let r: serde_json::Value = serde_json::from_slice(&out).unwrap();
        println!("| `ec2ami diff a.raw b.raw` (run {run}) | {wall:.2} | {rchar} | {read_bytes} |");
        last = Some((wall, rchar, r));
    }
    let (wall, rchar, r) = last.unwrap();
    let changed: Vec<(String, u64)> = r["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or("").to_string(),
                p["bytes_changed"].as_u64().unwrap(),
            )
        })
        .collect();
    println!(
        "blocks changed {}, bytes changed {}, per partition {changed:?}, outside {}; ec2ami's \
         own count of bytes read {} + {}",
        r["blocks_changed"],
        r["bytes_changed"],
        r["outside_partitions_bytes"],
        r["a"]["bytes_read"],
        r["b"]["bytes_read"],
    );
    println!(
        "rchar / allocated bytes {:.3}, rchar / apparent 32 GiB {:.2} %",
        rchar as f64 / (alloc_a + alloc_b) as f64,
        100.0 * rchar as f64 / (32 * GIB) as f64
    );
    if std::env::var("EC2AMI_BENCH_DIFF_CMP").as_deref() == Ok("1") {
        let (cw, (cr, crb), _, _) = measured(
            Command::new("cmp")
                .arg("-l")
                .arg(&a)
                .arg(&b)
                // Not /dev/null: GNU cmp then stops at the first difference.
                .stdout(std::fs::File::create(a.with_file_name("cmp.out")).unwrap()),
        );
        println!(
            "| `cmp -l a.raw b.raw` | {cw:.2} | {cr} | {crb} |\ncmp / diff: wall {:.1}x, rchar {:.1}x",
            cw / wall,
            cr as f64 / rchar as f64
        );
    }
}
