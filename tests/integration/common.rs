//! Shared set-up: a local AWS world on 127.0.0.1 (moto or the strict EBS endpoint,
//! behind the recording fault proxy) and helpers to run the real `ec2ami` binary
//! against it and check what moto does not.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use ec2ami::image::Extents;
use ec2ami_testkit::moto::{AWS_ENV_TO_REMOVE, aws_test_env};
use ec2ami_testkit::{
    FaultProxy, MotoOptions, MotoServer, ProxyConfig, StrictEbs, StrictEbsConfig,
};
use tempfile::TempDir;
use tokio::process::Command;

pub const REGION: &str = "us-east-1";
pub const BLOCK: u64 = 512 * 1024;
pub const MIB: u64 = 1 << 20;

/// Which server answers behind the proxy.
pub enum Backend {
    /// Held for its lifetime: dropping it stops moto.
    Moto(#[allow(dead_code)] MotoServer),
    Strict(StrictEbs),
    /// Nothing: for commands that must not call AWS (any request shows in the proxy).
    Offline,
}

/// A local AWS world: a server, the proxy in front of it, a scratch directory.
pub struct World {
    pub proxy: FaultProxy,
    pub backend: Backend,
    pub dir: TempDir,
}

impl World {
    /// moto (with the harness's extension) behind the proxy, with moto's EBS answers
    /// corrected to AWS's.
    pub async fn moto() -> World {
        World::moto_with(MotoOptions::default()).await
    }

