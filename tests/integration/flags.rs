//! Flags and release-file keys the area tests do not reach, each checked by its effect:
//! what went over the wire (the proxy's record), what the world keeps (read back with
//! the SDK), or what the state database holds. One world per test, many flags per
//! world, so the table in `tests/flag-coverage.txt` has no `UNTESTED` line without the
//! suite getting slow.

use std::path::Path;

use crate::common::*;

/// ec2-boot-bench's four lines for one run whose phases add up to `total` seconds.
fn ebb(total: f64) -> String {
    format!(
        "RunInstances API call took: {:.6} s\n\
         Moving from pending to running took: {:.6} s\n\
         Moving from running to port closed took: {:.6} s\n\
         Moving from port closed to port open took: {:.6} s\n",
        0.1 * total,
        0.2 * total,
        0.4 * total,
        0.3 * total
    )
}

fn json(run: &Run) -> serde_json::Value {
    run.assert_ok();
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", run.stdout))
}

/// The AMI ids of a `history list` JSON answer, in its order.
fn ids(list: &serde_json::Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|b| b["image_id"].as_str().unwrap().to_string())
        .collect()
}

/// The series names of a `history check` JSON answer.
fn series(checks: &serde_json::Value) -> Vec<String> {
    checks
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["series"].as_str().unwrap().to_string())
        .collect()
}

