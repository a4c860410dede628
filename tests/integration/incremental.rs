//! Incremental uploads (`upload --parent`) and resumed uploads (issue 12), against
//! moto and the strict EBS endpoint, through the proxy: what is sent is counted on the
//! wire, and downloads prove the content.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use ec2ami_testkit::StrictEbsConfig;

use crate::common::*;

/// Block index -> SHA-256 of the blocks of `path` with data (computed here).
fn content(path: &Path) -> BTreeMap<u64, [u8; 32]> {
    nonzero_blocks(path).into_iter().collect()
}

/// The blocks whose content differs between two images (absent = zero).
fn changed(a: &Path, b: &Path) -> BTreeSet<u64> {
    let (a, b) = (content(a), content(b));
    a.keys()
        .chain(b.keys())
        .copied()
        .filter(|i| a.get(i) != b.get(i))
        .collect()
}

/// Block indexes of the successful PutSnapshotBlock requests the proxy saw.
fn blocks_put(world: &World) -> Vec<u64> {
    world
        .proxy
        .requests()
        .iter()
        .filter(|r| r.operation == "PutSnapshotBlock" && r.status == 201)
        .map(|r| r.path.rsplit('/').next().unwrap().parse().unwrap())
        .collect()
}

/// v1: 1023 MiB, 200 blocks of data in its first 100 MiB with holes among them.
/// v2: 1 % of v1's blocks changed, some blocks zeroed, data written into holes, and
/// grown by 3 MiB past the GiB (so the child's volume is larger than its parent's).
fn make_versions(world: &World) -> (std::path::PathBuf, std::path::PathBuf) {
    let v1 = world.path("v1.raw");
    let v2 = world.path("v2.raw");
    let mut chunks = vec![(0, random_bytes(11, 100 * MIB as usize))];
    // Holes at blocks 50..54 and 120..124.
    chunks.push((50 * BLOCK, vec![0u8; 4 * BLOCK as usize]));
    chunks.push((120 * BLOCK, vec![0u8; 4 * BLOCK as usize]));
    chunks.push((1000 * MIB, random_bytes(12, MIB as usize)));
    sparse_file(&v1, 1023 * MIB, &chunks);
    let mut chunks2 = chunks.clone();
    // 1 %: two blocks changed.
    chunks2.push((7 * BLOCK + 100, random_bytes(13, 1000)));
    chunks2.push((150 * BLOCK, random_bytes(14, BLOCK as usize)));
    // Zeroed where v1 had data.
    chunks2.push((10 * BLOCK, vec![0u8; BLOCK as usize]));
    chunks2.push((2000 * BLOCK, vec![0u8; BLOCK as usize]));
    // Data in v1's holes.
    chunks2.push((51 * BLOCK, random_bytes(15, BLOCK as usize)));
    chunks2.push((121 * BLOCK + 5, random_bytes(16, 10)));
    // Grown by 3 MiB, with data in the new part.
    chunks2.push((1024 * MIB + 100, random_bytes(17, 2 * MIB as usize)));
    sparse_file(&v2, 1026 * MIB, &chunks2);
    (v1, v2)
}

