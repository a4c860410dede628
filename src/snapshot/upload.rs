//! Upload a disk image to a new EBS snapshot with the EBS direct APIs.
//!
//! StartSnapshot, then the planned blocks (holes never read, zero blocks skipped for
//! unencrypted snapshots) put concurrently by `workers` tasks with reused buffers, then
//! CompleteSnapshot with the changed-block count and the LINEAR aggregate checksum, then
//! a wait for `completed`. Any failure or interruption deletes the unfinished snapshot
//! (unless asked to keep it) and says which one it was.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_ebs::primitives::ByteStream;
use aws_sdk_ebs::types::{ChecksumAggregationMethod, ChecksumAlgorithm, Tag};
use bytes::{Bytes, BytesMut};
use futures_util::{StreamExt, stream};
use serde::Serialize;
use tokio::sync::Semaphore;

use super::checksum::{self, BlockDigest, FastDigest, LinearAggregate};
use super::index::{self, BlockIndex, IndexHeader, IndexWriter};
use super::resume::{self, AckJournal, PendingRecord};
use super::{check_block_size, secs, volume_size_gib, wait_for_completed};
use crate::aws::{AwsError, Clients, RetryPolicy, ec2, tags};
use crate::image::{DiskImage, ImageError, PlannedBlock};
use crate::progress::{Progress, ProgressMode};

/// How to upload.
#[derive(Debug, Clone)]
pub struct UploadOptions {
    /// Snapshot description.
    pub description: Option<String>,
    /// Extra tags (the ownership and image-size tags are always added).
    pub tags: Vec<(String, String)>,
    /// Encrypt the snapshot (every block is then written).
    pub encrypted: bool,
    /// KMS key for encryption (implies `encrypted`).
    pub kms_key_arn: Option<String>,
    /// Concurrent block uploads.
    pub workers: usize,
    /// Keep the unfinished snapshot when the upload fails.
    pub keep_on_failure: bool,
    /// How long to wait for `completed`; `None` to return right after CompleteSnapshot.
    pub wait: Option<Duration>,
    /// Where block indexes are kept.
    pub index_dir: PathBuf,
    /// Idempotency token for StartSnapshot (a fresh one by default).
    pub client_token: Option<String>,
    /// Minutes AWS keeps a pending snapshot open before failing it (StartSnapshot's
    /// Timeout): the window in which an interrupted upload can be resumed.
    pub pending_timeout_minutes: Option<i32>,
    /// Upload incrementally against this completed snapshot: StartSnapshot with
    /// ParentSnapshotId, and only the blocks that differ from the parent's are sent.
    pub parent: Option<String>,
    /// Continue the pending snapshot of an interrupted upload of the same image with the
    /// same arguments (its record and acknowledgement journal are in `index_dir`).
    pub resume: bool,
    /// Retry policy for every call.
    pub retry: RetryPolicy,
    /// How progress is shown.
    pub progress: ProgressMode,
}

impl Default for UploadOptions {
    fn default() -> Self {
        UploadOptions {
            description: None,
            tags: Vec::new(),
            encrypted: false,
            kms_key_arn: None,
            workers: DEFAULT_WORKERS,
            keep_on_failure: false,
            wait: Some(Duration::from_secs(3600)),
            index_dir: super::index::default_dir(),
            client_token: None,
            pending_timeout_minutes: None,
            parent: None,
            resume: true,
            retry: RetryPolicy::default(),
            progress: ProgressMode::Quiet,
        }
    }
}

/// Default concurrent block uploads: enough to fill a fast link (AWS suggests ~100
/// connections for ~500 MB/s), few enough to stay under the per-snapshot request rate.
pub const DEFAULT_WORKERS: usize = 64;

/// What an upload did.
#[derive(Debug, Clone, Serialize)]
pub struct UploadReport {
    /// The new snapshot.
    pub snapshot_id: String,
    /// Region it is in.
    pub region: String,
    /// Bytes of the raw image.
    pub size_bytes: u64,
    /// Snapshot volume size in GiB.
    pub volume_size_gib: u64,
    /// Block size used.
    pub block_size: u64,
    /// The parent snapshot of an incremental upload.
    pub parent_snapshot_id: Option<String>,
    /// Blocks sent with PutSnapshotBlock by this run.
    pub blocks_written: u64,
    /// Blocks not sent because the parent already holds the same data.
    pub blocks_unchanged: u64,
    /// Blocks not sent because an interrupted earlier run had them acknowledged.
    pub blocks_resumed: u64,
    /// The snapshot of an interrupted upload this run continued.
    pub resumed: bool,
    /// Why an interrupted upload's snapshot was not continued, if there was one.
    pub restarted: Option<String>,
    /// Blocks of the volume not sent by this run (holes, zero blocks, padding to the
    /// GiB, blocks unchanged from the parent, blocks resumed).
    pub blocks_skipped: u64,
    /// Blocks that were read but found all zero (a subset of the skipped ones).
    pub blocks_zero: u64,
    /// Bytes read from the image (holes are never read).
    pub bytes_read: u64,
    /// The LINEAR aggregate SHA-256 checksum sent with CompleteSnapshot.
    pub checksum: String,
    /// Wall time.
    pub seconds: f64,
    /// Where the per-block index (SHA-256 and BLAKE3) was saved.
    pub index_path: PathBuf,
}

