//! Where the data is: data extents from SEEK_DATA/SEEK_HOLE, and the block plan
//! (which snapshot blocks to look at) built lazily from them, so holes are never read
//! and memory does not grow with the image size.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// A range of bytes `[start, end)` that may hold data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

/// Iterates the data extents of a file with `lseek(SEEK_DATA/SEEK_HOLE)`. Where the
/// file system or device does not support that, the whole file is one extent.
pub struct Extents<'a> {
    file: &'a File,
    size: u64,
    pos: u64,
    supported: bool,
}

impl<'a> Extents<'a> {
    /// Extents of the first `size` bytes of `file`. `sparse` false (block devices,
    /// or a caller that wants every byte) yields `[0, size)` as one extent.
    pub fn new(file: &'a File, size: u64, sparse: bool) -> Self {
        Extents {
            file,
            size,
            pos: 0,
            supported: sparse,
        }
    }

    fn seek(&self, offset: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
        // SAFETY: lseek on a valid, open descriptor; only the file offset changes, and
        // every read of ours is positional (pread), so the offset is not shared state.
        let r = unsafe { libc::lseek(self.file.as_raw_fd(), offset as libc::off_t, whence) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                return Ok(None);
            }
            return Err(e);
        }
        Ok(Some(r as u64))
    }
}

impl Iterator for Extents<'_> {
    type Item = io::Result<Extent>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.size {
            return None;
        }
        if !self.supported {
            let e = Extent {
                start: self.pos,
                end: self.size,
            };
            self.pos = self.size;
            return Some(Ok(e));
        }
        let start = match self.seek(self.pos, libc::SEEK_DATA) {
            Ok(Some(s)) if s < self.size => s,
            Ok(_) => {
                self.pos = self.size;
                return None;
            }
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && self.pos == 0 => {
                // The file system has no SEEK_DATA: treat everything as data.
                self.supported = false;
                return self.next();
            }
            Err(e) => return Some(Err(e)),
        };
        let end = match self.seek(start, libc::SEEK_HOLE) {
            Ok(Some(h)) => h.min(self.size),
            Ok(None) => self.size,
            Err(e) => return Some(Err(e)),
        };
        self.pos = end.max(start + 1);
        Some(Ok(Extent { start, end }))
    }
}

/// One snapshot block to process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedBlock {
    /// Block index in the snapshot.
    pub index: u64,
    /// False when the block lies wholly in a hole: it is zero and need not be read.
    pub has_data: bool,
}

/// The blocks to look at, in ascending order, each once. With `every_block` (encrypted
/// snapshots, where an absent block reads back as garbage) every block of the volume is
/// planned, holes as `has_data: false`; otherwise only blocks that touch data.
pub struct BlockPlan<I> {
    extents: I,
    block_size: u64,
    total_blocks: u64,
    every_block: bool,
    next_block: u64,
    current: Option<(u64, u64)>,
    done: bool,
}

impl<I: Iterator<Item = io::Result<Extent>>> BlockPlan<I> {
    /// Plan over `extents`, for a volume of `total_blocks` blocks of `block_size` bytes.
    pub fn new(extents: I, block_size: u64, total_blocks: u64, every_block: bool) -> Self {
        BlockPlan {
            extents,
            block_size,
            total_blocks,
            every_block,
            next_block: 0,
            current: None,
            done: false,
        }
    }

    /// The block range `[first, last]` of the next extent beyond what was planned.
    fn next_range(&mut self) -> Option<io::Result<(u64, u64)>> {
        loop {
            match self.extents.next()? {
                Err(e) => return Some(Err(e)),
                Ok(ext) if ext.end <= ext.start => continue,
                Ok(ext) => {
                    let first = (ext.start / self.block_size).max(self.next_block);
                    let last = (ext.end - 1) / self.block_size;
                    if first <= last {
                        return Some(Ok((first, last)));
                    }
                }
            }
        }
    }
}

