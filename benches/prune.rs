//! Prune planning at scale: a FreeBSD-like weekly history (48 series, weekly builds) of
//! 10,000 AMIs and 20,000 snapshots spread over 30 regions, generated inside moto, and
//! `ec2ami::prune::plan` over all of it through the recording proxy. Prints, per size,
//! the requests made (by operation), the wall time and ec2ami's own CPU time, as a
//! Markdown table for BENCHMARKS.md.
//!
//! The history is made by the harness's bulk generator (`POST /moto-api/ec2ami/generate`
//! in testkit/src/moto_ext.py, harness-only): creating 10,000 AMIs through the API would
//! take many minutes of moto's time and measure nothing of prune. The SSM parameters (48
//! per region, pointing at each series' newest image) are put through the API.
//!
//! Run: `cargo bench --bench prune` (release build; needs moto, see README). Sizes:
//! `EC2AMI_BENCH_PRUNE_SIZES=1000,10000` (AMIs; twice as many snapshots).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use aws_smithy_types::DateTime;
use aws_smithy_types::date_time::Format;
use ec2ami::aws::{self, AwsOptions, Clients, RetryPolicy};
use ec2ami::prune::{self, PlanOptions, Policy, Selection, SeriesPattern};
use ec2ami_testkit::{FaultProxy, MotoOptions, MotoServer, ProxyConfig};
use futures_util::future::join_all;
use serde_json::json;

const REGIONS: usize = 30;
const BRANCHES: [&str; 3] = ["13.4-STABLE", "14.2-STABLE", "15.0-CURRENT"];
const ARCHES: [&str; 2] = ["amd64", "arm64"];
const FLAVOURS: [&str; 4] = ["base", "cloud-init", "small", "builder"];
const FSES: [&str; 2] = ["UFS", "ZFS"];
const SERIES: usize = 48;
const DAY: i64 = 86_400;

/// One of the 48 series: (branch, arch, flavour, fs).
fn series(s: usize) -> (&'static str, &'static str, &'static str, &'static str) {
    (
        BRANCHES[s % 3],
        ARCHES[(s / 3) % 2],
        FLAVOURS[(s / 6) % 4],
        FSES[(s / 24) % 2],
    )
}

fn rfc3339(t: i64) -> String {
    DateTime::from_secs(t).fmt(Format::DateTime).unwrap()
}

fn cpu_seconds() -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct we own.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// POST `body` to moto's bulk generator (straight to moto, not through the proxy).
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

struct Row {
    amis: usize,
    snapshots: usize,
    requests: BTreeMap<String, usize>,
    wall: f64,
    cpu: f64,
    to_delete: (usize, usize),
    generate_s: f64,
}