/// What became of the unfinished snapshot after a failure.
#[derive(Debug)]
pub enum Cleanup {
    /// No snapshot had been started.
    NothingStarted,
    /// Deleted.
    Deleted(String),
    /// Kept on request (`--keep-on-failure`).
    Kept(String),
    /// Deleting it failed: it is still there.
    DeleteFailed(String, AwsError),
}

impl fmt::Display for Cleanup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cleanup::NothingStarted => Ok(()),
            Cleanup::Deleted(id) => write!(f, "; the unfinished snapshot {id} was deleted"),
            Cleanup::Kept(id) => write!(
                f,
                "; the unfinished snapshot {id} was kept (--keep-on-failure): delete it with \
                 `aws ec2 delete-snapshot --snapshot-id {id}` when done"
            ),
            Cleanup::DeleteFailed(id, e) => write!(
                f,
                "; the unfinished snapshot {id} could NOT be deleted ({e}): delete it with \
                 `aws ec2 delete-snapshot --snapshot-id {id}`"
            ),
        }
    }
}

/// Why an upload step failed.
#[derive(Debug, thiserror::Error)]
pub enum UploadFailure {
    /// An AWS call failed.
    #[error(transparent)]
    Aws(#[from] AwsError),
    /// Reading the image failed.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The service answered something unusable.
    #[error("{0}")]
    Protocol(String),
    /// The parent snapshot cannot be used (checked before StartSnapshot).
    #[error("{0}")]
    Parent(String),
    /// Writing the block index failed.
    #[error("writing the block index {path}: {source}")]
    Index {
        /// The index file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Ctrl-C or SIGTERM.
    #[error("interrupted")]
    Interrupted,
    /// Not attempted because another block had already failed (never reported: the
    /// failure that caused it is).
    #[error("stopped after another block failed")]
    Abandoned,
}

/// An upload that did not finish, with what became of its snapshot.
#[derive(Debug)]
pub struct UploadError {
    /// What went wrong.
    pub failure: UploadFailure,
    /// What was done with the unfinished snapshot.
    pub cleanup: Cleanup,
}

impl UploadError {
    /// True when the upload was interrupted by a signal.
    pub fn interrupted(&self) -> bool {
        matches!(self.failure, UploadFailure::Interrupted)
    }
}

impl fmt::Display for UploadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "upload failed: {}{}", self.failure, self.cleanup)
    }
}

impl std::error::Error for UploadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        None
    }
}

/// Reusable block buffers: memory stays at about `workers` x block size.
struct BufferPool {
    block_size: usize,
    free: Mutex<Vec<BytesMut>>,
}

impl BufferPool {
    fn take(&self) -> BytesMut {
        let reused = self.free.lock().expect("pool lock").pop();
        reused.unwrap_or_else(|| BytesMut::zeroed(self.block_size))
    }

    fn give(&self, buf: BytesMut) {
        if buf.len() == self.block_size {
            self.free.lock().expect("pool lock").push(buf);
        }
    }
}

/// What the snapshot holds before this run writes a block: its parent's blocks (an
/// incremental upload) and the blocks an interrupted earlier run had acknowledged.
#[derive(Default)]
struct Base {
    /// The parent's content: every block with data (every block, encrypted).
    parent: HashMap<u64, BlockDigest>,
    /// The BLAKE3 of the parent's blocks, where its index keeps them.
    parent_blake3: HashMap<u64, FastDigest>,
    /// Blocks acknowledged by an earlier run of this upload.
    acked: HashMap<u64, BlockDigest>,
    /// Their BLAKE3, from the check that the image still holds them (so this run does not
    /// read them again).
    acked_blake3: HashMap<u64, FastDigest>,
}

/// Shared state of the block workers.
struct Blocks {
    clients: Clients,
    image: Arc<DiskImage>,
    snapshot_id: String,
    block_size: u64,
    encrypted: bool,
    slots: Semaphore,
    pool: BufferPool,
    zero_block: Bytes,
    zero_digest: BlockDigest,
    zero_fast: FastDigest,
    retry: RetryPolicy,
    started: Instant,
    progress: Progress,
    base: Base,
    acks: AckJournal,
    acks_path: PathBuf,
    /// Set by the first block that fails, while it still holds its worker slot, so no
    /// block that gets a slot afterwards sends anything.
    failed: AtomicBool,
}

/// What became of one planned block.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Sent with PutSnapshotBlock (and journalled).
    Sent,
    /// Already acknowledged by an earlier run, with the same data.
    Resumed,
    /// The parent holds the same data.
    Unchanged,
    /// All zero where the snapshot reads zero anyway.
    Zero,
}

/// Outcome of one planned block.
struct Done {
    index: u64,
    /// SHA-256 of the block's content (of zeros for a zero block or a hole).
    content: BlockDigest,
    /// BLAKE3 of the block's content.
    fast: FastDigest,
    fate: Fate,
}

/// How long after StartSnapshot a "snapshot not found" answer is taken as AWS's
/// eventual consistency rather than a real absence.
const NOT_FOUND_GRACE: Duration = Duration::from_secs(60);

impl Blocks {
    async fn process(self: Arc<Self>, block: PlannedBlock) -> Result<Done, UploadFailure> {
        let _slot = self.slots.acquire().await.expect("semaphore never closed");
        if self.failed.load(Ordering::Acquire) {
            return Err(UploadFailure::Abandoned);
        }
        let r = self.clone().read_and_put(block).await;
        if r.is_err() {
            self.failed.store(true, Ordering::Release);
        }
        r
    }

