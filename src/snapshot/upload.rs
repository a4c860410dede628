//! Upload a disk image to a new EBS snapshot with the EBS direct APIs.
//!
//! StartSnapshot, then the planned blocks (holes never read, zero blocks skipped for
//! unencrypted snapshots) put concurrently by `workers` tasks with reused buffers, then
//! CompleteSnapshot with the changed-block count and the LINEAR aggregate checksum, then
//! a wait for `completed`. Any failure or interruption deletes the unfinished snapshot
//! (unless asked to keep it) and says which one it was.

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_ebs::primitives::ByteStream;
use aws_sdk_ebs::types::{ChecksumAggregationMethod, ChecksumAlgorithm, Tag};
use bytes::{Bytes, BytesMut};
use futures_util::{StreamExt, stream};
use serde::Serialize;
use tokio::sync::Semaphore;

use super::checksum::{self, BlockDigest, LinearAggregate};
use super::index::{IndexHeader, IndexWriter};
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
    /// Minutes AWS keeps a pending snapshot open before failing it.
    pub pending_timeout_minutes: Option<i32>,
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
    /// Blocks sent with PutSnapshotBlock.
    pub blocks_written: u64,
    /// Blocks of the volume not sent (holes, zero blocks, padding to the GiB).
    pub blocks_skipped: u64,
    /// Blocks that were read but found all zero (a subset of the skipped ones).
    pub blocks_zero: u64,
    /// Bytes read from the image (holes are never read).
    pub bytes_read: u64,
    /// The LINEAR aggregate SHA-256 checksum sent with CompleteSnapshot.
    pub checksum: String,
    /// Wall time.
    pub seconds: f64,
    /// Where the per-block SHA-256 index was saved.
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
    retry: RetryPolicy,
    started: Instant,
    progress: Progress,
    /// Set by the first block that fails, while it still holds its worker slot, so no
    /// block that gets a slot afterwards sends anything.
    failed: AtomicBool,
}

/// Outcome of one planned block.
struct Done {
    index: u64,
    /// `None`: all zero and not sent.
    digest: Option<BlockDigest>,
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

    async fn read_and_put(self: Arc<Self>, block: PlannedBlock) -> Result<Done, UploadFailure> {
        let bs = self.block_size;
        let (data, digest) = if block.has_data {
            let mut buf = self.pool.take();
            let me = self.clone();
            let (buf, digest) = tokio::task::spawn_blocking(move || {
                me.image.read_block(block.index * bs, &mut buf)?;
                if !me.encrypted && checksum::is_zero(&buf) {
                    return Ok::<_, ImageError>((buf, None));
                }
                let d = checksum::block_digest(&buf);
                Ok((buf, Some(d)))
            })
            .await
            .map_err(|e| UploadFailure::Protocol(format!("block reader panicked: {e}")))??;
            let Some(digest) = digest else {
                self.pool.give(buf);
                self.progress.inc(bs);
                return Ok(Done {
                    index: block.index,
                    digest: None,
                });
            };
            (buf.freeze(), digest)
        } else {
            // A hole of an encrypted snapshot: it must still be written, as zeros.
            (self.zero_block.clone(), self.zero_digest)
        };
        self.put(block.index, &data, &digest).await?;
        // Back to the pool when no one else holds it (the shared zero block always is).
        if let Ok(buf) = data.try_into_mut() {
            self.pool.give(buf);
        }
        self.progress.inc(bs);
        Ok(Done {
            index: block.index,
            digest: Some(digest),
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
    let job = Job {
        clients,
        encrypted: opts.encrypted || opts.kms_key_arn.is_some(),
        volume_gib: volume_size_gib(image.size()),
        image,
        opts,
    };
    let (snapshot_id, block_size) = job.start_snapshot().await.map_err(|failure| UploadError {
        failure,
        cleanup: Cleanup::NothingStarted,
    })?;
    tracing::info!(
        "started snapshot {snapshot_id} ({} GiB) in {}",
        job.volume_gib,
        clients.region()
    );
    on_started(&snapshot_id);

    let mut index = None;
    let result = tokio::select! {
        r = job.fill_and_complete(&snapshot_id, block_size, &mut index) => r,
        _ = shutdown => Err(UploadFailure::Interrupted),
    };
    match result {
        Ok(mut report) => {
            report.seconds = secs(t0.elapsed());
            Ok(report)
        }
        Err(failure) => {
            let cleanup = clean_up(clients, &snapshot_id, opts, index).await;
            Err(UploadError { failure, cleanup })
        }
    }
}

/// One upload: what every step needs.
struct Job<'a> {
    clients: &'a Clients,
    image: Arc<DiskImage>,
    opts: &'a UploadOptions,
    encrypted: bool,
    volume_gib: u64,
}

impl Job<'_> {
    async fn start_snapshot(&self) -> Result<(String, Option<i64>), UploadFailure> {
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
                if encrypted {
                    req = req
                        .encrypted(true)
                        .set_kms_key_arn(opts.kms_key_arn.clone());
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
        index_slot: &mut Option<IndexWriter>,
    ) -> Result<UploadReport, UploadFailure> {
        let (clients, image, opts) = (self.clients, &self.image, self.opts);
        let (encrypted, volume_gib) = (self.encrypted, self.volume_gib);
        // The block size comes from StartSnapshot's answer, so it is checked here, where a
        // bad one still gets the snapshot cleaned up.
        let block_size = check_block_size(block_size).map_err(UploadFailure::Protocol)?;
        let total_blocks = (volume_gib << 30) / block_size;
        let header = IndexHeader {
            snapshot_id: snapshot_id.to_string(),
            block_size,
            volume_size_gib: volume_gib,
            image_size: image.size(),
            encrypted,
        };
        let index_err = |source| UploadFailure::Index {
            path: opts.index_dir.clone(),
            source,
        };
        *index_slot = Some(IndexWriter::create(&opts.index_dir, &header).map_err(index_err)?);

        // Count the plan first (lseek only, no reads) so progress has a total.
        let planned = image
            .plan(block_size, total_blocks, encrypted)
            .try_fold(0u64, |n, b| b.map(|_| n + 1))
            .map_err(|e| image_read_error(image, e))?;
        let progress = Progress::new(opts.progress, "upload", planned * block_size);
        let workers = opts.workers.max(1);
        let zero_block = Bytes::from(vec![0u8; block_size as usize]);
        let zero_digest = checksum::block_digest(&zero_block);
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
            retry: opts.retry,
            started: Instant::now(),
            progress,
            failed: AtomicBool::new(false),
        });

        // `buffered` keeps results in block order (the aggregate checksum needs ascending
        // indexes) while up to `window` blocks are in flight; the semaphore bounds the
        // requests (and buffers) actually in progress to `workers`.
        let window = workers * 8;
        let plan = image.plan(block_size, total_blocks, encrypted);
        let results = stream::iter(plan).map(|planned| {
            let ctx = ctx.clone();
            async move {
                let block = planned.map_err(|e| image_read_error(&ctx.image, e))?;
                ctx.process(block).await
            }
        });
        let mut results = std::pin::pin!(results.buffered(window));
        let mut aggregate = LinearAggregate::new();
        let mut zero = 0u64;
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
            match done.digest {
                Some(d) => {
                    aggregate.push(&d);
                    index.push(done.index, &d).map_err(index_err)?;
                }
                None => zero += 1,
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
            blocks_written: written,
            blocks_skipped: total_blocks - written,
            blocks_zero: zero,
            bytes_read: image.bytes_read(),
            checksum: sum,
            seconds: 0.0,
            index_path,
        })
    }
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
