//! The per-block SHA-256 (and BLAKE3) index of what was uploaded to a snapshot,
//! persisted next to the snapshot id (`<dir>/<snapshot-id>.blocks`) so later uploads can
//! be incremental and resumable.
//!
//! Text format, one record per line:
//! ```text
//! ec2ami-block-index 2
//! snapshot snap-0123456789abcdef0
//! block-size 524288
//! volume-size-gib 10
//! image-size 1073741824
//! encrypted false
//! <block index> <base64 SHA-256> <base64 BLAKE3>   (ascending, one line per block)
//! complete <aggregate base64> <blocks>
//! ```
//! Version 1 (written before BLAKE3 was kept) has no BLAKE3 field and is still read: an
//! incremental upload against it compares SHA-256s instead.
//! The file is written as `<id>.blocks.partial` while uploading and renamed when the
//! snapshot is complete.
//!
//! When a snapshot has no kept index (uploaded elsewhere, or the index was lost),
//! [`from_snapshot`] builds one from the snapshot itself: ListSnapshotBlocks, then every
//! listed block fetched concurrently with GetSnapshotBlock and its checksum verified;
//! the result is saved in the same format for next time. Such an index lists every block
//! the snapshot holds (a listed block that is all zero included, with its digest).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use futures_util::TryStreamExt;

use super::checksum::{self, BlockDigest, FastDigest, LinearAggregate};
use super::download::get_block_verified;
use super::listing::{self, ListingError};
use crate::aws::{AwsError, Clients, RetryPolicy, ec2, tags};
use crate::progress::{Progress, ProgressMode};

const MAGIC: &str = "ec2ami-block-index 2";
/// The versions [`BlockIndex::load`] reads.
const MAGICS: [&str; 2] = ["ec2ami-block-index 1", MAGIC];

/// What a block index file says about its snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexHeader {
    /// Snapshot id.
    pub snapshot_id: String,
    /// Block size in bytes.
    pub block_size: u64,
    /// Volume size in GiB.
    pub volume_size_gib: u64,
    /// Size of the raw image in bytes.
    pub image_size: u64,
    /// Whether the snapshot is encrypted (then every block was written).
    pub encrypted: bool,
}

/// A loaded block index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockIndex {
    /// Header.
    pub header: IndexHeader,
    /// Written blocks with their digests, ascending by index.
    pub blocks: Vec<(u64, BlockDigest)>,
    /// The BLAKE3 digests of the blocks that have one (all, in a version 2 index).
    pub blake3: HashMap<u64, FastDigest>,
    /// The aggregate checksum, if the upload completed.
    pub aggregate: Option<String>,
}

/// Default directory for block indexes: `$XDG_STATE_HOME/ec2ami/blocks`
/// (`~/.local/state/ec2ami/blocks`).
pub fn default_dir() -> PathBuf {
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("ec2ami").join("blocks")
}

/// The final path of the index of `snapshot_id` in `dir`.
pub fn path_for(dir: &Path, snapshot_id: &str) -> PathBuf {
    dir.join(format!("{snapshot_id}.blocks"))
}

/// Writes an index as blocks are confirmed, in ascending block order.
pub struct IndexWriter {
    out: BufWriter<File>,
    partial: PathBuf,
    final_path: PathBuf,
    last: Option<u64>,
}

impl IndexWriter {
    /// Create `<dir>/<id>.blocks.partial` and write the header.
    pub fn create(dir: &Path, header: &IndexHeader) -> io::Result<IndexWriter> {
        std::fs::create_dir_all(dir)?;
        let final_path = path_for(dir, &header.snapshot_id);
        let partial = final_path.with_extension("blocks.partial");
        let mut out = BufWriter::new(File::create(&partial)?);
        writeln!(out, "{MAGIC}")?;
        writeln!(out, "snapshot {}", header.snapshot_id)?;
        writeln!(out, "block-size {}", header.block_size)?;
        writeln!(out, "volume-size-gib {}", header.volume_size_gib)?;
        writeln!(out, "image-size {}", header.image_size)?;
        writeln!(out, "encrypted {}", header.encrypted)?;
        Ok(IndexWriter {
            out,
            partial,
            final_path,
            last: None,
        })
    }

    /// Record one written block, with its BLAKE3 when known. Indexes must ascend.
    pub fn push(
        &mut self,
        index: u64,
        digest: &BlockDigest,
        fast: Option<&FastDigest>,
    ) -> io::Result<()> {
        if self.last.is_some_and(|l| l >= index) {
            return Err(io::Error::other(format!(
                "block index {index} recorded out of order"
            )));
        }
        self.last = Some(index);
        match fast {
            Some(f) => writeln!(
                self.out,
                "{index} {} {}",
                checksum::to_base64(digest),
                checksum::to_base64(f)
            ),
            None => writeln!(self.out, "{index} {}", checksum::to_base64(digest)),
        }
    }