/// (AMI, os version, branch, flavour, fs, arch, build date, measured on, seconds).
type Build = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    f64,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_import_list_check_and_report_filters_select_exactly_their_builds() {
    let world = World::offline().await;
    let state = world.path("elsewhere.db");
    let state_s = state.to_str().unwrap().to_string();
    // (AMI, os version, branch, flavour, fs, arch, build date, measured on, seconds):
    // one weekly series (a1..a4) that slows down at a3, and four one-build series that
    // each differ from it in exactly one field.
    let builds: [Build; 8] = [
        (
            "ami-a1",
            "14.1",
            "14-STABLE",
            "base",
            "ufs",
            "amd64",
            "20240101",
            "20240301",
            25.0,
        ),
        (
            "ami-a2",
            "14.1",
            "14-STABLE",
            "base",
            "ufs",
            "amd64",
            "20240108",
            "20240302",
            25.0,
        ),
        (
            "ami-a3",
            "14.1",
            "14-STABLE",
            "base",
            "ufs",
            "amd64",
            "20240115",
            "20240303",
            60.0,
        ),
        (
            "ami-a4",
            "14.1",
            "14-STABLE",
            "base",
            "ufs",
            "amd64",
            "20240122",
            "20240304",
            75.0,
        ),
        (
            "ami-arm",
            "14.1",
            "14-STABLE",
            "base",
            "ufs",
            "arm64",
            "20240101",
            "20240305",
            10.0,
        ),
        (
            "ami-zfs",
            "14.1",
            "14-STABLE",
            "base",
            "zfs",
            "amd64",
            "20240101",
            "20240305",
            10.0,
        ),
        (
            "ami-ci",
            "14.1",
            "14-STABLE",
            "cloud-init",
            "ufs",
            "amd64",
            "20240101",
            "20240305",
            10.0,
        ),
        (
            "ami-15",
            "15.0",
            "15-STABLE",
            "base",
            "ufs",
            "amd64",
            "20240101",
            "20240305",
            10.0,
        ),
    ];
    for (ami, version, branch, flavour, fs, arch, date, measured, total) in builds {
        let file = world.path(&format!("{ami}.txt"));
        std::fs::write(
            &file,
            [ebb(total), ebb(total * 1.02), ebb(total * 0.98)].concat(),
        )
        .unwrap();
        world
            .run(&[
                "--state",
                &state_s,
                "--region",
                "us-east-1",
                "history",
                "import",
                file.to_str().unwrap(),
                "--ami",
                ami,
                "--instance-type",
                "c5.xlarge",
                "--os-version",
                version,
                "--branch",
                branch,
                "--flavour",
                flavour,
                "--fs",
                fs,
                "--arch",
                arch,
                "--build-date",
                date,
                "--measured-on",
                measured,
            ])
            .await
            .assert_ok();
    }
    // --state put it there, not in the default database.
    let default = world.run(&["history", "list"]).await;
    default.assert_ok();
    assert_eq!(default.stdout.trim(), "no benchmarks match");
    // EC2AMI_STATE names the same database for the rest.
    let list = |args: Vec<&str>| {
        let mut cmd = world.ec2ami();
        cmd.env("EC2AMI_STATE", &state)
            .args(["--output", "json"])
            .args(&args);
        async move { Run::from(cmd.output().await.unwrap()) }
    };
    let all = json(&list(vec!["history", "list"]).await);
    assert_eq!(
        ids(&all),
        [
            "ami-a1", "ami-a2", "ami-a3", "ami-a4", "ami-arm", "ami-zfs", "ami-ci", "ami-15"
        ]
    );
    // The build fields as given, and the measurement day (2024-03-01 00:00 UTC is
    // 1709251200, from `date -u -d 2024-03-01 +%s`).
    let a1 = &all[0];
    for (k, v) in [
        ("version", "14.1"),
        ("branch", "14-STABLE"),
        ("flavour", "base"),
        ("fs", "ufs"),
        ("arch", "amd64"),
        ("build_date", "20240101"),
    ] {
        assert_eq!(a1[k], v, "{k} in {a1}");
    }
    assert_eq!(all[7]["version"], "15.0");
    assert_eq!(a1["measured_at"], 1_709_251_200);
    assert_eq!(all[3]["measured_at"], 1_709_251_200 + 3 * 86_400);
    // Each filter of `history list` selects exactly its builds.
    for (args, want) in [
        (vec!["--arch", "arm64"], vec!["ami-arm"]),
        (vec!["--fs", "zfs"], vec!["ami-zfs"]),
        (vec!["--flavour", "cloud-init"], vec!["ami-ci"]),
        (vec!["--branch", "15-STABLE"], vec!["ami-15"]),
        (vec!["--image", "ami-a2"], vec!["ami-a2"]),
        (
            vec!["--since", "20240108"],
            vec!["ami-a2", "ami-a3", "ami-a4"],
        ),
        (vec!["--limit", "2"], vec!["ami-ci", "ami-15"]),
        (
            vec![
                "--branch",
                "14-STABLE",
                "--fs",
                "ufs",
                "--arch",
                "amd64",
                "--limit",
                "1",
            ],
            vec!["ami-ci"],
        ),
    ] {
        let mut a = vec!["history", "list"];
        a.extend(&args);
        assert_eq!(ids(&json(&list(a).await)), want, "history list {args:?}");
    }

    // `history check`: the whole history has a regression (a3 against a1, a2) ...
    let check = |args: Vec<&str>| {
        let mut a = vec!["history", "check"];
        a.extend(args);
        list(a)
    };
    let all_checks = check(vec![]).await;
    assert_eq!(all_checks.code, Some(1), "{}", all_checks.stderr);
    let v: serde_json::Value = serde_json::from_str(&all_checks.stdout).unwrap();
    assert_eq!(series(&v).len(), 5, "{v}");
    // ... each filter checks only its series ...
    for (flag, value, needle) in [
        ("--arch", "arm64", "arm64"),
        ("--fs", "zfs", "zfs"),
        ("--flavour", "cloud-init", "cloud-init"),
        ("--branch", "15-STABLE", "15-STABLE"),
    ] {
        let only = json(&check(vec![flag, value]).await);
        let names = series(&only);
        assert_eq!(names.len(), 1, "{flag}: {names:?}");
        assert!(names[0].contains(needle), "{flag}: {names:?}");
    }
    // ... one image is a series of one build: nothing to compare, no regression ...
    let one = json(&check(vec!["--image", "ami-a4"]).await);
    assert_eq!(series(&one).len(), 1);
    assert_ne!(one[0]["verdict"], "regression", "{one}");
    // ... from a3 on, a4 (75 s) against a3 (60 s) is within 1.5x: no regression.
    let since = json(&check(vec!["--since", "20240115"]).await);
    assert_eq!(series(&since).len(), 1, "{since}");
    assert_ne!(since[0]["verdict"], "regression", "{since}");
    let slow = check(vec!["--arch", "amd64", "--flavour", "base", "--fs", "ufs"]).await;
    assert_eq!(slow.code, Some(1));
    let slow: serde_json::Value = serde_json::from_str(&slow.stdout).unwrap();
    let s1 = slow
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["verdict"] == "regression")
        .unwrap();
    assert_eq!(s1["first_bad"], "ami-a3", "{s1}");

    // `report`: the same filters choose the series plotted; --threshold and --window
    // decide which rows are marked.
    let report = |out: &str, args: Vec<&'static str>| {
        let dir = world.path(out);
        let mut a = vec![
            "report".to_string(),
            "--out".into(),
            dir.display().to_string(),
        ];
        a.extend(args.iter().map(|s| s.to_string()));
        let mut cmd = world.ec2ami();
        cmd.env("EC2AMI_STATE", &state)
            .args(["--output", "json"])
            .args(&a);
        async move {
            let run = Run::from(cmd.output().await.unwrap());
            let summary = json(&run);
            let html = std::fs::read_to_string(dir.join("index.html")).unwrap();
            (summary, html)
        }
    };
    let marked = |html: &str| html.contains("class=\"regression\"");
    let (s, html) = report("r-all", vec![]).await;
    assert_eq!(s["series"].as_array().unwrap().len(), 5);
    assert!(marked(&html));
    let (s, html) = report(
        "r-s1",
        vec![
            "--arch",
            "amd64",
            "--branch",
            "14-STABLE",
            "--flavour",
            "base",
            "--fs",
            "ufs",
        ],
    )
    .await;
    assert_eq!(s["series"].as_array().unwrap().len(), 1, "{s}");
    assert_eq!(s["series"][0]["builds"], 4, "{s}");
    assert!(marked(&html));
    let (_, html) = report(
        "r-threshold",
        vec![
            "--arch",
            "amd64",
            "--fs",
            "ufs",
            "--flavour",
            "base",
            "--threshold",
            "4",
        ],
    )
    .await;
    assert!(!marked(&html), "a 4x threshold marks nothing");
    let (_, html) = report(
        "r-window",
        vec![
            "--arch",
            "amd64",
            "--fs",
            "ufs",
            "--flavour",
            "base",
            "--window",
            "1",
        ],
    )
    .await;
    assert!(!marked(&html), "against a3 alone a4 is fine");
    let (s, _) = report("r-since", vec!["--since", "20240115"]).await;
    assert_eq!(s["series"][0]["builds"], 2, "{s}");
    let (s, _) = report("r-image", vec!["--image", "ami-zfs"]).await;
    assert_eq!(s["series"].as_array().unwrap().len(), 1);
    assert!(
        s["series"][0]["series"].as_str().unwrap().contains("zfs"),
        "{s}"
    );
    assert!(world.proxy.requests().is_empty(), "history made AWS calls");
}

