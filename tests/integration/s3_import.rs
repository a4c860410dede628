//! The S3 import path against moto and the test world's ImportVolume/ImportSnapshot
//! (`testkit/src/moto_ext.py`, imports section): `upload --via s3` of a raw image
//! (ImportVolume) and of a streamOptimized VMDK (ImportSnapshot), the imported
//! snapshot downloaded with the EBS direct APIs and compared byte for byte; the parts
//! and their checksums on the wire, nothing left in the bucket; `manifest write` and
//! `manifest verify`, which refuses a manifest whose part was altered in S3 or in the
//! document; the import limit waited out, a SERVER_ERROR hang turned into a failure
//! (task cancelled, objects deleted or kept with --keep-on-failure); bad command lines.

use std::path::Path;

use sha2::{Digest, Sha256};

use crate::common::*;
use crate::compat::qemu_img;

const BUCKET: &str = "release-images";
const PART: usize = 10 * 1024 * 1024;

fn s3(clients: &ec2ami::aws::Clients) -> aws_sdk_s3::Client {
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&clients.config)
            .force_path_style(true)
            .build(),
    )
}

async fn make_bucket(world: &World) -> aws_sdk_s3::Client {
    let s3 = s3(&world.clients().await);
    s3.create_bucket().bucket(BUCKET).send().await.unwrap();
    s3
}

async fn keys(s3: &aws_sdk_s3::Client) -> Vec<String> {
    let out = s3.list_objects_v2().bucket(BUCKET).send().await.unwrap();
    out.contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_string))
        .collect()
}

/// A 25 MiB + 7 byte image (three parts, the last short) with data and holes.
fn image(world: &World, name: &str, seed: u64) -> std::path::PathBuf {
    let path = world.path(name);
    let size = 25 * MIB + 7;
    sparse_file(
        &path,
        size,
        &[
            (0, random_bytes(seed, 700 * 1024)),
            (10 * MIB - 100, random_bytes(seed + 1, 300)),
            (24 * MIB, random_bytes(seed + 2, (MIB + 7) as usize)),
        ],
    );
    path
}

/// The harness endpoint of the imports section (never AWS): the next N imports answer
/// ResourceLimitExceeded / the next N tasks hang with SERVER_ERROR.
fn import_faults(world: &World, resource_limit: u32, server_error: u32) {
    moto_hook(
        world,
        "/moto-api/ec2ami/import-faults",
        &serde_json::json!({"resource_limit": resource_limit, "server_error": server_error}),
    );
}

/// PUT requests of image parts (`.../partN`) on the wire.
fn part_puts(world: &World) -> Vec<ec2ami_testkit::RecordedRequest> {
    world
        .proxy
        .requests()
        .into_iter()
        .filter(|r| r.method == "PUT" && r.path.contains("/part") && !r.query.contains("uploadId"))
        .collect()
}

fn sha256_b64(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(data))
}

fn json(run: &Run) -> serde_json::Value {
    run.assert_ok();
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", run.stdout))
}

/// Download `snapshot` and compare it with the raw image `raw`.
async fn assert_imported(world: &World, snapshot: &str, raw: &Path, name: &str) {
    let out = world.path(name);
    world.download(snapshot, &out).await;
    let got = std::fs::read(&out).unwrap();
    let want = std::fs::read(raw).unwrap();
    assert!(
        got.len() >= want.len(),
        "the snapshot is shorter than the image"
    );
    assert!(
        got[..want.len()] == want[..],
        "the imported bytes differ from the image"
    );
    assert!(
        got[want.len()..].iter().all(|&b| b == 0),
        "bytes after the image"
    );
}

