//! `ec2ami testkit`: run the test harness's local servers from the command line, for
//! the README demo, benchmarks, and rehearsing a release without touching AWS.

use clap::Subcommand;

use std::time::Duration;

use super::{Failure, parse_duration, shutdown_signal};
use crate::testkit::{
    BootFixture, BootSchedule, FaultProxy, MotoServer, ProxyConfig, StrictEbs, StrictEbsConfig,
};

/// Local servers (they listen on 127.0.0.1 only).
#[derive(Debug, Subcommand)]
pub enum TestkitCommand {
    /// Start moto (pip install 'moto[server]'), extended to keep AMI state as AWS does,
    /// behind a proxy that makes its EBS answers AWS-like (512 KiB blocks); print the
    /// endpoint URL and serve until interrupted.
    Moto,
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

pub async fn run(cmd: &TestkitCommand) -> Result<(), Failure> {
    match cmd {
        TestkitCommand::Moto => {
            let moto = tokio::task::spawn_blocking(MotoServer::start)
                .await
                .map_err(|e| Failure::from(std::io::Error::other(e)))??;
            let proxy = FaultProxy::start(ProxyConfig {
                upstream: moto.url(),
                moto_fixups: true,
                rules: Vec::new(),
                seed: 0,
            })
            .await?;
            announce(&proxy.url());
            shutdown_signal().await;
            drop(proxy);
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

/// Print the URL on stdout (flushed: scripts wait for this line).
fn announce(url: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{url}");
    let _ = out.flush();
}
