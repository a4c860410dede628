//! Smoke checks over SSH with the system's OpenSSH client: an ephemeral ed25519 key,
//! the `SSH-2.0-` banner as the proof that sshd is up, a known-hosts file built from
//! the host keys the console printed (or trust on first use, said so), and each check's
//! output and exit status.
//!
//! Nothing here knows about QEMU: `ec2ami boot` points it at the guest's forwarded
//! port, and the same code serves checks on an EC2 instance.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio::time::{Instant, timeout};

use super::console::{ConsoleHostKeys, HostKey};

/// The name the guest's host keys are filed under in the known-hosts file (whatever
/// address and port reach it).
pub const HOST_ALIAS: &str = "ec2ami-guest";
/// Output kept per check and stream.
const MAX_OUTPUT: usize = 64 * 1024;

/// Why SSH could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    /// A program is missing or failed to start.
    #[error("cannot run {program}: {source} (install openssh-client)")]
    Spawn {
        /// ssh, ssh-keygen or ssh-keyscan.
        program: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// A program failed.
    #[error("{program} failed: {detail}")]
    Failed {
        /// Which.
        program: &'static str,
        /// Its message.
        detail: String,
    },
    /// The host keys cannot be trusted or found.
    #[error("{0}")]
    HostKeys(String),
    /// Writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// An ephemeral key pair; the private key is a 0600 file.
#[derive(Debug, Clone)]
pub struct KeyPair {
    /// The private key file.
    pub private: PathBuf,
    /// The public key, one OpenSSH line.
    pub public: String,
}

/// Make an ed25519 key pair in `dir` (which should be private to this process).
pub async fn generate_key(dir: &Path, comment: &str) -> Result<KeyPair, SshError> {
    let private = dir.join("id_ed25519");
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(&private)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|source| SshError::Spawn {
            program: "ssh-keygen",
            source,
        })?;
    if !out.status.success() {
        return Err(SshError::Failed {
            program: "ssh-keygen",
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    let pub_path = private.with_extension("pub");
    let public = std::fs::read_to_string(&pub_path)
        .map_err(|source| SshError::Io {
            path: pub_path,
            source,
        })?
        .trim()
        .to_string();
    Ok(KeyPair { private, public })
}

/// Connect to `addr` every `interval` until a connection answers with an `SSH-2.0-`
/// banner (a TCP connect alone proves nothing behind a forwarding proxy such as QEMU's
/// user networking, which accepts at once). Returns when the banner arrived and the
/// banner line, or `None` at the deadline.
pub async fn wait_for_banner(
    addr: SocketAddr,
    deadline: Instant,
    interval: Duration,
) -> Option<(Instant, String)> {
    loop {
        let tried = Instant::now();
        if tried >= deadline {
            return None;
        }
        let left = deadline - tried;
        if let Ok(Some(found)) = timeout(left.min(Duration::from_secs(2)), banner_once(addr)).await
        {
            return Some(found);
        }
        let next = tried + interval;
        if next >= deadline {
            return None;
        }
        tokio::time::sleep_until(next).await;
    }
}

/// One connection: the banner, if the first line is one.
async fn banner_once(addr: SocketAddr) -> Option<(Instant, String)> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 256];
    let mut first_byte = None;
    loop {
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        first_byte.get_or_insert_with(Instant::now);
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() >= 8 && !buf.starts_with(b"SSH-2.0-") {
            return None;
        }
        if let Some(end) = buf.iter().position(|&b| b == b'\n') {
            let line = String::from_utf8_lossy(&buf[..end]).trim().to_string();
            return match first_byte {
                Some(at) if line.starts_with("SSH-2.0-") => Some((at, line)),
                _ => None,
            };
        }
        if buf.len() > 255 {
            return None;
        }
    }
}

/// How the guest's host keys came to be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostKeyTrust {
    /// The console printed the keys; those are the known hosts.
    Console,
    /// The console printed fingerprints; the keys sshd offered match them.
    ConsoleFingerprints,
    /// The console printed neither: the keys sshd offered were taken as they came.
    TrustOnFirstUse,
}

