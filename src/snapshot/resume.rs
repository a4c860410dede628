//! What lets an interrupted upload continue: a record of the pending snapshot (which
//! image, with which arguments, started when) and a journal of the blocks the service
//! acknowledged, written durably in batches as they are acknowledged.
//!
//! Files, in the block index directory:
//! - `pending/<key>.json`: the [`PendingRecord`] of the upload whose image and
//!   arguments hash to `<key>`; written (and fsync'd) right after StartSnapshot answers,
//!   removed when the snapshot completes or is deleted;
//! - `<snapshot-id>.acks`: one line per acknowledged block, `<index> <base64 SHA-256>`,
//!   appended in batches, each batch fsync'd before the blocks in it count as done (a
//!   worker keeps its slot until then, so at most `workers` blocks are ever sent but not
//!   journalled). A torn last line (a kill during a write) is ignored.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

use super::checksum::{self, BlockDigest};
use crate::image::FileIdentity;

/// What an interrupted upload left to continue from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PendingRecord {
    /// The pending snapshot.
    pub snapshot_id: String,
    /// Its region.
    pub region: String,
    /// The image as given.
    pub image: PathBuf,
    /// The image's size, modification time and inode when the upload started.
    pub identity: FileIdentity,
    /// The block size StartSnapshot answered.
    pub block_size: u64,
    /// The snapshot's volume size.
    pub volume_size_gib: u64,
    /// The parent snapshot, for an incremental upload.
    pub parent: Option<String>,
    /// When StartSnapshot answered, seconds since the epoch.
    pub started_unix: i64,
    /// The Timeout given to StartSnapshot, minutes.
    pub timeout_minutes: Option<i32>,
}

/// The key of an upload: what must be equal for a rerun to continue it.
pub(crate) fn key(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.len().to_le_bytes());
        h.update(p.as_bytes());
    }
    h.finalize()[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn record_path(dir: &Path, key: &str) -> PathBuf {
    dir.join("pending").join(format!("{key}.json"))
}

/// Where the acknowledgement journal of `snapshot_id` is.
pub(crate) fn acks_path(dir: &Path, snapshot_id: &str) -> PathBuf {
    dir.join(format!("{snapshot_id}.acks"))
}

/// The record under `key`, if any (an unreadable one is reported and ignored).
pub(crate) fn load_record(dir: &Path, key: &str) -> Option<PendingRecord> {
    let path = record_path(dir, key);
    let text = std::fs::read_to_string(&path).ok()?;
    match serde_json::from_str(&text) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!(
                "ignoring the unreadable resume record {}: {e}",
                path.display()
            );
            None
        }
    }
}