#[tokio::test]
async fn raw_and_vmdk_images_round_trip_through_s3() {
    let world = World::moto().await;
    let s3 = make_bucket(&world).await;

    // Raw: three parts, a manifest, ImportVolume, CreateSnapshot of its volume.
    let raw = image(&world, "disk.raw", 11);
    let run = world
        .run(&[
            "--output",
            "json",
            "upload",
            raw.to_str().unwrap(),
            "--via",
            "s3",
            "--bucket",
            BUCKET,
            "--prefix",
            "15.0/amd64",
            "--tag",
            "release=15.0",
        ])
        .await;
    let report = json(&run);
    assert_eq!(report["operation"], "ImportVolume");
    assert_eq!(report["file_format"], "RAW");
    assert_eq!(report["parts"], 3);
    assert_eq!(report["bytes_sent"], 25 * MIB + 7);
    assert_eq!(report["objects_deleted"], true);
    let manifest_key = report["manifest_key"].as_str().unwrap();
    assert!(
        manifest_key.starts_with("15.0/amd64/ec2ami-"),
        "{manifest_key}"
    );
    let snapshot = report["snapshot_id"].as_str().unwrap().to_string();
    assert_imported(&world, &snapshot, &raw, "raw.back").await;

    // On the wire: each part once, 10 MiB (the last 5 MiB + 7), with its SHA-256.
    let data = std::fs::read(&raw).unwrap();
    let mut puts = part_puts(&world);
    puts.sort_by(|a, b| a.path.cmp(&b.path));
    assert_eq!(puts.len(), 3, "one PUT per part");
    for (i, put) in puts.iter().enumerate() {
        let chunk = &data[i * PART..((i + 1) * PART).min(data.len())];
        assert!(put.path.ends_with(&format!("/part{i}")), "{}", put.path);
        assert_eq!(put.body_len, chunk.len());
        assert_eq!(
            put.header("x-amz-checksum-sha256"),
            Some(sha256_b64(chunk).as_str())
        );
    }
    let ops: Vec<String> = world
        .proxy
        .requests()
        .into_iter()
        .map(|r| r.operation)
        .collect();
    assert!(ops.iter().any(|o| o == "ImportVolume"));
    assert!(
        !ops.iter()
            .any(|o| o == "PutSnapshotBlock" || o == "ImportSnapshot")
    );
    assert!(
        ops.iter().any(|o| o == "DeleteVolume"),
        "the import's volume is deleted"
    );
    assert!(keys(&s3).await.is_empty(), "the bucket is left empty");

    // The snapshot carries ec2ami's tags and the user's.
    let ec2 = world.clients().await.ec2;
    let snap = ec2
        .describe_snapshots()
        .snapshot_ids(&snapshot)
        .send()
        .await
        .unwrap();
    let tags = snap.snapshots()[0].tags();
    let tag = |k: &str| {
        tags.iter()
            .find(|t| t.key() == Some(k))
            .and_then(|t| t.value())
    };
    assert_eq!(tag("ec2ami:managed-by"), Some("ec2ami"));
    assert_eq!(tag("ec2ami:image-size"), Some("26214407"));
    assert_eq!(tag("release"), Some("15.0"));
    let vols = ec2.describe_volumes().send().await.unwrap();
    assert!(
        vols.volumes().is_empty(),
        "no volume left: {:?}",
        vols.volumes()
    );

    // VMDK (streamOptimized, as FreeBSD builds them): ImportSnapshot of one object
    // joined from the parts by S3; the snapshot holds the disk's raw blocks.
    let raw2 = image(&world, "disk2.raw", 21);
    let vmdk = world.path("disk2.vmdk");
    let st = std::process::Command::new(qemu_img())
        .args([
            "convert",
            "-q",
            "-f",
            "raw",
            "-O",
            "vmdk",
            "-o",
            "subformat=streamOptimized",
        ])
        .arg(&raw2)
        .arg(&vmdk)
        .status()
        .unwrap();
    assert!(st.success());
    world.proxy.clear_requests();
    let run = world
        .run(&[
            "--output",
            "json",
            "upload",
            vmdk.to_str().unwrap(),
            "--via",
            "s3",
            "--bucket",
            BUCKET,
        ])
        .await;
    let report = json(&run);
    assert_eq!(report["operation"], "ImportSnapshot");
    assert_eq!(report["file_format"], "VMDK");
    let vmdk_len = std::fs::metadata(&vmdk).unwrap().len();
    assert_eq!(report["bytes_sent"], vmdk_len, "the VMDK is sent as it is");
    assert_eq!(
        report["disk_bytes"],
        25 * MIB + 7 + 505,
        "the VMDK's capacity (sectors)"
    );
    let snapshot = report["snapshot_id"].as_str().unwrap().to_string();
    assert_imported(&world, &snapshot, &raw2, "vmdk.back").await;
    let ops: Vec<String> = world
        .proxy
        .requests()
        .into_iter()
        .map(|r| r.operation)
        .collect();
    assert!(ops.iter().any(|o| o == "ImportSnapshot"));
    assert!(
        !ops.iter()
            .any(|o| o == "ImportVolume" || o == "PutSnapshotBlock")
    );
    let sent: usize = part_puts(&world).iter().map(|r| r.body_len).sum();
    assert_eq!(
        sent as u64, vmdk_len,
        "the bytes go up once (S3 copies the parts together)"
    );
    assert!(keys(&s3).await.is_empty(), "the bucket is left empty");
}

