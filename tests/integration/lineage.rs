//! The test world's snapshot lineage (issue 12): a child snapshot started with
//! ParentSnapshotId reads its parent's blocks wherever it has none of its own, in moto
//! (through the extension) and in the strict EBS endpoint, checked through the SDK.

use aws_sdk_ebs::primitives::ByteStream;
use aws_sdk_ebs::types::ChecksumAlgorithm;
use base64::Engine;
use sha2::{Digest, Sha256};

use ec2ami_testkit::StrictEbsConfig;

use crate::common::*;

fn block(fill: u8) -> Vec<u8> {
    vec![fill; BLOCK as usize]
}

fn sha(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(data))
}

async fn put(ebs: &aws_sdk_ebs::Client, id: &str, index: i32, data: &[u8]) {
    ebs.put_snapshot_block()
        .snapshot_id(id)
        .block_index(index)
        .data_length(data.len() as i32)
        .block_data(ByteStream::from(data.to_vec()))
        .checksum(sha(data))
        .checksum_algorithm(ChecksumAlgorithm::ChecksumAlgorithmSha256)
        .send()
        .await
        .unwrap();
}

async fn complete(ebs: &aws_sdk_ebs::Client, id: &str, count: i32) {
    ebs.complete_snapshot()
        .snapshot_id(id)
        .changed_blocks_count(count)
        .send()
        .await
        .unwrap();
}

/// Every listed block of `id` with its data.
async fn read_all(ebs: &aws_sdk_ebs::Client, id: &str) -> Vec<(i32, Vec<u8>)> {
    let listed = ebs
        .list_snapshot_blocks()
        .snapshot_id(id)
        .send()
        .await
        .unwrap();
    let mut out = Vec::new();
    for b in listed.blocks() {
        let got = ebs
            .get_snapshot_block()
            .snapshot_id(id)
            .block_index(b.block_index().unwrap())
            .block_token(b.block_token().unwrap())
            .send()
            .await
            .unwrap();
        let data = got
            .block_data
            .collect()
            .await
            .unwrap()
            .into_bytes()
            .to_vec();
        out.push((b.block_index().unwrap(), data));
    }
    out
}

async fn child_reads_parent_blocks(world: &World) {
    let ebs = world.clients().await.ebs;
    let parent = ebs.start_snapshot().volume_size(1).send().await.unwrap();
    let parent = parent.snapshot_id().unwrap().to_string();
    put(&ebs, &parent, 0, &block(1)).await;
    put(&ebs, &parent, 1, &block(2)).await;
    put(&ebs, &parent, 5, &block(3)).await;
    // A child of a pending parent is refused.
    let pending = ebs
        .start_snapshot()
        .volume_size(1)
        .parent_snapshot_id(&parent)
        .send()
        .await;
    assert!(pending.is_err(), "a child of a pending parent");
    complete(&ebs, &parent, 3).await;
    // Smaller than the parent: refused; unknown parent: not found.
    let e = ebs
        .start_snapshot()
        .volume_size(1)
        .parent_snapshot_id("snap-0000000000000000f")
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        aws_sdk_ebs::error::ProvideErrorMetadata::code(&e),
        Some("ResourceNotFoundException")
    );

    let child = ebs
        .start_snapshot()
        .volume_size(2)
        .parent_snapshot_id(&parent)
        .send()
        .await
        .unwrap();
    assert_eq!(child.parent_snapshot_id(), Some(parent.as_str()));
    let child = child.snapshot_id().unwrap().to_string();
    // Block 1 replaced, block 5 zeroed (written as zeros), block 2500 past the parent.
    put(&ebs, &child, 1, &block(9)).await;
    put(&ebs, &child, 5, &block(0)).await;
    put(&ebs, &child, 2500, &block(7)).await;
    complete(&ebs, &child, 3).await;

    let got = read_all(&ebs, &child).await;
    let want = vec![
        (0, block(1)),
        (1, block(9)),
        (5, block(0)),
        (2500, block(7)),
    ];
    assert_eq!(
        got.iter()
            .map(|(i, d)| (*i, d[0], d.len()))
            .collect::<Vec<_>>(),
        want.iter()
            .map(|(i, d)| (*i, d[0], d.len()))
            .collect::<Vec<_>>()
    );
    assert!(
        got == want,
        "the child reads its own blocks over its parent's"
    );
    // The parent is untouched.
    let p = read_all(&ebs, &parent).await;
    assert!(p == vec![(0, block(1)), (1, block(2)), (5, block(3))]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_child_snapshots_read_their_parents_blocks() {
    let world = World::moto().await;
    child_reads_parent_blocks(&world).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_child_snapshots_read_their_parents_blocks() {
    let world = World::strict(StrictEbsConfig::default()).await;
    child_reads_parent_blocks(&world).await;
}
