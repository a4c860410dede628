//! The cost of an `ec2ami test` run in instance-minutes, from its launch and terminate
//! stamps: a 2-type x N-image matrix (N = `EC2AMI_BENCH_IMAGES`, default 4) against
//! moto, each "instance" answering SSH's banner at once (a banner-only stand-in on
//! 127.0.0.1, `connect_to`), with `capture` on (console output and screenshot per
//! test). What it measures is ec2ami's own time per test between RunInstances and
//! TerminateInstances: what a test costs beyond the image's boot and the checks. The
//! baseline in the same run is `bench` (one run per cell, no discard) on the same
//! matrix: the bare launch -> probe -> terminate.
//!
//! Run: `cargo bench --profile dev --bench test_matrix` (needs moto, see README).

use std::io::Write;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use ec2ami::aws::{self, AwsOptions, Clients, RetryPolicy};
use ec2ami::bench::{self, BenchOptions, LaunchSpec, Scope};
use ec2ami::ec2test::{self, Target, TestOptions};
use ec2ami::state::StateDb;
use ec2ami_testkit::{MotoOptions, MotoServer};

async fn clients(url: &str) -> Clients {
    aws::connect(&AwsOptions {
        region: Some("us-east-1".into()),
        endpoint_url: Some(url.to_string()),
        credentials: Some(aws_sdk_ec2::config::Credentials::new(
            "testing", "testing", None, None, "bench",
        )),
        ..AwsOptions::default()
    })
    .await
    .unwrap()
}

fn banner_only() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let _ = s.write_all(b"SSH-2.0-OpenSSH_9.2p1 stand-in\r\n");
        }
    });
    addr
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[tokio::main]
async fn main() {
    // SAFETY: set before any thread reads the environment.
    unsafe { std::env::set_var("AWS_EC2_METADATA_DISABLED", "true") };
    let n: usize = std::env::var("EC2AMI_BENCH_IMAGES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    let moto = tokio::task::spawn_blocking(|| MotoServer::start_with(&MotoOptions::default()))
        .await
        .unwrap()
        .expect("moto starts");
    let c = clients(&moto.url()).await;
    let mut amis = Vec::new();
    for i in 0..n {
        let out = c
            .ec2
            .register_image()
            .name(format!("bench matrix image {i}"))
            .architecture(aws_sdk_ec2::types::ArchitectureValues::X8664)
            .root_device_name("/dev/sda1")
            .send()
            .await
            .unwrap();
        amis.push(out.image_id().unwrap().to_string());
    }
    let types = ["t3.micro".to_string(), "m7g.large".to_string()];
    let addr = banner_only();
    let dir = tempfile::tempdir().unwrap();
    let db = StateDb::open(&dir.path().join("state.db")).unwrap();
    let scope = Scope {
        endpoint: moto.url(),
        profile: String::new(),
    };

    // Baseline: bench, one run per cell.
    let t0 = Instant::now();
    let mut bench_minutes = Vec::new();
    for ami in &amis {
        for ty in &types {
            let opts = BenchOptions {
                launch: LaunchSpec {
                    image_id: ami.clone(),
                    instance_type: ty.clone(),
                    subnet: None,
                    security_groups: vec![],
                    user_data: None,
                    ipv6: false,
                    key_name: None,
                    purpose: "bench",
                },
                runs: 1,
                discard_first: false,
                concurrency: 1,
                port: 22,
                phase_timeout: Duration::from_secs(60),
                connect_to: Some(addr),
                poll: Default::default(),
                probe: Default::default(),
                retry: RetryPolicy::default(),
                scope: scope.clone(),
                capture: None,
            };
            let s = std::time::SystemTime::now();
            let r = bench::run(&c, &db, &opts, std::future::pending())
                .await
                .unwrap();
            assert_eq!(r.problems(), Vec::<String>::new());
            bench_minutes.push(s.elapsed().unwrap().as_secs_f64() / 60.0);
        }
    }
    let bench_wall = t0.elapsed().as_secs_f64();

    // The test run: the same matrix, with capture.
    let opts = TestOptions {
        targets: amis
            .iter()
            .map(|a| Target {
                region: "us-east-1".into(),
                image_id: a.clone(),
                name: None,
            })
            .collect(),
        instance_types: types.to_vec(),
        checks: vec![],
        ssh_user: "ec2-user".into(),
        subnet: None,
        security_groups: vec![],
        user_data: None,
        timeout: Duration::from_secs(60),
        connect_to: Some(addr),
        capture: true,
        artifacts: dir.path().join("artifacts"),
        poll: Default::default(),
        retry: RetryPolicy::default(),
        scope,
    };
    let t1 = Instant::now();
    let r = ec2test::run(&c, &db, &opts, std::future::pending())
        .await
        .unwrap();
    let test_wall = t1.elapsed().as_secs_f64();
    assert!(r.passed(), "{}", ec2test::matrix_table(&r));
    let per_test: Vec<f64> = r
        .cells
        .iter()
        .filter_map(|c| c.instance_minutes())
        .collect();
    assert_eq!(per_test.len(), 2 * n);
    let total = r.instance_minutes();
    let bench_total: f64 = bench_minutes.iter().sum();
    println!("2 types x {n} images = {} tests", 2 * n);
    println!(
        "test run: {total:.3} instance-minutes in all ({:.2} s per test, median, launch -> terminate stamps); wall {test_wall:.1} s",
        median(per_test.clone()) * 60.0
    );
    println!(
        "bench baseline (same matrix, same run): {bench_total:.3} instance-minutes ({:.2} s per run, median); wall {bench_wall:.1} s",
        median(bench_minutes.clone()) * 60.0
    );
    println!(
        "ratio test / bench: {:.2}x per instance",
        median(per_test) / median(bench_minutes)
    );
}