/// A fixed VHD (as `--vhd` callers hand over): ImportSnapshot of the joined object, the
/// snapshot holding the disk's raw blocks, the bucket left empty.
#[tokio::test]
async fn a_vhd_image_round_trips_through_s3() {
    let world = World::moto().await;
    let s3 = make_bucket(&world).await;
    let raw = image(&world, "disk3.raw", 31);
    let vhd = world.path("disk3.vhd");
    let st = std::process::Command::new(qemu_img())
        .args(["convert", "-q", "-f", "raw", "-O", "vpc"])
        .args(["-o", "subformat=fixed,force_size=on"])
        .arg(&raw)
        .arg(&vhd)
        .status()
        .unwrap();
    assert!(st.success());
    let run = world
        .run(&[
            "--output",
            "json",
            "upload",
            vhd.to_str().unwrap(),
            "--via",
            "s3",
            "--bucket",
            BUCKET,
        ])
        .await;
    let report = json(&run);
    assert_eq!(report["operation"], "ImportSnapshot");
    assert_eq!(report["file_format"], "VHD");
    let vhd_len = std::fs::metadata(&vhd).unwrap().len();
    assert_eq!(report["bytes_sent"], vhd_len, "the VHD is sent as it is");
    let snapshot = report["snapshot_id"].as_str().unwrap().to_string();
    assert_imported(&world, &snapshot, &raw, "vhd.back").await;
    assert_eq!(world.proxy.count("ImportSnapshot"), 1);
    assert_eq!(world.proxy.count("PutSnapshotBlock"), 0);
    assert!(keys(&s3).await.is_empty(), "the bucket is left empty");
}