    /// What the snapshot already holds at `index` before this run writes it (`None`:
    /// unknown, as an absent block of an encrypted snapshot is).
    fn held(&self, index: u64) -> (Option<BlockDigest>, Fate) {
        if let Some(d) = self.base.acked.get(&index) {
            return (Some(*d), Fate::Resumed);
        }
        if let Some(d) = self.base.parent.get(&index) {
            return (Some(*d), Fate::Unchanged);
        }
        ((!self.encrypted).then_some(self.zero_digest), Fate::Zero)
    }

    async fn read_and_put(self: Arc<Self>, block: PlannedBlock) -> Result<Done, UploadFailure> {
        let bs = self.block_size;
        let index = block.index;
        let (held, fate) = self.held(index);
        // Checked before this run started (the image holds what was sent): not read again.
        if let (Fate::Resumed, Some(content), Some(fast)) =
            (fate, held, self.base.acked_blake3.get(&index))
        {
            return Ok(Done {
                index,
                content,
                fast: *fast,
                fate,
            });
        }
        let held_fast = match fate {
            Fate::Unchanged => self.base.parent_blake3.get(&index).copied(),
            _ => None,
        };
        let (buf, content, fast) = if block.has_data {
            let mut buf = self.pool.take();
            let me = self.clone();
            let (buf, digest, fast) = tokio::task::spawn_blocking(move || {
                me.image.read_block(index * bs, &mut buf)?;
                if checksum::is_zero(&buf) {
                    return Ok::<_, ImageError>((buf, me.zero_digest, me.zero_fast, true));
                }
                let (d, f) = digests(&buf, held.zip(held_fast));
                Ok((buf, d, f, false))
            })
            .await
            .map_err(|e| UploadFailure::Protocol(format!("block reader panicked: {e}")))?
            .map(|(buf, d, f, zero)| {
                if zero {
                    self.pool.give(buf);
                    (None, d, f)
                } else {
                    (Some(buf), d, f)
                }
            })?;
            (buf, digest, fast)
        } else {
            (None, self.zero_digest, self.zero_fast)
        };
        if held == Some(content) {
            if let Some(buf) = buf {
                self.pool.give(buf);
            }
            return Ok(Done {
                index,
                content,
                fast,
                fate,
            });
        }
        // A zero block or a hole that must be written (the parent has data there, or
        // the snapshot is encrypted) is sent as the shared zero block.
        let data = match buf {
            Some(buf) => buf.freeze(),
            None => self.zero_block.clone(),
        };
        self.progress.inc_total(bs);
        self.put(index, &data, &content).await?;
        // Durable before the slot is released: at most `workers` blocks are ever sent
        // and not journalled.
        self.acks
            .record(index, &content)
            .await
            .map_err(|source| UploadFailure::Index {
                path: self.acks_path.clone(),
                source,
            })?;
        // Back to the pool when no one else holds it (the shared zero block always is).
        if let Ok(buf) = data.try_into_mut() {
            self.pool.give(buf);
        }
        self.progress.inc(bs);
        Ok(Done {
            index,
            content,
            fast,
            fate: Fate::Sent,
        })
    }

    async fn put(&self, index: u64, data: &Bytes, digest: &BlockDigest) -> Result<(), AwsError> {
        let sum = checksum::to_base64(digest);
        let call = self
            .clients
            .call("PutSnapshotBlock")
            .on(format!("{} block {index}", self.snapshot_id));
        let fresh = |e: &AwsError| {
            e.has_code("ResourceNotFoundException") && self.started.elapsed() < NOT_FOUND_GRACE
        };
        self.retry
            .send_with(&call, fresh, || {
                self.clients
                    .ebs
                    .put_snapshot_block()
                    .snapshot_id(&self.snapshot_id)
                    .block_index(index as i32)
                    .data_length(data.len() as i32)
                    .block_data(ByteStream::from(data.clone()))
                    .checksum(&sum)
                    .checksum_algorithm(ChecksumAlgorithm::ChecksumAlgorithmSha256)
                    .send()
            })
            .await?;
        Ok(())
    }
}

/// The planned blocks of the image, with the blocks where the parent holds data added
/// (as holes: where the image has none, zeros must be written over the parent's).
struct WithParentBlocks<I: Iterator> {
    plan: std::iter::Peekable<I>,
    extra: std::iter::Peekable<std::vec::IntoIter<u64>>,
}

impl<I: Iterator<Item = std::io::Result<PlannedBlock>>> Iterator for WithParentBlocks<I> {
    type Item = std::io::Result<PlannedBlock>;

    fn next(&mut self) -> Option<Self::Item> {
        let hole = |index| {
            Some(Ok(PlannedBlock {
                index,
                has_data: false,
            }))
        };
        match (self.plan.peek(), self.extra.peek().copied()) {
            (Some(Ok(p)), Some(e)) if e < p.index => {
                self.extra.next();
                hole(e)
            }
            (Some(Ok(p)), Some(e)) if e == p.index => {
                self.extra.next();
                self.plan.next()
            }
            (Some(_), _) => self.plan.next(),
            (None, Some(e)) => {
                self.extra.next();
                hole(e)
            }
            (None, None) => None,
        }
    }
}

