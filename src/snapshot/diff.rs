//! `ec2ami diff A B`: which blocks differ between two disks, each an image file or a
//! snapshot, mapped onto B's partition table.
//!
//! How the blocks are compared, cheapest first:
//! - two snapshots whose block indexes are both kept: the indexes, no AWS call;
//! - two snapshots of one lineage: ListChangedBlocks (tokens only, no data). It names
//!   the blocks *written* between them, which may hold what was there before;
//! - otherwise per-block SHA-256 indexes: kept ones, or built from the snapshot
//!   (GetSnapshotBlock, checksums verified, kept for next time), or hashed from the image
//!   file, where only data extents are read (SEEK_DATA/SEEK_HOLE), never holes.
//!
//! A block that is absent and one that is all zero read the same, so they compare equal.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use futures_util::{StreamExt, TryStreamExt, stream};
use serde::Serialize;

use super::checksum::{self, BlockDigest};
use super::download::get_block_verified;
use super::index::{self, BuildOptions, IndexError, IndexOrigin};
use super::{AWS_BLOCK_SIZE, check_block_size, secs};
use crate::aws::paging::pages;
use crate::aws::{AwsError, Clients, RetryPolicy, ec2, tags};
use crate::image::partitions::{self, Partition, PartitionTable, TableKind};
use crate::image::{DiskImage, ImageError};
use crate::progress::ProgressMode;

/// One side of a diff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Side {
    /// A disk image file (raw, or converted with qemu-img) or block device.
    Image(PathBuf),
    /// An EBS snapshot id.
    Snapshot(String),
}

impl Side {
    /// `snap-` and 8 or 17 hex digits is a snapshot id, unless a file of that name
    /// exists; anything else is an image path.
    pub fn parse(s: &str) -> Side {
        let hex = s.strip_prefix("snap-").filter(|h| {
            (h.len() == 8 || h.len() == 17) && h.bytes().all(|b| b.is_ascii_hexdigit())
        });
        if hex.is_some() && Path::new(s).symlink_metadata().is_err() {
            Side::Snapshot(s.to_string())
        } else {
            Side::Image(PathBuf::from(s))
        }
    }

    fn name(&self) -> String {
        match self {
            Side::Image(p) => p.display().to_string(),
            Side::Snapshot(id) => id.clone(),
        }
    }
}

/// How to diff.
#[derive(Debug, Clone)]
pub struct DiffOptions {
    /// Where block indexes are kept (read, and written when built).
    pub index_dir: PathBuf,
    /// Concurrent GetSnapshotBlock requests; threads hashing an image.
    pub workers: usize,
    /// Write the changed partitions of both sides into this directory.
    pub extract: Option<PathBuf>,
    /// Retry policy for every call.
    pub retry: RetryPolicy,
    /// How progress is shown.
    pub progress: ProgressMode,
}

impl Default for DiffOptions {
    fn default() -> Self {
        DiffOptions {
            index_dir: index::default_dir(),
            workers: 8,
            extract: None,
            retry: RetryPolicy::default(),
            progress: ProgressMode::Quiet,
        }
    }
}

/// How the blocks of one side were known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// The image file was read (data extents only) and hashed.
    Hashed,
    /// The snapshot's kept block index.
    KeptIndex,
    /// The snapshot's block index, built now from its blocks (and kept).
    BuiltIndex,
    /// ListChangedBlocks between the two snapshots.
    ChangedBlocks,
}

/// One side as the diff saw it.
#[derive(Debug, Clone, Serialize)]
pub struct SideReport {
    /// `image` or `snapshot`.
    pub kind: &'static str,
    /// The path or snapshot id.
    pub name: String,
    /// Size in bytes (a snapshot: the image size ec2ami recorded, else its volume).
    pub size_bytes: u64,
    /// How its blocks were known.
    pub source: Source,
    /// Bytes read from the image file (holes are never read).
    pub bytes_read: u64,
    /// Blocks fetched with GetSnapshotBlock.
    pub blocks_fetched: u64,
}

/// A changed byte range `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ChangedRange {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

impl ChangedRange {
    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }

    fn overlap(&self, start: u64, end: u64) -> u64 {
        self.end.min(end).saturating_sub(self.start.max(start))
    }
}

/// One partition of B and how much of it changed.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionChange {
    /// The partition.
    #[serde(flatten)]
    pub partition: Partition,
    /// Bytes of it within changed blocks.
    pub bytes_changed: u64,
}