    /// Write the trailer, sync, and rename into place. Returns the final path.
    pub fn finish(mut self, aggregate: &str, blocks: u64) -> io::Result<PathBuf> {
        writeln!(self.out, "complete {aggregate} {blocks}")?;
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&self.partial, &self.final_path)?;
        Ok(self.final_path)
    }

    /// Remove the partial file (the snapshot was deleted).
    pub fn discard(self) {
        let _ = std::fs::remove_file(&self.partial);
    }

    /// Where the partial file is (reported when an unfinished snapshot is kept).
    pub fn partial_path(&self) -> &Path {
        &self.partial
    }

    /// Flush what was recorded so far (kept for a later resume).
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

impl BlockIndex {
    /// Load an index file (complete or partial).
    pub fn load(path: &Path) -> io::Result<BlockIndex> {
        let bad = |line: usize, what: &str| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}:{line}: {what}", path.display()),
            )
        };
        let reader = BufReader::new(File::open(path)?);
        let mut lines = reader.lines().enumerate();
        let (_, first) = lines.next().ok_or_else(|| bad(0, "empty file"))?;
        if !MAGICS.contains(&first?.trim_end()) {
            return Err(bad(
                1,
                "not an ec2ami block index (of a version this build reads)",
            ));
        }
        let mut next = |want: &str| -> io::Result<String> {
            let (n, line) = lines.next().ok_or_else(|| bad(0, "truncated header"))?;
            let line = line?;
            line.strip_prefix(want)
                .map(|v| v.trim().to_string())
                .ok_or_else(|| bad(n + 1, &format!("expected `{want}`")))
        };
        let num = |s: String, n: usize| s.parse::<u64>().map_err(|_| bad(n, "not a number"));
        let snapshot_id = next("snapshot ")?;
        let block_size = num(next("block-size ")?, 3)?;
        let volume_size_gib = num(next("volume-size-gib ")?, 4)?;
        let image_size = num(next("image-size ")?, 5)?;
        let encrypted = next("encrypted ")? == "true";
        let header = IndexHeader {
            snapshot_id,
            block_size,
            volume_size_gib,
            image_size,
            encrypted,
        };
        let mut blocks = Vec::new();
        let mut blake3 = HashMap::new();
        let mut aggregate = None;
        for (n, line) in lines {
            let line = line?;
            let mut parts = line.split_whitespace();
            match (parts.next(), parts.next(), parts.next(), parts.next()) {
                (Some("complete"), Some(agg), Some(_), None) => aggregate = Some(agg.to_string()),
                (Some(idx), Some(sum), fast, None) => {
                    let idx = idx.parse().map_err(|_| bad(n + 1, "bad block index"))?;
                    let digest =
                        checksum::from_base64(sum).ok_or_else(|| bad(n + 1, "bad checksum"))?;
                    if let Some(f) = fast {
                        let f = checksum::from_base64(f)
                            .ok_or_else(|| bad(n + 1, "bad BLAKE3 digest"))?;
                        blake3.insert(idx, f);
                    }
                    blocks.push((idx, digest));
                }
                _ => return Err(bad(n + 1, "unreadable line")),
            }
        }
        Ok(BlockIndex {
            header,
            blocks,
            blake3,
            aggregate,
        })
    }
}

impl BlockIndex {
    /// The digest of block `index`, if the index lists it.
    pub fn digest(&self, index: u64) -> Option<&BlockDigest> {
        self.blocks
            .binary_search_by_key(&index, |(i, _)| *i)
            .ok()
            .map(|at| &self.blocks[at].1)
    }

    /// True when the index was finished (its trailer was written): a partial index of an
    /// interrupted upload is not.
    pub fn is_complete(&self) -> bool {
        self.aggregate.is_some()
    }
}

/// How to build an index from a snapshot.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Concurrent GetSnapshotBlock requests.
    pub workers: usize,
    /// Retry policy for every call.
    pub retry: RetryPolicy,
    /// How progress is shown.
    pub progress: ProgressMode,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            workers: super::upload::DEFAULT_WORKERS,
            retry: RetryPolicy::default(),
            progress: ProgressMode::Quiet,
        }
    }
}

/// Where a snapshot's index came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IndexOrigin {
    /// The index kept in the index directory (at upload, or built before).
    Kept,
    /// Built now from the snapshot's blocks (and kept for next time).
    Built,
}