/// Upload `image` to a new snapshot. `shutdown` resolving (Ctrl-C) stops the upload and
/// cleans up like any other failure.
pub async fn upload(
    clients: &Clients,
    image: Arc<DiskImage>,
    opts: &UploadOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<UploadReport, UploadError> {
    upload_with(clients, image, opts, shutdown, |_| {}).await
}

/// A checked parent snapshot and its content.
struct Parent {
    id: String,
    encrypted: bool,
    /// Block index -> digest of what the parent holds (blocks with data; every block of
    /// an encrypted parent).
    blocks: HashMap<u64, BlockDigest>,
    /// The BLAKE3 of those blocks, where its index keeps them.
    blake3: HashMap<u64, FastDigest>,
    /// The block size of its index.
    block_size: u64,
}

/// What to do about an earlier, interrupted run of the same upload.
enum Earlier {
    /// None was found.
    None,
    /// Continue its pending snapshot: the blocks it acknowledged, and their BLAKE3.
    Continue(
        Box<PendingRecord>,
        HashMap<u64, BlockDigest>,
        HashMap<u64, FastDigest>,
    ),
    /// Start over, for this reason.
    Restart(String),
}

/// [`upload`], telling `on_started` the snapshot id as soon as StartSnapshot answers, so
/// a journal can record it before anything else can go wrong.
pub async fn upload_with(
    clients: &Clients,
    image: Arc<DiskImage>,
    opts: &UploadOptions,
    shutdown: impl Future<Output = ()>,
    on_started: impl FnOnce(&str),
) -> Result<UploadReport, UploadError> {
    let t0 = Instant::now();
    let nothing = |failure| UploadError {
        failure,
        cleanup: Cleanup::NothingStarted,
    };
    let wanted_encrypted = opts.encrypted || opts.kms_key_arn.is_some();
    let volume_gib = volume_size_gib(image.size());
    // The parent is checked, and its content known, before anything is started.
    let parent = match &opts.parent {
        Some(id) => Some(
            check_parent(clients, id, volume_gib, wanted_encrypted, opts)
                .await
                .map_err(nothing)?,
        ),
        None => None,
    };
    let job = Job {
        clients,
        encrypted: wanted_encrypted || parent.as_ref().is_some_and(|p| p.encrypted),
        volume_gib,
        image,
        opts,
        key: String::new(),
    };
    let job = Job {
        key: job.resume_key(),
        ..job
    };
    let earlier = if opts.resume {
        job.earlier_run().await.map_err(nothing)?
    } else {
        Earlier::None
    };
    let mut restarted = None;
    let (snapshot_id, block_size, acked, acked_blake3, fresh) = match earlier {
        Earlier::Continue(record, acked, acked_blake3) => {
            tracing::warn!(
                "continuing the pending snapshot {} of an interrupted upload of {} ({} blocks \
                 already acknowledged)",
                record.snapshot_id,
                record.image.display(),
                acked.len()
            );
            let bs = Some(record.block_size as i64);
            (record.snapshot_id, bs, acked, acked_blake3, false)
        }
        other => {
            if let Earlier::Restart(why) = other {
                tracing::warn!("starting over: {why}");
                restarted = Some(why);
            }
            let (id, bs) = job.start_snapshot(parent.as_ref()).await.map_err(nothing)?;
            (id, bs, HashMap::new(), HashMap::new(), true)
        }
    };
    tracing::info!(
        "{} snapshot {snapshot_id} ({} GiB) in {}{}",
        if fresh { "started" } else { "resuming" },
        job.volume_gib,
        clients.region(),
        parent
            .as_ref()
            .map(|p| format!(", child of {}", p.id))
            .unwrap_or_default()
    );
    on_started(&snapshot_id);

    let base = Base {
        parent: parent
            .as_ref()
            .map(|p| p.blocks.clone())
            .unwrap_or_default(),
        parent_blake3: parent
            .as_ref()
            .map(|p| p.blake3.clone())
            .unwrap_or_default(),
        acked,
        acked_blake3,
    };
    let mut index = None;
    let result = tokio::select! {
        r = job.fill_and_complete(&snapshot_id, block_size, fresh, parent.as_ref(), base, &mut index) => r,
        _ = shutdown => Err(UploadFailure::Interrupted),
    };
    match result {
        Ok(mut report) => {
            resume::remove(&opts.index_dir, &job.key, &snapshot_id);
            report.seconds = secs(t0.elapsed());
            report.resumed = !fresh;
            report.restarted = restarted;
            Ok(report)
        }
        Err(failure) => {
            let cleanup = clean_up(clients, &snapshot_id, opts, index).await;
            if let Cleanup::Deleted(_) = cleanup {
                resume::remove(&opts.index_dir, &job.key, &snapshot_id);
            }
            Err(UploadError { failure, cleanup })
        }
    }
}

/// Check `id` can be the parent of a `volume_gib` GiB snapshot, and load what it holds
/// from the block index kept at its upload.
async fn check_parent(
    clients: &Clients,
    id: &str,
    volume_gib: u64,
    encrypted: bool,
    opts: &UploadOptions,
) -> Result<Parent, UploadFailure> {
    let region = clients.region();
    let snap = ec2::snapshot(clients, id, &opts.retry)
        .await?
        .ok_or_else(|| {
            UploadFailure::Parent(format!(
                "parent snapshot {id}: no such snapshot in {region}"
            ))
        })?;
    if snap.state != "completed" {
        return Err(UploadFailure::Parent(format!(
            "parent snapshot {id} is {}, not completed: only a completed snapshot can be a parent",
            snap.state
        )));
    }
    let parent_gib = u64::try_from(snap.volume_size).unwrap_or(0);
    if parent_gib > volume_gib {
        return Err(UploadFailure::Parent(format!(
            "parent snapshot {id} is a {parent_gib} GiB volume, larger than this image's \
             {volume_gib} GiB: a child snapshot cannot be smaller than its parent"
        )));
    }
    if snap.encrypted && !encrypted {
        return Err(UploadFailure::Parent(format!(
            "parent snapshot {id} is encrypted and this upload is not: pass --encrypted \
             (a child of an encrypted snapshot is encrypted with its parent's key)"
        )));
    }
    if !snap.encrypted && encrypted {
        return Err(UploadFailure::Parent(format!(
            "parent snapshot {id} is not encrypted and this upload is: a child snapshot \
             keeps its parent's encryption (upload without --parent to encrypt)"
        )));
    }
    if snap.tags.get(tags::OWNERSHIP).map(String::as_str) != Some(tags::OWNERSHIP_VALUE) {
        tracing::info!("parent snapshot {id} was not made by ec2ami; using it as it is readable");
    }
    if kept_index(&opts.index_dir, id).is_none() {
        tracing::warn!(
            "no block index of parent snapshot {id} is kept in {}: building it from the \
             snapshot (GetSnapshotBlock of its blocks)",
            opts.index_dir.display()
        );
    }
    let build = index::BuildOptions {
        workers: opts.workers,
        retry: opts.retry,
        progress: opts.progress,
    };
    let ix = index::load_or_build(clients, id, &opts.index_dir, &build)
        .await
        .map_err(|e| {
            UploadFailure::Parent(format!("the block index of parent snapshot {id}: {e}"))
        })?
        .index;
    let zero = checksum::block_digest(&vec![0u8; ix.header.block_size as usize]);
    let blocks: HashMap<u64, BlockDigest> = ix
        .blocks
        .into_iter()
        .filter(|(_, d)| snap.encrypted || *d != zero)
        .collect();
    let blake3 = ix
        .blake3
        .into_iter()
        .filter(|(i, _)| blocks.contains_key(i))
        .collect();
    Ok(Parent {
        id: id.to_string(),
        encrypted: snap.encrypted,
        blocks,
        blake3,
        block_size: ix.header.block_size,
    })
}

/// One upload: what every step needs.
struct Job<'a> {
    clients: &'a Clients,
    image: Arc<DiskImage>,
    opts: &'a UploadOptions,
    encrypted: bool,
    volume_gib: u64,
    /// What identifies this upload for a resume.
    key: String,
}

