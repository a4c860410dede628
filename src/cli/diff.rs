//! `ec2ami diff A B`: the blocks that differ between two disks (image files or
//! snapshots), mapped onto B's partition table. Exit status as cmp's: 0 equal, 1
//! different, 2 trouble.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use ec2ami::snapshot::{self, DiffOptions, DiffReport, Side};

use super::{EXIT_INTERRUPTED, GlobalArgs, shutdown_signal};

/// `diff` exits with this when the disks differ.
const EXIT_DIFFER: u8 = 1;
/// `diff` exits with this on any error.
const EXIT_TROUBLE: u8 = 2;

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The first disk: an image file (raw, qcow2, VMDK, VHD, VHDX) or a snapshot id.
    #[arg(value_name = "A")]
    a: String,
    /// The second disk: an image file or a snapshot id; its partition table is the one
    /// reported.
    #[arg(value_name = "B")]
    b: String,
    /// Write each changed partition of both sides into DIR/a/ and DIR/b/ (sparse
    /// files named p<N>-<name>.img), for diffoscope or a file-system tool.
    #[arg(long, value_name = "DIR")]
    extract: Option<PathBuf>,
    /// Where block indexes are kept and read (default: $XDG_STATE_HOME/ec2ami/blocks).
    #[arg(long, value_name = "DIR")]
    index_dir: Option<PathBuf>,
    /// Concurrent block reads (GetSnapshotBlock requests; threads hashing an image).
    #[arg(long, default_value_t = 16, value_parser = super::parse_workers)]
    workers: usize,
}

/// Run `diff` on its own runtime-less path: its exit statuses are its own.
pub fn main(g: &GlobalArgs, a: &DiffArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_TROUBLE);
        }
    };
    rt.block_on(async {
        tokio::select! {
            r = run(g, a) => r,
            _ = shutdown_signal() => {
                eprintln!("error: diff interrupted");
                ExitCode::from(EXIT_INTERRUPTED)
            }
        }
    })
}

async fn run(g: &GlobalArgs, a: &DiffArgs) -> ExitCode {
    let (sa, sb) = (Side::parse(&a.a), Side::parse(&a.b));
    let needs_aws = matches!(sa, Side::Snapshot(_)) || matches!(sb, Side::Snapshot(_));
    let clients = if needs_aws {
        match super::connect(g).await {
            Ok(c) => Some(c),
            Err(f) => {
                eprintln!("error: {}", f.message);
                return ExitCode::from(EXIT_TROUBLE);
            }
        }
    } else {
        None
    };
    let opts = DiffOptions {
        index_dir: a
            .index_dir
            .clone()
            .unwrap_or_else(snapshot::default_index_dir),
        workers: a.workers,
        extract: a.extract.clone(),
        retry: g.retry(),
        progress: g.progress(),
    };
    match snapshot::diff(clients.as_ref(), &sa, &sb, &opts).await {
        Ok(report) => {
            g.print(&report, || text(&report));
            if report.equal {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_DIFFER)
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_TROUBLE)
        }
    }
}

fn text(r: &DiffReport) -> String {
    let mut s = String::new();
    for (label, side) in [("A", &r.a), ("B", &r.b)] {
        let _ = write!(
            s,
            "{label}: {} ({}, {} bytes; ",
            side.name, side.kind, side.size_bytes
        );
        let how = match side.source {
            snapshot::DiffSource::Hashed => {
                format!("hashed, {} read", human(side.bytes_read))
            }
            snapshot::DiffSource::KeptIndex => "kept block index".to_string(),
            snapshot::DiffSource::BuiltIndex => {
                format!("block index built, {} blocks fetched", side.blocks_fetched)
            }
            snapshot::DiffSource::ChangedBlocks => "ListChangedBlocks".to_string(),
        };
        let _ = writeln!(s, "{how})");
    }
    if r.sizes_differ {
        let _ = writeln!(
            s,
            "sizes differ: A is {} bytes, B is {} bytes (the shorter reads as zeros past its end)",
            r.a.size_bytes, r.b.size_bytes
        );
    }
    if r.equal {
        let _ = write!(s, "equal");
        return s;
    }
    let _ = writeln!(
        s,
        "differ: {} block(s) of {} ({} bytes) in {} range(s)",
        r.blocks_changed,
        human(r.block_size),
        r.bytes_changed,
        r.ranges.len()
    );
    const SHOWN: usize = 20;
    for c in r.ranges.iter().take(SHOWN) {
        let _ = writeln!(
            s,
            "  {:#014x}-{:#014x}  {:>12} bytes",
            c.start,
            c.end,
            c.len()
        );
    }
    if r.ranges.len() > SHOWN {
        let _ = writeln!(
            s,
            "  ... {} more ranges (--output json lists them all)",
            r.ranges.len() - SHOWN
        );
    }
    if r.partitions.is_empty() {
        let _ = writeln!(s, "B has {}", r.partition_table);
    } else {
        let _ = writeln!(s, "{} partitions of B:", r.partition_table);
        let _ = writeln!(
            s,
            "  {:>3}  {:<16} {:<22} {:>14} {:>14} {:>14}",
            "#", "name", "type", "offset", "size", "changed"
        );
        for p in &r.partitions {
            let pp = &p.partition;
            let ty = pp
                .type_name
                .map(str::to_string)
                .unwrap_or(pp.type_id.clone());
            let pct = if pp.size > 0 {
                format!(" ({:.1}%)", p.bytes_changed as f64 * 100.0 / pp.size as f64)
            } else {
                String::new()
            };
            let _ = writeln!(
                s,
                "  {:>3}  {:<16} {:<22} {:>14} {:>14} {:>14}{pct}",
                pp.index,
                ec2ami::image::escaped(&pp.name),
                ty,
                pp.start,
                pp.size,
                p.bytes_changed
            );
        }
    }
    let _ = writeln!(
        s,
        "outside any partition: {} bytes changed",
        r.outside_partitions_bytes
    );
    for p in &r.extracted {
        let _ = writeln!(s, "extracted {}", p.display());
    }
    s.trim_end().to_string()
}

/// Bytes in binary units, one decimal.
fn human(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let (mut x, mut u) = (b as f64, 0);
    while x >= 1024.0 && u < UNITS.len() - 1 {
        x /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else if x.fract() == 0.0 {
        format!("{x:.0} {}", UNITS[u])
    } else {
        format!("{x:.1} {}", UNITS[u])
    }
}