/// What a diff found.
#[derive(Debug, Clone, Serialize)]
pub struct DiffReport {
    /// A.
    pub a: SideReport,
    /// B.
    pub b: SideReport,
    /// True when no block differs (and the sizes are equal).
    pub equal: bool,
    /// True when the sizes differ (the shorter reads as zeros past its end).
    pub sizes_differ: bool,
    /// Block size compared (EBS: 512 KiB).
    pub block_size: u64,
    /// Blocks that differ.
    pub blocks_changed: u64,
    /// Bytes within those blocks (the last one clipped to the larger size).
    pub bytes_changed: u64,
    /// The changed ranges, block-aligned, coalesced.
    pub ranges: Vec<ChangedRange>,
    /// B's partition table.
    pub partition_table: TableKind,
    /// Every partition of B with the bytes of it that changed.
    pub partitions: Vec<PartitionChange>,
    /// Changed bytes outside every partition (partition tables, gaps, past the end).
    pub outside_partitions_bytes: u64,
    /// Files written by `--extract` (A's then B's of each changed partition).
    pub extracted: Vec<PathBuf>,
    /// Wall time.
    pub seconds: f64,
}

/// Why a diff failed.
#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    /// An image side cannot be read.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// A snapshot side's index cannot be had.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// An AWS call failed.
    #[error("{what}: {source}")]
    Aws {
        /// What was being done.
        what: String,
        /// The failure.
        source: AwsError,
    },
    /// A snapshot side was given without AWS access.
    #[error("{0}")]
    Invalid(String),
    /// Local file trouble (the extract directory...).
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A side opened: an image, or a described snapshot.
enum Opened {
    Image(Arc<DiskImage>),
    Snapshot { id: String, size: u64 },
}

impl Opened {
    fn size(&self) -> u64 {
        match self {
            Opened::Image(i) => i.size(),
            Opened::Snapshot { size, .. } => *size,
        }
    }
}

/// Compare `a` with `b`. `clients` is needed only when a side is a snapshot.
pub async fn diff(
    clients: Option<&Clients>,
    a: &Side,
    b: &Side,
    opts: &DiffOptions,
) -> Result<DiffReport, DiffError> {
    let t0 = Instant::now();
    let oa = open(clients, a, opts).await?;
    let ob = open(clients, b, opts).await?;
    let bs = AWS_BLOCK_SIZE;
    let size = oa.size().max(ob.size());
    let mut ra = side_report(a, &oa);
    let mut rb = side_report(b, &ob);

    // The changed block indexes.
    let changed: Vec<u64> = match (&oa, &ob, clients) {
        (Opened::Snapshot { id: ia, .. }, Opened::Snapshot { id: ib, .. }, Some(c))
            if !(kept(&opts.index_dir, ia) && kept(&opts.index_dir, ib)) =>
        {
            match changed_blocks(c, ia, ib, opts).await? {
                Some(v) => {
                    ra.source = Source::ChangedBlocks;
                    rb.source = Source::ChangedBlocks;
                    v
                }
                None => {
                    let da = digests(clients, &oa, &mut ra, opts).await?;
                    let db = digests(clients, &ob, &mut rb, opts).await?;
                    compare(&da, &db)
                }
            }
        }
        _ => {
            let da = digests(clients, &oa, &mut ra, opts).await?;
            let db = digests(clients, &ob, &mut rb, opts).await?;
            compare(&da, &db)
        }
    };
    let ranges = coalesce(&changed, bs, size);
    let bytes_changed: u64 = ranges.iter().map(ChangedRange::len).sum();

    let table = read_table(clients, &ob, opts).await?;
    if let Opened::Image(i) = &ob {
        rb.bytes_read = i.bytes_read();
    }
    let partitions: Vec<PartitionChange> = table
        .partitions
        .iter()
        .map(|p| PartitionChange {
            partition: p.clone(),
            bytes_changed: ranges.iter().map(|r| r.overlap(p.start, p.end())).sum(),
        })
        .collect();
    let inside: u64 = ranges.iter().map(|r| covered(r, &table.partitions)).sum();

    let mut extracted = Vec::new();
    if let Some(dir) = &opts.extract {
        for pc in partitions.iter().filter(|p| p.bytes_changed > 0) {
            for (tag, side, rep) in [("a", &oa, &mut ra), ("b", &ob, &mut rb)] {
                let path = extract(clients, side, &pc.partition, dir, tag, opts).await?;
                if let Opened::Snapshot { .. } = side {
                    rep.blocks_fetched += path.1;
                }
                extracted.push(path.0);
            }
        }
    }
    if let Opened::Image(i) = &oa {
        ra.bytes_read = i.bytes_read();
    }
    if let Opened::Image(i) = &ob {
        rb.bytes_read = i.bytes_read();
    }
    let sizes_differ = oa.size() != ob.size();
    Ok(DiffReport {
        a: ra,
        b: rb,
        equal: changed.is_empty() && !sizes_differ,
        sizes_differ,
        block_size: bs,
        blocks_changed: changed.len() as u64,
        bytes_changed,
        ranges,
        partition_table: table.kind,
        partitions,
        outside_partitions_bytes: bytes_changed - inside,
        extracted,
        seconds: secs(t0.elapsed()),
    })
}