impl Job<'_> {
    /// The key of the upload: the image (as a canonical path), the region and every
    /// argument that shapes the snapshot.
    fn resume_key(&self) -> String {
        let opts = self.opts;
        let path = std::fs::canonicalize(self.image.path())
            .unwrap_or_else(|_| self.image.path().to_owned());
        let tags: Vec<String> = opts.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
        resume::key(&[
            &path.to_string_lossy(),
            self.clients.region(),
            &self.volume_gib.to_string(),
            &self.encrypted.to_string(),
            opts.kms_key_arn.as_deref().unwrap_or(""),
            opts.parent.as_deref().unwrap_or(""),
            opts.description.as_deref().unwrap_or(""),
            &tags.join("\n"),
        ])
    }

    /// Look for an interrupted run of this upload and decide whether to continue it.
    async fn earlier_run(&self) -> Result<Earlier, UploadFailure> {
        let (clients, opts) = (self.clients, self.opts);
        let dir = &opts.index_dir;
        let Some(record) = resume::load_record(dir, &self.key) else {
            return Ok(Earlier::None);
        };
        let id = record.snapshot_id.clone();
        let forget = || resume::remove(dir, &self.key, &id);
        let snap = ec2::snapshot(clients, &id, &opts.retry).await?;
        let snap = match snap {
            Some(s) if s.state == "pending" => s,
            Some(s) => {
                forget();
                return Ok(Earlier::Restart(format!(
                    "the snapshot {id} of the interrupted upload is {} (AWS keeps a pending \
                     snapshot for the --resume-window given when it started); left as it is",
                    s.state
                )));
            }
            None => {
                forget();
                return Ok(Earlier::Restart(format!(
                    "the snapshot {id} of the interrupted upload is gone (timed out or deleted)"
                )));
            }
        };
        let ours =
            snap.tags.get(tags::OWNERSHIP).map(String::as_str) == Some(tags::OWNERSHIP_VALUE);
        let why = match record.identity.difference(self.image.identity()) {
            Some(d) => Some(format!(
                "the image changed since the interrupted upload ({d})"
            )),
            None => {
                let acked = resume::load_acks(dir, &id).map_err(|source| UploadFailure::Index {
                    path: resume::acks_path(dir, &id),
                    source,
                })?;
                let image = self.image.clone();
                let bs = record.block_size;
                let check = acked.clone();
                let checked = tokio::task::spawn_blocking(move || check_acked(&image, bs, &check))
                    .await
                    .map_err(|e| {
                        UploadFailure::Protocol(format!("block reader panicked: {e}"))
                    })??;
                match checked {
                    Err(i) => Some(format!(
                        "the image changed since the interrupted upload (block {i} differs from \
                         what was sent)"
                    )),
                    Ok(fast) => return Ok(Earlier::Continue(Box::new(record), acked, fast)),
                }
            }
        };
        let why = why.expect("set above");
        forget();
        // Ours, pending, of a superseded image: nothing will ever complete it.
        let fate = if ours {
            match ec2::delete_snapshot(clients, &id, &opts.retry).await {
                Ok(_) => format!("its snapshot {id} was deleted"),
                Err(e) => format!("its snapshot {id} could not be deleted ({e})"),
            }
        } else {
            format!("its snapshot {id} is not tagged as ec2ami's and was left as it is")
        };
        Ok(Earlier::Restart(format!("{why}; {fate}")))
    }

    async fn start_snapshot(
        &self,
        parent: Option<&Parent>,
    ) -> Result<(String, Option<i64>), UploadFailure> {
        let (clients, image, opts) = (self.clients, &self.image, self.opts);
        let (encrypted, volume_gib) = (self.encrypted, self.volume_gib);
        let mut tags = vec![
            Tag::builder()
                .key(tags::OWNERSHIP)
                .value(tags::OWNERSHIP_VALUE)
                .build(),
            Tag::builder()
                .key(tags::IMAGE_SIZE)
                .value(image.size().to_string())
                .build(),
        ];
        // The lineage, for prune's storage figures (a child is billed for its own blocks).
        if let Some(p) = parent {
            tags.push(
                Tag::builder()
                    .key(tags::PARENT_SNAPSHOT)
                    .value(&p.id)
                    .build(),
            );
        }
        tags.extend(
            opts.tags
                .iter()
                .map(|(k, v)| Tag::builder().key(k).value(v).build()),
        );
        // One token for every attempt: a retried StartSnapshot whose first answer was lost
        // returns the same snapshot instead of making a second one.
        let token = opts
            .client_token
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let out = opts
            .retry
            .send(&clients.call("StartSnapshot"), || {
                let mut req = clients
                    .ebs
                    .start_snapshot()
                    .volume_size(volume_gib as i64)
                    .set_tags(Some(tags.clone()))
                    .client_token(&token)
                    .set_description(opts.description.clone())
                    .set_timeout(opts.pending_timeout_minutes);
                match parent {
                    // A child keeps its parent's encryption (Encrypted may not be given).
                    Some(p) => {
                        req = req
                            .parent_snapshot_id(&p.id)
                            .set_kms_key_arn(opts.kms_key_arn.clone());
                    }
                    None if encrypted => {
                        req = req
                            .encrypted(true)
                            .set_kms_key_arn(opts.kms_key_arn.clone());
                    }
                    None => {}
                }
                req.send()
            })
            .await?;
        let id = out.snapshot_id().ok_or_else(|| {
            UploadFailure::Protocol("StartSnapshot answered no snapshot id".into())
        })?;
        Ok((id.to_string(), out.block_size().map(i64::from)))
    }

    async fn fill_and_complete(
        &self,
        snapshot_id: &str,
        block_size: Option<i64>,
        fresh: bool,
        parent: Option<&Parent>,
        base: Base,
        index_slot: &mut Option<IndexWriter>,
    ) -> Result<UploadReport, UploadFailure> {
        let (clients, image, opts) = (self.clients, &self.image, self.opts);
        let (encrypted, volume_gib) = (self.encrypted, self.volume_gib);
        // The block size comes from StartSnapshot's answer, so it is checked here, where a
        // bad one still gets the snapshot cleaned up.
        let block_size = check_block_size(block_size).map_err(UploadFailure::Protocol)?;
        if let Some(p) = parent
            && p.block_size != block_size
        {
            return Err(UploadFailure::Protocol(format!(
                "the block index of parent {} has {}-byte blocks, the new snapshot {block_size}",
                p.id, p.block_size
            )));
        }
        let total_blocks = (volume_gib << 30) / block_size;
        let index_err = |source| UploadFailure::Index {
            path: opts.index_dir.clone(),
            source,
        };
        if fresh {
            // Before any block: a run killed from here on can be continued.
            let record = PendingRecord {
                snapshot_id: snapshot_id.to_string(),
                region: clients.region().to_string(),
                image: image.path().to_owned(),
                identity: image.identity().clone(),
                block_size,
                volume_size_gib: volume_gib,
                parent: parent.map(|p| p.id.clone()),
                started_unix: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(0),
                timeout_minutes: opts.pending_timeout_minutes,
            };
            resume::save_record(&opts.index_dir, &self.key, &record).map_err(index_err)?;
        }
        let header = IndexHeader {
            snapshot_id: snapshot_id.to_string(),
            block_size,
            volume_size_gib: volume_gib,
            image_size: image.size(),
            encrypted,
        };
        *index_slot = Some(IndexWriter::create(&opts.index_dir, &header).map_err(index_err)?);
        let acks = AckJournal::open(&opts.index_dir, snapshot_id).map_err(index_err)?;

        // Progress counts what is sent: a block joins the total when it is found to need
        // sending.
        let progress = Progress::new(opts.progress, "upload", 0);
        let workers = opts.workers.max(1);
        let zero_block = Bytes::from(vec![0u8; block_size as usize]);
        let zero_digest = checksum::block_digest(&zero_block);
        let zero_fast = checksum::fast_digest(&zero_block);
        let mut extra: Vec<u64> = if encrypted {
            Vec::new()
        } else {
            base.parent
                .keys()
                .copied()
                .filter(|&i| i < total_blocks)
                .collect()
        };
        extra.sort_unstable();
        let ctx = Arc::new(Blocks {
            clients: clients.clone(),
            image: image.clone(),
            snapshot_id: snapshot_id.to_string(),
            block_size,
            encrypted,
            slots: Semaphore::new(workers),
            pool: BufferPool {
                block_size: block_size as usize,
                free: Mutex::new(Vec::with_capacity(workers)),
            },
            zero_block,
            zero_digest,
            zero_fast,
            retry: opts.retry,
            started: Instant::now(),
            progress,
            base,
            acks,
            acks_path: resume::acks_path(&opts.index_dir, snapshot_id),
            failed: AtomicBool::new(false),
        });

        // `buffered` keeps results in block order (the aggregate checksum needs ascending
        // indexes) while up to `window` blocks are in flight; the semaphore bounds the
        // requests (and buffers) actually in progress to `workers`.
        let window = workers * 8;
        let plan = WithParentBlocks {
            plan: image.plan(block_size, total_blocks, encrypted).peekable(),
            extra: extra.into_iter().peekable(),
        };
        let results = stream::iter(plan).map(|planned| {
            let ctx = ctx.clone();
            async move {
                let block = planned.map_err(|e| image_read_error(&ctx.image, e))?;
                ctx.process(block).await
            }
        });
        let mut results = std::pin::pin!(results.buffered(window));
        let mut aggregate = LinearAggregate::new();
        let (mut sent, mut zero, mut unchanged, mut resumed) = (0u64, 0u64, 0u64, 0u64);
        let index = index_slot.as_mut().expect("index created above");
        while let Some(done) = results.next().await {
            let done = match done {
                Ok(d) => d,
                // Results come in block order, so an abandoned block can come before the
                // failure that made it abandoned: report that failure.
                Err(UploadFailure::Abandoned) => {
                    return Err(first_real_failure(&mut results).await);
                }
                Err(e) => return Err(e),
            };
            match done.fate {
                Fate::Sent => sent += 1,
                Fate::Resumed => resumed += 1,
                Fate::Unchanged => unchanged += 1,
                Fate::Zero => zero += 1,
            }
            if matches!(done.fate, Fate::Sent | Fate::Resumed) {
                aggregate.push(&done.content);
            }
            // The index lists what the snapshot holds (its parent's blocks included), so
            // that it can be the parent of the next upload.
            if encrypted || done.content != zero_digest {
                index
                    .push(done.index, &done.content, Some(&done.fast))
                    .map_err(index_err)?;
            }
        }
        index.flush().map_err(index_err)?;
        let written = aggregate.blocks();
        let sum = aggregate.finish();
        // A file written to meanwhile would give a snapshot matching neither version.
        image.check_unchanged()?;
        complete(clients, snapshot_id, written, &sum, &opts.retry).await?;
        if let Some(deadline) = opts.wait {
            wait_for_completed(clients, snapshot_id, deadline, &opts.retry).await?;
        }
        ctx.progress.finish();
        let index_path = index_slot
            .take()
            .expect("index created above")
            .finish(&sum, written)
            .map_err(index_err)?;
        Ok(UploadReport {
            snapshot_id: snapshot_id.to_string(),
            region: clients.region().to_string(),
            size_bytes: image.size(),
            volume_size_gib: volume_gib,
            block_size,
            parent_snapshot_id: parent.map(|p| p.id.clone()),
            blocks_written: sent,
            blocks_unchanged: unchanged,
            blocks_resumed: resumed,
            resumed: false,
            restarted: None,
            blocks_skipped: total_blocks - sent,
            blocks_zero: zero,
            bytes_read: image.bytes_read(),
            checksum: sum,
            seconds: 0.0,
            index_path,
        })
    }
}

