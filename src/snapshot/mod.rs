//! EBS direct APIs: upload a disk image to a new snapshot, download a snapshot to a
//! sparse file, the per-block index (SHA-256, BLAKE3) of what was uploaded (or built from a
//! snapshot), and the diff of two disks.

pub mod checksum;
pub(crate) mod diff;
pub(crate) mod download;
pub(crate) mod index;
pub(crate) mod listing;
pub(crate) mod resume;
pub(crate) mod upload;
pub(crate) mod wait;

use std::time::Duration;

pub use diff::{
    ChangedRange, DiffError, DiffOptions, DiffReport, PartitionChange, Side, SideReport,
    Source as DiffSource, diff,
};
pub use download::{DownloadError, DownloadOptions, DownloadReport, download};
pub use index::default_dir as default_index_dir;
pub use index::{
    BlockIndex, BuildOptions as IndexBuildOptions, IndexError, IndexHeader, IndexOrigin,
    SnapshotIndex, from_snapshot as index_from_snapshot, load_or_build as index_of_snapshot,
    path_for as index_path_for,
};
pub use upload::{
    DEFAULT_WORKERS, UploadError, UploadOptions, UploadReport, blocks_to_send, kept_index,
    resumable, upload, upload_with,
};
pub use wait::wait_for_completed;

/// The resume window `publish` gives StartSnapshot (and `upload`'s default
/// `--resume-window`): a day.
pub const DEFAULT_RESUME_WINDOW_MINUTES: i32 = 1440;

/// The block size AWS uses (and the only one it has ever answered).
pub const AWS_BLOCK_SIZE: u64 = 512 * 1024;

/// Check a block size answered by the service: a positive multiple of 512, at most 64 MiB.
pub fn check_block_size(size: Option<i64>) -> Result<u64, String> {
    match size {
        Some(s) if s > 0 && s % 512 == 0 && s <= 64 << 20 => Ok(s as u64),
        Some(s) => Err(format!(
            "the service answered a block size of {s} bytes; EBS uses {AWS_BLOCK_SIZE} \
             (a positive multiple of 512 is required)"
        )),
        None => Err("the service answered no block size".to_string()),
    }
}

/// Volume size in GiB for an image of `bytes` (rounded up, at least 1).
pub fn volume_size_gib(bytes: u64) -> u64 {
    bytes.div_ceil(1 << 30).max(1)
}

/// `work` on `threads` consecutive runs of `items` at once, one thread each; the results
/// in the runs' order.
pub(crate) fn on_threads<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    work: impl Fn(&[T]) -> R + Sync,
) -> Vec<R> {
    let run = items.len().div_ceil(threads.max(1)).max(1);
    let work = &work;
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(run)
            .map(|part| scope.spawn(move || work(part)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a block hashing thread panicked"))
            .collect()
    })
}

/// Render seconds for reports.
pub(crate) fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_size_must_be_a_positive_multiple_of_512() {
        assert_eq!(check_block_size(Some(524288)), Ok(524288));
        assert_eq!(check_block_size(Some(512)), Ok(512));
        assert!(check_block_size(Some(0)).is_err());
        assert!(check_block_size(Some(-512)).is_err());
        assert!(check_block_size(Some(1000)).is_err());
        assert!(check_block_size(None).is_err());
    }

    #[test]
    fn volume_size_rounds_up_to_gib() {
        assert_eq!(volume_size_gib(1), 1);
        assert_eq!(volume_size_gib(1 << 30), 1);
        assert_eq!(volume_size_gib((1 << 30) + 1), 2);
        assert_eq!(volume_size_gib(64 << 40), 65536);
    }
}
