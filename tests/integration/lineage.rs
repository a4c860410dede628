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

/// ListSnapshotBlocks of `id`: block index -> token.
async fn tokens(ebs: &aws_sdk_ebs::Client, id: &str) -> std::collections::BTreeMap<i32, String> {
    let listed = ebs
        .list_snapshot_blocks()
        .snapshot_id(id)
        .send()
        .await
        .unwrap();
    listed
        .blocks()
        .iter()
        .map(|b| {
            (
                b.block_index().unwrap(),
                b.block_token().unwrap().to_string(),
            )
        })
        .collect()
}

/// ListChangedBlocks from `first` (or none) to `second`: (index, first token, second
/// token), every page.
async fn changed(
    ebs: &aws_sdk_ebs::Client,
    first: Option<&str>,
    second: &str,
) -> Result<Vec<(i32, Option<String>, Option<String>)>, String> {
    let mut out = Vec::new();
    let mut token = None;
    loop {
        let page = ebs
            .list_changed_blocks()
            .set_first_snapshot_id(first.map(str::to_string))
            .second_snapshot_id(second)
            .max_results(100)
            .set_next_token(token)
            .send()
            .await
            .map_err(|e| {
                let code = aws_sdk_ebs::error::ProvideErrorMetadata::code(&e);
                code.unwrap_or("no code").to_string()
            })?;
        for b in page.changed_blocks() {
            out.push((
                b.block_index().unwrap(),
                b.first_block_token().map(str::to_string),
                b.second_block_token().map(str::to_string),
            ));
        }
        token = page.next_token().map(str::to_string);
        if token.is_none() {
            return Ok(out);
        }
    }
}

