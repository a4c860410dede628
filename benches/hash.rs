//! Hashing speed per core on 512 KiB blocks, as the upload computes it (SHA-256 per
//! block plus the zero check), to compare with `openssl speed -evp sha256 -bytes 524288`.
//! Prints one line: `sha256 512KiB blocks: <GB/s> GB/s per core (<blocks> blocks)`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use ec2ami::snapshot::checksum::{block_digest, is_zero};

fn main() {
    let mut block = vec![0u8; 512 * 1024];
    fastrand::Rng::with_seed(42).fill(&mut block);
    // Warm up, then measure for about three seconds on this thread only.
    for _ in 0..64 {
        black_box(block_digest(black_box(&block)));
    }
    let (mut n, t0) = (0u64, Instant::now());
    while t0.elapsed() < Duration::from_secs(3) {
        for _ in 0..32 {
            assert!(!is_zero(black_box(&block)));
            black_box(block_digest(black_box(&block)));
        }
        n += 32;
    }
    let secs = t0.elapsed().as_secs_f64();
    let gbps = (n * block.len() as u64) as f64 / secs / 1e9;
    println!("sha256 512KiB blocks: {gbps:.3} GB/s per core ({n} blocks)");
}