fn side_report(side: &Side, o: &Opened) -> SideReport {
    SideReport {
        kind: match o {
            Opened::Image(_) => "image",
            Opened::Snapshot { .. } => "snapshot",
        },
        name: side.name(),
        size_bytes: o.size(),
        source: match o {
            Opened::Image(_) => Source::Hashed,
            Opened::Snapshot { .. } => Source::KeptIndex,
        },
        bytes_read: 0,
        blocks_fetched: 0,
    }
}

fn kept(dir: &Path, id: &str) -> bool {
    index::BlockIndex::load(&index::path_for(dir, id))
        .is_ok_and(|i| i.is_complete() && i.header.snapshot_id == id)
}

async fn open(
    clients: Option<&Clients>,
    side: &Side,
    opts: &DiffOptions,
) -> Result<Opened, DiffError> {
    match side {
        Side::Image(p) => Ok(Opened::Image(DiskImage::open(p)?)),
        Side::Snapshot(id) => {
            let Some(c) = clients else {
                return Err(DiffError::Invalid(format!(
                    "{id} is a snapshot id: AWS access is needed"
                )));
            };
            let s = ec2::snapshot(c, id, &opts.retry)
                .await
                .map_err(|source| DiffError::Aws {
                    what: format!("describing {id}"),
                    source,
                })?
                .ok_or_else(|| IndexError::NotFound(id.clone()))?;
            if s.state != "completed" {
                return Err(IndexError::NotCompleted {
                    snapshot_id: id.clone(),
                    state: s.state,
                }
                .into());
            }
            let volume = (s.volume_size.max(0) as u64) << 30;
            let size = s
                .tag(tags::IMAGE_SIZE)
                .and_then(|v| v.parse::<u64>().ok())
                .filter(|&v| v > 0 && v <= volume)
                .unwrap_or(volume);
            Ok(Opened::Snapshot {
                id: id.clone(),
                size,
            })
        }
    }
}

/// The non-zero blocks of one side with their digests, ascending.
async fn digests(
    clients: Option<&Clients>,
    side: &Opened,
    rep: &mut SideReport,
    opts: &DiffOptions,
) -> Result<Vec<(u64, BlockDigest)>, DiffError> {
    let zero = checksum::block_digest(&vec![0u8; AWS_BLOCK_SIZE as usize]);
    match side {
        Opened::Image(image) => {
            let image = image.clone();
            let workers = opts.workers.max(1);
            let out = tokio::task::spawn_blocking(move || hash_image(&image, workers))
                .await
                .map_err(|e| DiffError::Invalid(format!("the image hasher panicked: {e}")))??;
            Ok(out)
        }
        Opened::Snapshot { id, .. } => {
            let c = clients.expect("a snapshot side has clients");
            let build = BuildOptions {
                workers: opts.workers.max(1),
                retry: opts.retry,
                progress: opts.progress,
            };
            let si = index::load_or_build(c, id, &opts.index_dir, &build).await?;
            if si.index.header.block_size != AWS_BLOCK_SIZE {
                return Err(DiffError::Invalid(format!(
                    "{id} has blocks of {} bytes; only {AWS_BLOCK_SIZE} is compared",
                    si.index.header.block_size
                )));
            }
            rep.source = match si.origin {
                IndexOrigin::Kept => Source::KeptIndex,
                IndexOrigin::Built => Source::BuiltIndex,
            };
            rep.blocks_fetched += si.blocks_fetched;
            Ok(si
                .index
                .blocks
                .into_iter()
                .filter(|(_, d)| *d != zero)
                .collect())
        }
    }
}