#[tokio::test]
async fn manifest_write_then_verify_and_altered_parts_are_refused() {
    let world = World::moto().await;
    let s3 = make_bucket(&world).await;
    let raw = image(&world, "disk.raw", 31);
    let out = world.path("manifest.xml");
    let run = world
        .run(&[
            "manifest",
            "write",
            raw.to_str().unwrap(),
            "--bucket",
            BUCKET,
            "--prefix",
            "m",
            "--out",
            out.to_str().unwrap(),
        ])
        .await;
    run.assert_ok();
    let xml = std::fs::read_to_string(&out).unwrap();
    assert_eq!(
        run.stdout.trim_end(),
        xml.trim_end(),
        "stdout is the manifest"
    );

    // The document as the seed documents it, with each part's SHA-256 computed here.
    let doc = roxmltree::Document::parse(&xml).unwrap();
    let text = |name: &str| {
        doc.descendants()
            .find(|n| n.has_tag_name(name))
            .and_then(|n| n.text())
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(text("version"), "2010-11-15");
    assert_eq!(text("file-format"), "RAW");
    assert_eq!(text("size"), "26214407");
    assert_eq!(text("volume-size"), "1");
    assert!(text("self-destruct-url").contains("X-Amz-Signature="));
    let data = std::fs::read(&raw).unwrap();
    let parts: Vec<_> = doc
        .descendants()
        .filter(|n| n.has_tag_name("part"))
        .collect();
    assert_eq!(parts.len(), 3);
    let stored = keys(&s3).await;
    for (i, p) in parts.iter().enumerate() {
        let child = |name: &str| p.children().find(|c| c.has_tag_name(name)).unwrap();
        let range = child("byte-range");
        let (start, end) = (i * PART, ((i + 1) * PART).min(data.len()) - 1);
        assert_eq!(range.attribute("start"), Some(start.to_string().as_str()));
        assert_eq!(range.attribute("end"), Some(end.to_string().as_str()));
        let want: String = Sha256::digest(&data[start..=end])
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(child("sha256").text(), Some(want.as_str()));
        let key = child("key").text().unwrap();
        assert!(stored.iter().any(|k| k == key), "{key} is in the bucket");
        for url in ["head-url", "get-url", "delete-url"] {
            assert!(
                child(url).text().unwrap().contains("X-Amz-Expires="),
                "{url} is pre-signed"
            );
        }
    }
    assert_eq!(stored.len(), 4, "three parts and the manifest: {stored:?}");

    // Verify fetches every part by its get-url and finds them as written.
    world.proxy.clear_requests();
    let run = world
        .run(&["manifest", "verify", out.to_str().unwrap()])
        .await;
    run.assert_ok();
    assert_eq!(
        run.stdout.lines().filter(|l| l.ends_with(": ok")).count(),
        3,
        "{}",
        run.stdout
    );
    let gets = world
        .proxy
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET")
        .count();
    assert_eq!(gets, 3, "one GET per part");
    // --workers 1: one part fetched at a time (held at the proxy until let go: the
    // second does not come while the first waits).
    let gate = world.proxy.hold(Some("Unknown"), 0);
    let mut cmd = world.ec2ami();
    cmd.args([
        "manifest",
        "verify",
        out.to_str().unwrap(),
        "--workers",
        "1",
    ]);
    let task = tokio::spawn(async move { Run::from(cmd.output().await.unwrap()) });
    assert!(
        gate.arrived(1, std::time::Duration::from_secs(60)).await,
        "a part fetch arrives"
    );
    assert!(!gate.arrived(2, std::time::Duration::from_millis(500)).await);
    gate.open();
    task.await.unwrap().assert_ok();

    // A part changed in S3 (same length, one byte different) is refused by name.
    let key1 = parts[1]
        .children()
        .find(|c| c.has_tag_name("key"))
        .unwrap()
        .text()
        .unwrap();
    let mut altered = data[PART..2 * PART].to_vec();
    altered[12345] ^= 0xff;
    s3.put_object()
        .bucket(BUCKET)
        .key(key1)
        .body(altered.into())
        .send()
        .await
        .unwrap();
    let run = world
        .run(&["manifest", "verify", out.to_str().unwrap()])
        .await;
    run.assert_failed_with("1 of 3 part(s) do not match the manifest (first: part 1: SHA-256 ");
    assert!(run.stdout.contains("part 0 ") && run.stdout.contains("part 2 "));

    // A part cut short is refused by its length.
    s3.put_object()
        .bucket(BUCKET)
        .key(key1)
        .body(vec![1u8; 10].into())
        .send()
        .await
        .unwrap();
    let run = world
        .run(&["manifest", "verify", out.to_str().unwrap()])
        .await;
    run.assert_failed_with(
        "part 1: holds 10 bytes; its byte range 10485760-20971519 says 10485760",
    );

    // A manifest whose checksum was edited is refused too, and so is a part gone.
    let key0 = parts[0]
        .children()
        .find(|c| c.has_tag_name("key"))
        .unwrap()
        .text()
        .unwrap();
    let sha0 = parts[0]
        .children()
        .find(|c| c.has_tag_name("sha256"))
        .unwrap()
        .text()
        .unwrap();
    let edited = world.path("edited.xml");
    std::fs::write(&edited, xml.replace(sha0, &"0".repeat(64))).unwrap();
    let run = world
        .run(&["manifest", "verify", edited.to_str().unwrap()])
        .await;
    run.assert_failed_with("first: part 0: SHA-256 ");
    s3.delete_object()
        .bucket(BUCKET)
        .key(key0)
        .send()
        .await
        .unwrap();
    let run = world
        .run(&["manifest", "verify", out.to_str().unwrap()])
        .await;
    run.assert_failed_with("first: part 0: GET answered 404");

    // Not a manifest: a clear one-line error, nothing fetched.
    let bad = world.path("bad.xml");
    std::fs::write(&bad, xml.replace("count=\"3\"", "count=\"2\"")).unwrap();
    world.proxy.clear_requests();
    let run = world
        .run(&["manifest", "verify", bad.to_str().unwrap()])
        .await;
    run.assert_failed_with("<parts count=\"2\"> holds 3 part(s)");
    assert!(world.proxy.requests().is_empty());
}

#[tokio::test]
async fn import_limit_is_waited_out_and_a_hung_import_fails_clearly() {
    let world = World::moto().await;
    let s3 = make_bucket(&world).await;
    let raw = image(&world, "disk.raw", 41);
    let p = raw.to_str().unwrap();
    let upload = |extra: &[&'static str]| {
        let mut args = vec!["upload", p, "--via", "s3", "--bucket", BUCKET];
        args.extend_from_slice(extra);
        args
    };

    // Two ResourceLimitExceeded answers, then the import goes through.
    import_faults(&world, 2, 0);
    let args = upload(&[]);
    let run = world.run(&args).await;
    run.assert_ok();
    assert!(run.stdout.trim().starts_with("snap-"), "{}", run.stdout);
    assert_eq!(
        world.proxy.count("ImportVolume"),
        3,
        "asked again until allowed"
    );
    assert!(
        run.stderr.contains("import limit is reached, waiting"),
        "{}",
        run.stderr
    );

    // A task stuck in SERVER_ERROR: a clear failure, the task cancelled, the bucket empty.
    world.proxy.clear_requests();
    import_faults(&world, 0, 1);
    let run = world.run(&args).await;
    run.assert_failed_with("hangs with AWS's status `ServerError: SERVER_ERROR`");
    assert_eq!(
        run.stderr
            .lines()
            .filter(|l| l.starts_with("error:"))
            .count(),
        1
    );
    assert_eq!(world.proxy.count("CancelConversionTask"), 1);
    assert!(keys(&s3).await.is_empty());

    // With --keep-on-failure the objects stay, and the error says where.
    import_faults(&world, 0, 1);
    let args = upload(&["--keep-on-failure", "--prefix", "kept"]);
    let run = world.run(&args).await;
    run.assert_failed_with("S3 object(s) were kept under kept/ec2ami-");
    let left = keys(&s3).await;
    assert_eq!(left.len(), 4, "{left:?}");
    assert!(left.iter().all(|k| k.starts_with("kept/ec2ami-")));
}

/// Ctrl-C while the import task runs (its first DescribeConversionTasks held by the
/// proxy, so the signal lands there by a hook, not by timing): exit 130, the task
/// cancelled on the wire, the parts and the manifest deleted, no snapshot made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_during_an_import_cancels_the_task_and_empties_the_bucket() {
    let world = World::moto().await;
    let s3 = make_bucket(&world).await;
    let raw = image(&world, "disk.raw", 51);
    // Not the first zone (the default), so that --availability-zone shows on the wire.
    let zones = world
        .clients()
        .await
        .ec2
        .describe_availability_zones()
        .send()
        .await
        .unwrap();
    let zone = zones
        .availability_zones()
        .last()
        .unwrap()
        .zone_name()
        .unwrap()
        .to_string();
    let gate = world.proxy.hold(Some("DescribeConversionTasks"), 0);
    let child = world
        .ec2ami()
        .args([
            "upload",
            raw.to_str().unwrap(),
            "--via",
            "s3",
            "--bucket",
            BUCKET,
        ])
        .args(["--availability-zone", &zone])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        gate.arrived(1, std::time::Duration::from_secs(120)).await,
        "the import never started"
    );
    assert!(!keys(&s3).await.is_empty(), "the parts are in the bucket");
    let pid = child.id().unwrap() as i32;
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let run = Run::from(
        tokio::time::timeout(std::time::Duration::from_secs(60), child.wait_with_output())
            .await
            .expect("exits promptly after SIGINT")
            .unwrap(),
    );
    gate.open();
    assert_eq!(run.code, Some(130), "{}", run.stderr);
    assert!(run.stderr.contains("interrupted"), "{}", run.stderr);
    let imports = params_of(&world, "ImportVolume");
    assert_eq!(imports.len(), 1);
    assert_eq!(imports[0].get("AvailabilityZone"), Some(&zone));
    assert_eq!(world.proxy.count("CancelConversionTask"), 1);
    assert!(keys(&s3).await.is_empty(), "parts and manifest deleted");
    assert_eq!(world.proxy.count("CreateSnapshot"), 0);
    assert!(
        world.our_snapshots().await.is_empty(),
        "nothing imported left"
    );
}

