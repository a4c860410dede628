//! Waiting for copies at release scale: a 48-image release to 30 regions leaves 48 x 29
//! = 1392 copies pending. This measures the DescribeImages requests two ways of waiting
//! make through the recording proxy, against the same moto in the same run:
//!
//! - before: each copy waited for on its own (`ami::wait_available`, the waiter copies
//!   used until now: DescribeImages of one id, 0.5 s doubling to every 15 s);
//! - after: `ami::CopyWaiter`, one DescribeImages per region for every copy pending
//!   there (2 s doubling to every 30 s).
//!
//! AWS copies take minutes to tens of minutes; the figure is 10 minutes. The
//! harness makes the copies pending for a scaled-down `EC2AMI_BENCH_COPY_PENDING_S`
//! (default 120 s) and counts requests in 5-second buckets; both waiters reach their
//! ceiling within 60 s, so the 10-minute figure is the first 60 s as measured plus the
//! steady rate measured from 60 s to the end, times the remaining 540 s. The copies are
//! made pending directly in moto by the harness's bulk generator (harness-only: 1392
//! CopyImage calls would only measure moto).
//!
//! Run: `cargo bench --bench copy_wait` (needs moto, see README).

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ec2ami::ami::{self, CopyWaiter};
use ec2ami::aws::{self, AwsOptions, Clients, RetryPolicy};
use ec2ami_testkit::{FaultProxy, MotoOptions, MotoServer, ProxyConfig};
use futures_util::future::join_all;
use serde_json::json;

const IMAGES: usize = 48;
const REGIONS: usize = 30;
const BUCKET: Duration = Duration::from_secs(5);
/// Both waiters poll at their ceiling from here on.
const STEADY_FROM: Duration = Duration::from_secs(60);
const TEN_MINUTES: f64 = 600.0;

fn generate(port: u16, body: &str) -> serde_json::Value {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(600))).unwrap();
    write!(
        s,
        "POST /moto-api/ec2ami/generate HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body.as_bytes()).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let (head, json) = answer.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "generate: {head}");
    serde_json::from_str(json).unwrap()
}

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

/// What one way of waiting did.
struct Measured {
    /// DescribeImages per 5-second bucket, from the start of the wait.
    buckets: Vec<usize>,
    total: usize,
    wall: f64,
}

impl Measured {
    /// Polls per minute in the steady part (from 60 s to the last full bucket before
    /// the copies became available).
    fn steady_per_min(&self, pending: Duration) -> f64 {
        let from = (STEADY_FROM.as_secs() / BUCKET.as_secs()) as usize;
        let to = (pending.as_secs() / BUCKET.as_secs()) as usize;
        let n: usize = self.buckets[from..to.min(self.buckets.len())].iter().sum();
        n as f64 / ((to - from) as f64 * BUCKET.as_secs_f64()) * 60.0
    }

    fn first_minute(&self) -> usize {
        let k = (STEADY_FROM.as_secs() / BUCKET.as_secs()) as usize;
        self.buckets[..k.min(self.buckets.len())].iter().sum()
    }

    /// Polls while copies take 10 minutes, extrapolated as the module says.
    fn ten_minutes(&self, pending: Duration) -> f64 {
        self.first_minute() as f64
            + self.steady_per_min(pending) / 60.0 * (TEN_MINUTES - STEADY_FROM.as_secs_f64())
    }
}

