//! `ec2ami diff A B`: image vs image, snapshot vs image, snapshot vs snapshot (one
//! lineage: ListChangedBlocks; unrelated: block indexes), mapped onto B's partition
//! table (GPT made by sgdisk, MBR written by hand), `--extract`, and bad input; exit
//! statuses as cmp's.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command as StdCommand;

use ec2ami_testkit::StrictEbsConfig;

use crate::common::*;
use crate::snapshot_index::put_snapshot;

const DISK: u64 = 64 * MIB;

/// A sparse 64 MiB disk with a GPT made by sgdisk: 1 "efi" (1-9 MiB, EF00), 2 "rootfs"
/// (9-41 MiB, 8300), 3 "data" (41 MiB-end); a little data in each partition.
fn gpt_disk(path: &Path) {
    sparse_file(path, DISK, &[]);
    let out = StdCommand::new("sgdisk")
        .args(["-n", "1:2048:18431", "-t", "1:EF00", "-c", "1:efi"])
        .args(["-n", "2:18432:83967", "-t", "2:8300", "-c", "2:rootfs"])
        .args(["-n", "3:83968:0", "-t", "3:8300", "-c", "3:data"])
        .arg(path)
        .output()
        .expect("sgdisk runs (apt-get install gdisk)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&random_bytes(1, 300_000), 2 * MIB).unwrap();
    f.write_all_at(&random_bytes(2, 2 * MIB as usize), 10 * MIB)
        .unwrap();
    f.write_all_at(&random_bytes(3, 100_000), 50 * MIB).unwrap();
}

/// Overwrite `len` bytes at `off` of `path` with new data.
fn scribble(path: &Path, off: u64, len: usize, seed: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(&random_bytes(seed, len), off).unwrap();
}

fn copy(a: &Path, b: &Path) {
    // cp keeps the holes.
    let st = StdCommand::new("cp")
        .args(["--sparse=always"])
        .arg(a)
        .arg(b)
        .status()
        .unwrap();
    assert!(st.success());
}

async fn diff_json(world: &World, a: &str, b: &str, extra: &[&str]) -> (Run, serde_json::Value) {
    let mut args = vec!["--output", "json", "diff", a, b];
    args.extend_from_slice(extra);
    let run = world.run(&args).await;
    let v = serde_json::from_str(&run.stdout).unwrap_or(serde_json::Value::Null);
    (run, v)
}

/// Blocks of `path` that hold any data extent (SEEK_DATA/SEEK_HOLE, read here).
fn data_blocks(path: &Path) -> u64 {
    let f = std::fs::File::open(path).unwrap();
    let size = f.metadata().unwrap().len();
    let mut blocks = std::collections::BTreeSet::new();
    for e in ec2ami::image::Extents::new(&f, size, true) {
        let e = e.unwrap();
        blocks.extend(e.start / BLOCK..e.end.div_ceil(BLOCK));
    }
    blocks.len() as u64
}

fn partition(report: &serde_json::Value, index: u64) -> &serde_json::Value {
    report["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["index"] == index)
        .unwrap_or_else(|| panic!("partition {index} in {report}"))
}

#[tokio::test]
async fn image_vs_image_second_partition_changed() {
    let world = World::offline().await;
    let (a, b) = (world.path("a.raw"), world.path("b.raw"));
    gpt_disk(&a);
    copy(&a, &b);
    // Equal: exit 0, nothing read but the data.
    let (run, r) = diff_json(&world, a.to_str().unwrap(), b.to_str().unwrap(), &[]).await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(r["equal"], true);
    assert_eq!(r["blocks_changed"], 0);

    // 700 000 bytes at 20 MiB + 100: blocks 40 and 41 (512 KiB each) of partition 2.
    scribble(&b, 20 * MIB + 100, 700_000, 9);
    let (run, r) = diff_json(&world, a.to_str().unwrap(), b.to_str().unwrap(), &[]).await;
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert_eq!(r["equal"], false);
    assert_eq!(r["blocks_changed"], 2);
    assert_eq!(r["bytes_changed"], 2 * BLOCK);
    assert_eq!(
        r["ranges"],
        serde_json::json!([{"start": 40 * BLOCK, "end": 42 * BLOCK}])
    );
    assert_eq!(r["partition_table"], "gpt");
    let p2 = partition(&r, 2);
    assert_eq!(p2["name"], "rootfs");
    assert_eq!(p2["type_id"], "0FC63DAF-8483-4772-8E79-3D69D8477DE4");
    assert_eq!(p2["start"], 18432 * 512);
    assert_eq!(p2["size"], (83968 - 18432) * 512);
    assert_eq!(p2["bytes_changed"], 2 * BLOCK);
    assert_eq!(partition(&r, 1)["bytes_changed"], 0);
    assert_eq!(partition(&r, 1)["type_name"], "EFI System");
    assert_eq!(partition(&r, 3)["bytes_changed"], 0);
    assert_eq!(r["outside_partitions_bytes"], 0);
    // Only the blocks holding data were read (and B's first MiB, for its table).
    for (side, path, head) in [("a", &a, 0), ("b", &b, MIB)] {
        let read = r[side]["bytes_read"].as_u64().unwrap();
        assert_eq!(read, data_blocks(path) * BLOCK + head, "{side}");
        assert!(read < DISK / 8, "{side}: {read} bytes read");
        assert_eq!(r[side]["source"], "hashed");
    }

    // The text form names the partition.
    let run = world
        .run(&["diff", a.to_str().unwrap(), b.to_str().unwrap()])
        .await;
    assert_eq!(run.code, Some(1));
    assert!(run.stdout.contains("GPT partitions of B"), "{}", run.stdout);
    let line = run
        .stdout
        .lines()
        .find(|l| l.contains("rootfs"))
        .unwrap_or_else(|| panic!("{}", run.stdout));
    assert!(line.contains(&(2 * BLOCK).to_string()), "{line}");
    assert!(
        world.proxy.requests().is_empty(),
        "no AWS call for two images"
    );
}

#[tokio::test]
async fn changes_outside_partitions_and_mbr() {
    let world = World::offline().await;
    let (a, b) = (world.path("a.raw"), world.path("b.raw"));
    // MBR: partition 1 type 0x83 at 1 MiB, 8 MiB long; partition 2 type 0x82 at 16 MiB.
    let mut mbr = vec![0u8; 512];
    for (i, (t, lba, n)) in [(0x83u8, 2048u32, 16384u32), (0x82, 32768, 8192)]
        .iter()
        .enumerate()
    {
        let e = &mut mbr[446 + 16 * i..462 + 16 * i];
        e[4] = *t;
        e[8..12].copy_from_slice(&lba.to_le_bytes());
        e[12..16].copy_from_slice(&n.to_le_bytes());
    }
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    sparse_file(
        &a,
        32 * MIB,
        &[(0, mbr.clone()), (2 * MIB, random_bytes(4, 1000))],
    );
    // B: the gap between the partitions changed (12 MiB), and partition 2 (17 MiB).
    sparse_file(
        &b,
        32 * MIB,
        &[
            (0, mbr),
            (2 * MIB, random_bytes(4, 1000)),
            (12 * MIB, random_bytes(5, 10)),
            (17 * MIB, random_bytes(6, 10)),
        ],
    );
    let (run, r) = diff_json(&world, a.to_str().unwrap(), b.to_str().unwrap(), &[]).await;
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert_eq!(r["partition_table"], "mbr");
    assert_eq!(partition(&r, 1)["type_id"], "0x83");
    assert_eq!(partition(&r, 1)["bytes_changed"], 0);
    assert_eq!(partition(&r, 2)["type_name"], "Linux swap");
    assert_eq!(partition(&r, 2)["bytes_changed"], BLOCK);
    assert_eq!(r["outside_partitions_bytes"], BLOCK);
}

#[tokio::test]
async fn sizes_differ_is_reported_and_extract_writes_both_sides() {
    let world = World::offline().await;
    let (a, b) = (world.path("a.raw"), world.path("b.raw"));
    gpt_disk(&a);
    copy(&a, &b);
    scribble(&b, 12 * MIB, 1000, 10);
    let dir = world.path("out");
    let (run, r) = diff_json(
        &world,
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        &["--extract", dir.to_str().unwrap()],
    )
    .await;
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    let (pa, pb) = (dir.join("a/p2-rootfs.img"), dir.join("b/p2-rootfs.img"));
    assert_eq!(
        r["extracted"],
        serde_json::json!([pa.to_str().unwrap(), pb.to_str().unwrap()])
    );
    let (start, size) = (18432 * 512u64, (83968 - 18432) * 512u64);
    for (img, part) in [(&a, &pa), (&b, &pb)] {
        let whole = std::fs::read(img).unwrap();
        let got = std::fs::read(part).unwrap();
        assert_eq!(got.len() as u64, size);
        assert!(
            got == whole[start as usize..(start + size) as usize],
            "{}",
            part.display()
        );
    }
    assert!(
        !dir.join("a/p1-efi.img").exists(),
        "unchanged partitions are not written"
    );

    // A larger B: reported, and the extra data is a change outside the partitions.
    let c = world.path("c.raw");
    copy(&a, &c);
    let f = std::fs::OpenOptions::new().write(true).open(&c).unwrap();
    f.set_len(DISK + 3 * MIB).unwrap();
    drop(f);
    scribble(&c, DISK + MIB, 10, 11);
    let (run, r) = diff_json(&world, a.to_str().unwrap(), c.to_str().unwrap(), &[]).await;
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert_eq!(r["sizes_differ"], true);
    assert_eq!(r["b"]["size_bytes"], DISK + 3 * MIB);
    // sgdisk's backup GPT at the end of A is not at the end of C.
    assert!(r["outside_partitions_bytes"].as_u64().unwrap() >= BLOCK);
    let run = world
        .run(&["diff", a.to_str().unwrap(), c.to_str().unwrap()])
        .await;
    assert!(run.stdout.contains("sizes differ"), "{}", run.stdout);
}

#[tokio::test]
async fn snapshot_vs_image() {
    let world = World::strict(StrictEbsConfig::default()).await;
    let (a, b) = (world.path("a.raw"), world.path("b.raw"));
    gpt_disk(&a);
    copy(&a, &b);
    scribble(&b, 30 * MIB, 5000, 12);
    let snap = world.upload(&a, &[]).await["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    // The kept index from the upload: no block is fetched.
    world.proxy.clear_requests();
    let (run, r) = diff_json(&world, &snap, a.to_str().unwrap(), &[]).await;
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    assert_eq!(r["a"]["source"], "kept-index");
    assert_eq!(r["a"]["kind"], "snapshot");
    assert_eq!(r["a"]["size_bytes"], DISK, "the recorded image size");
    assert_eq!(world.proxy.count("GetSnapshotBlock"), 0);

    // Index lost: built from the snapshot (and kept), the change found in partition 2.
    let index_dir = world.dir.path().join("state/ec2ami/blocks");
    std::fs::remove_file(index_dir.join(format!("{snap}.blocks"))).unwrap();
    world.proxy.clear_requests();
    let (run, r) = diff_json(&world, &snap, b.to_str().unwrap(), &[]).await;
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert_eq!(r["a"]["source"], "built-index");
    let blocks = nonzero_blocks(&a).len() as u64;
    assert_eq!(r["a"]["blocks_fetched"], blocks);
    assert_eq!(world.proxy.count("GetSnapshotBlock") as u64, blocks);
    assert_eq!(r["blocks_changed"], 1);
    assert_eq!(partition(&r, 2)["bytes_changed"], BLOCK);
    assert!(index_dir.join(format!("{snap}.blocks")).is_file());

    // B a snapshot: its partition table read from its first block.
    let (run, r) = diff_json(&world, b.to_str().unwrap(), &snap, &[]).await;
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert_eq!(r["partition_table"], "gpt");
    assert_eq!(partition(&r, 2)["bytes_changed"], BLOCK);
}

fn blocks(seeds: &[(u64, u64)]) -> BTreeMap<u64, Vec<u8>> {
    seeds
        .iter()
        .map(|&(i, s)| (i, random_bytes(s, BLOCK as usize)))
        .collect()
}

#[tokio::test]
async fn snapshot_vs_snapshot_one_lineage_uses_changed_blocks() {
    let world = World::strict(StrictEbsConfig::default()).await;
    let parent = put_snapshot(&world, 1, None, &blocks(&[(0, 1), (3, 2), (9, 3)])).await;
    let child = put_snapshot(&world, 1, Some(&parent), &blocks(&[(3, 4), (20, 5)])).await;
    let grandchild = put_snapshot(&world, 1, Some(&child), &blocks(&[(21, 6)])).await;
    world.proxy.clear_requests();
    let (run, r) = diff_json(&world, &parent, &grandchild, &[]).await;
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert_eq!(r["a"]["source"], "changed-blocks");
    assert_eq!(r["blocks_changed"], 3, "{r}");
    assert_eq!(
        r["ranges"],
        serde_json::json!([
            {"start": 3 * BLOCK, "end": 4 * BLOCK},
            {"start": 20 * BLOCK, "end": 22 * BLOCK},
        ])
    );
    assert!(world.proxy.count("ListChangedBlocks") >= 1);
    // Tokens only: the one block read is B's first, for its partition table.
    let gets: Vec<String> = world
        .proxy
        .requests()
        .iter()
        .filter(|q| q.operation == "GetSnapshotBlock")
        .map(|q| q.path.clone())
        .collect();
    assert!(gets.iter().all(|p| p.ends_with("/blocks/0")), "{gets:?}");
    // Either order works (the newer as A).
    let (run, r) = diff_json(&world, &grandchild, &child, &[]).await;
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert_eq!(r["a"]["source"], "changed-blocks");
    assert_eq!(r["blocks_changed"], 1);
    // A snapshot against itself is equal.
    let (run, _) = diff_json(&world, &child, &child, &[]).await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
}

#[tokio::test]
async fn snapshot_vs_snapshot_unrelated_uses_indexes() {
    let world = World::strict(StrictEbsConfig::default()).await;
    let a = put_snapshot(&world, 1, None, &blocks(&[(0, 1), (3, 2), (9, 3)])).await;
    // Same data as A but block 9; block 12 written as zeros (reads as A's absent block).
    let mut bb = blocks(&[(0, 1), (3, 2), (9, 7)]);
    bb.insert(12, vec![0u8; BLOCK as usize]);
    let b = put_snapshot(&world, 1, None, &bb).await;
    let index_dir = world.path("indexes");
    let flags = ["--index-dir", index_dir.to_str().unwrap(), "--workers", "2"];
    let run = world
        .run(&[&["--output", "json", "diff", &a, &b][..], &flags[..]].concat())
        .await;
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    let r: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert!(index_dir.join(format!("{a}.blocks")).is_file());
    assert!(index_dir.join(format!("{b}.blocks")).is_file());
    assert_eq!(r["a"]["source"], "built-index");
    assert_eq!(r["b"]["source"], "built-index");
    assert_eq!(r["blocks_changed"], 1);
    assert_eq!(
        r["ranges"],
        serde_json::json!([{"start": 9 * BLOCK, "end": 10 * BLOCK}])
    );
    assert_eq!(r["partition_table"], "none");
    assert_eq!(r["outside_partitions_bytes"], BLOCK);
    // Both indexes are kept now: no block fetched the second time.
    world.proxy.clear_requests();
    let (run, r) = diff_json(&world, &a, &b, &flags).await;
    assert_eq!(run.code, Some(1));
    assert_eq!(r["a"]["source"], "kept-index");
    assert_eq!(world.proxy.count("ListSnapshotBlocks"), 1, "B's head only");
}

#[tokio::test]
async fn diff_bad_input_exits_2() {
    let world = World::strict(StrictEbsConfig::default()).await;
    let img = world.path("a.raw");
    sparse_file(&img, 4 * MIB, &[(0, random_bytes(1, 100))]);
    let run = world
        .run(&["diff", "snap-0000000000000dead", img.to_str().unwrap()])
        .await;
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(
        run.stderr.contains("snap-0000000000000dead"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("does not exist"), "{}", run.stderr);
    let dir = world.path("adir");
    std::fs::create_dir(&dir).unwrap();
    let run = world
        .run(&["diff", dir.to_str().unwrap(), img.to_str().unwrap()])
        .await;
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(
        run.stderr.contains("is not a regular file"),
        "{}",
        run.stderr
    );
    let run = world
        .run(&["diff", img.to_str().unwrap(), "missing.raw"])
        .await;
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("missing.raw"), "{}", run.stderr);
    let errors = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("error:"))
        .count();
    assert_eq!(errors, 1, "one error line: {}", run.stderr);
}