impl<I: Iterator<Item = io::Result<Extent>>> Iterator for BlockPlan<I> {
    type Item = io::Result<PlannedBlock>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next_block >= self.total_blocks {
            return None;
        }
        if self.current.is_none() && !self.done {
            match self.next_range() {
                Some(Ok(r)) => self.current = Some(r),
                Some(Err(e)) => {
                    self.done = true;
                    return Some(Err(e));
                }
                None => self.done = true,
            }
        }
        match self.current {
            Some((first, last)) => {
                if self.every_block && self.next_block < first {
                    let index = self.next_block;
                    self.next_block += 1;
                    return Some(Ok(PlannedBlock {
                        index,
                        has_data: false,
                    }));
                }
                let index = first.max(self.next_block);
                self.next_block = index + 1;
                self.current = if index >= last {
                    None
                } else {
                    Some((index + 1, last))
                };
                Some(Ok(PlannedBlock {
                    index,
                    has_data: true,
                }))
            }
            None if self.every_block => {
                let index = self.next_block;
                self.next_block += 1;
                Some(Ok(PlannedBlock {
                    index,
                    has_data: false,
                }))
            }
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    fn plan(extents: &[(u64, u64)], bs: u64, total: u64, every: bool) -> Vec<(u64, bool)> {
        let it = extents
            .iter()
            .map(|&(start, end)| Ok(Extent { start, end }))
            .collect::<Vec<_>>()
            .into_iter();
        BlockPlan::new(it, bs, total, every)
            .map(|b| b.map(|b| (b.index, b.has_data)).unwrap())
            .collect()
    }

    #[test]
    fn blocks_touching_data_only() {
        // Extent across the boundary of blocks 1 and 2, another inside block 2, one in 5.
        let p = plan(&[(150, 250), (260, 270), (500, 510)], 100, 8, false);
        assert_eq!(p, vec![(1, true), (2, true), (5, true)]);
    }

    #[test]
    fn every_block_fills_holes_in_order() {
        let p = plan(&[(150, 250)], 100, 4, true);
        assert_eq!(p, vec![(0, false), (1, true), (2, true), (3, false)]);
    }

    #[test]
    fn no_extents_means_nothing_or_all_holes() {
        assert!(plan(&[], 100, 3, false).is_empty());
        assert_eq!(
            plan(&[], 100, 3, true),
            vec![(0, false), (1, false), (2, false)]
        );
    }

    #[test]
    fn extents_beyond_volume_are_cut() {
        let p = plan(&[(0, 1000)], 100, 3, false);
        assert_eq!(p, vec![(0, true), (1, true), (2, true)]);
    }

    #[test]
    fn seek_data_finds_the_written_ranges_of_a_sparse_file() {
        let mut f = tempfile::tempfile().unwrap();
        let mib = 1u64 << 20;
        f.set_len(64 * mib).unwrap();
        f.seek(SeekFrom::Start(10 * mib)).unwrap();
        f.write_all(&vec![1u8; mib as usize]).unwrap();
        f.seek(SeekFrom::Start(40 * mib)).unwrap();
        f.write_all(&[2u8; 10]).unwrap();
        f.sync_all().unwrap();
        let ext: Vec<Extent> = Extents::new(&f, 64 * mib, true)
            .collect::<io::Result<_>>()
            .unwrap();
        let covered: u64 = ext.iter().map(|e| e.end - e.start).sum();
        // File systems without hole support report one extent; with it, ~1 MiB + one page.
        if ext.len() > 1 {
            assert!(covered < 2 * mib, "{ext:?}");
            assert!(ext.iter().any(|e| e.start <= 10 * mib && e.end >= 11 * mib));
            assert!(ext.iter().any(|e| e.start <= 40 * mib && e.end > 40 * mib));
        } else {
            assert_eq!(covered, 64 * mib);
        }
    }
}