async fn run(amis: usize) -> Row {
    let snapshots = 2 * amis;
    let options = MotoOptions {
        all_regions_opted_in: true,
        ..MotoOptions::default()
    };
    let moto = tokio::task::spawn_blocking(move || MotoServer::start_with(&options))
        .await
        .unwrap()
        .expect("moto starts");
    let direct = clients(&moto.url()).await;
    let retry = RetryPolicy::default();
    let regions: Vec<String> = ami_regions(&direct, &retry).await;
    let now = DateTime::from(std::time::SystemTime::now()).secs();

    // The history: image i of a region is week i / 48 of series i % 48, built 2 + 7w
    // days ago, with one root snapshot; as many loose snapshots again, a quarter each
    // ec2ami's unused, CreateImage's and CopyImage's for missing images, and others'.
    let t0 = Instant::now();
    let mut images = Vec::new();
    let mut loose = Vec::new();
    for (r, region) in regions.iter().enumerate() {
        let n = amis / REGIONS + usize::from(r < amis % REGIONS);
        for i in 0..n {
            let (branch, arch, flavour, fs) = series(i % SERIES);
            let built = now - (2 + 7 * (i / SERIES) as i64) * DAY;
            let date = rfc3339(built)[..10].replace('-', "");
            images.push(json!({
                "region": region,
                "name": format!("FreeBSD {branch}-{arch}-{date} UEFI-PREFERRED {flavour} {fs}"),
                "created": rfc3339(built),
                "tags": {"ec2ami:managed-by": "ec2ami", "ec2ami:branch": branch},
                "snapshots": [{"size": if flavour == "small" { 2 } else { 6 },
                               "description": format!("FreeBSD {branch} {arch}"),
                               "created": rfc3339(built),
                               "tags": {"ec2ami:managed-by": "ec2ami"}}],
            }));
        }
        let m = (snapshots - amis) / REGIONS + usize::from(r < (snapshots - amis) % REGIONS);
        for j in 0..m {
            let (desc, tags) = match j % 4 {
                0 => (
                    "FreeBSD upload".to_string(),
                    json!({"ec2ami:managed-by": "ec2ami"}),
                ),
                1 => (
                    format!(
                        "Created by CreateImage(i-0123456789abcdef0) for ami-{j:017x} from vol-0123456789abcdef0"
                    ),
                    json!({}),
                ),
                2 => (
                    format!(
                        "Copied for DestinationAmi ami-{j:017x} from SourceAmi ami-0 for SourceSnapshot snap-0. Task created on 1."
                    ),
                    json!({}),
                ),
                _ => ("nightly backup".to_string(), json!({})),
            };
            loose.push(json!({"region": region, "size": 4, "description": desc,
                              "created": rfc3339(now - 30 * DAY), "tags": tags}));
        }
    }
    let body = json!({"images": images, "snapshots": loose}).to_string();
    let made = tokio::task::spawn_blocking({
        let port = moto.port();
        move || generate(port, &body)
    })
    .await
    .unwrap();
    assert_eq!(made["images"].as_array().unwrap().len(), amis);
    // Each series' newest image is published as a parameter in its region.
    let ids = made["images"].as_array().unwrap();
    let mut puts = Vec::new();
    let mut k = 0;
    for (r, region) in regions.iter().enumerate() {
        let n = amis / REGIONS + usize::from(r < amis % REGIONS);
        let c = direct.in_region(region);
        for (i, id) in ids[k..k + n.min(SERIES)].iter().enumerate() {
            let (branch, arch, flavour, fs) = series(i);
            let name = format!("/freebsd/{arch}/{flavour}/{}/{branch}", fs.to_lowercase());
            let c = c.clone();
            let id = id.as_str().unwrap().to_string();
            puts.push(async move {
                c.ssm
                    .put_parameter()
                    .name(name)
                    .value(id)
                    .r#type(aws_sdk_ssm::types::ParameterType::String)
                    .send()
                    .await
                    .unwrap();
            });
        }
        k += n;
    }
    while !puts.is_empty() {
        let batch: Vec<_> = puts.drain(..puts.len().min(64)).collect();
        join_all(batch).await;
    }
    let generate_s = t0.elapsed().as_secs_f64();

    let proxy = FaultProxy::start(ProxyConfig::new(moto.url()))
        .await
        .unwrap();
    let through = clients(&proxy.url()).await;
    let opts = PlanOptions {
        selection: Selection::default(),
        pattern: SeriesPattern::default(),
        policy: Policy::build(
            &prune::Flags {
                keep: Some(4),
                min_age: Some(Duration::from_secs(3 * DAY as u64)),
                ..prune::Flags::default()
            },
            None,
        )
        .unwrap(),
        include_public: false,
        orphans: true,
        price_per_gb_month: prune::plan::DEFAULT_PRICE_PER_GB_MONTH,
        now,
        unprotect: false,
        unused_for: None,
    };
    let (cpu0, t1) = (cpu_seconds(), Instant::now());
    let regions = ec2ami::ami::resolve_regions(&through, &regions, &retry)
        .await
        .unwrap();
    let sources = prune::parameter_sources(&regions, &[], &["/freebsd".to_string()]);
    let plan = prune::plan(&through, &regions, &sources, &opts, &retry).await;
    let (wall, cpu) = (t1.elapsed().as_secs_f64(), cpu_seconds() - cpu0);
    assert!(plan.failed_regions().is_empty());
    let mut requests = BTreeMap::new();
    for r in proxy.requests() {
        *requests.entry(r.operation).or_insert(0) += 1;
    }
    drop(moto);
    Row {
        amis,
        snapshots,
        requests,
        wall,
        cpu,
        to_delete: (plan.images_to_delete, plan.snapshots_to_delete),
        generate_s,
    }
}

async fn ami_regions(c: &Clients, retry: &RetryPolicy) -> Vec<String> {
    let mut all = ec2ami::aws::ec2::enabled_regions(c, retry).await.unwrap();
    assert!(all.len() >= REGIONS, "moto knows {} regions", all.len());
    all.truncate(REGIONS);
    all
}

fn main() {
    let sizes: Vec<usize> = std::env::var("EC2AMI_BENCH_PRUNE_SIZES")
        .unwrap_or_else(|_| "1000,10000".into())
        .split(',')
        .map(|s| s.trim().parse().expect("sizes are numbers of AMIs"))
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let rows: Vec<Row> = sizes.iter().map(|&n| rt.block_on(run(n))).collect();
    println!(
        "| AMIs | snapshots | regions | requests | DescribeImages | DescribeSnapshots | other requests | requests per AMI | wall s | ec2ami CPU s | planned deletions (images, snapshots) |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | --- |");
    for r in &rows {
        let total: usize = r.requests.values().sum();
        let other: Vec<String> = r
            .requests
            .iter()
            .filter(|(k, _)| *k != "DescribeImages" && *k != "DescribeSnapshots")
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        println!(
            "| {} | {} | {REGIONS} | {total} | {} | {} | {} | {:.4} | {:.2} | {:.2} | {}, {} |",
            r.amis,
            r.snapshots,
            r.requests.get("DescribeImages").copied().unwrap_or(0),
            r.requests.get("DescribeSnapshots").copied().unwrap_or(0),
            other.join(", "),
            total as f64 / r.amis as f64,
            r.wall,
            r.cpu,
            r.to_delete.0,
            r.to_delete.1,
        );
    }
    for r in &rows {
        eprintln!(
            "generating {} AMIs and {} snapshots in moto took {:.1}s",
            r.amis, r.snapshots, r.generate_s
        );
    }
    if let [small, .., big] = rows.as_slice() {
        println!(
            "\nscaling {}x the history: wall {:.2}x, ec2ami CPU {:.2}x, requests {:.2}x",
            big.amis / small.amis,
            big.wall / small.wall,
            big.cpu / small.cpu,
            big.requests.values().sum::<usize>() as f64
                / small.requests.values().sum::<usize>() as f64
        );
    }
}