async fn measure(
    moto: &MotoServer,
    proxy: &FaultProxy,
    through: &Clients,
    regions: &[String],
    pending: Duration,
    batched: bool,
    tag: &str,
) -> Measured {
    // 48 copies pending in each destination region.
    let images: Vec<_> = regions[1..]
        .iter()
        .flat_map(|r| {
            (0..IMAGES).map(move |i| {
                json!({"region": r, "name": format!("Bench {tag} image {i}"),
                       "pending_seconds": pending.as_secs(),
                       "snapshots": [{"size": 2}]})
            })
        })
        .collect();
    let port = moto.port();
    let body = json!({ "images": images }).to_string();
    let made = tokio::task::spawn_blocking(move || generate(port, &body))
        .await
        .unwrap();
    let ids: Vec<String> = made["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), IMAGES * (REGIONS - 1));
    proxy.clear_requests();
    let done = AtomicBool::new(false);
    let retry = RetryPolicy::default();
    let waiter = CopyWaiter::default();
    let t0 = Instant::now();
    let deadline = pending + Duration::from_secs(300);
    let waits = ids.iter().enumerate().map(|(n, id)| {
        let dest = through.in_region(&regions[1 + n / IMAGES]);
        let waiter = waiter.clone();
        async move {
            if batched {
                waiter.wait(&dest, id, deadline, &retry).await
            } else {
                ami::wait_available(&dest, id, deadline, &retry).await
            }
        }
    });
    let waiting = async {
        let r = join_all(waits).await;
        done.store(true, Ordering::SeqCst);
        r
    };
    let sampling = async {
        let mut buckets = Vec::new();
        let mut last = 0;
        let mut tick = tokio::time::interval(BUCKET);
        tick.tick().await;
        while !done.load(Ordering::SeqCst) {
            tick.tick().await;
            let now = proxy.count("DescribeImages");
            buckets.push(now - last);
            last = now;
        }
        buckets
    };
    let (results, buckets) = tokio::join!(waiting, sampling);
    for r in results {
        r.expect("every copy becomes available");
    }
    let wall = t0.elapsed().as_secs_f64();
    Measured {
        total: proxy.count("DescribeImages"),
        buckets,
        wall,
    }
}

fn main() {
    let pending = Duration::from_secs(
        std::env::var("EC2AMI_BENCH_COPY_PENDING_S")
            .ok()
            .map(|s| s.parse().expect("seconds"))
            .unwrap_or(120),
    );
    assert!(
        pending > STEADY_FROM + BUCKET * 2,
        "pending must exceed 70 s"
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let options = MotoOptions {
            all_regions_opted_in: true,
            ..MotoOptions::default()
        };
        let moto = tokio::task::spawn_blocking(move || MotoServer::start_with(&options))
            .await
            .unwrap()
            .expect("moto starts");
        let proxy = FaultProxy::start(ProxyConfig::new(moto.url()))
            .await
            .unwrap();
        let through = clients(&proxy.url()).await;
        let mut regions = ec2ami::aws::ec2::enabled_regions(&through, &RetryPolicy::default())
            .await
            .unwrap();
        regions.retain(|r| !r.starts_with("cn-") && !r.starts_with("us-gov-"));
        assert!(regions.len() >= REGIONS, "moto knows {} regions", regions.len());
        regions.truncate(REGIONS);
        eprintln!("before: every copy waited for on its own");
        let before = measure(&moto, &proxy, &through, &regions, pending, false, "before").await;
        eprintln!("after: one DescribeImages per region for its pending copies");
        let after = measure(&moto, &proxy, &through, &regions, pending, true, "after").await;
        let copies = IMAGES * (REGIONS - 1);
        println!(
            "{IMAGES} images x {REGIONS} regions: {copies} copies pending {} s (scaled from 10 minutes)\n",
            pending.as_secs()
        );
        println!(
            "| waiting | DescribeImages in the {} s wait | first 60 s | steady polls/min (60 s to {} s) | extrapolated polls over 10 minutes | polls/min over 10 minutes | wall s |",
            pending.as_secs(),
            pending.as_secs()
        );
        println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
        for (label, m) in [("before: one request per copy", &before), ("after: one request per region", &after)] {
            let ten = m.ten_minutes(pending);
            println!(
                "| {label} | {} | {} | {:.0} | {:.0} | {:.0} | {:.1} |",
                m.total,
                m.first_minute(),
                m.steady_per_min(pending),
                ten,
                ten / 10.0,
                m.wall
            );
        }
        println!(
            "\nratio of polls over 10 minutes, before / after: {:.0}x",
            before.ten_minutes(pending) / after.ten_minutes(pending)
        );
        println!(
            "buckets (requests per 5 s) before: {:?}\nbuckets after: {:?}",
            before.buckets, after.buckets
        );
        drop(proxy);
        drop(moto);
    });
}