impl std::fmt::Display for HostKeyTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HostKeyTrust::Console => "host keys from the console",
            HostKeyTrust::ConsoleFingerprints => {
                "host keys offered by sshd, matching the fingerprints on the console"
            }
            HostKeyTrust::TrustOnFirstUse => {
                "host keys trusted on first use (the console printed none)"
            }
        })
    }
}

/// The keys sshd at `addr` offers (ssh-keyscan).
async fn keyscan(addr: SocketAddr) -> Result<Vec<HostKey>, SshError> {
    let out = Command::new("ssh-keyscan")
        .args(["-T", "5", "-p", &addr.port().to_string()])
        .arg(addr.ip().to_string())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|source| SshError::Spawn {
            program: "ssh-keyscan",
            source,
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut f = l.split_whitespace().skip(1);
            Some(HostKey {
                kind: f.next()?.to_string(),
                blob: f.next()?.to_string(),
            })
        })
        .collect())
}

/// Write the known-hosts file for the guest at `addr` from what the console printed:
/// its keys if it printed them; else the keys sshd offers, if they match the printed
/// fingerprints; else those keys, trusted on first use.
pub async fn known_hosts(
    addr: SocketAddr,
    console: &ConsoleHostKeys,
    path: &Path,
) -> Result<HostKeyTrust, SshError> {
    let (keys, trust) = if !console.keys.is_empty() {
        (console.keys.clone(), HostKeyTrust::Console)
    } else {
        let offered = keyscan(addr).await?;
        if offered.is_empty() {
            return Err(SshError::HostKeys(format!(
                "sshd at {addr} offered no host key (ssh-keyscan)"
            )));
        }
        if console.fingerprints.is_empty() {
            (offered, HostKeyTrust::TrustOnFirstUse)
        } else {
            let matching: Vec<HostKey> = offered
                .into_iter()
                .filter(|k| {
                    k.fingerprint()
                        .is_some_and(|f| console.fingerprints.contains(&f))
                })
                .collect();
            if matching.is_empty() {
                return Err(SshError::HostKeys(format!(
                    "no host key sshd at {addr} offers matches the fingerprints on the console ({})",
                    console.fingerprints.join(", ")
                )));
            }
            (matching, HostKeyTrust::ConsoleFingerprints)
        }
    };
    let mut text = String::new();
    for k in &keys {
        text.push_str(&format!("{HOST_ALIAS} {} {}\n", k.kind, k.blob));
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()).map(|()| f))
        .map_err(|source| SshError::Io {
            path: path.to_owned(),
            source,
        })?;
    let _ = f.flush();
    Ok(trust)
}

/// Where and as whom to log in.
#[derive(Debug, Clone)]
pub struct SshTarget {
    /// Address of sshd.
    pub addr: SocketAddr,
    /// User to log in as.
    pub user: String,
    /// The private key.
    pub key: PathBuf,
    /// The known-hosts file (keys filed under [`HOST_ALIAS`]).
    pub known_hosts: PathBuf,
}

impl SshTarget {
    /// `ssh` with every option that keeps it to this target: no user or system
    /// configuration, no agent, no other identity, strict host key checking.
    fn command(&self, remote: &str) -> Command {
        let mut c = Command::new("ssh");
        c.args(["-F", "/dev/null", "-T"])
            .args(["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes"])
            .args([
                "-o",
                "IdentityAgent=none",
                "-o",
                "StrictHostKeyChecking=yes",
            ])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", self.known_hosts.display()))
            .args(["-o", "GlobalKnownHostsFile=/dev/null"])
            .arg("-o")
            .arg(format!("HostKeyAlias={HOST_ALIAS}"))
            .args(["-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR"])
            .args(["-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3"])
            .arg("-i")
            .arg(&self.key)
            .args(["-p", &self.addr.port().to_string()])
            .arg(format!("{}@{}", self.user, self.addr.ip()))
            .arg("--")
            .arg(remote)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        c
    }
}