/// The SHA-256 and BLAKE3 of a data block. `held` is what the snapshot holds at its
/// place (its parent's SHA-256 and BLAKE3): when the BLAKE3 is the same, so is the data,
/// and the held SHA-256 is taken instead of computing it (an unchanged block costs
/// BLAKE3 alone; SHA-256 is needed only for a block that is sent).
fn digests(buf: &[u8], held: Option<(BlockDigest, FastDigest)>) -> (BlockDigest, FastDigest) {
    let fast = checksum::fast_digest(buf);
    match held {
        Some((sha, f)) if f == fast => (sha, fast),
        _ => (checksum::block_digest(buf), fast),
    }
}

/// Check that the image still holds what was sent of each acknowledged block: their
/// BLAKE3 (for the index) when it does, else the first block that differs. On every core
/// (the blocks in ascending runs, one per thread).
fn check_acked(
    image: &DiskImage,
    block_size: u64,
    acked: &HashMap<u64, BlockDigest>,
) -> Result<Result<HashMap<u64, FastDigest>, u64>, UploadFailure> {
    let mut order: Vec<(u64, BlockDigest)> = acked.iter().map(|(i, d)| (*i, *d)).collect();
    order.sort_unstable_by_key(|(i, _)| *i);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let parts = super::on_threads(&order, threads, |part| {
        let mut buf = vec![0u8; block_size as usize];
        let mut fast = Vec::with_capacity(part.len());
        for (i, d) in part {
            image.read_block(i * block_size, &mut buf)?;
            if checksum::block_digest(&buf) != *d {
                return Ok(Err(*i));
            }
            fast.push((*i, checksum::fast_digest(&buf)));
        }
        Ok::<_, UploadFailure>(Ok(fast))
    });
    let mut fast = HashMap::with_capacity(order.len());
    // In block order: the first part that fails names its first differing block.
    for part in parts {
        match part? {
            Ok(f) => fast.extend(f),
            Err(i) => return Ok(Err(i)),
        }
    }
    Ok(Ok(fast))
}