/// A snapshot's block index, where it is kept, and what getting it cost.
#[derive(Debug, Clone)]
pub struct SnapshotIndex {
    /// The index.
    pub index: BlockIndex,
    /// Its file.
    pub path: PathBuf,
    /// Kept or built now.
    pub origin: IndexOrigin,
    /// Blocks fetched with GetSnapshotBlock to build it (0 when kept).
    pub blocks_fetched: u64,
}

/// Why a snapshot's index could not be had.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// An AWS call failed (a checksum mismatch that persists is reported here too).
    #[error("indexing {snapshot_id}: {source}")]
    Aws {
        /// The snapshot.
        snapshot_id: String,
        /// The failure.
        source: AwsError,
    },
    /// The snapshot does not exist (DescribeSnapshots or the EBS direct APIs say so).
    #[error("snapshot {0} does not exist (or is not visible to this account)")]
    NotFound(String),
    /// The snapshot cannot be read yet.
    #[error("snapshot {snapshot_id} is {state}, not completed: its blocks cannot be read")]
    NotCompleted {
        /// The snapshot.
        snapshot_id: String,
        /// Its state.
        state: String,
    },
    /// The service answered something unusable.
    #[error("indexing {snapshot_id}: {message}")]
    Protocol {
        /// The snapshot.
        snapshot_id: String,
        /// What is wrong.
        message: String,
    },
    /// Writing the index file failed.
    #[error("writing the block index {path}: {source}")]
    Io {
        /// The index file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

/// The index of `snapshot_id`: the complete one kept in `dir` when there is one for
/// this snapshot, otherwise [`from_snapshot`].
pub async fn load_or_build(
    clients: &Clients,
    snapshot_id: &str,
    dir: &Path,
    opts: &BuildOptions,
) -> Result<SnapshotIndex, IndexError> {
    let path = path_for(dir, snapshot_id);
    match BlockIndex::load(&path) {
        Ok(index) if index.is_complete() && index.header.snapshot_id == snapshot_id => {
            return Ok(SnapshotIndex {
                index,
                path,
                origin: IndexOrigin::Kept,
                blocks_fetched: 0,
            });
        }
        Ok(_) => tracing::info!(
            "the kept index {} is incomplete: building it again from {snapshot_id}",
            path.display()
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => tracing::info!(
            "no block index is kept for {snapshot_id}: building it from the snapshot"
        ),
        Err(e) => tracing::warn!("ignoring the unreadable block index ({e}): building it again"),
    }
    from_snapshot(clients, snapshot_id, dir, opts).await
}

/// Build the index of `snapshot_id` from its blocks: ListSnapshotBlocks (every page),
/// GetSnapshotBlock of each listed block (`workers` at once, each checksum verified),
/// and save it in `dir` (replacing any kept index of that snapshot).
pub async fn from_snapshot(
    clients: &Clients,
    snapshot_id: &str,
    dir: &Path,
    opts: &BuildOptions,
) -> Result<SnapshotIndex, IndexError> {
    let aws = |source: AwsError| {
        if source.has_code("ResourceNotFoundException") {
            IndexError::NotFound(snapshot_id.to_string())
        } else {
            IndexError::Aws {
                snapshot_id: snapshot_id.to_string(),
                source,
            }
        }
    };
    let protocol = |message: String| IndexError::Protocol {
        snapshot_id: snapshot_id.to_string(),
        message,
    };
    let described = ec2::snapshot(clients, snapshot_id, &opts.retry)
        .await
        .map_err(aws)?
        .ok_or_else(|| IndexError::NotFound(snapshot_id.to_string()))?;
    if described.state != "completed" {
        return Err(IndexError::NotCompleted {
            snapshot_id: snapshot_id.to_string(),
            state: described.state,
        });
    }
    let listing_error = |e| match e {
        ListingError::Aws(source) => aws(source),
        ListingError::Protocol(message) => protocol(message),
    };
    let call = clients.call("ListSnapshotBlocks").on(snapshot_id);
    let listing = listing::list(clients, &call, snapshot_id, &opts.retry)
        .await
        .map_err(listing_error)?;
    let (block_size, volume_gib) = (listing.block_size, listing.volume_gib);
    let volume_bytes = volume_gib << 30;
    let image_size = described
        .tag(tags::IMAGE_SIZE)
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|&s| s > 0 && s <= volume_bytes)
        .unwrap_or(volume_bytes);
    let header = IndexHeader {
        snapshot_id: snapshot_id.to_string(),
        block_size,
        volume_size_gib: volume_gib,
        image_size,
        encrypted: described.encrypted,
    };
    let io_err = |source| IndexError::Io {
        path: dir.to_owned(),
        source,
    };
    let mut writer = IndexWriter::create(dir, &header).map_err(io_err)?;
    let progress = Progress::new(opts.progress, "index", 0);
    // `buffered` keeps the listing's (ascending) order for the index and the aggregate
    // while `workers` blocks are fetched at once.
    let fetched = listing
        .blocks
        .map_err(listing_error)
        .map_ok(|(index, token)| {
            let progress = &progress;
            async move {
                let call = clients
                    .call("GetSnapshotBlock")
                    .on(format!("{snapshot_id} block {index}"));
                let data = opts
                    .retry
                    .run(&call, || {
                        get_block_verified(clients, snapshot_id, index, &token, block_size)
                    })
                    .await
                    .map_err(aws)?;
                progress.inc_total(block_size);
                progress.inc(block_size);
                Ok((
                    index,
                    checksum::block_digest(&data),
                    checksum::fast_digest(&data),
                ))
            }
        })
        .try_buffered(opts.workers.max(1));
    let mut fetched = std::pin::pin!(fetched);
    let mut aggregate = LinearAggregate::new();
    let mut blocks = Vec::new();
    let mut blake3 = HashMap::new();
    let result: Result<(), IndexError> = async {
        while let Some((index, digest, fast)) = fetched.try_next().await? {
            writer.push(index, &digest, Some(&fast)).map_err(io_err)?;
            aggregate.push(&digest);
            blocks.push((index, digest));
            blake3.insert(index, fast);
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        writer.discard();
        return Err(e);
    }
    progress.finish();
    let count = aggregate.blocks();
    let sum = aggregate.finish();
    let path = writer.finish(&sum, count).map_err(io_err)?;
    tracing::info!(
        "indexed {snapshot_id}: {count} blocks fetched and verified, kept at {}",
        path.display()
    );
    Ok(SnapshotIndex {
        index: BlockIndex {
            header,
            blocks,
            blake3,
            aggregate: Some(sum),
        },
        path,
        origin: IndexOrigin::Built,
        blocks_fetched: count,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::checksum::{LinearAggregate, block_digest, fast_digest};

    #[test]
    fn write_then_load_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let header = IndexHeader {
            snapshot_id: "snap-0123456789abcdef0".into(),
            block_size: 524288,
            volume_size_gib: 2,
            image_size: 1_500_000_000,
            encrypted: false,
        };
        let mut w = IndexWriter::create(dir.path(), &header).unwrap();
        let mut agg = LinearAggregate::new();
        let blocks: Vec<(u64, BlockDigest)> = [3u64, 9, 1000]
            .iter()
            .map(|&i| (i, block_digest(&i.to_le_bytes())))
            .collect();
        // The first block without a BLAKE3 (as a version 1 index has none).
        for (n, (i, d)) in blocks.iter().enumerate() {
            let fast = fast_digest(&i.to_le_bytes());
            w.push(*i, d, (n > 0).then_some(&fast)).unwrap();
            agg.push(d);
        }
        assert!(
            w.push(5, &blocks[0].1, None).is_err(),
            "out of order must fail"
        );
        let sum = agg.finish();
        let path = w.finish(&sum, 3).unwrap();
        assert_eq!(path, dir.path().join("snap-0123456789abcdef0.blocks"));
        let idx = BlockIndex::load(&path).unwrap();
        assert_eq!(idx.header, header);
        assert_eq!(idx.blocks, blocks);
        let want: HashMap<u64, FastDigest> = [9u64, 1000]
            .iter()
            .map(|&i| (i, fast_digest(&i.to_le_bytes())))
            .collect();
        assert_eq!(idx.blake3, want);
        assert_eq!(idx.aggregate.as_deref(), Some(sum.as_str()));
    }

    #[test]
    fn a_version_1_index_is_still_read() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let d = block_digest(b"x");
        let text = format!(
            "ec2ami-block-index 1\nsnapshot snap-1\nblock-size 524288\nvolume-size-gib 1\n\
             image-size 1048576\nencrypted false\n7 {}\ncomplete abc 1\n",
            checksum::to_base64(&d)
        );
        std::fs::write(f.path(), text).unwrap();
        let idx = BlockIndex::load(f.path()).unwrap();
        assert_eq!(idx.blocks, vec![(7, d)]);
        assert!(idx.blake3.is_empty());
        assert!(idx.is_complete());
        std::fs::write(f.path(), "ec2ami-block-index 3\n").unwrap();
        assert!(
            BlockIndex::load(f.path()).is_err(),
            "a newer version is refused"
        );
    }

    #[test]
    fn garbage_is_rejected() {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), "hello\n").unwrap();
        assert!(BlockIndex::load(f.path()).is_err());
    }
}