/// A smoke check: a command line, or a script copied to the guest and run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// What is shown: the command, or `script NAME`.
    pub name: String,
    /// The remote command line.
    pub command: String,
    /// A script sent on stdin (to a temporary file, made executable, run, removed).
    #[serde(skip)]
    pub script: Option<Vec<u8>>,
}

impl Check {
    /// A command line.
    pub fn command(cmd: &str) -> Check {
        Check {
            name: cmd.to_string(),
            command: cmd.to_string(),
            script: None,
        }
    }

    /// A script (with its `#!` line), named for display.
    pub fn script(name: &str, body: Vec<u8>) -> Check {
        Check {
            name: format!("script {name}"),
            command: "f=$(mktemp \"${HOME:-/tmp}/.ec2ami-check.XXXXXX\") && cat > \"$f\" && chmod 700 \"$f\" && \"$f\"; s=$?; rm -f \"$f\"; exit $s".to_string(),
            script: Some(body),
        }
    }
}

/// The checks of a `--checks FILE`: a file starting with `#!` is one script; otherwise
/// one command per line (blank lines and `#` comments skipped).
pub fn checks_from_file(name: &str, body: &[u8]) -> Vec<Check> {
    if body.starts_with(b"#!") {
        return vec![Check::script(name, body.to_vec())];
    }
    String::from_utf8_lossy(body)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(Check::command)
        .collect()
}

/// What a check did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckResult {
    /// The check as shown.
    pub check: String,
    /// Exit status of the remote command (`None`: ssh failed or it timed out).
    pub exit_status: Option<i32>,
    /// Its standard output (at most 64 KiB).
    pub stdout: String,
    /// Its standard error (at most 64 KiB), ssh's own messages included.
    pub stderr: String,
    /// How long it took.
    pub seconds: f64,
    /// Exit status 0.
    pub passed: bool,
    /// Why it did not run to an exit status, if it did not.
    pub error: Option<String>,
}

fn clip(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_OUTPUT)]).into_owned();
    if bytes.len() > MAX_OUTPUT {
        format!("{s}\n[... {} more bytes]", bytes.len() - MAX_OUTPUT)
    } else {
        s
    }
}

/// Run one check, giving up at `deadline`.
pub async fn run_check(target: &SshTarget, check: &Check, deadline: Instant) -> CheckResult {
    let t0 = Instant::now();
    let mut result = CheckResult {
        check: check.name.clone(),
        exit_status: None,
        stdout: String::new(),
        stderr: String::new(),
        seconds: 0.0,
        passed: false,
        error: None,
    };
    let mut cmd = target.command(&check.command);
    if check.script.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let work = async {
        let mut child = cmd.spawn().map_err(|e| format!("cannot run ssh: {e}"))?;
        if let (Some(body), Some(mut stdin)) = (&check.script, child.stdin.take()) {
            stdin
                .write_all(body)
                .await
                .map_err(|e| format!("sending the script: {e}"))?;
        }
        child
            .wait_with_output()
            .await
            .map_err(|e| format!("ssh: {e}"))
    };
    match tokio::time::timeout_at(deadline, work).await {
        Err(_) => result.error = Some("timed out".into()),
        Ok(Err(e)) => result.error = Some(e),
        Ok(Ok(out)) => {
            result.stdout = clip(&out.stdout);
            result.stderr = clip(&out.stderr);
            match out.status.code() {
                // 255 is ssh's own failure (connection, authentication).
                Some(255) => {
                    result.exit_status = Some(255);
                    result.error = Some(format!(
                        "ssh failed (255): {}",
                        result.stderr.trim().lines().last().unwrap_or_default()
                    ));
                }
                Some(c) => {
                    result.exit_status = Some(c);
                    result.passed = c == 0;
                }
                None => result.error = Some("ssh was killed by a signal".into()),
            }
        }
    }
    result.seconds = t0.elapsed().as_secs_f64();
    result
}