/// Write the record under `key` durably (temporary file, fsync, rename, fsync of the
/// directory).
pub(crate) fn save_record(dir: &Path, key: &str, record: &PendingRecord) -> io::Result<()> {
    let path = record_path(dir, key);
    let parent = path.parent().expect("record path has a directory");
    std::fs::create_dir_all(parent)?;
    let tmp = path.with_extension("json.tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(serde_json::to_string_pretty(record)?.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    File::open(parent)?.sync_all()
}

/// Forget the upload under `key` and its acknowledgement journal.
pub(crate) fn remove(dir: &Path, key: &str, snapshot_id: &str) {
    let path = record_path(dir, key);
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(acks_path(dir, snapshot_id));
    // Only when empty: no upload is pending any more.
    if let Some(pending) = path.parent() {
        let _ = std::fs::remove_dir(pending);
    }
}

/// The acknowledged blocks of `snapshot_id` (latest digest per block).
pub(crate) fn load_acks(dir: &Path, snapshot_id: &str) -> io::Result<HashMap<u64, BlockDigest>> {
    let mut out = HashMap::new();
    let f = match File::open(acks_path(dir, snapshot_id)) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for line in BufReader::new(f).split(b'\n') {
        let line = line?;
        let Ok(text) = std::str::from_utf8(&line) else {
            continue;
        };
        let Some((i, sum)) = text.split_once(' ') else {
            continue;
        };
        if let (Ok(i), Some(d)) = (i.parse::<u64>(), checksum::from_base64(sum)) {
            out.insert(i, d);
        }
    }
    Ok(out)
}

/// One acknowledged block on its way to the journal, and who waits for it to be durable.
type Ack = (u64, BlockDigest, oneshot::Sender<io::Result<()>>);

/// Appends acknowledgements in batches (group commit): a thread takes every ack that
/// arrived, writes them, fsyncs once, then releases their waiters.
pub(crate) struct AckJournal {
    tx: Option<mpsc::Sender<Ack>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AckJournal {
    /// Open (append) the journal of `snapshot_id`.
    pub(crate) fn open(dir: &Path, snapshot_id: &str) -> io::Result<AckJournal> {
        std::fs::create_dir_all(dir)?;
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(acks_path(dir, snapshot_id))?;
        // A torn last line of a killed run: start ours on a line of its own.
        file.write_all(b"\n")?;
        let (tx, rx) = mpsc::channel::<Ack>();
        let thread = std::thread::Builder::new()
            .name("ec2ami-acks".into())
            .spawn(move || {
                let mut buf = Vec::with_capacity(64 * 1024);
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    batch.extend(rx.try_iter());
                    buf.clear();
                    for (i, d, _) in &batch {
                        buf.extend_from_slice(
                            format!("{i} {}\n", checksum::to_base64(d)).as_bytes(),
                        );
                    }
                    let r = file.write_all(&buf).and_then(|()| file.sync_data());
                    for (_, _, done) in batch {
                        let _ = done.send(match &r {
                            Ok(()) => Ok(()),
                            Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
                        });
                    }
                }
            })?;
        Ok(AckJournal {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Record that block `index` with `digest` was acknowledged; resolves once durable.
    pub(crate) async fn record(&self, index: u64, digest: &BlockDigest) -> io::Result<()> {
        let (done, wait) = oneshot::channel();
        self.tx
            .as_ref()
            .expect("journal open")
            .send((index, *digest, done))
            .map_err(|_| io::Error::other("the acknowledgement journal stopped"))?;
        wait.await
            .map_err(|_| io::Error::other("the acknowledgement journal stopped"))?
    }
}

impl Drop for AckJournal {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::checksum::block_digest;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn acks_are_durable_and_torn_lines_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let j = AckJournal::open(dir.path(), "snap-1").unwrap();
        let digests: Vec<_> = (0..50u64).map(|i| block_digest(&i.to_le_bytes())).collect();
        let tasks: Vec<_> = (0..50u64)
            .map(|i| j.record(i * 3, &digests[i as usize]))
            .collect();
        for t in futures_util::future::join_all(tasks).await {
            t.unwrap();
        }
        drop(j);
        // A kill in the middle of a write leaves a torn line.
        let mut f = OpenOptions::new()
            .append(true)
            .open(acks_path(dir.path(), "snap-1"))
            .unwrap();
        f.write_all(b"999 B4VNL+8peg").unwrap();
        let acks = load_acks(dir.path(), "snap-1").unwrap();
        assert_eq!(acks.len(), 50);
        for i in 0..50u64 {
            assert_eq!(acks[&(i * 3)], digests[i as usize]);
        }
        // Reopened (a resumed run) it appends after the torn line.
        let j = AckJournal::open(dir.path(), "snap-1").unwrap();
        j.record(1000, &digests[0]).await.unwrap();
        drop(j);
        let acks = load_acks(dir.path(), "snap-1").unwrap();
        assert_eq!(acks.len(), 51);
        assert!(!acks.contains_key(&999));
    }

    #[test]
    fn records_round_trip_and_keys_separate_arguments() {
        let dir = tempfile::tempdir().unwrap();
        let k = key(&["a", "bc"]);
        assert_ne!(k, key(&["ab", "c"]));
        assert_eq!(k, key(&["a", "bc"]));
        let r = PendingRecord {
            snapshot_id: "snap-1".into(),
            region: "us-east-1".into(),
            image: "/x.raw".into(),
            identity: FileIdentity {
                size: 5,
                mtime_ns: 7,
                dev_ino: (1, 2),
            },
            block_size: 524288,
            volume_size_gib: 1,
            parent: None,
            started_unix: 3,
            timeout_minutes: Some(60),
        };
        assert_eq!(load_record(dir.path(), &k), None);
        save_record(dir.path(), &k, &r).unwrap();
        assert_eq!(load_record(dir.path(), &k), Some(r));
        remove(dir.path(), &k, "snap-1");
        assert_eq!(load_record(dir.path(), &k), None);
    }
}
