//! upload -> download is byte-identical, against moto and against the strict endpoint,
//! and what was sent is what should have been sent.

use std::path::Path;

use base64::Engine;

use ec2ami_testkit::StrictEbsConfig;

use crate::common::*;

/// An image to build: name, size, and (offset, bytes) written into it.
type Case = (&'static str, u64, Vec<(u64, Vec<u8>)>);

/// The images every round trip covers.
fn cases() -> Vec<Case> {
    vec![
        (
            "dense-random",
            3 * MIB,
            vec![(0, random_bytes(1, 3 * MIB as usize))],
        ),
        (
            "sparse-holes",
            40 * MIB,
            vec![
                (0, random_bytes(2, 4096)),
                (7 * MIB + 123, random_bytes(3, 700_000)),
                (33 * MIB, random_bytes(4, MIB as usize)),
                (40 * MIB - 10, random_bytes(5, 10)),
            ],
        ),
        (
            "odd-size",
            5 * MIB + 12_345,
            vec![(0, random_bytes(6, (5 * MIB + 12_345) as usize))],
        ),
        ("all-zero", 4 * MIB, vec![(0, vec![0u8; 4 * MIB as usize])]),
        ("one-byte", 1, vec![(0, vec![0x5a])]),
        (
            // Zero blocks inside a data extent: read, found zero, not sent.
            "zeros-in-data",
            3 * MIB,
            vec![(0, {
                let mut v = random_bytes(7, 3 * MIB as usize);
                v[BLOCK as usize..2 * BLOCK as usize].fill(0);
                v
            })],
        ),
    ]
}

/// Upload then download `image` and check everything moto would not check.
/// Returns the upload report and the number of ListSnapshotBlocks pages the download read.
async fn round_trip(world: &World, image: &Path) -> (serde_json::Value, usize) {
    let expected = nonzero_blocks(image);
    let report = world.upload(image, &[]).await;
    let snap = report["snapshot_id"].as_str().unwrap().to_string();
    let size = std::fs::metadata(image).unwrap().len();
    assert_eq!(report["size_bytes"], size);
    assert_eq!(report["block_size"], BLOCK);
    assert_eq!(
        report["blocks_written"],
        expected.len() as u64,
        "one PutSnapshotBlock per non-zero block"
    );
    assert_eq!(
        report["checksum"].as_str().unwrap(),
        linear_aggregate(&expected),
        "aggregate checksum"
    );
    // The requests on the wire agree with the report.
    let puts: Vec<_> = world
        .proxy
        .requests()
        .into_iter()
        .filter(|r| r.operation == "PutSnapshotBlock" && r.status == 201)
        .collect();
    assert_eq!(puts.len(), expected.len());
    for p in &puts {
        assert_eq!(p.body_len as u64, BLOCK, "every block is a full block");
        assert_eq!(p.header("x-amz-Data-Length"), Some("524288"));
    }
    let complete = world
        .proxy
        .requests()
        .into_iter()
        .find(|r| r.operation == "CompleteSnapshot")
        .expect("CompleteSnapshot sent");
    assert_eq!(
        complete.header("x-amz-ChangedBlocksCount"),
        Some(expected.len().to_string().as_str())
    );
    assert_eq!(
        complete.header("x-amz-Checksum-Aggregation-Method"),
        Some("LINEAR")
    );
    // The block index persisted next to the snapshot id lists exactly those blocks.
    // Read as its documented text format says (ec2ami's own reader is not used).
    let text = std::fs::read_to_string(Path::new(report["index_path"].as_str().unwrap())).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "ec2ami-block-index 2");
    assert_eq!(lines[1], format!("snapshot {snap}"));
    let listed: Vec<(u64, String, String)> = lines[6..]
        .iter()
        .filter(|l| !l.starts_with("complete "))
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            assert_eq!(f.len(), 3, "index, SHA-256 and BLAKE3: {l}");
            (f[0].parse().unwrap(), f[1].to_string(), f[2].to_string())
        })
        .collect();
    // Each block's BLAKE3, of the block as sent (the last one padded with zeros).
    let data = std::fs::read(image).unwrap();
    let b64 = |d: &[u8]| base64::engine::general_purpose::STANDARD.encode(d);
    let want: Vec<(u64, String, String)> = expected
        .iter()
        .map(|(i, d)| {
            let start = (*i * BLOCK) as usize;
            let mut block = data[start..data.len().min(start + BLOCK as usize)].to_vec();
            block.resize(BLOCK as usize, 0);
            (*i, b64(d), b64(blake3::hash(&block).as_bytes()))
        })
        .collect();
    assert_eq!(listed, want);
    assert!(
        lines.last().unwrap().starts_with("complete "),
        "the index of a completed upload ends with its aggregate"
    );

    let out = world.path(&format!("{snap}.out"));
    let dl = world.download(&snap, &out).await;
    assert_eq!(dl["blocks_read"], expected.len() as u64);
    assert_same_content(image, &out);
    let pages = world.proxy.count("ListSnapshotBlocks");
    world.proxy.clear_requests();
    (report, pages)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trips_through_moto() {
    let world = World::moto().await;
    for (name, size, chunks) in cases() {
        let image = world.path(&format!("{name}.raw"));
        sparse_file(&image, size, &chunks);
        round_trip(&world, &image).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trips_through_the_strict_endpoint() {
    // A small page size makes the download walk several ListSnapshotBlocks pages.
    let world = World::strict(StrictEbsConfig {
        page_size: 4,
        ..StrictEbsConfig::default()
    })
    .await;
    for (name, size, chunks) in cases() {
        let image = world.path(&format!("{name}.raw"));
        sparse_file(&image, size, &chunks);
        let (report, pages) = round_trip(&world, &image).await;
        let blocks = report["blocks_written"].as_u64().unwrap() as usize;
        assert_eq!(
            pages,
            blocks.div_ceil(4).max(1),
            "{name}: pages of 4 blocks"
        );
        let snap = world
            .strict_ebs()
            .snapshot(report["snapshot_id"].as_str().unwrap())
            .unwrap();
        assert_eq!(snap.status, "completed", "{name}");
    }
    assert!(
        world.strict_ebs().rejections().is_empty(),
        "the strict endpoint rejected: {:?}",
        world.strict_ebs().rejections()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qcow2_is_converted_and_round_trips() {
    let world = World::strict(StrictEbsConfig::default()).await;
    let raw = world.path("src.raw");
    sparse_file(
        &raw,
        20 * MIB,
        &[
            (MIB, random_bytes(8, 2 * MIB as usize)),
            (15 * MIB, random_bytes(9, 1000)),
        ],
    );
    let qcow = world.path("src.qcow2");
    let st = std::process::Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&qcow)
        .status()
        .expect("qemu-img is installed (apt-get install qemu-utils)");
    assert!(st.success());
    let report = world.upload(&qcow, &[]).await;
    assert_eq!(report["size_bytes"], 20 * MIB);
    assert_eq!(report["blocks_written"], nonzero_blocks(&raw).len() as u64);
    let out = world.path("back.raw");
    world
        .download(report["snapshot_id"].as_str().unwrap(), &out)
        .await;
    assert_same_content(&raw, &out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holes_are_never_read() {
    // 64 GiB sparse with 1 MiB of data: about 1 MiB must be read, 2 blocks sent.
    let world = World::moto().await;
    let image = world.path("huge-sparse.raw");
    sparse_file(
        &image,
        64 << 30,
        &[(37 << 30, random_bytes(10, MIB as usize))],
    );
    let report = world.upload(&image, &[]).await;
    assert_eq!(report["blocks_written"], 2);
    assert_eq!(report["bytes_read"], MIB, "only the data extent was read");
    assert_eq!(report["volume_size_gib"], 64);
    assert_eq!(world.proxy.count("PutSnapshotBlock"), 2);
    let out = world.path("huge-back.raw");
    let dl = world
        .download(report["snapshot_id"].as_str().unwrap(), &out)
        .await;
    assert_eq!(dl["size_bytes"], 64u64 << 30);
    assert!(allocated(&out) < 8 * MIB, "the download stays sparse");
    assert_same_content(&image, &out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_snapshots_get_every_block() {
    let world = World::strict(StrictEbsConfig {
        discard_data: true,
        ..StrictEbsConfig::default()
    })
    .await;
    let image = world.path("enc.raw");
    sparse_file(&image, 3 * MIB, &[(MIB, random_bytes(11, 1000))]);
    let report = world.upload(&image, &["--encrypted"]).await;
    // 1 GiB volume = 2048 blocks, all written, though only 1 holds data.
    assert_eq!(report["blocks_written"], 2048);
    assert_eq!(report["blocks_skipped"], 0);
    assert_eq!(report["bytes_read"], BLOCK, "holes are still not read");
    let snap = world
        .strict_ebs()
        .snapshot(report["snapshot_id"].as_str().unwrap())
        .unwrap();
    assert!(snap.encrypted);
    assert_eq!(snap.block_checksums.len(), 2048);
    assert_eq!(snap.status, "completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_description_and_ownership_are_sent() {
    let world = World::strict(StrictEbsConfig::default()).await;
    let image = world.path("t.raw");
    write_file(&image, &random_bytes(12, 1000));
    let report = world
        .upload(
            &image,
            &[
                "--description",
                "MyOS 15.0 amd64",
                "--tag",
                "release=15.0",
                "--tag",
                "arch=amd64",
            ],
        )
        .await;
    let snap = world
        .strict_ebs()
        .snapshot(report["snapshot_id"].as_str().unwrap())
        .unwrap();
    assert_eq!(snap.description.as_deref(), Some("MyOS 15.0 amd64"));
    let tags: std::collections::HashMap<_, _> = snap.tags.into_iter().collect();
    assert_eq!(tags.get("release").map(String::as_str), Some("15.0"));
    assert_eq!(tags.get("arch").map(String::as_str), Some("amd64"));
    assert_eq!(
        tags.get("ec2ami:managed-by").map(String::as_str),
        Some("ec2ami")
    );
    assert_eq!(
        tags.get("ec2ami:image-size").map(String::as_str),
        Some("1000")
    );
    let start = world
        .proxy
        .requests()
        .into_iter()
        .find(|r| r.operation == "StartSnapshot")
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(start.body.as_ref().unwrap()).unwrap();
    assert!(body["ClientToken"].as_str().is_some_and(|t| !t.is_empty()));
    assert_eq!(body["VolumeSize"], 1);
}
