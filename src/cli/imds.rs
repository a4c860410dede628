//! `ec2ami imds get PATH`: an IMDSv2 client for scripts on an instance; and the hidden
//! `ec2ami imds relay SOCKET` that `ec2ami boot` has QEMU run per metadata connection.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::parse_duration;
use ec2ami::imds::{self, Answer, GetOptions};

#[derive(Debug, Subcommand)]
pub enum ImdsCommand {
    /// Print a value of the instance metadata service (IMDSv2: a session token, then
    /// the value). IPv4 (169.254.169.254) first with 100 ms connect and reply timeouts,
    /// IPv6 (fd00:ec2::254) only when IPv4 cannot be connected to. Exit status 0 with
    /// the value on stdout, 1 when the path does not exist, 2 when no metadata service
    /// answered in time.
    Get(GetArgs),
    /// Join stdin and stdout to a metadata service's Unix socket (run by QEMU for
    /// `ec2ami boot`).
    #[command(hide = true)]
    Relay {
        /// The socket.
        socket: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct GetArgs {
    /// `instance-id`, `placement/region`, `public-keys/0/openssh-key`, `user-data`,
    /// `dynamic/instance-identity/document`, or a full `/latest/...` path.
    path: String,
    /// Give up after this long, retries included.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    timeout: Duration,
    /// Ask this address instead (repeatable, tried in order: the next only when one
    /// cannot be connected to). For tests: loopback addresses only.
    #[arg(long = "endpoint", value_name = "ADDR:PORT", value_parser = parse_endpoint)]
    endpoints: Vec<SocketAddr>,
    /// The session token's lifetime to ask for, in seconds (1 to 21600).
    #[arg(long, value_name = "SECONDS", default_value_t = 21600,
          value_parser = clap::value_parser!(u64).range(1..=21600))]
    token_ttl: u64,
}

fn parse_endpoint(s: &str) -> Result<SocketAddr, String> {
    let a: SocketAddr = s
        .parse()
        .map_err(|_| format!("`{s}` is not ADDR:PORT (e.g. 127.0.0.1:8080 or [::1]:8080)"))?;
    if !a.ip().is_loopback() {
        return Err(format!(
            "--endpoint is for tests and takes loopback addresses only, not {}",
            a.ip()
        ));
    }
    Ok(a)
}

/// Exit status: no metadata service answered.
const EXIT_NO_ANSWER: u8 = 2;

/// Run an `imds` command; it has its own exit statuses.
pub fn main(c: &ImdsCommand) -> ExitCode {
    match c {
        ImdsCommand::Relay { socket } => match imds::relay(socket) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: metadata relay to {}: {e}", socket.display());
                ExitCode::FAILURE
            }
        },
        ImdsCommand::Get(a) => get(a),
    }
}

fn get(a: &GetArgs) -> ExitCode {
    let mut opts = GetOptions {
        timeout: a.timeout,
        token_ttl: a.token_ttl,
        ..GetOptions::default()
    };
    if !a.endpoints.is_empty() {
        opts.endpoints = a.endpoints.clone();
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_NO_ANSWER);
        }
    };
    match rt.block_on(imds::get(&a.path, &opts)) {
        Ok(Answer::Value(v)) => {
            let mut out = std::io::stdout().lock();
            let mut w = out.write_all(&v);
            // A terminal gets a newline; a script gets the bytes exactly.
            if out.is_terminal() && !v.ends_with(b"\n") {
                w = w.and_then(|()| out.write_all(b"\n"));
            }
            match w.and_then(|()| out.flush()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::from(141),
                Err(e) => {
                    eprintln!("error: writing to stdout: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Ok(Answer::NotFound) => {
            eprintln!("error: {} does not exist (404)", a.path);
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_NO_ANSWER)
        }
    }
}