/// The first failure in `results` that is not [`UploadFailure::Abandoned`] (there is one:
/// blocks are abandoned only after one failed).
async fn first_real_failure<S>(results: &mut S) -> UploadFailure
where
    S: futures_util::Stream<Item = Result<Done, UploadFailure>> + Unpin,
{
    while let Some(r) = results.next().await {
        match r {
            Err(UploadFailure::Abandoned) | Ok(_) => continue,
            Err(e) => return e,
        }
    }
    UploadFailure::Abandoned
}

fn image_read_error(image: &DiskImage, source: std::io::Error) -> UploadFailure {
    UploadFailure::Image(ImageError::Extents {
        path: image.path().to_owned(),
        source,
    })
}

async fn complete(
    clients: &Clients,
    snapshot_id: &str,
    blocks: u64,
    sum: &str,
    retry: &RetryPolicy,
) -> Result<(), AwsError> {
    retry
        .send(&clients.call("CompleteSnapshot").on(snapshot_id), || {
            clients
                .ebs
                .complete_snapshot()
                .snapshot_id(snapshot_id)
                .changed_blocks_count(blocks as i32)
                .checksum(sum)
                .checksum_algorithm(ChecksumAlgorithm::ChecksumAlgorithmSha256)
                .checksum_aggregation_method(ChecksumAggregationMethod::ChecksumAggregationLinear)
                .send()
        })
        .await?;
    Ok(())
}