/// Log in until it works (a guest may install the key just after sshd starts),
/// retrying for at most 60 s and until `deadline`. Returns the last error otherwise.
pub async fn wait_for_login(target: &SshTarget, deadline: Instant) -> Result<(), String> {
    let until = deadline.min(Instant::now() + Duration::from_secs(60));
    let mut last;
    loop {
        let r = run_check(target, &Check::command("true"), until).await;
        if r.passed {
            return Ok(());
        }
        last = r
            .error
            .unwrap_or_else(|| format!("exit status {:?}", r.exit_status));
        if Instant::now() + Duration::from_secs(1) >= until {
            return Err(last);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_files() {
        let c = checks_from_file(
            "c.txt",
            b"# smoke\n\nuname -a\n  test -f /etc/os-release  \n",
        );
        assert_eq!(
            c.iter().map(|c| c.command.as_str()).collect::<Vec<_>>(),
            ["uname -a", "test -f /etc/os-release"]
        );
        let s = checks_from_file("t.sh", b"#!/bin/sh\nexit 3\n");
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].name, "script t.sh");
        assert_eq!(s[0].script.as_deref(), Some(&b"#!/bin/sh\nexit 3\n"[..]));
    }

    #[tokio::test]
    async fn banner_is_required_not_a_connection() {
        use tokio::net::TcpListener;
        // A listener that accepts and says nothing, then one that talks HTTP, then sshd.
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap();
        let held = tokio::spawn(async move {
            let mut keep = Vec::new();
            loop {
                let (s, _) = silent.accept().await.unwrap();
                keep.push(s);
            }
        });
        let soon = Instant::now() + Duration::from_millis(500);
        assert!(
            wait_for_banner(addr, soon, Duration::from_millis(50))
                .await
                .is_none()
        );
        held.abort();

        let web = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = web.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = web.accept().await.unwrap();
                let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
            }
        });
        let soon = Instant::now() + Duration::from_millis(300);
        assert!(
            wait_for_banner(addr, soon, Duration::from_millis(50))
                .await
                .is_none()
        );

        let sshd = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = sshd.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = sshd.accept().await.unwrap();
                let _ = s.write_all(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n").await;
            }
        });
        let soon = Instant::now() + Duration::from_secs(5);
        let (_, banner) = wait_for_banner(addr, soon, Duration::from_millis(50))
            .await
            .unwrap();
        assert_eq!(banner, "SSH-2.0-OpenSSH_9.2p1 Debian-2");
    }

    #[tokio::test]
    async fn ephemeral_keys_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let k = generate_key(dir.path(), "ec2ami-test").await.unwrap();
        assert!(k.public.starts_with("ssh-ed25519 AAAA"), "{}", k.public);
        assert!(k.public.ends_with(" ec2ami-test"));
        let mode = std::fs::metadata(&k.private).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[tokio::test]
    async fn known_hosts_from_console_keys() {
        let dir = tempfile::tempdir().unwrap();
        let kh = dir.path().join("known_hosts");
        let console = ConsoleHostKeys {
            keys: vec![HostKey {
                kind: "ssh-ed25519".into(),
                blob: "AAAAC3NzaC1lZDI1NTE5AAAAIAwdvYTinTEbsEDtmMGu+smYD5/Pp/3Pst/gWPNBRTbA".into(),
            }],
            fingerprints: vec![],
        };
        // The console's keys are used as they are: nothing is asked of the address.
        let t = known_hosts("127.0.0.1:9".parse().unwrap(), &console, &kh)
            .await
            .unwrap();
        assert_eq!(t, HostKeyTrust::Console);
        assert_eq!(
            std::fs::read_to_string(&kh).unwrap(),
            "ec2ami-guest ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAwdvYTinTEbsEDtmMGu+smYD5/Pp/3Pst/gWPNBRTbA\n"
        );
    }
}