/// Hash every block of `image` that touches data (holes are never read), `workers`
/// threads at once; all-zero blocks are left out.
fn hash_image(image: &DiskImage, workers: usize) -> Result<Vec<(u64, BlockDigest)>, ImageError> {
    let bs = AWS_BLOCK_SIZE;
    let total = image.size().div_ceil(bs);
    let planned: Vec<u64> = image
        .plan(bs, total, false)
        .map(|b| b.map(|b| b.index))
        .collect::<Result<_, _>>()
        .map_err(|source| ImageError::Extents {
            path: image.path().to_owned(),
            source,
        })?;
    let parts = super::on_threads(&planned, workers, |blocks| {
        let mut buf = vec![0u8; bs as usize];
        let mut out = Vec::with_capacity(blocks.len());
        for &i in blocks {
            image.read_block(i * bs, &mut buf)?;
            if !checksum::is_zero(&buf) {
                out.push((i, checksum::block_digest(&buf)));
            }
        }
        Ok::<_, ImageError>(out)
    });
    let mut all = Vec::with_capacity(planned.len());
    for p in parts {
        all.extend(p?);
    }
    image.check_unchanged()?;
    Ok(all)
}

/// The block indexes where two ascending digest lists differ (absent = zero).
pub(crate) fn compare(a: &[(u64, BlockDigest)], b: &[(u64, BlockDigest)]) -> Vec<u64> {
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() || j < b.len() {
        match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) if x.0 == y.0 => {
                if x.1 != y.1 {
                    out.push(x.0);
                }
                i += 1;
                j += 1;
            }
            (Some(x), Some(y)) if x.0 < y.0 => {
                out.push(x.0);
                i += 1;
            }
            (Some(_), Some(y)) => {
                out.push(y.0);
                j += 1;
            }
            (Some(x), None) => {
                out.push(x.0);
                i += 1;
            }
            (None, Some(y)) => {
                out.push(y.0);
                j += 1;
            }
            (None, None) => break,
        }
    }
    out
}

/// Ascending block indexes as coalesced byte ranges, clipped to `size`.
pub(crate) fn coalesce(blocks: &[u64], bs: u64, size: u64) -> Vec<ChangedRange> {
    let mut out: Vec<ChangedRange> = Vec::new();
    for &i in blocks {
        let (start, end) = ((i * bs).min(size), ((i + 1) * bs).min(size));
        match out.last_mut() {
            Some(r) if r.end == start => r.end = end,
            _ => out.push(ChangedRange { start, end }),
        }
    }
    out.retain(|r| !r.is_empty());
    out
}

/// Bytes of `r` inside any of `parts` (overlapping partitions counted once).
fn covered(r: &ChangedRange, parts: &[Partition]) -> u64 {
    let mut spans: Vec<(u64, u64)> = parts
        .iter()
        .map(|p| (p.start.max(r.start), p.end().min(r.end)))
        .filter(|(s, e)| s < e)
        .collect();
    spans.sort();
    let (mut total, mut reach) = (0, r.start);
    for (s, e) in spans {
        let s = s.max(reach);
        if e > s {
            total += e - s;
            reach = e;
        }
    }
    total
}

/// ListChangedBlocks between two snapshots, trying each as the older; `None` when
/// they are not of one lineage (or the service cannot say).
async fn changed_blocks(
    c: &Clients,
    a: &str,
    b: &str,
    opts: &DiffOptions,
) -> Result<Option<Vec<u64>>, DiffError> {
    if a == b {
        return Ok(Some(Vec::new()));
    }
    for (first, second) in [(a, b), (b, a)] {
        match list_changed(c, first, second, &opts.retry).await {
            Ok(v) => return Ok(Some(v)),
            Err(e) if e.has_code("ValidationException") => {
                tracing::debug!("ListChangedBlocks {first} -> {second}: {e}");
            }
            Err(source) => {
                return Err(DiffError::Aws {
                    what: format!("listing the blocks changed between {first} and {second}"),
                    source,
                });
            }
        }
    }
    tracing::info!("{a} and {b} are not of one lineage: comparing their block indexes");
    Ok(None)
}