/// Three generations g0 -> g1 -> g2 and an unrelated snapshot: ListChangedBlocks follows
/// the lineage as EBS does.
async fn changed_blocks_follow_lineage(world: &World) -> (String, String, String) {
    let ebs = world.clients().await.ebs;
    let start = |parent: Option<String>, gib: i64| {
        let ebs = ebs.clone();
        async move {
            ebs.start_snapshot()
                .volume_size(gib)
                .set_parent_snapshot_id(parent)
                .send()
                .await
                .unwrap()
                .snapshot_id()
                .unwrap()
                .to_string()
        }
    };
    let g0 = start(None, 1).await;
    put(&ebs, &g0, 0, &block(1)).await;
    put(&ebs, &g0, 1, &block(2)).await;
    put(&ebs, &g0, 2, &block(3)).await;
    complete(&ebs, &g0, 3).await;
    let g1 = start(Some(g0.clone()), 1).await;
    // Block 1 replaced, block 3 new (absent from g0).
    put(&ebs, &g1, 1, &block(9)).await;
    put(&ebs, &g1, 3, &block(4)).await;
    complete(&ebs, &g1, 2).await;
    let g2 = start(Some(g1.clone()), 2).await;
    // Block 2 rewritten with the data it had: a new block all the same (EBS compares
    // blocks, not their data); block 2500 past g0's and g1's volume. Over 100 blocks
    // (4..=104) so that a listing of 100 takes two pages.
    put(&ebs, &g2, 2, &block(3)).await;
    put(&ebs, &g2, 2500, &block(7)).await;
    for i in 4..=104 {
        put(&ebs, &g2, i, &block(i as u8)).await;
    }
    complete(&ebs, &g2, 103).await;
    let other = start(None, 2).await;
    put(&ebs, &other, 0, &block(1)).await;
    complete(&ebs, &other, 1).await;

    let (t0, t1, t2) = (
        tokens(&ebs, &g0).await,
        tokens(&ebs, &g1).await,
        tokens(&ebs, &g2).await,
    );
    let side = |t: &std::collections::BTreeMap<i32, String>, i: i32| t.get(&i).cloned();
    let expect = |t: &std::collections::BTreeMap<i32, String>, idx: &[i32]| {
        idx.iter()
            .map(|&i| (i, side(t, i), side(&t2, i)))
            .collect::<Vec<_>>()
    };
    let mut two_up: Vec<i32> = vec![1, 2, 3];
    two_up.extend(4..=104);
    two_up.push(2500);
    // Two generations up: what g1 and g2 wrote, g0's tokens first, g2's second; block
    // 0 (shared by all three) is not listed.
    let got = changed(&ebs, Some(&g0), &g2).await.unwrap();
    assert_eq!(got, expect(&t0, &two_up), "g0 -> g2");
    assert_eq!(got[2].1, None, "block 3 is absent from g0");
    assert!(got[0].1 != got[0].2, "block 1 has a token on each side");
    // One generation up: only what g2 wrote.
    let mut one_up: Vec<i32> = vec![2];
    one_up.extend(4..=104);
    one_up.push(2500);
    assert_eq!(
        changed(&ebs, Some(&g1), &g2).await.unwrap(),
        expect(&t1, &one_up),
        "g1 -> g2"
    );
    assert_eq!(
        changed(&ebs, Some(&g0), &g1).await.unwrap(),
        vec![(1, side(&t0, 1), side(&t1, 1)), (3, None, side(&t1, 3)),],
        "g0 -> g1"
    );
    // No first snapshot: every block of the second.
    assert_eq!(
        changed(&ebs, None, &g1).await.unwrap(),
        t1.iter()
            .map(|(i, t)| (*i, None, Some(t.clone())))
            .collect::<Vec<_>>()
    );
    // Not of one lineage, or the wrong way round: refused.
    assert_eq!(
        changed(&ebs, Some(&other), &g2).await.unwrap_err(),
        "ValidationException"
    );
    assert_eq!(
        changed(&ebs, Some(&g2), &g0).await.unwrap_err(),
        "ValidationException"
    );
    (g0, g1, g2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_list_changed_blocks_follows_lineage() {
    let world = World::moto().await;
    let (g0, g1, g2) = changed_blocks_follow_lineage(&world).await;
    // The middle generation deleted: the lineage stays, g0 -> g2 still answers.
    let c = world.clients().await;
    let before = changed(&c.ebs, Some(&g0), &g2).await.unwrap();
    c.ec2
        .delete_snapshot()
        .snapshot_id(&g1)
        .send()
        .await
        .unwrap();
    assert_eq!(changed(&c.ebs, Some(&g0), &g2).await.unwrap(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_list_changed_blocks_follows_lineage() {
    let world = World::strict(StrictEbsConfig::default()).await;
    changed_blocks_follow_lineage(&world).await;
}

/// Register a managed image `name` of `snap`, backdated `days` (the harness's tag).
async fn register_backdated(c: &ec2ami::aws::Clients, name: &str, snap: &str, days: i64) -> String {
    use aws_sdk_ec2::types::{
        BlockDeviceMapping, EbsBlockDevice, ResourceType, Tag, TagSpecification,
    };
    let created = backdate(days);
    let tags = TagSpecification::builder()
        .resource_type(ResourceType::Image)
        .tags(
            Tag::builder()
                .key("ec2ami:managed-by")
                .value("ec2ami")
                .build(),
        )
        .tags(
            Tag::builder()
                .key("moto-ext:created-at")
                .value(&created)
                .build(),
        )
        .build();
    c.ec2
        .register_image()
        .name(name)
        .architecture(aws_sdk_ec2::types::ArchitectureValues::X8664)
        .root_device_name("/dev/sda1")
        .virtualization_type("hvm")
        .block_device_mappings(
            BlockDeviceMapping::builder()
                .device_name("/dev/sda1")
                .ebs(EbsBlockDevice::builder().snapshot_id(snap).build())
                .build(),
        )
        .tag_specifications(tags)
        .send()
        .await
        .unwrap()
        .image_id()
        .unwrap()
        .to_string()
}

/// RFC 3339 time `days` ago.
fn backdate(days: i64) -> String {
    use aws_smithy_types::DateTime;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    DateTime::from_secs(now - days * 86_400)
        .fmt(aws_smithy_types::date_time::Format::DateTime)
        .unwrap()
}

async fn backdate_snapshot(c: &ec2ami::aws::Clients, snap: &str, days: i64) {
    c.ec2
        .create_tags()
        .resources(snap)
        .tags(
            aws_sdk_ec2::types::Tag::builder()
                .key("moto-ext:created-at")
                .value(backdate(days))
                .build(),
        )
        .send()
        .await
        .unwrap();
}

/// Blocks with data in `path`: index -> SHA-256 (absent = zero).
fn blocks_of(path: &std::path::Path) -> std::collections::BTreeMap<u64, [u8; 32]> {
    nonzero_blocks(path).into_iter().collect()
}

/// Prune of a lineage, with uploads made by ec2ami (`--parent`): g1 (an image 30 days
/// old), g2 = a child of g1 (an image 10 days old, kept), g3 = another child of g1
/// that no image uses (an orphan of ours). `--keep 1` deletes g1's image and g1, and the
/// orphan g3. The plan counts g3 at the blocks it holds itself (ListChangedBlocks, not
/// its volume) and g1 at the blocks g2 replaced, saying that g2 stays readable; after
/// the prune g2 downloads byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_of_a_lineage_counts_shared_blocks_once_and_the_child_stays_readable() {
    let world = World::moto().await;
    let c = world.clients().await;
    let (v1, v2, v3) = (
        world.path("v1.raw"),
        world.path("v2.raw"),
        world.path("v3.raw"),
    );
    // v1: 60 MiB of data (120 blocks) with a hole at blocks 40..44, in 1023 MiB.
    let base = vec![
        (0, random_bytes(21, 60 * MIB as usize)),
        (40 * BLOCK, vec![0u8; 4 * BLOCK as usize]),
    ];
    sparse_file(&v1, 1023 * MIB, &base);
    // v2: 20 blocks replaced, 2 zeroed, one hole filled, one new block far out.
    let mut c2 = base.clone();
    c2.push((0, random_bytes(22, 20 * BLOCK as usize)));
    c2.push((30 * BLOCK, vec![0u8; 2 * BLOCK as usize]));
    c2.push((41 * BLOCK + 9, random_bytes(23, 100)));
    c2.push((900 * MIB, random_bytes(24, 1000)));
    sparse_file(&v2, 1023 * MIB, &c2);
    // v3: 5 blocks replaced, two holes filled, two blocks far out, grown by 3 MiB with
    // data in the new part: most of what it holds itself is where g1 has nothing.
    let mut c3 = base.clone();
    c3.push((50 * BLOCK, random_bytes(25, 5 * BLOCK as usize)));
    c3.push((42 * BLOCK, random_bytes(26, 2 * BLOCK as usize)));
    c3.push((800 * MIB, random_bytes(27, 2 * BLOCK as usize)));
    c3.push((1024 * MIB + 7, random_bytes(28, 10)));
    sparse_file(&v3, 1026 * MIB, &c3);

    let g1 = world.upload(&v1, &[]).await["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    let g2 = world.upload(&v2, &["--parent", &g1]).await["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    let r3 = world.upload(&v3, &["--parent", &g1]).await;
    let g3 = r3["snapshot_id"].as_str().unwrap().to_string();
    for (snap, days) in [(&g1, 30), (&g2, 10), (&g3, 10)] {
        backdate_snapshot(&c, snap, days).await;
    }
    let i1 = register_backdated(&c, "MyOS 1-20200101", &g1, 30).await;
    let i2 = register_backdated(&c, "MyOS 1-20200120", &g2, 10).await;

    // What EBS bills: g3 holds the blocks it wrote; deleting g1 frees only those of its
    // blocks that g2 (which stays) does not share.
    let (b1, b2, b3) = (blocks_of(&v1), blocks_of(&v2), blocks_of(&v3));
    let own3 = b1
        .keys()
        .chain(b3.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|i| b1.get(i) != b3.get(i))
        .count();
    assert_eq!(r3["blocks_written"], own3 as u64);
    let replaced_by_2 = b1.iter().filter(|(i, d)| b2.get(i) != Some(d)).count();
    assert_eq!(
        (own3, replaced_by_2),
        (10, 22),
        "the images are as described"
    );
    let gib = |blocks: usize| {
        ((blocks as u64 * BLOCK) as f64 / (1u64 << 30) as f64 * 100.0).round() / 100.0
    };

    let args = [
        "--output",
        "json",
        "prune",
        "--regions",
        "us-east-1",
        "--keep",
        "1",
        "--min-age",
        "3d",
    ];
    let run = world.run(&args).await;
    run.assert_ok();
    let plan: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let region = &plan["regions"][0];
    let images: Vec<&serde_json::Value> = region["series"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["images"].as_array().unwrap())
        .collect();
    let action = |id: &str| {
        images
            .iter()
            .find(|i| i["image_id"] == id)
            .map(|i| i["action"].as_str().unwrap().to_string())
    };
    assert_eq!(action(&i1).as_deref(), Some("delete"), "{plan:#}");
    assert_eq!(action(&i2).as_deref(), Some("keep"), "{plan:#}");
    let parent = images
        .iter()
        .find(|i| i["image_id"] == i1.as_str())
        .unwrap()["snapshots"][0]
        .clone();
    assert_eq!(parent["snapshot_id"], g1.as_str());
    assert_eq!(parent["action"], "delete");
    assert_eq!(parent["children_kept"], serde_json::json!([g2]));
    assert_eq!(parent["upper_bound"], false, "{parent:#}");
    assert_eq!(parent["gib"], gib(replaced_by_2), "{parent:#}");
    let reason = parent["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!("parent of {g2}, which stays readable"))
            && reason.contains(&format!("counts the {replaced_by_2} blocks it replaced")),
        "{reason}"
    );
    let orphan = region["orphans"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["snapshot_id"] == g3.as_str())
        .unwrap_or_else(|| panic!("{g3} is not an orphan in {plan:#}"))
        .clone();
    assert_eq!(orphan["action"], "delete");
    assert_eq!(orphan["parent"], g1.as_str());
    assert_eq!(orphan["upper_bound"], false, "{orphan:#}");
    assert_eq!(orphan["gib"], gib(own3), "{orphan:#}");
    let reason = orphan["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!(
            "child of {g1}: counts the {own3} blocks it holds itself"
        )),
        "{reason}"
    );
    assert_eq!(region["snapshots_to_delete"], 2);
    assert_eq!(plan["gib_freed_upper_bound"], false, "{plan:#}");
    assert!(
        plan["lineage"]
            .as_str()
            .is_some_and(|n| n.contains("does not make its children unreadable")),
        "{plan:#}"
    );
    // The text plan says it too.
    let text = world.run(&args[2..]).await;
    text.assert_ok();
    assert!(
        text.stdout
            .contains("EBS keeps every block a child still uses"),
        "{}",
        text.stdout
    );
    assert!(
        text.stdout
            .contains(&format!("parent of {g2}, which stays readable")),
        "{}",
        text.stdout
    );

    let mut yes = args.to_vec();
    yes.push("--yes");
    world.run(&yes).await.assert_ok();
    let left: std::collections::BTreeSet<String> = c
        .ec2
        .describe_snapshots()
        .owner_ids("self")
        .send()
        .await
        .unwrap()
        .snapshots()
        .iter()
        .map(|s| s.snapshot_id().unwrap().to_string())
        .collect();
    assert!(!left.contains(&g1) && !left.contains(&g3), "{left:?}");
    assert!(left.contains(&g2), "{left:?}");
    // The child of the deleted parent reads as it was uploaded.
    let out = world.path("v2.out");
    world.download(&g2, &out).await;
    assert_same_content(&v2, &out);
}