    /// [`World::moto`] with explicit moto options (e.g. Amazon's public images loaded).
    pub async fn moto_with(options: MotoOptions) -> World {
        let moto = tokio::task::spawn_blocking(move || MotoServer::start_with(&options))
            .await
            .unwrap()
            .expect("moto starts (pip install 'moto[server]')");
        let proxy = FaultProxy::start(ProxyConfig {
            moto_fixups: true,
            ..ProxyConfig::new(moto.url())
        })
        .await
        .unwrap();
        World {
            proxy,
            backend: Backend::Moto(moto),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// No server: the proxy forwards to a closed loopback port, so any AWS call fails
    /// and is recorded.
    pub async fn offline() -> World {
        let proxy = FaultProxy::start(ProxyConfig::new("http://127.0.0.1:9"))
            .await
            .unwrap();
        World {
            proxy,
            backend: Backend::Offline,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// The strict EBS endpoint behind the proxy.
    pub async fn strict(config: StrictEbsConfig) -> World {
        let ebs = StrictEbs::start(config).await.unwrap();
        let proxy = FaultProxy::start(ProxyConfig::new(ebs.url()))
            .await
            .unwrap();
        World {
            proxy,
            backend: Backend::Strict(ebs),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn strict_ebs(&self) -> &StrictEbs {
        match &self.backend {
            Backend::Strict(s) => s,
            _ => panic!("not a strict-endpoint world"),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Run `ec2ami ARGS` and kill it -9 once `gate` holds one of its requests (a hook:
    /// the same point on every machine), at most `within`; then reap it and open the
    /// gate. False when the run ended before reaching the gate.
    pub async fn kill_at_gate(
        &self,
        gate: &ec2ami_testkit::proxy::Gate,
        args: &[&str],
        within: Duration,
    ) -> bool {
        let mut child = self
            .ec2ami()
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let held = tokio::select! {
            held = gate.arrived(1, within) => held,
            _ = child.wait() => false,
        };
        if held {
            child.start_kill().unwrap(); // SIGKILL
        }
        let _ = child.wait().await;
        gate.open();
        held
    }

    /// The `ec2ami` binary with an environment that reaches only the proxy.
    /// `EC2AMI_TEST_BIN` runs another build instead (e.g. an older commit's, to show
    /// that a test fails without the fix it comes with).
    pub fn ec2ami(&self) -> Command {
        let bin = std::env::var_os("EC2AMI_TEST_BIN")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_ec2ami").into());
        let mut cmd = Command::new(bin);
        for k in AWS_ENV_TO_REMOVE {
            cmd.env_remove(k);
        }
        cmd.envs(aws_test_env(&self.proxy.url(), REGION))
            .env("XDG_STATE_HOME", self.dir.path().join("state"))
            .env("EC2AMI_LOG", "info")
            .env("EC2AMI_PROGRESS_INTERVAL_MS", "100")
            // The test worlds' images are not bootable; the pre-flight tests ask for it.
            .env("EC2AMI_PREFLIGHT", "off")
            .kill_on_drop(true);
        cmd
    }

    /// Run `ec2ami ARGS...` to completion.
    pub async fn run(&self, args: &[&str]) -> Run {
        let out = tokio::time::timeout(Duration::from_secs(300), self.ec2ami().args(args).output())
            .await
            .expect("ec2ami finishes within 5 minutes")
            .expect("ec2ami runs");
        Run::from(out)
    }

    /// Upload `image` with JSON output; panics with stderr on failure.
    pub async fn upload(&self, image: &Path, extra: &[&str]) -> serde_json::Value {
        let mut args = vec!["--output", "json", "upload", image.to_str().unwrap()];
        args.extend_from_slice(extra);
        let run = self.run(&args).await;
        run.assert_ok();
        serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", run.stdout))
    }

    /// Download `snapshot` to `out`; panics with stderr on failure.
    pub async fn download(&self, snapshot: &str, out: &Path) -> serde_json::Value {
        let run = self
            .run(&[
                "--output",
                "json",
                "download",
                snapshot,
                out.to_str().unwrap(),
            ])
            .await;
        run.assert_ok();
        serde_json::from_str(&run.stdout).unwrap()
    }

    /// The regions the world enables, asked with DescribeRegions (never through
    /// ec2ami's own region code), as the world lists them.
    pub async fn enabled_regions(&self) -> Vec<String> {
        self.clients()
            .await
            .ec2
            .describe_regions()
            .all_regions(true)
            .send()
            .await
            .unwrap()
            .regions()
            .iter()
            .filter(|r| {
                matches!(
                    r.opt_in_status(),
                    Some("opt-in-not-required") | Some("opted-in")
                )
            })
            .filter_map(|r| r.region_name().map(str::to_string))
            .collect()
    }

    /// An SDK client set talking to the proxy, for checks the CLI does not make.
    pub async fn clients(&self) -> ec2ami::aws::Clients {
        // The SDK reads credentials from the environment of this test process only when
        // told; give it static ones explicitly.
        let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(REGION))
            .endpoint_url(self.proxy.url())
            .credentials_provider(aws_sdk_ebs::config::Credentials::new(
                "testing", "testing", None, None, "test",
            ))
            // The checks ride out the faults a test injects for ec2ami.
            .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(10))
            .load()
            .await;
        ec2ami::aws::Clients::from_config(config)
    }

    /// Snapshots carrying ec2ami's ownership tag, as EC2 lists them.
    pub async fn our_snapshots(&self) -> Vec<String> {
        let clients = self.clients().await;
        let out = clients
            .ec2
            .describe_snapshots()
            .filters(
                aws_sdk_ec2::types::Filter::builder()
                    .name("tag-key")
                    .values("ec2ami:managed-by")
                    .build(),
            )
            .send()
            .await
            .unwrap();
        out.snapshots()
            .iter()
            .filter_map(|s| s.snapshot_id().map(str::to_string))
            .collect()
    }
}

/// A finished command.
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Run {
    pub fn assert_ok(&self) {
        assert_eq!(
            self.code,
            Some(0),
            "ec2ami failed\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
    }

    pub fn assert_failed_with(&self, needle: &str) {
        assert!(
            self.code.is_some_and(|c| c != 0),
            "expected failure, got {:?}\nstderr:\n{}",
            self.code,
            self.stderr
        );
        assert!(
            self.stderr.contains(needle),
            "stderr lacks `{needle}`:\n{}",
            self.stderr
        );
    }
}

/// A deterministic pseudo-random generator for test data (no dependence on /dev/urandom).
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut v = vec![0u8; len];
    rng.fill(&mut v);
    v
}

/// Build a sparse file of `size` bytes with `chunks` written at their offsets.
pub fn sparse_file(path: &Path, size: u64, chunks: &[(u64, Vec<u8>)]) {
    let f = File::create(path).unwrap();
    f.set_len(size).unwrap();
    for (off, data) in chunks {
        f.write_all_at(data, *off).unwrap();
    }
    f.sync_all().unwrap();
}

pub fn write_file(path: &Path, data: &[u8]) {
    let mut f = File::create(path).unwrap();
    f.write_all(data).unwrap();
}

/// Blocks of `path` that are not all zero, each with its SHA-256, computed here,
/// independently of ec2ami (only the data extents are read, so huge sparse files are
/// cheap).
pub fn nonzero_blocks(path: &Path) -> Vec<(u64, [u8; 32])> {
    use sha2::{Digest, Sha256};
    let f = File::open(path).unwrap();
    let size = f.metadata().unwrap().len();
    let mut blocks = std::collections::BTreeSet::new();
    for ext in Extents::new(&f, size, true) {
        let ext = ext.unwrap();
        for b in ext.start / BLOCK..=(ext.end - 1) / BLOCK {
            blocks.insert(b);
        }
    }
    let mut out = Vec::new();
    let mut buf = vec![0u8; BLOCK as usize];
    for b in blocks {
        buf.fill(0);
        let n = (size - b * BLOCK).min(BLOCK) as usize;
        f.read_exact_at(&mut buf[..n], b * BLOCK).unwrap();
        if buf.iter().any(|&x| x != 0) {
            out.push((b, Sha256::digest(&buf).into()));
        }
    }
    out
}

/// The LINEAR aggregate checksum, computed here independently: SHA-256 over the
/// concatenated raw block digests in ascending index, base64.
pub fn linear_aggregate(blocks: &[(u64, [u8; 32])]) -> String {
    use base64::Engine;
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for (_, d) in blocks {
        h.update(d);
    }
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// Assert two files have the same size and content, reading only where either has
/// data (both are usually sparse).
pub fn assert_same_content(a: &Path, b: &Path) {
    let fa = File::open(a).unwrap();
    let fb = File::open(b).unwrap();
    let size = fa.metadata().unwrap().len();
    assert_eq!(size, fb.metadata().unwrap().len(), "sizes differ");
    let mut ranges: Vec<(u64, u64)> = Extents::new(&fa, size, true)
        .chain(Extents::new(&fb, size, true))
        .map(|e| e.map(|e| (e.start, e.end)).unwrap())
        .collect();
    ranges.sort();
    let (mut x, mut y) = (vec![0u8; MIB as usize], vec![0u8; MIB as usize]);
    for (start, end) in ranges {
        let mut off = start;
        while off < end {
            let n = (end - off).min(MIB) as usize;
            fa.read_exact_at(&mut x[..n], off).unwrap();
            fb.read_exact_at(&mut y[..n], off).unwrap();
            assert!(
                x[..n] == y[..n],
                "content differs in [{off}, {})",
                off + n as u64
            );
            off += n as u64;
        }
    }
}

/// Bytes actually allocated on disk.
pub fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().blocks() * 512
}

/// The form parameters of a recorded EC2 query request, decoded.
pub fn form(r: &ec2ami_testkit::RecordedRequest) -> std::collections::BTreeMap<String, String> {
    let body = String::from_utf8_lossy(r.body.as_deref().unwrap_or_default()).into_owned();
    body.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (urldecode(k), urldecode(v))
        })
        .collect()
}

/// The form parameters of every successful `operation` request the proxy saw.
pub fn params_of(
    world: &World,
    operation: &str,
) -> Vec<std::collections::BTreeMap<String, String>> {
    world
        .proxy
        .requests()
        .iter()
        .filter(|r| r.operation == operation && (200..300).contains(&r.status))
        .map(form)
        .collect()
}

/// Decode a form component (`%XX` and `+`).
pub fn urldecode(s: &str) -> String {
    let b = s.as_bytes();
    let (mut out, mut i) = (Vec::new(), 0);
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(if b[i] == b'+' { b' ' } else { b[i] });
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

/// Operations the proxy saw that change something (anything but Describe*, Get*, List*).
pub fn mutating(world: &World) -> Vec<String> {
    world
        .proxy
        .requests()
        .iter()
        .map(|r| r.operation.clone())
        .filter(|op| {
            !["Describe", "Get", "List"]
                .iter()
                .any(|p| op.starts_with(p))
        })
        .collect()
}

/// POST `doc` to one of the test world's moto-api hooks (`/moto-api/ec2ami/...`),
/// straight to moto: the proxy does not see it. The answer must be 200; its body is
/// returned.
pub fn moto_hook(world: &World, path: &str, doc: &serde_json::Value) -> String {
    use std::io::Read as _;
    let Backend::Moto(m) = &world.backend else {
        panic!("{path}: not a moto world")
    };
    let port = m.port();
    let body = doc.to_string();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    // One write: the request whole.
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).unwrap();
    // Read until the answer is whole by its Content-Length (or the server closes), so
    // an answer is not waited past when the connection stays open.
    let mut answer = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let text = String::from_utf8_lossy(&answer);
        if let Some((head, rest)) = text.split_once("\r\n\r\n") {
            let length = head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            });
            if length.is_some_and(|n| rest.len() >= n) {
                break;
            }
        }
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
            Err(e) => panic!(
                "{path}: no whole answer from moto in 120 s ({e}); so far: {}",
                String::from_utf8_lossy(&answer)
            ),
        }
    }
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, rest) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    assert!(head.starts_with("HTTP/1.1 200"), "{path}: {answer}");
    rest.to_string()
}
