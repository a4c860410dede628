//! Download a snapshot to a sparse file: list its blocks (every page), fetch them
//! concurrently, verify each block's SHA-256, write non-zero blocks in place (absent
//! and zero blocks stay holes) into a temporary file renamed into place at the end.

use std::fs::File;
use std::future::Future;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use futures_util::TryStreamExt;
use serde::Serialize;

use super::checksum;
use super::listing::{self, ListingError};
use super::secs;
use crate::aws::{AwsError, Clients, ErrorClass, RetryPolicy, ec2, tags};
use crate::progress::{Progress, ProgressMode};

/// How to download.
#[derive(Debug, Clone)]
pub struct DownloadOptions {
    /// Concurrent block downloads.
    pub workers: usize,
    /// Replace an existing output file.
    pub force: bool,
    /// Write the whole volume even when the snapshot records a smaller image size.
    pub full_volume: bool,
    /// Retry policy for every call.
    pub retry: RetryPolicy,
    /// How progress is shown.
    pub progress: ProgressMode,
}

impl Default for DownloadOptions {
    fn default() -> Self {
        DownloadOptions {
            workers: super::upload::DEFAULT_WORKERS,
            force: false,
            full_volume: false,
            retry: RetryPolicy::default(),
            progress: ProgressMode::Quiet,
        }
    }
}

/// What a download did.
#[derive(Debug, Clone, Serialize)]
pub struct DownloadReport {
    /// The snapshot read.
    pub snapshot_id: String,
    /// The file written.
    pub output: PathBuf,
    /// Its size in bytes.
    pub size_bytes: u64,
    /// Block size of the snapshot.
    pub block_size: u64,
    /// Blocks the snapshot holds (fetched and verified).
    pub blocks_read: u64,
    /// Of those, blocks that were all zero (left as holes).
    pub blocks_zero: u64,
    /// Wall time.
    pub seconds: f64,
}

/// Why a download failed. The partial output is always removed.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// The output exists and `force` was not given.
    #[error("{0} already exists; pass --force to replace it")]
    Exists(PathBuf),
    /// Local file trouble.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// An AWS call failed (checksum mismatches that persist are reported here too).
    #[error("downloading {snapshot_id}: {source}")]
    Aws {
        /// The snapshot.
        snapshot_id: String,
        /// The failure.
        source: AwsError,
    },
    /// The snapshot's layout is unusable.
    #[error("downloading {snapshot_id}: {message}")]
    Protocol {
        /// The snapshot.
        snapshot_id: String,
        /// What is wrong.
        message: String,
    },
    /// Ctrl-C or SIGTERM.
    #[error("download of {0} interrupted; nothing was written")]
    Interrupted(String),
}

impl DownloadError {
    /// True when interrupted by a signal.
    pub fn interrupted(&self) -> bool {
        matches!(self, DownloadError::Interrupted(_))
    }
}

/// Download `snapshot_id` to `output`.
pub async fn download(
    clients: &Clients,
    snapshot_id: &str,
    output: &Path,
    opts: &DownloadOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<DownloadReport, DownloadError> {
    let t0 = Instant::now();
    if !opts.force && output.symlink_metadata().is_ok() {
        return Err(DownloadError::Exists(output.to_owned()));
    }
    let dir = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "download".into());
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}.ec2ami-partial-"))
        .tempfile_in(&dir)
        .map_err(|source| DownloadError::Io {
            what: "cannot create a temporary file in",
            path: dir.clone(),
            source,
        })?;

    let work = fetch_all(clients, snapshot_id, tmp.as_file(), opts);
    let mut report = tokio::select! {
        r = work => r?,
        _ = shutdown => return Err(DownloadError::Interrupted(snapshot_id.to_string())),
    };
    let io_err = |what, source| DownloadError::Io {
        what,
        path: output.to_owned(),
        source,
    };
    tmp.as_file()
        .sync_all()
        .map_err(|e| io_err("cannot sync", e))?;
    let persisted = if opts.force {
        tmp.persist(output)
    } else {
        tmp.persist_noclobber(output)
    };
    persisted.map_err(|e| io_err("cannot rename the download to", e.error))?;
    report.output = output.to_owned();
    report.seconds = secs(t0.elapsed());
    Ok(report)
}

