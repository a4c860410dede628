//! Launch moto's standalone server on 127.0.0.1 for tests, and the environment a child
//! `ec2ami` process needs to talk to such a local endpoint safely.
//!
//! moto runs with our extension ([`MOTO_EXT`], `testkit/src/moto_ext.py`), which makes it
//! keep the AMI state AWS keeps: RegisterImage's attributes, block device mappings (no
//! fake snapshot) and tags, validation of names, architectures, boot modes and
//! snapshots; CopyImage's attributes, per-region snapshots, tags and ClientToken; image
//! deprecation; DeregisterImage's DeleteAssociatedSnapshots and snapshots in use; the
//! DescribeImages block-device-mapping filters; DescribeImageAttribute; image block
//! public access; DescribeSnapshots OwnerIds; pagination of DescribeImages,
//! DescribeSnapshots and DescribeLaunchTemplateVersions. Harness-only additions: the
//! `moto-ext:created-at` tag backdates an image or snapshot, and
//! `POST /moto-api/ec2ami/generate` makes images and snapshots in bulk (benchmarks). A
//! moto that lacks what the extension patches makes the start fail with a message
//! naming it.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Dummy access key id for local endpoints.
pub const DUMMY_ACCESS_KEY: &str = "testing";
/// Dummy secret access key for local endpoints.
pub const DUMMY_SECRET_KEY: &str = "testing";

/// Environment variables a caller should remove from a child process that must only
/// talk to a local endpoint (profiles, other credentials, per-service endpoint overrides).
pub const AWS_ENV_TO_REMOVE: &[&str] = &[
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ROLE_ARN",
    "AWS_ROLE_SESSION_NAME",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AWS_EC2_METADATA_SERVICE_ENDPOINT",
    "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE",
    "AWS_ENDPOINT_URL_EBS",
    "AWS_ENDPOINT_URL_EC2",
    "AWS_ENDPOINT_URL_SSM",
    "AWS_ENDPOINT_URL_STS",
    "AWS_ENDPOINT_URL_S3",
    "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
    "AWS_USE_FIPS_ENDPOINT",
    "AWS_USE_DUALSTACK_ENDPOINT",
];

/// Deadline for moto to answer HTTP after it was spawned.
const START_DEADLINE: Duration = Duration::from_secs(30);
/// Port races tolerated before giving up.
const START_ATTEMPTS: usize = 3;
const INSTALL_HINT: &str = "moto is not installed: run pip install 'moto[server]'";

/// The Python module run in place of `python3 -m moto.server` (same arguments): it patches
/// moto to keep the AMI state ec2ami's tests check, then starts moto's server.
pub const MOTO_EXT: &str = include_str!("moto_ext.py");

/// Env vars for a child `ec2ami` process talking to `endpoint_url` with dummy
/// credentials: AWS_ENDPOINT_URL, AWS_REGION, AWS_DEFAULT_REGION, AWS_ACCESS_KEY_ID,
/// AWS_SECRET_ACCESS_KEY, AWS_EC2_METADATA_DISABLED=true, AWS_CONFIG_FILE=/dev/null and
/// AWS_SHARED_CREDENTIALS_FILE=/dev/null.
///
/// Removing `AWS_PROFILE` and the other variables of [`AWS_ENV_TO_REMOVE`] from the
/// child's environment is the caller's job (`Command::env_remove`).
pub fn aws_test_env(endpoint_url: &str, region: &str) -> Vec<(String, String)> {
    [
        ("AWS_ENDPOINT_URL", endpoint_url),
        ("AWS_REGION", region),
        ("AWS_DEFAULT_REGION", region),
        ("AWS_ACCESS_KEY_ID", DUMMY_ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", DUMMY_SECRET_KEY),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_CONFIG_FILE", "/dev/null"),
        ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// A moto server child process on 127.0.0.1; dropping it kills its process group.
pub struct MotoServer {
    child: Child,
    port: u16,
    log: tempfile::NamedTempFile,
    /// The extension script moto runs from; deleted on drop.
    _script: tempfile::NamedTempFile,
}

impl std::fmt::Debug for MotoServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MotoServer")
            .field("pid", &self.child.id())
            .field("port", &self.port)
            .field("log", &self.log.path())
            .finish()
    }
}