async fn clean_up(
    clients: &Clients,
    snapshot_id: &str,
    opts: &UploadOptions,
    index: Option<IndexWriter>,
) -> Cleanup {
    if opts.keep_on_failure {
        if let Some(mut w) = index {
            let _ = w.flush();
            tracing::info!("partial block index kept at {}", w.partial_path().display());
        }
        return Cleanup::Kept(snapshot_id.to_string());
    }
    if let Some(w) = index {
        w.discard();
    }
    let policy = RetryPolicy {
        deadline: Duration::from_secs(120),
        ..opts.retry
    };
    match ec2::delete_snapshot(clients, snapshot_id, &policy).await {
        Ok(_) => Cleanup::Deleted(snapshot_id.to_string()),
        Err(e) => Cleanup::DeleteFailed(snapshot_id.to_string(), e),
    }
}

/// True when `snapshot_id` is the pending snapshot of an interrupted upload whose record
/// is kept in `index_dir`: rerunning that upload continues it, so it is not a leftover
/// to delete.
pub fn resumable(index_dir: &Path, snapshot_id: &str) -> bool {
    let Ok(entries) = std::fs::read_dir(index_dir.join("pending")) else {
        return false;
    };
    entries.filter_map(Result::ok).any(|e| {
        std::fs::read_to_string(e.path())
            .ok()
            .and_then(|t| serde_json::from_str::<PendingRecord>(&t).ok())
            .is_some_and(|r| r.snapshot_id == snapshot_id)
    })
}

/// The block index kept for `snapshot_id` in `index_dir`, if it is complete.
pub fn kept_index(index_dir: &Path, snapshot_id: &str) -> Option<PathBuf> {
    let path = index::path_for(index_dir, snapshot_id);
    BlockIndex::load(&path)
        .ok()
        .filter(|ix| ix.aggregate.is_some())
        .map(|_| path)
}

/// How many blocks an upload of `image` against `parent` would send, and how many
/// blocks the image has with data: the image is read and hashed (holes are not read),
/// nothing is sent. For a plan.
pub fn blocks_to_send(image: &Path, index_dir: &Path, parent: &str) -> Result<(u64, u64), String> {
    let path = index::path_for(index_dir, parent);
    let ix = BlockIndex::load(&path)
        .map_err(|e| format!("the block index of {parent} ({}): {e}", path.display()))?;
    let img = DiskImage::open(image).map_err(|e| e.to_string())?;
    let bs = ix.header.block_size;
    let encrypted = ix.header.encrypted;
    let total_blocks = (volume_size_gib(img.size()) << 30) / bs;
    let zero = checksum::block_digest(&vec![0u8; bs as usize]);
    let blake3 = ix.blake3;
    let parent: HashMap<u64, BlockDigest> = ix
        .blocks
        .into_iter()
        .filter(|(_, d)| encrypted || *d != zero)
        .collect();
    let mut extra: Vec<u64> = parent
        .keys()
        .copied()
        .filter(|&i| i < total_blocks)
        .collect();
    extra.sort_unstable();
    let plan = WithParentBlocks {
        plan: img.plan(bs, total_blocks, encrypted).peekable(),
        extra: extra.into_iter().peekable(),
    };
    let mut buf = vec![0u8; bs as usize];
    let (mut send, mut data) = (0, 0);
    for b in plan {
        let b = b.map_err(|e| format!("{}: {e}", image.display()))?;
        let held = parent.get(&b.index).copied();
        let content = if b.has_data {
            img.read_block(b.index * bs, &mut buf)
                .map_err(|e| e.to_string())?;
            digests(&buf, held.zip(blake3.get(&b.index).copied())).0
        } else {
            zero
        };
        if content != zero {
            data += 1;
        }
        let held = held.or_else(|| (!encrypted).then_some(zero));
        if held != Some(content) {
            send += 1;
        }
    }
    Ok((send, data))
}