async fn fetch_all(
    clients: &Clients,
    snapshot_id: &str,
    file: &File,
    opts: &DownloadOptions,
) -> Result<DownloadReport, DownloadError> {
    let listing_error = |e| match e {
        ListingError::Aws(source) => DownloadError::Aws {
            snapshot_id: snapshot_id.to_string(),
            source,
        },
        ListingError::Protocol(message) => DownloadError::Protocol {
            snapshot_id: snapshot_id.to_string(),
            message,
        },
    };
    let recorded_size = image_size_tag(clients, snapshot_id, &opts.retry).await;
    let call = clients.call("ListSnapshotBlocks").on(snapshot_id);
    let listing = listing::list(clients, &call, snapshot_id, &opts.retry)
        .await
        .map_err(listing_error)?;
    let block_size = listing.block_size;
    let volume_bytes = listing.volume_bytes();
    let size = match recorded_size {
        Some(s) if !opts.full_volume && s > 0 && s <= volume_bytes => s,
        _ => volume_bytes,
    };
    file.set_len(size).map_err(|source| DownloadError::Io {
        what: "cannot size",
        path: PathBuf::from("the temporary download"),
        source,
    })?;

    let progress = Arc::new(Progress::new(opts.progress, "download", 0));
    let zero = Arc::new(AtomicU64::new(0));
    let ctx = Fetch {
        clients,
        snapshot_id,
        file,
        block_size,
        size,
        retry: &opts.retry,
        progress: &progress,
        zero: &zero,
    };
    let count = listing
        .blocks
        .map_err(listing_error)
        .map_ok(|(index, token)| ctx.fetch(index, token))
        .try_buffer_unordered(opts.workers.max(1))
        .try_fold(0u64, |n, ()| async move { Ok(n + 1) })
        .await?;
    progress.finish();
    Ok(DownloadReport {
        snapshot_id: snapshot_id.to_string(),
        output: PathBuf::new(),
        size_bytes: size,
        block_size,
        blocks_read: count,
        blocks_zero: zero.load(Ordering::Relaxed),
        seconds: 0.0,
    })
}

/// The image size recorded by `ec2ami upload`, if the snapshot carries it. Best effort:
/// without it (or without ec2:DescribeSnapshots) the whole volume is written.
async fn image_size_tag(clients: &Clients, snapshot_id: &str, retry: &RetryPolicy) -> Option<u64> {
    match ec2::snapshot(clients, snapshot_id, retry).await {
        Ok(snapshot) => snapshot?.tag(tags::IMAGE_SIZE)?.parse().ok(),
        Err(e) => {
            tracing::warn!("cannot read the tags of {snapshot_id} ({e}): writing the whole volume");
            None
        }
    }
}

/// Shared state of the block fetchers.
struct Fetch<'a> {
    clients: &'a Clients,
    snapshot_id: &'a str,
    file: &'a File,
    block_size: u64,
    size: u64,
    retry: &'a RetryPolicy,
    progress: &'a Progress,
    zero: &'a AtomicU64,
}

impl Fetch<'_> {
    async fn fetch(&self, index: u64, token: String) -> Result<(), DownloadError> {
        let aws = |source| DownloadError::Aws {
            snapshot_id: self.snapshot_id.to_string(),
            source,
        };
        let call = self
            .clients
            .call("GetSnapshotBlock")
            .on(format!("{} block {index}", self.snapshot_id));
        let data = self
            .retry
            .run(&call, || self.get_verified(index, &token))
            .await
            .map_err(aws)?;
        self.progress.inc_total(self.block_size);
        self.progress.inc(self.block_size);
        if checksum::is_zero(&data) {
            self.zero.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let offset = index * self.block_size;
        let keep = self.size.saturating_sub(offset).min(data.len() as u64) as usize;
        if !checksum::is_zero(&data[keep..]) {
            return Err(DownloadError::Protocol {
                snapshot_id: self.snapshot_id.to_string(),
                message: format!(
                    "block {index} holds data beyond the recorded image size ({} bytes); \
                     use --full-volume",
                    self.size
                ),
            });
        }
        self.file
            .write_all_at(&data[..keep], offset)
            .map_err(|source| DownloadError::Io {
                what: "cannot write to",
                path: PathBuf::from("the temporary download"),
                source,
            })
    }

    /// One attempt: fetch the block and check its length and SHA-256.
    async fn get_verified(&self, index: u64, token: &str) -> Result<Bytes, AwsError> {
        get_block_verified(
            self.clients,
            self.snapshot_id,
            index,
            token,
            self.block_size,
        )
        .await
    }
}

/// One attempt at GetSnapshotBlock: fetch the block and check its length and SHA-256. A
/// mismatch is a transient error, retried like a network error (the data may have been
/// damaged in transit).
pub(super) async fn get_block_verified(
    clients: &Clients,
    snapshot_id: &str,
    index: u64,
    token: &str,
    block_size: u64,
) -> Result<Bytes, AwsError> {
    let out = clients
        .ebs
        .get_snapshot_block()
        .snapshot_id(snapshot_id)
        .block_index(index as i32)
        .block_token(token)
        .send()
        .await
        .map_err(|e| AwsError::from_sdk("GetSnapshotBlock", e))?;
    let expected = out.checksum().map(str::to_string);
    let data = out
        .block_data
        .collect()
        .await
        .map_err(|e| {
            AwsError::local(
                "GetSnapshotBlock",
                ErrorClass::Transient,
                format!("block {index}: reading the body: {e}"),
            )
        })?
        .into_bytes();
    let bad = |msg: String| {
        AwsError::local(
            "GetSnapshotBlock",
            ErrorClass::Transient,
            format!("block {index}: {msg}"),
        )
    };
    if data.len() as u64 != block_size {
        return Err(bad(format!(
            "{} bytes received, the block size is {block_size}",
            data.len()
        )));
    }
    let got = checksum::to_base64(&checksum::block_digest(&data));
    match expected {
        Some(want) if want == got => Ok(data),
        Some(want) => Err(bad(format!(
            "checksum mismatch: expected {want}, got {got}"
        ))),
        None => Err(bad("the answer carried no checksum".into())),
    }
}