/// How to start moto (see [`MotoServer::start_with`]).
#[derive(Clone, Debug)]
pub struct MotoOptions {
    /// The Python interpreter that has moto (default: `$EC2AMI_PYTHON`, else `python3`).
    pub python: String,
    /// Load moto's Amazon-owned public AMIs and their snapshots (about 1200 per region,
    /// under a second more per region), so that a test sees images and snapshots the
    /// account does not own, as it would in AWS.
    pub amazon_images: bool,
    /// Cap every page of DescribeImages, DescribeSnapshots and
    /// DescribeLaunchTemplateVersions at this many items (the extension's harness-only
    /// `MOTO_EXT_PAGE_SIZE`), so that a small test world still takes several pages.
    pub page_size: Option<usize>,
    /// Show the account as opted in to every opt-in region (moto lists them as
    /// `not-opted-in`, so only 24 regions are enabled), for benchmarks across 30+.
    pub all_regions_opted_in: bool,
    /// How much of AWS's time and eventual consistency the world shows (off by default).
    pub realism: crate::Realism,
}

impl Default for MotoOptions {
    fn default() -> Self {
        MotoOptions {
            python: std::env::var("EC2AMI_PYTHON").unwrap_or_else(|_| "python3".to_string()),
            amazon_images: false,
            page_size: None,
            all_regions_opted_in: false,
            realism: crate::Realism::default(),
        }
    }
}

/// Why one launch attempt failed.
enum Attempt {
    /// The port was taken between our probe and moto's bind: try another.
    PortRace(io::Error),
    /// Anything else: give up.
    Fatal(io::Error),
}

impl MotoServer {
    /// Start moto's server, with our extension, on a free 127.0.0.1 port and wait (deadline
    /// 30 s) until it answers HTTP.
    ///
    /// This blocks the calling thread; from async code use [`MotoServer::start_async`].
    pub fn start() -> io::Result<MotoServer> {
        Self::start_with(&MotoOptions::default())
    }

    /// [`MotoServer::start`] on tokio's blocking pool, for async callers.
    pub async fn start_async() -> io::Result<MotoServer> {
        tokio::task::spawn_blocking(Self::start)
            .await
            .map_err(|e| io::Error::other(format!("moto launcher task failed: {e}")))?
    }

    /// Like [`MotoServer::start`] with an explicit Python interpreter.
    pub fn start_with_python(python: &str) -> io::Result<MotoServer> {
        Self::start_with(&MotoOptions {
            python: python.to_string(),
            ..MotoOptions::default()
        })
    }

    /// Like [`MotoServer::start`] with explicit options.
    pub fn start_with(options: &MotoOptions) -> io::Result<MotoServer> {
        let mut last = None;
        for _ in 0..START_ATTEMPTS {
            match Self::try_start(options) {
                Ok(s) => return Ok(s),
                Err(Attempt::PortRace(e)) => last = Some(e),
                Err(Attempt::Fatal(e)) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("moto did not start")))
    }

    fn try_start(options: &MotoOptions) -> Result<MotoServer, Attempt> {
        let python = options.python.as_str();
        let port = free_port().map_err(Attempt::Fatal)?;
        let log = tempfile::Builder::new()
            .prefix("ec2ami-moto-")
            .suffix(".log")
            .tempfile()
            .map_err(Attempt::Fatal)?;
        let out = log.reopen().map_err(Attempt::Fatal)?;
        let err = log.reopen().map_err(Attempt::Fatal)?;
        let script = write_extension().map_err(Attempt::Fatal)?;
        let mut cmd = Command::new(python);
        cmd.arg(script.path())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .env(
                "MOTO_EC2_LOAD_DEFAULT_AMIS",
                if options.amazon_images {
                    "true"
                } else {
                    "false"
                },
            )
            .env(
                "EC2AMI_MOTO_OPT_IN",
                if options.all_regions_opted_in {
                    "all"
                } else {
                    ""
                },
            )
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_ACCESS_KEY_ID", DUMMY_ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", DUMMY_SECRET_KEY)
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("PYTHONUNBUFFERED", "1")
            .process_group(0);
        cmd.envs(options.realism.env());
        match options.page_size {
            Some(n) => cmd.env("MOTO_EXT_PAGE_SIZE", n.to_string()),
            None => cmd.env_remove("MOTO_EXT_PAGE_SIZE"),
        };

