//! The per-block SHA-256 index of what was uploaded to a snapshot, persisted next to
//! the snapshot id (`<dir>/<snapshot-id>.blocks`) so later uploads can be incremental
//! and resumable.
//!
//! Text format, one record per line:
//! ```text
//! ec2ami-block-index 1
//! snapshot snap-0123456789abcdef0
//! block-size 524288
//! volume-size-gib 10
//! image-size 1073741824
//! encrypted false
//! <block index> <base64 SHA-256>      (ascending, one line per block written)
//! complete <aggregate base64> <blocks>
//! ```
//! The file is written as `<id>.blocks.partial` while uploading and renamed when the
//! snapshot is complete.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use super::checksum::{self, BlockDigest};

const MAGIC: &str = "ec2ami-block-index 1";

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

    /// Record one written block. Indexes must ascend.
    pub fn push(&mut self, index: u64, digest: &BlockDigest) -> io::Result<()> {
        if self.last.is_some_and(|l| l >= index) {
            return Err(io::Error::other(format!(
                "block index {index} recorded out of order"
            )));
        }
        self.last = Some(index);
        writeln!(self.out, "{index} {}", checksum::to_base64(digest))
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
        let mut next = |want: &str| -> io::Result<String> {
            let (n, line) = lines.next().ok_or_else(|| bad(0, "truncated header"))?;
            let line = line?;
            line.strip_prefix(want)
                .map(|v| v.trim().to_string())
                .ok_or_else(|| bad(n + 1, &format!("expected `{want}`")))
        };
        if !next(MAGIC)?.is_empty() {
            return Err(bad(1, "not an ec2ami block index"));
        }
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
        let mut aggregate = None;
        for (n, line) in lines {
            let line = line?;
            let mut parts = line.split_whitespace();
            match (parts.next(), parts.next(), parts.next()) {
                (Some("complete"), Some(agg), Some(_)) => aggregate = Some(agg.to_string()),
                (Some(idx), Some(sum), None) => {
                    let idx = idx.parse().map_err(|_| bad(n + 1, "bad block index"))?;
                    let digest =
                        checksum::from_base64(sum).ok_or_else(|| bad(n + 1, "bad checksum"))?;
                    blocks.push((idx, digest));
                }
                _ => return Err(bad(n + 1, "unreadable line")),
            }
        }
        Ok(BlockIndex {
            header,
            blocks,
            aggregate,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::checksum::{LinearAggregate, block_digest};

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
        for (i, d) in &blocks {
            w.push(*i, d).unwrap();
            agg.push(d);
        }
        assert!(w.push(5, &blocks[0].1).is_err(), "out of order must fail");
        let sum = agg.finish();
        let path = w.finish(&sum, 3).unwrap();
        assert_eq!(path, dir.path().join("snap-0123456789abcdef0.blocks"));
        let idx = BlockIndex::load(&path).unwrap();
        assert_eq!(idx.header, header);
        assert_eq!(idx.blocks, blocks);
        assert_eq!(idx.aggregate.as_deref(), Some(sum.as_str()));
    }

    #[test]
    fn garbage_is_rejected() {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), "hello\n").unwrap();
        assert!(BlockIndex::load(f.path()).is_err());
    }
}