async fn list_changed(
    c: &Clients,
    first: &str,
    second: &str,
    retry: &RetryPolicy,
) -> Result<Vec<u64>, AwsError> {
    let call = c.call("ListChangedBlocks").on(second);
    let listing = pages(
        retry,
        &call,
        |token| {
            c.ebs
                .list_changed_blocks()
                .first_snapshot_id(first)
                .second_snapshot_id(second)
                .max_results(10_000)
                .set_next_token(token)
                .send()
        },
        |page| page.next_token(),
    );
    let mut listing = std::pin::pin!(listing);
    let mut out = Vec::new();
    while let Some(page) = listing.try_next().await? {
        if let Some(bs) = page.block_size() {
            check_block_size(Some(i64::from(bs))).map_err(|m| {
                AwsError::local("ListChangedBlocks", crate::aws::ErrorClass::Permanent, m)
            })?;
        }
        out.extend(
            page.changed_blocks()
                .iter()
                .filter_map(|b| b.block_index())
                .map(|i| i as u64),
        );
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// The tokens of the listed blocks of `id` in `[from, to)` (block indexes).
async fn tokens(
    c: &Clients,
    id: &str,
    from: u64,
    to: u64,
    retry: &RetryPolicy,
) -> Result<BTreeMap<u64, String>, DiffError> {
    let call = c.call("ListSnapshotBlocks").on(id);
    let listing = pages(
        retry,
        &call,
        |token| {
            c.ebs
                .list_snapshot_blocks()
                .snapshot_id(id)
                .starting_block_index(from as i32)
                .max_results(10_000)
                .set_next_token(token)
                .send()
        },
        |page| page.next_token(),
    );
    let mut listing = std::pin::pin!(listing);
    let mut out = BTreeMap::new();
    'pages: while let Some(page) = listing.try_next().await.map_err(|source| DiffError::Aws {
        what: format!("listing the blocks of {id}"),
        source,
    })? {
        for b in page.blocks() {
            let (Some(i), Some(t)) = (b.block_index(), b.block_token()) else {
                continue;
            };
            let i = i as u64;
            if i >= to {
                break 'pages;
            }
            if i >= from {
                out.insert(i, t.to_string());
            }
        }
    }
    Ok(out)
}

/// Read B's partition table: from the file, or from the snapshot's first blocks.
async fn read_table(
    clients: Option<&Clients>,
    side: &Opened,
    opts: &DiffOptions,
) -> Result<PartitionTable, DiffError> {
    let size = side.size();
    let head_len = (partitions::HEAD_BYTES as u64).min(size) as usize;
    let head = match side {
        Opened::Image(image) => {
            let mut buf = vec![0u8; head_len];
            image.read_block(0, &mut buf)?;
            buf
        }
        Opened::Snapshot { id, .. } => {
            let c = clients.expect("a snapshot side has clients");
            let bs = AWS_BLOCK_SIZE;
            let nblocks = (head_len as u64).div_ceil(bs);
            let toks = tokens(c, id, 0, nblocks, &opts.retry).await?;
            let mut buf = vec![0u8; (nblocks * bs) as usize];
            for (i, t) in toks {
                let data = fetch(c, id, i, &t, &opts.retry).await?;
                buf[(i * bs) as usize..((i + 1) * bs) as usize].copy_from_slice(&data);
            }
            buf.truncate(head_len);
            buf
        }
    };
    // Tables beyond the first MiB are not looked for (none of the usual layouts has one).
    let read = |off: u64, len: usize| {
        let mut v = vec![0u8; len];
        let off = off as usize;
        if off < head.len() {
            let n = len.min(head.len() - off);
            v[..n].copy_from_slice(&head[off..off + n]);
        }
        Ok(v)
    };
    partitions::read_table(read, size).map_err(|source| DiffError::Io {
        what: "reading the partition table of",
        path: PathBuf::from(match side {
            Opened::Image(i) => i.path().display().to_string(),
            Opened::Snapshot { id, .. } => id.clone(),
        }),
        source,
    })
}

async fn fetch(
    c: &Clients,
    id: &str,
    index: u64,
    token: &str,
    retry: &RetryPolicy,
) -> Result<bytes::Bytes, DiffError> {
    let call = c.call("GetSnapshotBlock").on(format!("{id} block {index}"));
    retry
        .run(&call, || {
            get_block_verified(c, id, index, token, AWS_BLOCK_SIZE)
        })
        .await
        .map_err(|source| DiffError::Aws {
            what: format!("reading block {index} of {id}"),
            source,
        })
}

