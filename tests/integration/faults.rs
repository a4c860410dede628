//! Faults on the wire: throttling, 5xx, resets, access denied, interruption, damaged
//! blocks. Round trips must still be exact; failures must be fast, clear and clean.

use std::time::Duration;

use ec2ami_testkit::{Fault, FaultRule, StrictEbsConfig};

use crate::common::*;

fn faulted(world: &World, label: &str) -> usize {
    world
        .proxy
        .requests()
        .iter()
        .filter(|r| r.fault.as_deref() == Some(label))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_percent_faults_still_round_trip() {
    let world = World::moto().await;
    let image = world.path("faulty.raw");
    sparse_file(
        &image,
        24 * MIB,
        &[
            (0, random_bytes(20, 10 * MIB as usize)),
            (16 * MIB, random_bytes(21, 4 * MIB as usize)),
        ],
    );
    let expected = nonzero_blocks(&image);
    for fault in [
        Fault::Throttle,
        Fault::Status(500),
        Fault::Status(503),
        Fault::Reset,
    ] {
        world.proxy.clear_requests();
        world
            .proxy
            .set_rules(vec![FaultRule::with_rate(None, fault.clone(), 0.10)]);
        let report = world.upload(&image, &["--workers", "8"]).await;
        assert_eq!(report["blocks_written"], expected.len() as u64);
        assert_eq!(
            report["checksum"].as_str().unwrap(),
            linear_aggregate(&expected)
        );
        let out = world.path("faulty.out");
        let _ = std::fs::remove_file(&out);
        world
            .download(report["snapshot_id"].as_str().unwrap(), &out)
            .await;
        assert_same_content(&image, &out);
        let hits = faulted(&world, &fault.label());
        assert!(
            hits > 0,
            "{fault:?} was never injected: the test proved nothing"
        );
        eprintln!("{fault:?}: {hits} faults injected, round trip exact");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_start_snapshot_answer_does_not_make_two_snapshots() {
    // The strict endpoint honours ClientToken like AWS: the retry of a StartSnapshot
    // whose answer was lost gets the same snapshot back.
    let world = World::strict(StrictEbsConfig::default()).await;
    world.proxy.set_rules(vec![FaultRule::first_n(
        Some("StartSnapshot"),
        Fault::DropResponse,
        1,
    )]);
    let image = world.path("s.raw");
    write_file(&image, &random_bytes(22, 2 * MIB as usize));
    let report = world.upload(&image, &[]).await;
    assert_eq!(world.proxy.count("StartSnapshot"), 2, "retried once");
    assert_eq!(
        world.strict_ebs().snapshot_ids(),
        vec![report["snapshot_id"].as_str().unwrap().to_string()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_denied_fails_fast_with_the_aws_message() {
    let world = World::moto().await;
    let image = world.path("d.raw");
    write_file(&image, &random_bytes(23, 4 * MIB as usize));

    world.proxy.set_rules(vec![FaultRule::with_rate(
        Some("StartSnapshot"),
        Fault::AccessDenied,
        1.0,
    )]);
    let run = world.run(&["upload", image.to_str().unwrap()]).await;
    run.assert_failed_with("AccessDeniedException");
    assert_eq!(world.proxy.count("StartSnapshot"), 1, "never retried");
    assert_eq!(world.proxy.count("PutSnapshotBlock"), 0);

    // Denied mid-upload: stops after the blocks in flight and deletes the snapshot.
    world.proxy.clear_requests();
    world.proxy.set_rules(vec![FaultRule::with_rate(
        Some("PutSnapshotBlock"),
        Fault::AccessDenied,
        1.0,
    )]);
    let run = world
        .run(&["upload", image.to_str().unwrap(), "--workers", "2"])
        .await;
    run.assert_failed_with("AccessDeniedException");
    assert!(run.stderr.contains("was deleted"), "{}", run.stderr);
    assert!(
        world.proxy.count("PutSnapshotBlock") <= 2,
        "no retries of a denied block: {}",
        world.proxy.count("PutSnapshotBlock")
    );
    assert_eq!(world.proxy.count("CompleteSnapshot"), 0);
    assert_eq!(world.proxy.count("DeleteSnapshot"), 1);
    world.proxy.set_rules(vec![]);
    assert!(
        world.our_snapshots().await.is_empty(),
        "nothing left behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_on_failure_keeps_and_names_the_snapshot() {
    let world = World::moto().await;
    let image = world.path("k.raw");
    write_file(&image, &random_bytes(24, MIB as usize));
    world.proxy.set_rules(vec![FaultRule::with_rate(
        Some("CompleteSnapshot"),
        Fault::AccessDenied,
        1.0,
    )]);
    let run = world
        .run(&["upload", image.to_str().unwrap(), "--keep-on-failure"])
        .await;
    run.assert_failed_with("was kept");
    world.proxy.set_rules(vec![]);
    let left = world.our_snapshots().await;
    assert_eq!(left.len(), 1);
    assert!(run.stderr.contains(&left[0]), "{}", run.stderr);
    assert_eq!(world.proxy.count("DeleteSnapshot"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_deletes_the_pending_snapshot() {
    let world = World::moto().await;
    let image = world.path("slow.raw");
    write_file(&image, &random_bytes(25, 16 * MIB as usize));
    // Two blocks pass, the next are held: the signal lands mid-upload, by a hook, not
    // by timing.
    let gate = world.proxy.hold(Some("PutSnapshotBlock"), 2);
    let child = world
        .ec2ami()
        .args(["upload", image.to_str().unwrap(), "--workers", "2"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        gate.arrived(1, Duration::from_secs(60)).await,
        "upload never started"
    );
    let pid = child.id().unwrap() as i32;
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    gate.open();
    let run = Run::from(
        tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .expect("exits promptly after SIGINT")
            .unwrap(),
    );
    assert_eq!(run.code, Some(130), "{}", run.stderr);
    assert!(run.stderr.contains("interrupted"), "{}", run.stderr);
    assert!(run.stderr.contains("was deleted"), "{}", run.stderr);
    assert_eq!(world.proxy.count("CompleteSnapshot"), 0);
    assert_eq!(world.proxy.count("DeleteSnapshot"), 1);
    world.proxy.set_rules(vec![]);
    assert!(
        world.our_snapshots().await.is_empty(),
        "nothing left behind"
    );
    let blocks_dir = world.path("state/ec2ami/blocks");
    let leftovers: Vec<_> = std::fs::read_dir(&blocks_dir)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "partial index left: {leftovers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_block_is_refused_on_download() {
    // moto keeps whatever checksum it is given: store a block whose checksum is wrong,
    // and the download must notice and leave no output behind.
    use aws_sdk_ebs::primitives::ByteStream;
    use aws_sdk_ebs::types::ChecksumAlgorithm;
    let world = World::moto().await;
    let clients = world.clients().await;
    let snap = clients
        .ebs
        .start_snapshot()
        .volume_size(1)
        .send()
        .await
        .unwrap()
        .snapshot_id()
        .unwrap()
        .to_string();
    let data = random_bytes(26, BLOCK as usize);
    let wrong = {
        use base64::Engine;
        use sha2::Digest;
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(b"other"))
    };
    clients
        .ebs
        .put_snapshot_block()
        .snapshot_id(&snap)
        .block_index(3)
        .data_length(BLOCK as i32)
        .block_data(ByteStream::from(data))
        .checksum(wrong)
        .checksum_algorithm(ChecksumAlgorithm::ChecksumAlgorithmSha256)
        .send()
        .await
        .unwrap();
    clients
        .ebs
        .complete_snapshot()
        .snapshot_id(&snap)
        .changed_blocks_count(1)
        .send()
        .await
        .unwrap();
    let out = world.path("damaged.raw");
    let run = world
        .run(&[
            "--operation-timeout",
            "5s",
            "download",
            &snap,
            out.to_str().unwrap(),
        ])
        .await;
    run.assert_failed_with("checksum mismatch");
    assert!(!out.exists());
    let stray: Vec<_> = std::fs::read_dir(world.dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().contains("ec2ami-partial"))
        .collect();
    assert!(stray.is_empty(), "temporary file left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_not_found_right_after_start_is_retried() {
    // AWS may answer ResourceNotFoundException to the first blocks of a snapshot it has
    // just started; that is retried. Any other 4xx is not.
    let world = World::strict(StrictEbsConfig::default()).await;
    let image = world.path("nf.raw");
    write_file(&image, &random_bytes(27, 2 * MIB as usize));
    world.proxy.set_rules(vec![FaultRule::first_n(
        Some("PutSnapshotBlock"),
        Fault::Status(404),
        3,
    )]);
    let report = world.upload(&image, &["--workers", "1"]).await;
    assert_eq!(report["blocks_written"], 4);
    assert_eq!(faulted(&world, "Status(404)"), 3);
    assert_eq!(world.proxy.count("PutSnapshotBlock"), 4 + 3);

    world.proxy.clear_requests();
    world.proxy.set_rules(vec![FaultRule::first_n(
        Some("PutSnapshotBlock"),
        Fault::Status(400),
        1,
    )]);
    let run = world
        .run(&["upload", image.to_str().unwrap(), "--workers", "1"])
        .await;
    run.assert_failed_with("ValidationException");
    assert_eq!(world.proxy.count("PutSnapshotBlock"), 1, "never retried");
    assert_eq!(world.proxy.count("DeleteSnapshot"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_server_hits_the_attempt_timeout_and_is_retried() {
    // The first PutSnapshotBlock stalls far longer than --attempt-timeout: the attempt
    // is abandoned and retried instead of hanging forever.
    let world = World::strict(StrictEbsConfig::default()).await;
    let image = world.path("stall.raw");
    write_file(&image, &random_bytes(28, MIB as usize));
    world.proxy.set_rules(vec![FaultRule::first_n(
        Some("PutSnapshotBlock"),
        Fault::Delay(Duration::from_secs(30)),
        1,
    )]);
    let run = world
        .run(&[
            "--output",
            "json",
            "upload",
            image.to_str().unwrap(),
            "--workers",
            "1",
            "--attempt-timeout",
            "1s",
        ])
        .await;
    run.assert_ok();
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(report["blocks_written"], 2);
    // The stalled attempt was abandoned and retried, and the log says why.
    assert!(
        run.stderr.contains("retrying PutSnapshotBlock") && run.stderr.contains("timed out"),
        "{}",
        run.stderr
    );
}
