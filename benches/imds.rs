//! Time to a result of `ec2ami imds get` (the real binary, process start included) on
//! loopback, against the seeds' 75 s (a metadata client that tried IPv6 first with the
//! default TCP connect timeout): the metadata service answering on the first address;
//! the first address refusing, black-holed (SYNs dropped) or accepting and silent, the
//! second answering; and no service answering at all. Medians and maxima of N runs,
//! Markdown.
//!
//! `cargo bench --bench imds [-- RUNS]` (default 20).

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use ec2ami::bench::Summary;
use ec2ami::imds::{Imds, ImdsServer, InstanceMetadata};
use ec2ami_testkit::{BootFixture, BootSchedule};

const SEEDS_SECONDS: f64 = 75.0;

/// Run `imds get instance-id` against `endpoints`; (seconds, exit status).
fn get(endpoints: &[SocketAddr]) -> (f64, i32) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ec2ami"));
    c.args(["imds", "get", "instance-id"])
        .env("EC2AMI_LOG", "error");
    for e in endpoints {
        c.arg("--endpoint").arg(e.to_string());
    }
    let t0 = Instant::now();
    let out = c.output().expect("ec2ami runs");
    (t0.elapsed().as_secs_f64(), out.status.code().unwrap_or(-1))
}

/// A naive metadata client, as the seeds describe the slow one: each address in turn
/// with the operating system's connect timeout (no timeout of its own), then one plain
/// HTTP GET. (seconds, whether it got an answer).
fn naive_get(endpoints: &[SocketAddr]) -> (f64, bool) {
    use std::io::{Read, Write};
    let t0 = Instant::now();
    for e in endpoints {
        if let Ok(mut s) = std::net::TcpStream::connect(e) {
            let req = format!(
                "GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: {e}\r\nConnection: close\r\n\r\n"
            );
            if s.write_all(req.as_bytes()).is_ok() {
                let mut buf = Vec::new();
                let _ = s.read_to_end(&mut buf);
                return (t0.elapsed().as_secs_f64(), !buf.is_empty());
            }
        }
    }
    (t0.elapsed().as_secs_f64(), false)
}

fn main() {
    let runs: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(20);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let meta = InstanceMetadata::local("ami-0123456789abcdef0", "m7i.large", "us-east-1");
    let v4 = rt
        .block_on(ImdsServer::tcp(
            Imds::new(meta.clone()),
            &["127.0.0.1:0".parse().unwrap()],
        ))
        .unwrap();
    let v6 = rt
        .block_on(ImdsServer::tcp(
            Imds::new(meta),
            &["[::1]:0".parse().unwrap()],
        ))
        .unwrap();
    let answering = v4.addrs()[0];
    let second = v6.addrs()[0];
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let hole = BootFixture::start(BootSchedule::never()).unwrap();
    let hole2 = BootFixture::start(BootSchedule::never()).unwrap();
    // Accepts and never says a word.
    let mute = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mute_addr = mute.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut keep = Vec::new();
        for s in mute.incoming() {
            keep.push(s);
        }
    });

    let scenarios: Vec<(&str, Vec<SocketAddr>, i32)> = vec![
        ("IPv4 answers", vec![answering], 0),
        ("IPv4 refused, IPv6 answers", vec![refused, second], 0),
        (
            "IPv4 black-holed, IPv6 answers",
            vec![hole.addr(), second],
            0,
        ),
        (
            "nothing answers (both black-holed; `--timeout 1s`)",
            vec![hole.addr(), hole2.addr()],
            2,
        ),
        (
            "IPv4 accepts and stays silent (`--timeout 1s`)",
            vec![mute_addr],
            2,
        ),
    ];
    println!(
        "`cargo bench --bench imds -- {runs}`: `ec2ami imds get instance-id`, process start \
         included, {runs} runs per row, loopback (the first address stands for \
         169.254.169.254, the second for fd00:ec2::254)."
    );
    println!();
    println!("| case | exit | median s | max s | the seeds' 75 s / median |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    for (name, eps, want) in scenarios {
        let mut times = Vec::new();
        for _ in 0..runs {
            let (t, code) = get(&eps);
            assert_eq!(code, want, "{name}: exit {code}");
            times.push(t);
        }
        let s = Summary::of(times).unwrap();
        println!(
            "| {name} | {want} | {:.3} | {:.3} | {:.0}x |",
            s.median,
            s.max,
            SEEDS_SECONDS / s.median
        );
    }
    // The baseline, measured here once (it takes the kernel's SYN retries, about two
    // minutes): the naive client against the first address black-holed.
    let (naive, answered) = naive_get(&[hole.addr(), second]);
    let (ours, code) = get(&[hole.addr(), second]);
    assert!(answered, "the naive client got no answer");
    assert_eq!(code, 0);
    println!();
    println!(
        "Same run, one each: a naive client (each address in turn, the OS's connect timeout, \
         net.ipv4.tcp_syn_retries = {}) with the first address black-holed: {naive:.1} s; \
         `ec2ami imds get`: {ours:.3} s ({:.0}x faster).",
        std::fs::read_to_string("/proc/sys/net/ipv4/tcp_syn_retries")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "?".into()),
        naive / ours
    );
    drop((v4, v6));
    std::thread::sleep(Duration::from_millis(10));
}
