//! The per-block SHA-256 index of a snapshot, built from the snapshot itself
//! (ListSnapshotBlocks + GetSnapshotBlock, checksums verified) when none was kept, and
//! kept for next time; against the strict EBS endpoint.

use std::collections::BTreeMap;

use aws_sdk_ebs::primitives::ByteStream;
use aws_sdk_ebs::types::{ChecksumAggregationMethod, ChecksumAlgorithm};
use base64::Engine;
use ec2ami::snapshot::{IndexBuildOptions, IndexError, IndexOrigin, index_of_snapshot};
use ec2ami_testkit::{Fault, FaultRule, StrictEbsConfig};
use sha2::{Digest, Sha256};

use crate::common::*;

fn b64(d: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(d)
}

/// Make a snapshot the way another tool would: StartSnapshot (with `parent`), the
/// given blocks put as they are (zero blocks included), CompleteSnapshot. Returns its id.
pub async fn put_snapshot(
    world: &World,
    volume_gib: i64,
    parent: Option<&str>,
    blocks: &BTreeMap<u64, Vec<u8>>,
) -> String {
    let clients = world.clients().await;
    let out = clients
        .ebs
        .start_snapshot()
        .volume_size(volume_gib)
        .set_parent_snapshot_id(parent.map(str::to_string))
        .send()
        .await
        .unwrap();
    let id = out.snapshot_id().unwrap().to_string();
    let mut agg = Sha256::new();
    for (i, data) in blocks {
        let d = Sha256::digest(data);
        agg.update(d);
        clients
            .ebs
            .put_snapshot_block()
            .snapshot_id(&id)
            .block_index(*i as i32)
            .data_length(data.len() as i32)
            .block_data(ByteStream::from(data.clone()))
            .checksum(b64(&d))
            .checksum_algorithm(ChecksumAlgorithm::ChecksumAlgorithmSha256)
            .send()
            .await
            .unwrap();
    }
    clients
        .ebs
        .complete_snapshot()
        .snapshot_id(&id)
        .changed_blocks_count(blocks.len() as i32)
        .checksum(b64(&agg.finalize()))
        .checksum_algorithm(ChecksumAlgorithm::ChecksumAlgorithmSha256)
        .checksum_aggregation_method(ChecksumAggregationMethod::ChecksumAggregationLinear)
        .send()
        .await
        .unwrap();
    id
}