        for k in AWS_ENV_TO_REMOVE {
            cmd.env_remove(k);
        }
        cmd.env_remove("AWS_ENDPOINT_URL");
        let child = cmd.spawn().map_err(|e| {
            Attempt::Fatal(io::Error::new(
                e.kind(),
                format!("cannot run {python} (moto's server): {e} ({INSTALL_HINT} with that python, or set EC2AMI_PYTHON)"),
            ))
        })?;
        let mut server = MotoServer {
            child,
            port,
            log,
            _script: script,
        };
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if probe(port) {
                return Ok(server);
            }
            match server.child.try_wait() {
                Ok(Some(status)) => {
                    let tail = server.log_tail(20);
                    let msg = if tail.contains("No module named moto")
                        || tail.contains("No module named 'moto")
                        || tail.contains("ModuleNotFoundError")
                    {
                        format!("{INSTALL_HINT} (moto exited with {status}); log tail:\n{tail}")
                    } else {
                        format!(
                            "moto exited with {status} before answering on 127.0.0.1:{port}; log tail:\n{tail}"
                        )
                    };
                    let e = io::Error::other(msg);
                    let race = tail.contains("Address already in use")
                        || tail.contains("is in use by another program");
                    return Err(if race {
                        Attempt::PortRace(e)
                    } else {
                        Attempt::Fatal(e)
                    });
                }
                Ok(None) => {}
                Err(e) => return Err(Attempt::Fatal(e)),
            }
            if Instant::now() >= deadline {
                let tail = server.log_tail(20);
                return Err(Attempt::Fatal(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "moto did not answer on 127.0.0.1:{port} within {}s; log tail:\n{tail}",
                        START_DEADLINE.as_secs()
                    ),
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// moto's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How moto exited, if it has (reaping it); `None` while it runs.
    pub fn exited(&mut self) -> io::Result<Option<std::process::ExitStatus>> {
        self.child.try_wait()
    }

    /// The port moto listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Path of moto's log file (stdout and stderr).
    pub fn log_path(&self) -> &std::path::Path {
        self.log.path()
    }

    /// The last `n` lines of moto's log.
    pub fn log_tail(&self, n: usize) -> String {
        let Ok(mut f) = File::open(self.log.path()) else {
            return String::new();
        };
        // Read at most the last 64 KiB.
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
        let mut text = String::new();
        let mut raw = Vec::new();
        if f.read_to_end(&mut raw).is_ok() {
            text = String::from_utf8_lossy(&raw).into_owned();
        }
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Forget all of moto's state: `POST /moto-api/reset`.
    pub fn reset(&self) -> io::Result<()> {
        let status = http_status(
            self.port,
            &format!(
                "POST /moto-api/reset HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                self.port
            ),
        )?;
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "moto reset answered HTTP {status}"
            )))
        }
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: plain syscall; the child leads its own process group (process_group(0)),
        // so -pid names exactly moto and anything it spawned.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// [`MOTO_EXT`] in a temporary file for python to run.
fn write_extension() -> io::Result<tempfile::NamedTempFile> {
    let mut file = tempfile::Builder::new()
        .prefix("ec2ami-moto-ext-")
        .suffix(".py")
        .tempfile()?;
    file.write_all(MOTO_EXT.as_bytes())?;
    file.flush()?;
    Ok(file)
}

/// A port that was free on 127.0.0.1 a moment ago.
fn free_port() -> io::Result<u16> {
    let l = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
    Ok(l.local_addr()?.port())
}

/// True when something on 127.0.0.1:port answers an HTTP status line.
fn probe(port: u16) -> bool {
    http_status(
        port,
        &format!("GET /moto-api/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"),
    )
    .is_ok()
}

/// Send a raw HTTP/1.1 request to 127.0.0.1:port and return the status code.
fn http_status(port: u16, request: &str) -> io::Result<u16> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(request.as_bytes())?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    let mut it = line.split_whitespace();
    match (it.next(), it.next().and_then(|s| s.parse::<u16>().ok())) {
        (Some(v), Some(code)) if v.starts_with("HTTP/") => Ok(code),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("not an HTTP status line: {line:?}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_env_has_safe_defaults() {
        let env = aws_test_env("http://127.0.0.1:1234", "eu-west-1");
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("AWS_ENDPOINT_URL"), Some("http://127.0.0.1:1234"));
        assert_eq!(get("AWS_REGION"), Some("eu-west-1"));
        assert_eq!(get("AWS_EC2_METADATA_DISABLED"), Some("true"));
        assert_eq!(get("AWS_CONFIG_FILE"), Some("/dev/null"));
        assert_eq!(get("AWS_SHARED_CREDENTIALS_FILE"), Some("/dev/null"));
        assert_eq!(get("AWS_ACCESS_KEY_ID"), Some(DUMMY_ACCESS_KEY));
        assert!(get("AWS_PROFILE").is_none());
    }

