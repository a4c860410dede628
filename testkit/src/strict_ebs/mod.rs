//! A strict, fast, in-memory EBS direct API endpoint (plus the few EC2 query calls that
//! concern snapshots), on 127.0.0.1.
//!
//! It follows the EBS direct API reference (restJson1) and rejects what AWS rejects:
//! wrong data length, wrong or missing SHA-256 checksums, block indexes past the volume
//! end, a `ChangedBlocksCount` or aggregate checksum that does not match what was
//! written, bad page or block tokens. Every rejection is recorded and can be read back
//! with [`StrictEbs::rejections`].
//!
//! Requests must carry a SigV4 `Authorization` header scoped to the right service (`ebs`
//! for the EBS direct paths, `ec2` for `POST /`); the signature itself is not checked.
//!
//! For a snapshot started with a `ParentSnapshotId`, the parent's blocks are inherited;
//! `ChangedBlocksCount` and the aggregate checksum cover only the blocks written to the
//! child itself.
//!
//! The parts: `routing` reads a request (operation by method and path, SigV4 scope)
//! and dispatches it; `ebs` holds the EBS direct operations and `ec2` the EC2
//! query calls, both over the in-memory `state`; `wire` renders answers and errors
//! (restJson1, EC2 XML) and parses tokens and parameters.

mod ebs;
mod ec2;
mod routing;
mod state;
#[cfg(test)]
mod test_support;
mod wire;

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use base64::Engine as _;
use bytes::Bytes;
use hyper::Request;
use hyper::body::Incoming;
use tokio::task::JoinHandle;

use super::http_util::{self, BoxError, ConnCtx};
use state::State;
use wire::B64;

/// Size of every EBS snapshot block, in bytes.
pub const BLOCK_SIZE: u32 = 524_288;
/// The fake AWS account that owns every snapshot.
pub const OWNER_ID: &str = "123456789012";
const GIB: u64 = 1 << 30;
const MAX_VOLUME_GIB: u64 = 65_536;
const MAX_BODY: usize = 8 * 1024 * 1024;

/// Configuration of a [`StrictEbs`] endpoint.
#[derive(Clone, Debug)]
pub struct StrictEbsConfig {
    /// Keep only block checksums, not data (for throughput benchmarks).
    pub discard_data: bool,
    /// Maximum number of blocks per ListSnapshotBlocks/ListChangedBlocks page.
    pub page_size: usize,
}

impl Default for StrictEbsConfig {
    fn default() -> Self {
        StrictEbsConfig {
            discard_data: false,
            page_size: 10_000,
        }
    }
}

/// A snapshot as the strict endpoint holds it, copied out for assertions.
#[derive(Clone, Debug)]
pub struct SnapshotView {
    /// Snapshot id (`snap-` + 17 hex digits).
    pub id: String,
    /// `pending`, `completed` or `error`.
    pub status: String,
    /// Volume size in GiB.
    pub volume_size_gib: u64,
    /// Block size in bytes (always 524288).
    pub block_size: u32,
    /// Description given to StartSnapshot.
    pub description: Option<String>,
    /// Tags given to StartSnapshot, in order.
    pub tags: Vec<(String, String)>,
    /// Whether StartSnapshot asked for encryption.
    pub encrypted: bool,
    /// Block data by index (inherited parent blocks included); empty when `discard_data`.
    pub blocks: BTreeMap<u64, Bytes>,
    /// Base64 SHA-256 of every block by index (inherited parent blocks included).
    pub block_checksums: BTreeMap<u64, String>,
    /// Number of accepted PutSnapshotBlock requests (rewrites of a block included).
    pub put_requests: u64,
}

/// A running strict EBS endpoint; dropping it stops the server.
pub struct StrictEbs {
    port: u16,
    inner: Arc<Inner>,
    task: JoinHandle<()>,
}

/// The server's shared part: its configuration and state, behind one lock.
struct Inner {
    config: StrictEbsConfig,
    state: Mutex<State>,
}

impl StrictEbs {
    /// Start on an ephemeral 127.0.0.1 port, on the current tokio runtime.
    pub async fn start(config: StrictEbsConfig) -> io::Result<StrictEbs> {
        Self::start_on(config, 0).await
    }

    /// Start on a fixed 127.0.0.1 port (0 = any), on the current tokio runtime.
    pub async fn start_on(config: StrictEbsConfig, port: u16) -> io::Result<StrictEbs> {
        let listener = http_util::bind_loopback(port).await?;
        let port = listener.local_addr()?.port();
        let inner = Arc::new(Inner {
            config,
            state: Mutex::new(State::default()),
        });
        let handler_inner = inner.clone();
        let handler = Arc::new(move |req: Request<Incoming>, _ctx: ConnCtx| {
            let inner = handler_inner.clone();
            async move { Ok::<_, BoxError>(inner.handle(req).await) }
        });
        let task = http_util::serve(listener, handler);
        Ok(StrictEbs { port, inner, task })
    }

    /// Base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The listening port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A copy of one snapshot's state, if it exists.
    pub fn snapshot(&self, id: &str) -> Option<SnapshotView> {
        let st = self.inner.lock();
        let s = st.snapshots.get(id)?;
        Some(SnapshotView {
            id: s.id.clone(),
            status: s.status.as_str().to_string(),
            volume_size_gib: s.volume_size,
            block_size: BLOCK_SIZE,
            description: s.description.clone(),
            tags: s.tags.clone(),
            encrypted: s.encrypted,
            blocks: s
                .blocks
                .iter()
                .filter_map(|(i, b)| b.data.clone().map(|d| (*i, d)))
                .collect(),
            block_checksums: s
                .blocks
                .iter()
                .map(|(i, b)| (*i, B64.encode(b.digest)))
                .collect(),
            put_requests: s.put_requests,
        })
    }

    /// Ids of every snapshot, sorted.
    pub fn snapshot_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.inner.lock().snapshots.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// One line per rejected request: operation and reason.
    pub fn rejections(&self) -> Vec<String> {
        self.inner.lock().rejections.clone()
    }
}

impl Drop for StrictEbs {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for StrictEbs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StrictEbs")
            .field("port", &self.port)
            .finish()
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}
