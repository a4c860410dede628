//! `ec2ami-testkit`: the test world's local servers from the command line, for the
//! README demo, the benchmark scripts, and rehearsing a release without touching AWS.
//! Not part of ec2ami: users never install it.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use ec2ami_testkit::{
    BootFixture, BootSchedule, Fault, FaultProxy, FaultRule, MotoOptions, MotoServer, ProxyConfig,
    StrictEbs, StrictEbsConfig, parse_duration,
};

/// ec2ami's test world: local AWS-protocol servers on 127.0.0.1.
#[derive(Debug, Parser)]
#[command(name = "ec2ami-testkit", version, about, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: TestkitCommand,
}

/// Local servers (they listen on 127.0.0.1 only).
#[derive(Debug, Subcommand)]
enum TestkitCommand {
    /// Start moto (pip install 'moto[server]'), extended to keep AMI state as AWS does,
    /// behind a proxy that makes its EBS answers AWS-like (512 KiB blocks); print the
    /// endpoint URL and serve until interrupted.
    Moto {
        /// Delay every request of an operation (`CopyImage=100ms`; repeatable), e.g. to
        /// stand in for AWS's latency in a benchmark.
        #[arg(long = "delay", value_name = "OPERATION=DURATION", value_parser = parse_delay)]
        delays: Vec<(String, std::time::Duration)>,
        /// On exit, write the requests the proxy saw (count per operation) to FILE as JSON.
        #[arg(long, value_name = "FILE")]
        stats: Option<std::path::PathBuf>,
        /// Opt the account in to every opt-in region (moto enables only 24 regions).
        #[arg(long)]
        all_regions: bool,
        /// AWS's time, scaled: images, copies and snapshots stay `pending` for the
        /// latency model's time times this (0.01: a 5-minute copy takes 3 s; 0: instant).
        #[arg(long, value_name = "FACTOR", default_value_t = 0.0)]
        latency_scale: f64,
        /// And for at least this many DescribeImages/DescribeSnapshots answers.
        #[arg(long, value_name = "N", default_value_t = 0)]
        pending_polls: u32,
        /// New images are missing from this many DescribeImages answers.
        #[arg(long, value_name = "N", default_value_t = 0)]
        invisible_polls: u32,
    },
    /// Start the strict in-memory EBS direct endpoint; print its URL and serve until
    /// interrupted.
    StrictEbs {
        /// Port on 127.0.0.1 (0: any free port).
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// Keep only block checksums, not data (for throughput benchmarks).
        #[arg(long)]
        discard_data: bool,
    },
    /// A stand-in for a booting instance's TCP port: silent (SYNs dropped), then
    /// refusing (RST), then accepting; prints 127.0.0.1:PORT for `bench --connect-to`.
    BootFixture {
        /// How long SYNs go unanswered.
        #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration)]
        silent: Duration,
        /// How long SYNs are answered by RST after that.
        #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = parse_duration)]
        refusing: Duration,
    },
}

type Failure = Box<dyn std::error::Error + Send + Sync>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(&cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves when the process gets Ctrl-C (SIGINT) or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match term.as_mut() {
                Some(t) => { t.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => {}
    }
}

async fn run(cmd: &TestkitCommand) -> Result<(), Failure> {
    match cmd {
        TestkitCommand::Moto {
            delays,
            stats,
            all_regions,
            latency_scale,
            pending_polls,
            invisible_polls,
        } => {
            let mut realism = ec2ami_testkit::Realism::scaled(*latency_scale, *pending_polls);
            realism.invisible_polls = *invisible_polls;
            let options = MotoOptions {
                all_regions_opted_in: *all_regions,
                realism,
                ..MotoOptions::default()
            };
            let mut moto =
                tokio::task::spawn_blocking(move || MotoServer::start_with(&options)).await??;
            let rules = delays
                .iter()
                .map(|(op, d)| FaultRule::with_rate(Some(op), Fault::Delay(*d), 1.0))
                .collect();
            let proxy = FaultProxy::start(ProxyConfig {
                upstream: moto.url(),
                moto_fixups: true,
                rules,
                seed: 0,
            })
            .await?;
            announce(&proxy.url());
            // Serve until interrupted, or until moto dies: a proxy in front of nothing
            // would answer 502 to every request for ever.
            let died = tokio::select! {
                _ = shutdown_signal() => None,
                status = moto_exit(&mut moto) => Some(status),
            };
            if let Some(path) = stats {
                let mut by_op = std::collections::BTreeMap::<String, usize>::new();
                let requests = proxy.requests();
                for r in &requests {
                    *by_op.entry(r.operation.clone()).or_default() += 1;
                }
                let doc = serde_json::json!({ "requests": requests.len(), "by_operation": by_op });
                std::fs::write(path, doc.to_string())?;
            }
            drop(proxy);
            if let Some(status) = died {
                let status = match status {
                    Ok(s) => s.to_string(),
                    Err(e) => format!("its status is unknown: {e}"),
                };
                let tail = moto.log_tail(5);
                let tail = if tail.is_empty() {
                    String::new()
                } else {
                    format!("; the end of its log: {}", tail.replace('\n', " | "))
                };
                return Err(format!(
                    "moto (pid {}) exited ({status}): stopping its proxy{tail}",
                    moto.pid()
                )
                .into());
            }
            drop(moto);
        }
        TestkitCommand::StrictEbs { port, discard_data } => {
            let config = StrictEbsConfig {
                discard_data: *discard_data,
                ..StrictEbsConfig::default()
            };
            let server = StrictEbs::start_on(config, *port).await?;
            announce(&server.url());
            shutdown_signal().await;
            let rejected = server.rejections();
            if !rejected.is_empty() {
                eprintln!("{} requests were rejected:", rejected.len());
                for r in rejected.iter().take(20) {
                    eprintln!("  {r}");
                }
            }
        }
        TestkitCommand::BootFixture { silent, refusing } => {
            let fixture = BootFixture::start(BootSchedule::boot(*silent, *refusing))?;
            announce(&fixture.addr().to_string());
            shutdown_signal().await;
            drop(fixture);
        }
    }
    Ok(())
}

/// Resolves when moto has exited, with its status (checked every 200 ms).
async fn moto_exit(moto: &mut MotoServer) -> std::io::Result<std::process::ExitStatus> {
    loop {
        if let Some(status) = moto.exited()? {
            return Ok(status);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Print the URL on stdout (flushed: scripts wait for this line).
fn announce(url: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{url}");
    let _ = out.flush();
}

/// Parse `OPERATION=DURATION`.
fn parse_delay(s: &str) -> Result<(String, std::time::Duration), String> {
    let (op, d) = s
        .split_once('=')
        .ok_or_else(|| format!("expected OPERATION=DURATION, got `{s}`"))?;
    Ok((op.to_string(), parse_duration(d)?))
}