    #[test]
    fn missing_python_is_reported() {
        let err =
            MotoServer::start_with_python("/nonexistent/python-for-ec2ami-tests").unwrap_err();
        assert!(err.to_string().contains(INSTALL_HINT), "{err}");
    }

    #[test]
    fn missing_moto_module_is_reported_with_log_tail() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("fake-python");
        std::fs::write(
            &fake,
            "#!/bin/sh\necho line-before >&2\necho \"/usr/bin/python3: No module named moto.server\" >&2\nexit 1\n",
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let err = MotoServer::start_with_python(fake.to_str().unwrap()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(INSTALL_HINT), "{msg}");
        assert!(msg.contains("line-before"), "{msg}");
    }

    #[test]
    fn extension_refuses_a_moto_without_what_it_patches() {
        use std::os::unix::fs::PermissionsExt;
        let python = std::env::var("EC2AMI_PYTHON").unwrap_or_else(|_| "python3".to_string());
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("python-with-older-moto");
        // A moto whose AmisResponse has no copy_image, as a future release might: the
        // wrapper deletes it, then runs the extension script as python would.
        std::fs::write(
            &fake,
            format!(
                "#!/bin/sh\nexec {python} -c 'import runpy, sys\nimport moto.ec2.responses.amis as m\ndel m.AmisResponse.copy_image\nsys.argv = sys.argv[1:]\nrunpy.run_path(sys.argv[0], run_name=\"__main__\")' \"$@\"\n"
            ),
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let err = MotoServer::start_with_python(fake.to_str().unwrap()).unwrap_err();
        let msg = err.to_string();
        // No silent skip: without moto this fails, naming the install hint.
        assert!(!msg.contains(INSTALL_HINT), "{msg}");
        assert!(msg.contains("moto exited with"), "{msg}");
        assert!(
            msg.contains("moto_ext:") && msg.contains("AmisResponse.copy_image"),
            "{msg}"
        );
    }

    #[test]
    fn moto_starts_resets_and_stops() {
        // No silent skip: without moto this fails with the install hint.
        let moto = MotoServer::start().unwrap_or_else(|e| panic!("moto failed to start: {e}"));
        assert!(moto.url().starts_with("http://127.0.0.1:"));
        assert!(probe(moto.port()));
        moto.reset().expect("reset");
        let port = moto.port();
        let pid = moto.child.id() as libc::pid_t;
        drop(moto);
        // The process group is gone and the port no longer answers.
        // SAFETY: signal 0 only checks for existence.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        assert!(!alive, "moto process survived drop");
        assert!(!probe(port));
    }
}