fn sha(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

#[tokio::test]
async fn index_built_from_a_snapshot_lists_its_blocks_and_is_kept() {
    let world = World::strict(StrictEbsConfig::default()).await;
    let blk = |seed| random_bytes(seed, BLOCK as usize);
    // Block 2 was written as zeros (another tool did): it is listed, so indexed.
    let parent_blocks: BTreeMap<u64, Vec<u8>> = [
        (0, blk(1)),
        (2, vec![0u8; BLOCK as usize]),
        (5, blk(2)),
        (2047, blk(3)),
    ]
    .into();
    let parent = put_snapshot(&world, 1, None, &parent_blocks).await;
    let dir = world.path("indexes");
    let clients = world.clients().await;
    // Throttled block reads are retried, not fatal.
    world.proxy.set_rules(vec![FaultRule::first_n(
        Some("GetSnapshotBlock"),
        Fault::Throttle,
        2,
    )]);
    let opts = IndexBuildOptions {
        workers: 3,
        ..IndexBuildOptions::default()
    };
    let built = index_of_snapshot(&clients, &parent, &dir, &opts)
        .await
        .unwrap();
    world.proxy.set_rules(vec![]);
    assert_eq!(built.origin, IndexOrigin::Built);
    assert_eq!(built.blocks_fetched, 4);
    let want: Vec<(u64, [u8; 32])> = parent_blocks.iter().map(|(i, d)| (*i, sha(d))).collect();
    assert_eq!(built.index.blocks, want);
    assert_eq!(built.index.header.block_size, BLOCK);
    assert_eq!(built.index.header.volume_size_gib, 1);
    assert_eq!(
        built.index.header.image_size,
        1 << 30,
        "no size tag: the volume"
    );
    assert_eq!(
        built.index.aggregate.as_deref(),
        Some(linear_aggregate(&want).as_str())
    );
    let ok_gets = world
        .proxy
        .requests()
        .iter()
        .filter(|r| r.operation == "GetSnapshotBlock" && r.status == 200)
        .count();
    assert_eq!(ok_gets, 4, "each listed block fetched once");
    // Kept in the documented text format, under the snapshot id.
    assert_eq!(built.path, dir.join(format!("{parent}.blocks")));
    let text = std::fs::read_to_string(&built.path).unwrap();
    assert!(text.starts_with("ec2ami-block-index 2\n"), "{text}");
    assert!(text.contains(&format!(
        "\n5 {} {}\n",
        b64(&sha(&parent_blocks[&5])),
        b64(blake3::hash(&parent_blocks[&5]).as_bytes())
    )));

    // Next time the kept index is used: nothing is fetched.
    world.proxy.clear_requests();
    let kept = index_of_snapshot(&clients, &parent, &dir, &opts)
        .await
        .unwrap();
    assert_eq!(kept.origin, IndexOrigin::Kept);
    assert_eq!(kept.index, built.index);
    assert_eq!(world.proxy.count("GetSnapshotBlock"), 0);
    assert_eq!(world.proxy.count("ListSnapshotBlocks"), 0);

    // A child reads its parent's blocks where it has none of its own.
    let child_blocks: BTreeMap<u64, Vec<u8>> = [(5, blk(9)), (7, blk(10))].into();
    let child = put_snapshot(&world, 1, Some(&parent), &child_blocks).await;
    let c = index_of_snapshot(&clients, &child, &dir, &opts)
        .await
        .unwrap();
    let mut want: BTreeMap<u64, [u8; 32]> =
        parent_blocks.iter().map(|(i, d)| (*i, sha(d))).collect();
    want.extend(child_blocks.iter().map(|(i, d)| (*i, sha(d))));
    assert_eq!(c.index.blocks, want.into_iter().collect::<Vec<_>>());
}

#[tokio::test]
async fn index_of_an_uploaded_snapshot_matches_the_kept_one() {
    let world = World::strict(StrictEbsConfig::default()).await;
    let image = world.path("img.raw");
    sparse_file(
        &image,
        9 * MIB + 100,
        &[
            (0, random_bytes(11, 3000)),
            (4 * MIB + 5, random_bytes(12, 700_000)),
            (9 * MIB, random_bytes(13, 100)),
        ],
    );
    let report = world.upload(&image, &[]).await;
    let snap = report["snapshot_id"].as_str().unwrap().to_string();
    let kept_path = std::path::PathBuf::from(report["index_path"].as_str().unwrap());
    let kept = ec2ami::snapshot::BlockIndex::load(&kept_path).unwrap();
    // Lost: rebuilt from the snapshot, the same blocks and the recorded image size.
    std::fs::remove_file(&kept_path).unwrap();
    let dir = kept_path.parent().unwrap();
    let clients = world.clients().await;
    let built = index_of_snapshot(&clients, &snap, dir, &IndexBuildOptions::default())
        .await
        .unwrap();
    assert_eq!(built.origin, IndexOrigin::Built);
    assert_eq!(built.index.blocks, nonzero_blocks(&image));
    assert_eq!(built.index.blocks, kept.blocks);
    assert_eq!(built.index.header, kept.header);
    assert_eq!(built.index.aggregate, kept.aggregate);
    assert!(kept_path.is_file(), "kept again for next time");
}

#[tokio::test]
async fn index_of_an_unknown_snapshot_is_a_clear_error_and_leaves_nothing() {
    let world = World::strict(StrictEbsConfig::default()).await;
    let dir = world.path("indexes");
    let clients = world.clients().await;
    let err = index_of_snapshot(
        &clients,
        "snap-0000000000000dead",
        &dir,
        &IndexBuildOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, IndexError::NotFound(_)), "{err}");
    assert!(err.to_string().contains("snap-0000000000000dead"), "{err}");
    assert!(
        !dir.exists() || std::fs::read_dir(&dir).unwrap().next().is_none(),
        "no index file left"
    );
}