#[tokio::test]
async fn s3_path_bad_input_is_refused_before_any_call() {
    let world = World::offline().await;
    let raw = world.path("disk.raw");
    write_file(&raw, &random_bytes(1, 4096));
    let p = raw.to_str().unwrap();
    let cases: [(&[&str], &str); 6] = [
        (&["upload", p, "--via", "s3"], "--bucket"),
        (
            &[
                "upload",
                p,
                "--via",
                "s3",
                "--bucket",
                BUCKET,
                "--encrypted",
            ],
            "--encrypted belongs to the direct upload",
        ),
        (
            &["upload", p, "--via", "s3", "--bucket", BUCKET, "--no-wait"],
            "--no-wait belongs to the direct upload",
        ),
        (&["upload", p, "--prefix", "x"], "--bucket"),
        (
            &[
                "manifest",
                "write",
                p,
                "--bucket",
                BUCKET,
                "--expires",
                "8d",
            ],
            "at most 7d",
        ),
        (
            &["manifest", "verify", "/nonexistent/m.xml"],
            "cannot read /nonexistent/m.xml",
        ),
    ];
    for (args, want) in cases {
        let run = world.run(args).await;
        run.assert_failed_with(want);
    }
    let qcow = world.path("disk.qcow2");
    // A well-formed qcow2 (a damaged one is refused earlier, as damaged).
    let made = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&qcow)
        .arg("1M")
        .status()
        .expect("qemu-img runs (apt-get install qemu-utils)");
    assert!(made.success());
    let run = world
        .run(&[
            "upload",
            qcow.to_str().unwrap(),
            "--via",
            "s3",
            "--bucket",
            BUCKET,
        ])
        .await;
    run.assert_failed_with("is a qcow2 image: the S3 import takes raw, VMDK");
    assert!(world.proxy.requests().is_empty(), "nothing reached AWS");
}
