//! Hashing speed per core on 512 KiB blocks, as the upload computes it: SHA-256 per
//! block plus the zero check (compare with `openssl speed -evp sha256 -bytes 524288`),
//! and BLAKE3 per block, which an incremental upload compares with the parent's index.
//! Prints one line per hash: `<hash> 512KiB blocks: <GB/s> GB/s per core (<blocks> blocks)`,
//! then their ratio.

use std::hint::black_box;
use std::time::{Duration, Instant};

use ec2ami::snapshot::checksum::{block_digest, fast_digest, is_zero};

/// GB/s of `hash` (plus the zero check) on `block`, on this thread, over about 3 s.
fn measure(block: &[u8], hash: impl Fn(&[u8])) -> (f64, u64) {
    for _ in 0..64 {
        hash(black_box(block));
    }
    let (mut n, t0) = (0u64, Instant::now());
    while t0.elapsed() < Duration::from_secs(3) {
        for _ in 0..32 {
            assert!(!is_zero(black_box(block)));
            hash(black_box(block));
        }
        n += 32;
    }
    let secs = t0.elapsed().as_secs_f64();
    ((n * block.len() as u64) as f64 / secs / 1e9, n)
}

fn main() {
    let mut block = vec![0u8; 512 * 1024];
    fastrand::Rng::with_seed(42).fill(&mut block);
    let (sha, n) = measure(&block, |b| {
        black_box(block_digest(b));
    });
    println!("sha256 512KiB blocks: {sha:.3} GB/s per core ({n} blocks)");
    let (b3, n) = measure(&block, |b| {
        black_box(fast_digest(b));
    });
    println!("blake3 512KiB blocks: {b3:.3} GB/s per core ({n} blocks)");
    println!("blake3 / sha256: {:.2}x", b3 / sha);
}