/// Write `p`'s bytes of `side` to `dir/<tag>/p<index>[-<name>].img` (sparse: holes and
/// absent blocks are not written). Returns the path and the blocks fetched.
async fn extract(
    clients: Option<&Clients>,
    side: &Opened,
    p: &Partition,
    dir: &Path,
    tag: &str,
    opts: &DiffOptions,
) -> Result<(PathBuf, u64), DiffError> {
    let sub = dir.join(tag);
    let io = |what, path: &Path| {
        let path = path.to_owned();
        move |source| DiffError::Io { what, path, source }
    };
    std::fs::create_dir_all(&sub).map_err(io("cannot create", &sub))?;
    let name: String = p
        .name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let file_name = if name.is_empty() {
        format!("p{}.img", p.index)
    } else {
        format!("p{}-{name}.img", p.index)
    };
    let path = sub.join(file_name);
    let out = File::create(&path).map_err(io("cannot create", &path))?;
    out.set_len(p.size).map_err(io("cannot size", &path))?;
    let (start, end) = (p.start, p.end().min(side.size()));
    let mut fetched = 0;
    match side {
        Opened::Image(image) => {
            let mut buf = vec![0u8; 1 << 20];
            for ext in image.extents() {
                let ext = ext.map_err(|source| ImageError::Extents {
                    path: image.path().to_owned(),
                    source,
                })?;
                let (mut off, stop) = (ext.start.max(start), ext.end.min(end));
                while off < stop {
                    let n = (stop - off).min(buf.len() as u64) as usize;
                    image.read_block(off, &mut buf[..n])?;
                    if !checksum::is_zero(&buf[..n]) {
                        out.write_all_at(&buf[..n], off - start)
                            .map_err(io("cannot write", &path))?;
                    }
                    off += n as u64;
                }
            }
        }
        Opened::Snapshot { id, .. } => {
            let c = clients.expect("a snapshot side has clients");
            let bs = AWS_BLOCK_SIZE;
            let toks = tokens(c, id, start / bs, end.div_ceil(bs), &opts.retry).await?;
            fetched = toks.len() as u64;
            let out = &out;
            let path = &path;
            stream::iter(toks)
                .map(|(i, t)| async move {
                    let data = fetch(c, id, i, &t, &opts.retry).await?;
                    let (bstart, bend) = (i * bs, (i + 1) * bs);
                    let (s, e) = (bstart.max(start), bend.min(end));
                    if s < e {
                        let slice = &data[(s - bstart) as usize..(e - bstart) as usize];
                        if !checksum::is_zero(slice) {
                            out.write_all_at(slice, s - start)
                                .map_err(io("cannot write", path))?;
                        }
                    }
                    Ok::<_, DiffError>(())
                })
                .buffer_unordered(opts.workers.max(1))
                .try_collect::<Vec<()>>()
                .await?;
        }
    }
    out.sync_all().map_err(io("cannot sync", &path))?;
    Ok((path, fetched))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(x: u8) -> BlockDigest {
        [x; 32]
    }

    #[test]
    fn compare_merges_two_sorted_lists() {
        let a = [(0, d(1)), (2, d(2)), (5, d(3))];
        let b = [(0, d(1)), (2, d(9)), (3, d(4)), (7, d(5))];
        assert_eq!(compare(&a, &b), vec![2, 3, 5, 7]);
        assert_eq!(compare(&a, &a), Vec::<u64>::new());
        assert_eq!(compare(&[], &a), vec![0, 2, 5]);
    }

    #[test]
    fn coalesce_joins_neighbours_and_clips() {
        let r = coalesce(&[1, 2, 3, 7, 9], 10, 95);
        assert_eq!(
            r,
            vec![
                ChangedRange { start: 10, end: 40 },
                ChangedRange { start: 70, end: 80 },
                ChangedRange { start: 90, end: 95 },
            ]
        );
        assert!(coalesce(&[12], 10, 95).is_empty());
    }

    #[test]
    fn covered_counts_overlaps_once() {
        let p = |index, start, size| Partition {
            index,
            name: String::new(),
            type_id: String::new(),
            type_name: None,
            start,
            size,
        };
        let r = ChangedRange { start: 0, end: 100 };
        assert_eq!(covered(&r, &[p(1, 10, 20), p(2, 20, 20), p(3, 90, 50)]), 40);
        assert_eq!(covered(&r, &[]), 0);
    }

    #[test]
    fn sides_parse() {
        assert_eq!(
            Side::parse("snap-0123456789abcdef0"),
            Side::Snapshot("snap-0123456789abcdef0".into())
        );
        assert_eq!(
            Side::parse("snap-1234abcd"),
            Side::Snapshot("snap-1234abcd".into())
        );
        assert_eq!(Side::parse("disk.raw"), Side::Image("disk.raw".into()));
        assert_eq!(Side::parse("snap-xyz"), Side::Image("snap-xyz".into()));
    }
}