async fn incremental_round_trip(world: &World) {
    let (v1, v2) = make_versions(world);
    let r1 = world.upload(&v1, &[]).await;
    let parent = r1["snapshot_id"].as_str().unwrap().to_string();
    assert_eq!(r1["parent_snapshot_id"], serde_json::Value::Null);
    world.proxy.clear_requests();

    let want = changed(&v1, &v2);
    assert!(want.len() >= 10, "{want:?}");
    let r2 = world.upload(&v2, &["--parent", &parent]).await;
    let child = r2["snapshot_id"].as_str().unwrap().to_string();
    let sent = blocks_put(world);
    assert_eq!(
        sent.iter().copied().collect::<BTreeSet<_>>(),
        want,
        "exactly the changed blocks are sent"
    );
    assert_eq!(sent.len(), want.len(), "each once");
    assert_eq!(r2["blocks_written"], want.len() as u64);
    assert_eq!(r2["parent_snapshot_id"], parent.as_str());
    let (c1, c2) = (content(&v1), content(&v2));
    let same = c2.iter().filter(|(i, d)| c1.get(i) == Some(d)).count();
    assert_eq!(r2["blocks_unchanged"], same as u64);
    assert_eq!(r2["volume_size_gib"], 2);
    let start = world
        .proxy
        .requests()
        .into_iter()
        .find(|r| r.operation == "StartSnapshot")
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(start.body.as_deref().unwrap()).unwrap();
    assert_eq!(body["ParentSnapshotId"], parent.as_str());
    assert!(body.get("Encrypted").is_none());
    // The lineage is tagged for prune's storage figures.
    let lineage = body["Tags"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["Key"] == "ec2ami:parent-snapshot")
        .map(|t| t["Value"].clone());
    assert_eq!(lineage, Some(serde_json::Value::from(parent.as_str())));
    let out = world.path("v2.out");
    world.download(&child, &out).await;
    assert_same_content(&v2, &out);

    // The child's index lists what it holds (its parent's blocks too): the same image
    // against the child sends nothing.
    world.proxy.clear_requests();
    let r3 = world.upload(&v2, &["--parent", &child]).await;
    assert_eq!(r3["blocks_written"], 0);
    assert!(blocks_put(world).is_empty());
    let out3 = world.path("v3.out");
    world
        .download(r3["snapshot_id"].as_str().unwrap(), &out3)
        .await;
    assert_same_content(&v2, &out3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_round_trip_through_the_strict_endpoint() {
    let world = World::strict(StrictEbsConfig::default()).await;
    incremental_round_trip(&world).await;
    assert!(
        world.strict_ebs().rejections().is_empty(),
        "{:?}",
        world.strict_ebs().rejections()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_round_trip_through_moto() {
    let world = World::moto().await;
    incremental_round_trip(&world).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_parents_are_refused_before_start_snapshot() {
    let world = World::strict(StrictEbsConfig::default()).await;
    let small = world.path("small.raw");
    sparse_file(&small, 3 * MIB, &[(0, random_bytes(21, 3 * MIB as usize))]);
    let big = world.path("big.raw");
    sparse_file(&big, 1100 * MIB, &[(0, random_bytes(22, MIB as usize))]);
    let big_snap = world.upload(&big, &[]).await["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    let enc_snap = world.upload(&small, &["--encrypted"]).await["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    let plain_snap = world.upload(&small, &[]).await["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    // A pending snapshot (started, never completed).
    let ebs = world.clients().await.ebs;
    let pending = ebs
        .start_snapshot()
        .volume_size(1)
        .send()
        .await
        .unwrap()
        .snapshot_id()
        .unwrap()
        .to_string();
    world.proxy.clear_requests();
    let cases: Vec<(Vec<&str>, String)> = vec![
        (
            vec!["--parent", &big_snap],
            format!("parent snapshot {big_snap} is a 2 GiB volume, larger than this image's 1 GiB"),
        ),
        (
            vec!["--parent", &pending],
            format!("parent snapshot {pending} is pending, not completed"),
        ),
        (
            vec!["--parent", "snap-0123456789abcdef0"],
            "parent snapshot snap-0123456789abcdef0: no such snapshot in us-east-1".to_string(),
        ),
        (
            vec!["--parent", &enc_snap],
            format!("parent snapshot {enc_snap} is encrypted and this upload is not"),
        ),
        (
            vec!["--parent", &plain_snap, "--encrypted"],
            format!("parent snapshot {plain_snap} is not encrypted and this upload is"),
        ),
    ];
    for (extra, needle) in cases {
        let mut args = vec!["upload", small.to_str().unwrap()];
        args.extend(extra);
        let run = world.run(&args).await;
        run.assert_failed_with(&needle);
        let errors = run
            .stderr
            .lines()
            .filter(|l| l.starts_with("error:"))
            .count();
        assert_eq!(errors, 1, "one error line:\n{}", run.stderr);
    }
    assert_eq!(world.proxy.count("StartSnapshot"), 0, "nothing started");
    assert_eq!(mutating(&world), Vec::<String>::new());
}

async fn rebuilt_parent_index(world: &World) {
    let (v1, v2) = make_versions(world);
    let parent = world.upload(&v1, &[]).await["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    let kept = world.path(&format!("state/ec2ami/blocks/{parent}.blocks"));
    std::fs::remove_file(&kept).unwrap();
    world.proxy.clear_requests();
    let run = world
        .run(&[
            "--output",
            "json",
            "upload",
            v2.to_str().unwrap(),
            "--parent",
            &parent,
        ])
        .await;
    said_and_rebuilt(world, &run, &parent, &v1);
    let sent: BTreeSet<u64> = blocks_put(world).into_iter().collect();
    assert_eq!(
        sent,
        changed(&v1, &v2),
        "the same blocks as with the kept index"
    );
    assert!(kept.exists(), "the rebuilt index is kept for next time");
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let out = world.path("v2-rebuilt.out");
    world
        .download(report["snapshot_id"].as_str().unwrap(), &out)
        .await;
    assert_same_content(&v2, &out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_parent_index_is_rebuilt_from_the_snapshot_strict() {
    let world = World::strict(StrictEbsConfig::default()).await;
    rebuilt_parent_index(&world).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_parent_index_is_rebuilt_from_the_snapshot_moto() {
    let world = World::moto().await;
    rebuilt_parent_index(&world).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_not_made_by_ec2ami_is_used_when_readable() {
    use aws_sdk_ebs::primitives::ByteStream;
    use aws_sdk_ebs::types::ChecksumAlgorithm;
    use base64::Engine;
    use sha2::{Digest, Sha256};
    let world = World::strict(StrictEbsConfig::default()).await;
    let ebs = world.clients().await.ebs;
    // Another tool's snapshot: blocks 0..4 of random data, no tags.
    let data = random_bytes(51, 4 * BLOCK as usize);
    let id = ebs.start_snapshot().volume_size(1).send().await.unwrap();
    let id = id.snapshot_id().unwrap().to_string();
    for (i, chunk) in data.chunks(BLOCK as usize).enumerate() {
        ebs.put_snapshot_block()
            .snapshot_id(&id)
            .block_index(i as i32)
            .data_length(chunk.len() as i32)
            .block_data(ByteStream::from(chunk.to_vec()))
            .checksum(base64::engine::general_purpose::STANDARD.encode(Sha256::digest(chunk)))
            .checksum_algorithm(ChecksumAlgorithm::ChecksumAlgorithmSha256)
            .send()
            .await
            .unwrap();
    }
    ebs.complete_snapshot()
        .snapshot_id(&id)
        .changed_blocks_count(4)
        .send()
        .await
        .unwrap();
    // The image: the same, block 2 changed.
    let mut image_data = data.clone();
    image_data[2 * BLOCK as usize + 9] ^= 0xff;
    let image = world.path("other.raw");
    write_file(&image, &image_data);
    world.proxy.clear_requests();
    let run = world
        .run(&[
            "--output",
            "json",
            "upload",
            image.to_str().unwrap(),
            "--parent",
            &id,
        ])
        .await;
    run.assert_ok();
    assert!(
        run.stderr.contains("was not made by ec2ami"),
        "{}",
        run.stderr
    );
    assert_eq!(blocks_put(&world), vec![2]);
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let out = world.path("other.out");
    world
        .download(report["snapshot_id"].as_str().unwrap(), &out)
        .await;
    assert_same_content(&image, &out);
}

// ---------------------------------------------------------------------------------------
// Resume

const WORKERS: usize = 4;

/// Start `ec2ami upload IMAGE ARGS` and kill -9 it once `after` PutSnapshotBlock
/// requests have passed the proxy and every worker's next one is held there.
/// Returns how many blocks the killed run had in flight (sent, never answered).
async fn kill_after(
    world: &World,
    image: &Path,
    after: usize,
    total: usize,
    extra: &[&str],
) -> usize {
    let gate = world.proxy.hold(Some("PutSnapshotBlock"), after);
    let workers = WORKERS.to_string();
    let mut args = vec!["upload", image.to_str().unwrap(), "--workers", &workers];
    args.extend_from_slice(extra);
    let mut child = world.ec2ami().args(&args).spawn().unwrap();
    let in_flight = WORKERS.min(total - after);
    assert!(
        gate.arrived(in_flight, Duration::from_secs(120)).await,
        "{in_flight} blocks held after {after}"
    );
    child.start_kill().unwrap(); // SIGKILL
    let status = child.wait().await.unwrap();
    assert!(!status.success());
    let held = gate.held();
    drop(gate);
    held
}

async fn resume_after_kill(pct: usize) {
    let world = World::strict(StrictEbsConfig::default()).await;
    let image = world.path("image.raw");
    let total = 40usize;
    sparse_file(
        &image,
        total as u64 * BLOCK,
        &[(0, random_bytes(31, total * BLOCK as usize))],
    );
    let after = total * pct / 100;
    let held = kill_after(&world, &image, after, total, &["--resume-window", "2h"]).await;
    let start = world
        .proxy
        .requests()
        .into_iter()
        .find(|r| r.operation == "StartSnapshot")
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(start.body.as_deref().unwrap()).unwrap();
    assert_eq!(
        body["Timeout"], 120,
        "--resume-window 2h is StartSnapshot's Timeout"
    );
    let first = blocks_put(&world);
    assert_eq!(
        first.len(),
        after,
        "the run was killed after {after} blocks"
    );
    let pending = world.strict_ebs().snapshot_ids();
    assert_eq!(pending.len(), 1);
    world.proxy.clear_requests();

    let workers = WORKERS.to_string();
    let run = world
        .run(&[
            "--output",
            "json",
            "upload",
            image.to_str().unwrap(),
            "--workers",
            &workers,
        ])
        .await;
    run.assert_ok();
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(
        report["snapshot_id"],
        pending[0].as_str(),
        "the same snapshot"
    );
    assert_eq!(report["resumed"], true);
    assert_eq!(report["blocks_resumed"], after as u64);
    let second = blocks_put(&world);
    assert_eq!(report["blocks_written"], second.len() as u64);
    assert!(
        run.stderr.contains("continuing the pending snapshot"),
        "{}",
        run.stderr
    );
    assert_eq!(world.proxy.count("StartSnapshot"), 0);
    // Sent over both runs: the killed run's acknowledged and in-flight blocks, then the
    // rest.
    let over_both = first.len() + held + second.len();
    assert!(
        over_both <= total + WORKERS,
        "{over_both} blocks sent for a {total}-block image with {WORKERS} workers"
    );
    let acked: BTreeSet<u64> = first.iter().copied().collect();
    assert!(
        second.iter().all(|b| !acked.contains(b)),
        "no acknowledged block resent"
    );
    let out = world.path("out.raw");
    world.download(&pending[0], &out).await;
    assert_same_content(&image, &out);
    assert!(world.strict_ebs().rejections().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_kill_at_20_percent() {
    resume_after_kill(20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_kill_at_50_percent() {
    resume_after_kill(50).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_kill_at_90_percent() {
    resume_after_kill(90).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_modified_image_or_a_vanished_snapshot_starts_over() {
    let world = World::strict(StrictEbsConfig::default()).await;
    let image = world.path("image.raw");
    let total = 20usize;
    sparse_file(
        &image,
        total as u64 * BLOCK,
        &[(0, random_bytes(41, total * BLOCK as usize))],
    );
    let workers = WORKERS.to_string();
    let upload = [
        "--output",
        "json",
        "upload",
        image.to_str().unwrap(),
        "--workers",
        &workers,
    ];

    // Modified, modification time changed.
    kill_after(&world, &image, 10, total, &[]).await;
    let old = world.strict_ebs().snapshot_ids();
    sparse_file(
        &image,
        total as u64 * BLOCK,
        &[(0, random_bytes(42, total * BLOCK as usize))],
    );
    let run = world.run(&upload).await;
    run.assert_ok();
    assert!(
        run.stderr
            .contains("starting over: the image changed since the interrupted upload"),
        "{}",
        run.stderr
    );
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_ne!(report["snapshot_id"], old[0].as_str());
    assert_eq!(report["resumed"], false);
    assert!(
        report["restarted"]
            .as_str()
            .unwrap()
            .contains(&format!("{} was deleted", old[0]))
    );
    assert!(
        world.strict_ebs().snapshot(&old[0]).is_none(),
        "ours, superseded: deleted"
    );
    let out = world.path("a.out");
    world
        .download(report["snapshot_id"].as_str().unwrap(), &out)
        .await;
    assert_same_content(&image, &out);

    // Modified with the modification time put back: the checksums of what was sent
    // tell.
    let image2 = world.path("image2.raw");
    sparse_file(
        &image2,
        total as u64 * BLOCK,
        &[(0, random_bytes(43, total * BLOCK as usize))],
    );
    let upload2 = [
        "--output",
        "json",
        "upload",
        image2.to_str().unwrap(),
        "--workers",
        &workers,
    ];
    kill_after(&world, &image2, 10, total, &[]).await;
    let mtime = std::fs::metadata(&image2).unwrap().modified().unwrap();
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&image2)
            .unwrap();
        f.write_all_at(b"changed", 3).unwrap();
        f.set_modified(mtime).unwrap();
    }
    let run = world.run(&upload2).await;
    run.assert_ok();
    assert!(
        run.stderr.contains("block 0 differs from what was sent"),
        "{}",
        run.stderr
    );
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let out = world.path("b.out");
    world
        .download(report["snapshot_id"].as_str().unwrap(), &out)
        .await;
    assert_same_content(&image2, &out);

    // The pending snapshot deleted meanwhile: a new one, nothing deleted.
    let image3 = world.path("image3.raw");
    sparse_file(
        &image3,
        total as u64 * BLOCK,
        &[(0, random_bytes(44, total * BLOCK as usize))],
    );
    let upload3 = [
        "--output",
        "json",
        "upload",
        image3.to_str().unwrap(),
        "--workers",
        &workers,
    ];
    let before: BTreeSet<String> = world.strict_ebs().snapshot_ids().into_iter().collect();
    kill_after(&world, &image3, 10, total, &[]).await;
    let started: Vec<String> = world
        .strict_ebs()
        .snapshot_ids()
        .into_iter()
        .filter(|s| !before.contains(s))
        .collect();
    assert_eq!(started.len(), 1);
    world
        .clients()
        .await
        .ec2
        .delete_snapshot()
        .snapshot_id(&started[0])
        .send()
        .await
        .unwrap();
    world.proxy.clear_requests();
    let run = world.run(&upload3).await;
    run.assert_ok();
    assert!(
        run.stderr.contains(&format!(
            "the snapshot {} of the interrupted upload is gone",
            started[0]
        )),
        "{}",
        run.stderr
    );
    assert_eq!(world.proxy.count("DeleteSnapshot"), 0, "nothing deleted");
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(report["blocks_written"], total as u64);
    let out = world.path("c.out");
    world
        .download(report["snapshot_id"].as_str().unwrap(), &out)
        .await;
    assert_same_content(&image3, &out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incremental_upload_resumes_too() {
    let world = World::moto().await;
    let (v1, v2) = make_versions(&world);
    let parent = world.upload(&v1, &[]).await["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    let want = changed(&v1, &v2);
    world.proxy.clear_requests();
    let after = want.len() / 2;
    let held = kill_after(&world, &v2, after, want.len(), &["--parent", &parent]).await;
    let first = blocks_put(&world);
    assert_eq!(first.len(), after);
    world.proxy.clear_requests();
    let workers = WORKERS.to_string();
    let run = world
        .run(&[
            "--output",
            "json",
            "upload",
            v2.to_str().unwrap(),
            "--workers",
            &workers,
            "--parent",
            &parent,
        ])
        .await;
    run.assert_ok();
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(report["resumed"], true);
    let second = blocks_put(&world);
    assert!(first.len() + held + second.len() <= want.len() + WORKERS);
    let sent: BTreeSet<u64> = first.iter().chain(&second).copied().collect();
    assert_eq!(sent, want);
    let out = world.path("v2.out");
    world
        .download(report["snapshot_id"].as_str().unwrap(), &out)
        .await;
    assert_same_content(&v2, &out);
}

// ---------------------------------------------------------------------------------------
// publish: parent = "auto", and resume instead of delete-and-reupload

fn series_release(dir: &Path, date: &str, image: &str) -> std::path::PathBuf {
    let text = format!(
        r#"
regions = ["us-east-1"]
parent = "auto"

[defaults]
date = "{date}"
name = "MyOS 15.0-x86_64-{{date}} base"
boot_mode = "uefi-preferred"
ena = true

[[image]]
path = "{image}"
arch = "x86_64"
"#
    );
    let path = dir.join(format!("release-{date}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// The snapshot ids whose block index is kept in the world's default index directory.
fn indexed(world: &World) -> BTreeSet<String> {
    std::fs::read_dir(world.path("state/ec2ami/blocks"))
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_suffix(".blocks")
                .map(str::to_string)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_parent_auto_plans_uploads_and_resumes_against_the_last_build() {
    let world = World::moto().await;
    let (v1, v2) = make_versions(&world);
    let r1 = series_release(
        world.dir.path(),
        "20261124",
        v1.file_name().unwrap().to_str().unwrap(),
    );
    let r2 = series_release(
        world.dir.path(),
        "20261201",
        v2.file_name().unwrap().to_str().unwrap(),
    );
    let run = world
        .run(&["publish", r1.to_str().unwrap(), "--workers", "4"])
        .await;
    run.assert_ok();
    assert!(
        run.stderr
            .contains("found no earlier completed snapshot of its series"),
        "{}",
        run.stderr
    );
    let first: Vec<String> = indexed(&world).into_iter().collect();
    assert_eq!(first.len(), 1);
    let parent = &first[0];
    let want = changed(&v1, &v2);

    // The plan names the parent and counts the blocks.
    world.proxy.clear_requests();
    let snap = planned_upload(&world, &r2).await;
    assert!(
        snap.contains(&format!(
            "against parent {parent} (MyOS 15.0-x86_64-20261124 base): {} blocks would be sent",
            want.len()
        )),
        "{snap}"
    );

    // Killed during its upload, then rerun: the pending snapshot is continued.
    world.proxy.clear_requests();
    let after = want.len() / 2;
    let gate = world.proxy.hold(Some("PutSnapshotBlock"), after);
    let mut child = world
        .ec2ami()
        .args(["publish", r2.to_str().unwrap(), "--workers", "4"])
        .spawn()
        .unwrap();
    assert!(gate.arrived(WORKERS, Duration::from_secs(120)).await);
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let held = gate.held();
    drop(gate);
    let killed_run = blocks_put(&world);
    assert_eq!(killed_run.len(), after);
    let pending: Vec<String> = world
        .our_snapshots()
        .await
        .into_iter()
        .filter(|s| s != parent)
        .collect();
    assert_eq!(pending.len(), 1);
    world.proxy.clear_requests();
    let run = world
        .run(&["publish", r2.to_str().unwrap(), "--workers", "4"])
        .await;
    run.assert_ok();
    assert_eq!(
        world.proxy.count("DeleteSnapshot"),
        0,
        "continued, not deleted"
    );
    assert_eq!(world.proxy.count("StartSnapshot"), 0);
    assert!(
        run.stderr.contains("continuing the pending snapshot"),
        "{}",
        run.stderr
    );
    let rerun = blocks_put(&world);
    assert!(killed_run.len() + held + rerun.len() <= want.len() + WORKERS);
    let sent: BTreeSet<u64> = killed_run.iter().chain(&rerun).copied().collect();
    assert_eq!(sent, want, "only the changed blocks, over both runs");
    assert!(indexed(&world).contains(&pending[0]));
    let out = world.path("published-v2.raw");
    world.download(&pending[0], &out).await;
    assert_same_content(&v2, &out);
}

/// The parent's block index is not kept here (a fresh CI runner): the plan still names
/// the newest build of the series as the parent, says its index will be built and reads
/// no block; the run builds the index from the snapshot, keeps it, and sends only the
/// changed blocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_parent_auto_without_a_kept_index_builds_it_from_the_snapshot() {
    let world = World::moto().await;
    let (v1, v2) = make_versions(&world);
    let image = |v: &Path| v.file_name().unwrap().to_str().unwrap().to_string();
    let r1 = series_release(world.dir.path(), "20261124", &image(&v1));
    let r2 = series_release(world.dir.path(), "20261201", &image(&v2));
    world
        .run(&["publish", r1.to_str().unwrap(), "--workers", "4"])
        .await
        .assert_ok();
    let first: Vec<String> = indexed(&world).into_iter().collect();
    assert_eq!(first.len(), 1);
    let parent = &first[0];
    let kept = world.path(&format!("state/ec2ami/blocks/{parent}.blocks"));
    std::fs::remove_file(&kept).unwrap();

    world.proxy.clear_requests();
    let snap = planned_upload(&world, &r2).await;
    for op in [
        "ListSnapshotBlocks",
        "GetSnapshotBlock",
        "ListChangedBlocks",
    ] {
        assert_eq!(world.proxy.count(op), 0, "the plan reads no block: {op}");
    }
    assert!(!kept.exists(), "the plan builds no index");
    assert!(
        snap.contains(&format!(
            "against parent {parent} (MyOS 15.0-x86_64-20261124 base): no block index of it \
             is kept in"
        )) && snap.contains("blocks to send unknown until then"),
        "{snap}"
    );

    world.proxy.clear_requests();
    let run = world
        .run(&["publish", r2.to_str().unwrap(), "--workers", "4"])
        .await;
    said_and_rebuilt(&world, &run, parent, &v1);
    let sent: BTreeSet<u64> = blocks_put(&world).into_iter().collect();
    assert_eq!(sent, changed(&v1, &v2), "only the changed blocks");
    assert!(kept.exists(), "the built index is kept for next time");
    let child: Vec<String> = world
        .our_snapshots()
        .await
        .into_iter()
        .filter(|s| s != parent)
        .collect();
    assert_eq!(child.len(), 1);
    let out = world.path("published-v2.raw");
    world.download(&child[0], &out).await;
    assert_same_content(&v2, &out);
}

/// `publish RELEASE --plan --output json`, which must succeed and change nothing: the
/// detail of its snapshot `create` action.
async fn planned_upload(world: &World, release: &Path) -> String {
    let run = world
        .run(&[
            "--output",
            "json",
            "publish",
            release.to_str().unwrap(),
            "--plan",
        ])
        .await;
    run.assert_ok();
    assert!(mutating(world).is_empty());
    let plan: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    plan["actions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["step"] == "snapshot" && a["verb"] == "create")
        .unwrap()["detail"]
        .as_str()
        .unwrap()
        .to_string()
}

/// `run` succeeded saying that no block index of `parent` was kept, and built it from
/// the snapshot: one GetSnapshotBlock per block of `v1`, the parent's image, that holds
/// data.
fn said_and_rebuilt(world: &World, run: &Run, parent: &str, v1: &Path) {
    run.assert_ok();
    assert!(
        run.stderr.contains(&format!(
            "no block index of parent snapshot {parent} is kept"
        )),
        "{}",
        run.stderr
    );
    assert_eq!(world.proxy.count("GetSnapshotBlock"), content(v1).len());
}