/// Convert `raw` with qemu-img into `format` at `out`.
fn qemu_convert(raw: &Path, format: &str, out: &Path) {
    let st = std::process::Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", format])
        .arg(raw)
        .arg(out)
        .status()
        .expect("qemu-img is installed (apt-get install qemu-utils)");
    assert!(st.success(), "qemu-img convert to {format}");
}

/// The JSON body of the first `operation` request the proxy saw.
fn json_body(world: &World, operation: &str) -> serde_json::Value {
    let r = world
        .proxy
        .requests()
        .into_iter()
        .find(|r| r.operation == operation)
        .unwrap_or_else(|| panic!("no {operation}"));
    serde_json::from_slice(r.body.as_ref().unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_kms_token_description_index_dir_and_no_wait_reach_the_wire() {
    const KEY: &str = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab";
    let world = World::strict(ec2ami_testkit::StrictEbsConfig {
        discard_data: true,
        ..Default::default()
    })
    .await;
    let image = world.path("enc.raw");
    sparse_file(&image, 3 * MIB, &[(MIB, random_bytes(30, 1000))]);
    let index_dir = world.path("my-index");
    let run = world
        .run(&[
            "--output",
            "json",
            "upload",
            image.to_str().unwrap(),
            "--kms-key-id",
            KEY,
            "--client-token",
            "flags-token-0001",
            "--description",
            "flags test image",
            "--index-dir",
            index_dir.to_str().unwrap(),
            "--no-wait",
        ])
        .await;
    let report = json(&run);
    let snap = report["snapshot_id"].as_str().unwrap().to_string();
    let body = json_body(&world, "StartSnapshot");
    assert_eq!(body["KmsKeyArn"], KEY, "{body}");
    assert_eq!(
        body["Encrypted"], true,
        "--kms-key-id implies encryption: {body}"
    );
    assert_eq!(body["ClientToken"], "flags-token-0001");
    assert_eq!(body["Description"], "flags test image");
    // Encrypted: every block of the 1 GiB volume is written.
    assert_eq!(world.proxy.count("PutSnapshotBlock"), 2048);
    // --no-wait: nothing asked after CompleteSnapshot.
    assert_eq!(world.proxy.count("CompleteSnapshot"), 1);
    assert_eq!(
        world.proxy.count("DescribeSnapshots"),
        0,
        "--no-wait polled"
    );
    // The world keeps the key.
    let described = world
        .clients()
        .await
        .ec2
        .describe_snapshots()
        .snapshot_ids(&snap)
        .send()
        .await
        .unwrap();
    let s = &described.snapshots()[0];
    assert_eq!(s.kms_key_id(), Some(KEY));
    assert_eq!(s.encrypted(), Some(true));
    assert_eq!(s.description(), Some("flags test image"));
    // The block index went to --index-dir, naming the snapshot; not to the default.
    let files: Vec<_> = std::fs::read_dir(&index_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let text = std::fs::read_to_string(&files[0]).unwrap();
    assert!(text.starts_with("ec2ami-block-index 2"), "{text:.200}");
    assert!(text.contains(&snap), "the index names {snap}");
    assert!(!world.path("state/ec2ami/blocks").exists());
    // Without --no-wait the same upload polls until `completed`.
    world.proxy.clear_requests();
    world
        .run(&["upload", image.to_str().unwrap(), "--encrypted"])
        .await
        .assert_ok();
    assert!(world.proxy.count("DescribeSnapshots") >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vmdk_vhd_vhdx_upload_and_download_force_full_volume_and_workers() {
    let world = World::strict(ec2ami_testkit::StrictEbsConfig::default()).await;
    let raw = world.path("src.raw");
    sparse_file(
        &raw,
        6 * MIB,
        &[
            (0, random_bytes(31, 3 * MIB as usize)),
            (5 * MIB, random_bytes(32, 4096)),
        ],
    );
    let want = nonzero_blocks(&raw);
    let mut snaps = Vec::new();
    for (format, ext) in [("vmdk", "vmdk"), ("vpc", "vhd"), ("vhdx", "vhdx")] {
        let img = world.path(&format!("src.{ext}"));
        qemu_convert(&raw, format, &img);
        let run = world
            .run(&["--output", "json", "upload", img.to_str().unwrap()])
            .await;
        let report = json(&run);
        assert_eq!(
            report["blocks_written"],
            want.len() as u64,
            "{ext}: {report}"
        );
        let snap = report["snapshot_id"].as_str().unwrap().to_string();
        let out = world.path(&format!("back-{ext}.raw"));
        world
            .run(&["download", &snap, out.to_str().unwrap()])
            .await
            .assert_ok();
        assert_eq!(nonzero_blocks(&out), want, "{ext} round trip");
        snaps.push(snap);
    }
    // A qcow2 overlay on the raw image: refused without --allow-backing-file (before
    // any request), uploaded with the base's content with it.
    let st = std::process::Command::new("qemu-img")
        .args([
            "create",
            "-f",
            "qcow2",
            "-F",
            "raw",
            "-b",
            "src.raw",
            "over.qcow2",
        ])
        .current_dir(world.dir.path())
        .status()
        .unwrap();
    assert!(st.success());
    let over = world.path("over.qcow2");
    world.proxy.clear_requests();
    let refused = world.run(&["upload", over.to_str().unwrap()]).await;
    refused.assert_failed_with("backing file");
    assert!(
        world.proxy.requests().is_empty(),
        "a request before the refusal"
    );
    let run = world
        .run(&[
            "--output",
            "json",
            "upload",
            over.to_str().unwrap(),
            "--allow-backing-file",
        ])
        .await;
    let report = json(&run);
    let back = world.path("back-over.raw");
    world
        .run(&[
            "download",
            report["snapshot_id"].as_str().unwrap(),
            back.to_str().unwrap(),
        ])
        .await
        .assert_ok();
    assert_same_content(&raw, &back);
    let snap = &snaps[0];
    // The VMDK holds exactly the raw image: its download has the raw's size.
    let out = world.path("back.raw");
    world
        .run(&["download", snap, out.to_str().unwrap()])
        .await
        .assert_ok();
    assert_same_content(&raw, &out);
    // An existing OUTPUT is refused and left alone without --force; replaced with it.
    std::fs::write(&out, b"keep me").unwrap();
    let refused = world.run(&["download", snap, out.to_str().unwrap()]).await;
    assert_ne!(refused.code, Some(0), "{}", refused.stderr);
    assert!(
        refused.stderr.contains(out.to_str().unwrap()),
        "{}",
        refused.stderr
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"keep me");
    world
        .run(&["download", snap, out.to_str().unwrap(), "--force"])
        .await
        .assert_ok();
    assert_same_content(&raw, &out);
    // --full-volume: the whole 1 GiB volume, the same content.
    let full = world.path("full.raw");
    world
        .run(&["download", snap, full.to_str().unwrap(), "--full-volume"])
        .await
        .assert_ok();
    assert_eq!(std::fs::metadata(&full).unwrap().len(), 1 << 30);
    assert_eq!(nonzero_blocks(&full), want);
    // --workers 2: exactly two block reads are in flight at once (held at the proxy
    // until the test lets them go).
    let gate = world.proxy.hold(Some("GetSnapshotBlock"), 0);
    let dest = world.path("workers.raw");
    let mut cmd = world.ec2ami();
    cmd.args(["download", snap, dest.to_str().unwrap(), "--workers", "2"]);
    let task = tokio::spawn(async move { Run::from(cmd.output().await.unwrap()) });
    assert!(
        gate.arrived(2, std::time::Duration::from_secs(60)).await,
        "two block reads arrive"
    );
    // A third would arrive at once if a third worker existed; it does not come while
    // the two are held.
    assert!(!gate.arrived(3, std::time::Duration::from_millis(500)).await);
    assert_eq!(gate.held(), 2);
    gate.open();
    task.await.unwrap().assert_ok();
    assert_same_content(&raw, &dest);
}

/// The image `id` in `region`, as the world describes it (None: not there).
async fn image_in(world: &World, region: &str, id: &str) -> Option<aws_sdk_ec2::types::Image> {
    let c = world.clients().await.in_region(region);
    c.ec2
        .describe_images()
        .image_ids(id)
        .send()
        .await
        .ok()?
        .images()
        .first()
        .cloned()
}

/// Our images named `name` in `region`: (id, state).
async fn named(world: &World, region: &str, name: &str) -> Vec<(String, String)> {
    let c = world.clients().await.in_region(region);
    let out = c
        .ec2
        .describe_images()
        .owners("self")
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("name")
                .values(name)
                .build(),
        )
        .send()
        .await
        .unwrap();
    out.images()
        .iter()
        .map(|i| {
            (
                i.image_id().unwrap().to_string(),
                i.state().unwrap().as_str().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profile_endpoint_register_copy_and_params_flags_take_effect() {
    // Images pending for one answer; copies to eu-west-1 fail.
    let world = World::moto_with(ec2ami_testkit::MotoOptions {
        realism: ec2ami_testkit::Realism {
            pending_polls: 1,
            fail_copies_to: vec!["eu-west-1".into()],
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let image = world.path("os.raw");
    write_file(&image, &random_bytes(33, 2 * MIB as usize));

    // --profile: the region and keys of that profile, not of the default one, nor of
    // the environment (removed here).
    let config = world.path("aws-config");
    std::fs::write(
        &config,
        "[default]\nregion = eu-west-1\n\n[profile flagtest]\nregion = us-west-2\n",
    )
    .unwrap();
    let creds = world.path("aws-credentials");
    std::fs::write(
        &creds,
        "[default]\naws_access_key_id = AKIADEFAULTEXAMPLE00\naws_secret_access_key = x\n\n\
         [flagtest]\naws_access_key_id = AKIAFLAGTESTEXAMPLE0\naws_secret_access_key = y\n",
    )
    .unwrap();
    let mut cmd = world.ec2ami();
    for k in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
    ] {
        cmd.env_remove(k);
    }
    cmd.env("AWS_CONFIG_FILE", &config)
        .env("AWS_SHARED_CREDENTIALS_FILE", &creds)
        .args([
            "--profile",
            "flagtest",
            "upload",
            image.to_str().unwrap(),
            "--no-wait",
        ]);
    let run = Run::from(cmd.output().await.unwrap());
    run.assert_ok();
    let start = world
        .proxy
        .requests()
        .into_iter()
        .find(|r| r.operation == "StartSnapshot")
        .unwrap();
    assert_eq!(start.region, "us-west-2", "the profile's region");
    let auth = start
        .header("authorization")
        .unwrap_or_default()
        .to_string();
    assert!(auth.contains("Credential=AKIAFLAGTESTEXAMPLE0/"), "{auth}");

    // --endpoint-url wins over AWS_ENDPOINT_URL (here a closed port).
    world.proxy.clear_requests();
    let mut cmd = world.ec2ami();
    cmd.env("AWS_ENDPOINT_URL", "http://127.0.0.1:9").args([
        "--endpoint-url",
        &world.proxy.url(),
        "--output",
        "json",
        "upload",
        image.to_str().unwrap(),
    ]);
    let up = json(&Run::from(cmd.output().await.unwrap()));
    let snap = up["snapshot_id"].as_str().unwrap().to_string();
    assert_eq!(
        world.proxy.count("StartSnapshot"),
        1,
        "it went to --endpoint-url"
    );

    // register: --imds optional, --root-device, --volume-size, --protect on the wire and
    // in the world.
    world.proxy.clear_requests();
    let name = "Flags 1.0 amd64";
    let run = world
        .run(&[
            "register",
            &snap,
            "--name",
            name,
            "--boot-mode",
            "uefi",
            "--imds",
            "optional",
            "--root-device",
            "/dev/xvda",
            "--volume-size",
            "12",
            "--protect",
        ])
        .await;
    run.assert_ok();
    let ami = run.stdout.trim().to_string();
    let reg = params_of(&world, "RegisterImage");
    assert_eq!(reg.len(), 1);
    let p = &reg[0];
    assert_eq!(
        p.get("ImdsSupport"),
        None,
        "optional: no ImdsSupport: {p:?}"
    );
    assert_eq!(p["RootDeviceName"], "/dev/xvda");
    assert_eq!(p["BlockDeviceMapping.1.DeviceName"], "/dev/xvda");
    assert_eq!(p["BlockDeviceMapping.1.Ebs.VolumeSize"], "12");
    let protect = params_of(&world, "EnableImageDeregistrationProtection");
    assert_eq!(protect.len(), 1);
    assert_eq!(protect[0]["ImageId"], ami);
    let img = image_in(&world, REGION, &ami).await.unwrap();
    assert_eq!(img.root_device_name(), Some("/dev/xvda"));
    assert_eq!(
        img.block_device_mappings()[0].ebs().unwrap().volume_size(),
        Some(12)
    );
    assert_eq!(img.imds_support(), None);
    assert_eq!(img.deregistration_protection(), Some("enabled"));

    // register --wait-timeout 0s: the first answer is `pending`, the deadline has
    // passed; the error says so. A rerun reuses the image and waits it out.
    let quick = world
        .run(&[
            "register",
            &snap,
            "--name",
            "Flags quick",
            "--wait-timeout",
            "0s",
        ])
        .await;
    quick.assert_failed_with("not available within 0s");
    let made = named(&world, REGION, "Flags quick").await;
    assert_eq!(made.len(), 1, "{made:?}");
    let again = world
        .run(&["register", &snap, "--name", "Flags quick"])
        .await;
    again.assert_ok();
    assert_eq!(again.stdout.trim(), made[0].0, "the rerun reuses it");

    // copy --best-effort: eu-west-1's copy fails, a warning; us-west-2's is protected.
    world.proxy.clear_requests();
    let run = world
        .run(&[
            "--output",
            "json",
            "copy",
            &ami,
            "--to",
            "us-west-2,eu-west-1",
            "--best-effort",
            "eu-west-1",
            "--protect",
        ])
        .await;
    run.assert_ok();
    assert!(run.stderr.contains("eu-west-1"), "{}", run.stderr);
    let west = named(&world, "us-west-2", name).await;
    assert_eq!(west.len(), 1);
    assert_eq!(west[0].1, "available");
    let eu = named(&world, "eu-west-1", name).await;
    assert_eq!(eu.len(), 1);
    assert_eq!(eu[0].1, "failed");
    let protected: Vec<String> = world
        .proxy
        .requests()
        .iter()
        .filter(|r| r.operation == "EnableImageDeregistrationProtection" && r.status == 200)
        .map(|r| format!("{}:{}", r.region, form(r)["ImageId"]))
        .collect();
    assert!(
        protected.contains(&format!("us-west-2:{}", west[0].0)),
        "{protected:?}"
    );
    let copy = image_in(&world, "us-west-2", &west[0].0).await.unwrap();
    assert_eq!(copy.deregistration_protection(), Some("enabled"));
    // Without --best-effort the same failure fails the command, naming the region.
    let strict = world.run(&["copy", &ami, "--to", "eu-west-1"]).await;
    strict.assert_failed_with("eu-west-1");

    // copy --wait-timeout 0s: the copy is made, the wait gives up at once, saying so.
    let quick = world
        .run(&[
            "copy",
            &ami,
            "--to",
            "ap-southeast-2",
            "--wait-timeout",
            "0s",
        ])
        .await;
    assert_ne!(quick.code, Some(0), "{}", quick.stderr);
    assert!(quick.stderr.contains("ap-southeast-2"), "{}", quick.stderr);
    assert_eq!(named(&world, "ap-southeast-2", name).await.len(), 1);

    // params put --var: the variable fills the template, in each region.
    let run = world
        .run(&[
            "params",
            "put",
            "--image",
            &ami,
            "--regions",
            "us-east-1,us-west-2",
            "--var",
            "channel=beta",
            "/flags/{channel}/{region}",
        ])
        .await;
    run.assert_ok();
    for (region, want) in [
        ("us-east-1", ami.as_str()),
        ("us-west-2", west[0].0.as_str()),
    ] {
        let c = world.clients().await.in_region(region);
        let v = c
            .ssm
            .get_parameter()
            .name(format!("/flags/beta/{region}"))
            .send()
            .await
            .unwrap();
        assert_eq!(v.parameter().unwrap().value(), Some(want), "{region}");
    }
}

/// The launch permissions of `image` in `region`, read back: "org:ARN", "ou:ARN", ...
async fn launch_permissions(world: &World, region: &str, image: &str) -> Vec<String> {
    let c = world.clients().await.in_region(region);
    let out = c
        .ec2
        .describe_image_attribute()
        .image_id(image)
        .attribute(aws_sdk_ec2::types::ImageAttributeName::LaunchPermission)
        .send()
        .await
        .unwrap();
    let mut v: Vec<String> = out
        .launch_permissions()
        .iter()
        .map(|p| {
            if let Some(o) = p.organization_arn() {
                format!("org:{o}")
            } else if let Some(o) = p.organizational_unit_arn() {
                format!("ou:{o}")
            } else if let Some(u) = p.user_id() {
                format!("user:{u}")
            } else {
                format!("group:{:?}", p.group())
            }
        })
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_image_keys_source_region_org_sharing_and_publish_flags() {
    const ORG: &str = "arn:aws:organizations::123456789012:organization/o-abc123def4";
    const OU: &str = "arn:aws:organizations::123456789012:ou/o-abc123def4/ou-ab12-cdef3456";
    let world = World::moto_with(ec2ami_testkit::MotoOptions {
        realism: ec2ami_testkit::Realism {
            pending_polls: 1,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let dir = world.dir.path();
    // The image is a qcow2 overlay on a raw base: only --allow-backing-file reads it.
    let base = dir.join("base.raw");
    sparse_file(&base, 4 * MIB, &[(MIB, random_bytes(34, MIB as usize))]);
    let st = std::process::Command::new("qemu-img")
        .args([
            "create",
            "-f",
            "qcow2",
            "-F",
            "raw",
            "-b",
            "base.raw",
            "over.qcow2",
        ])
        .current_dir(dir)
        .status()
        .expect("qemu-img is installed (apt-get install qemu-utils)");
    assert!(st.success());
    let rel = dir.join("release.toml");
    std::fs::write(
        &rel,
        format!(
            r#"
regions = ["us-west-2", "eu-central-1"]
source_region = "us-west-2"
share_orgs = ["{ORG}"]
share_ous = ["{OU}"]
ssm = ["/flagpub/{{arch}}"]

[defaults]
name = "FlagPub 1.0 {{arch}}"
boot_mode = "uefi"

[[image]]
path = "over.qcow2"
arch = "x86_64"
imds = "optional"
root_device = "/dev/xvda"
sriov = true
tpm = true
volume_size = 14
volume_type = "gp2"
"#
        ),
    )
    .unwrap();
    let rel_s = rel.to_str().unwrap();
    // Refused without --allow-backing-file, before any request that changes anything.
    let refused = world.run(&["publish", rel_s]).await;
    refused.assert_failed_with("backing file");
    assert!(mutating(&world).is_empty(), "{:?}", mutating(&world));
    // --wait-timeout 0s: the first `pending` answer ends the run, saying so ...
    let index_dir = world.path("pub-index");
    let idx = index_dir.to_str().unwrap();
    let quick = world
        .run(&[
            "publish",
            rel_s,
            "--allow-backing-file",
            "--index-dir",
            idx,
            "--wait-timeout",
            "0s",
        ])
        .await;
    assert_ne!(quick.code, Some(0), "{}", quick.stderr);
    assert!(quick.stderr.contains("within 0s"), "{}", quick.stderr);
    // ... (the upload whose wait gave up deleted its snapshot) and a rerun finishes it.
    world.proxy.clear_requests();
    world
        .run(&["publish", rel_s, "--allow-backing-file", "--index-dir", idx])
        .await
        .assert_ok();
    // The overlay's content is the base's: its non-zero blocks, written once; one
    // snapshot of ours left in the source region, none leaked.
    assert_eq!(
        world.proxy.count("PutSnapshotBlock"),
        nonzero_blocks(&base).len()
    );
    let west = world.clients().await.in_region("us-west-2");
    let ours = west
        .ec2
        .describe_snapshots()
        .owner_ids("self")
        .send()
        .await
        .unwrap();
    assert_eq!(ours.snapshots().len(), 1, "{:?}", ours.snapshots());
    let files: Vec<_> = std::fs::read_dir(&index_dir).unwrap().collect();
    assert_eq!(files.len(), 1, "the block index is in --index-dir");
    // source_region: uploaded and registered in us-west-2, copied from there; nothing
    // in the default region.
    let reqs = world.proxy.requests();
    for op in ["StartSnapshot", "RegisterImage"] {
        let regions: Vec<&str> = reqs
            .iter()
            .filter(|r| r.operation == op && (200..300).contains(&r.status))
            .map(|r| r.region.as_str())
            .collect();
        assert!(
            !regions.is_empty() && regions.iter().all(|r| *r == "us-west-2"),
            "{op}: {regions:?}"
        );
    }
    let copies = params_of(&world, "CopyImage");
    assert!(!copies.is_empty());
    assert!(
        copies.iter().all(|c| c["SourceRegion"] == "us-west-2"),
        "{copies:?}"
    );
    assert!(
        !reqs
            .iter()
            .any(|r| r.region == "us-east-1" && !r.operation.starts_with("Describe")),
        "nothing done in us-east-1"
    );
    // The image keys on the wire.
    let reg = params_of(&world, "RegisterImage");
    let p = &reg[0];
    assert_eq!(p.get("ImdsSupport"), None, "imds = optional: {p:?}");
    assert_eq!(p["RootDeviceName"], "/dev/xvda");
    assert_eq!(p["BlockDeviceMapping.1.DeviceName"], "/dev/xvda");
    assert_eq!(p["SriovNetSupport"], "simple");
    assert_eq!(p["TpmSupport"], "v2.0");
    assert_eq!(p["BlockDeviceMapping.1.Ebs.VolumeSize"], "14");
    assert_eq!(p["BlockDeviceMapping.1.Ebs.VolumeType"], "gp2");
    // Shared with the organisation and the OU in both regions, read back.
    for region in ["us-west-2", "eu-central-1"] {
        let imgs = named(&world, region, "FlagPub 1.0 x86_64").await;
        assert_eq!(imgs.len(), 1, "{region}: {imgs:?}");
        let img = image_in(&world, region, &imgs[0].0).await.unwrap();
        assert_eq!(img.root_device_name(), Some("/dev/xvda"), "{region}");
        let ebs = img.block_device_mappings()[0].ebs().unwrap();
        assert_eq!(ebs.volume_size(), Some(14), "{region}");
        assert_eq!(
            ebs.volume_type().map(|t| t.as_str()),
            Some("gp2"),
            "{region}"
        );
        assert_eq!(
            launch_permissions(&world, region, &imgs[0].0).await,
            vec![format!("org:{ORG}"), format!("ou:{OU}")],
            "{region}"
        );
    }
    // compat bsdec2-image-upload --wait-timeout 0s: the same deadline, in its grammar.
    let keys = world.path("aws.key");
    std::fs::write(&keys, "ACCESS_KEY_ID=testing\nACCESS_KEY_SECRET=testing\n").unwrap();
    let raw = world.path("compat.raw");
    sparse_file(&raw, 4 * MIB, &[(0, random_bytes(35, MIB as usize))]);
    let quick = world
        .run(&[
            "compat",
            "bsdec2-image-upload",
            "--wait-timeout",
            "0s",
            raw.to_str().unwrap(),
            "FlagCompat 1.0 amd64",
            "flag compat",
            "us-west-2",
            "unused-bucket",
            keys.to_str().unwrap(),
        ])
        .await;
    assert_ne!(quick.code, Some(0), "{}", quick.stderr);
    assert!(quick.stderr.contains("within 0s"), "{}", quick.stderr);
}
