//! publish, validate, params and the bsdec2-image-upload compat command against moto
//! in several regions, through the recording proxy: attributes moto does not keep are
//! checked on the requests ec2ami sent; what moto keeps is checked in moto; uploads are
//! downloaded back and compared.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ec2ami_testkit::{Fault, FaultRule};

use crate::common::*;

const REGIONS: [&str; 3] = ["us-east-1", "us-west-2", "eu-west-1"];

/// The example release of the issue (with non-/aws/ parameters), for `dir`.
fn example_release(dir: &Path, public: bool) -> PathBuf {
    let text = format!(
        r#"
regions = ["us-east-1", "us-west-2", "eu-west-1"]
public = {public}
ssm = ["/myos/{{arch}}/{{flavour}}/{{fs}}/{{version}}/{{branch}}"]

[defaults]
version = "15.0"
branch = "CURRENT"
git = "4f1e2d3"
date = "20261124"
description = "MyOS/{{arch}} {{branch}}@{{git}}"
name = "MyOS {{version}}-{{branch}}-{{arch}}-{{date}} {{flavour}} {{fs_upper}}"
boot_mode = "uefi-preferred"
ena = true

[[image]]
path = "base-ufs-amd64.raw"
arch = "x86_64"
flavour = "base"
fs = "ufs"

[[image]]
path = "small-zfs-arm64.raw"
arch = "arm64"
flavour = "small"
fs = "zfs"
"#
    );
    let path = dir.join("release.toml");
    std::fs::write(&path, text).unwrap();
    sparse_file(
        &dir.join("base-ufs-amd64.raw"),
        16 * MIB,
        &[(0, random_bytes(60, 2 * MIB as usize))],
    );
    sparse_file(
        &dir.join("small-zfs-arm64.raw"),
        12 * MIB,
        &[(4 * MIB, random_bytes(61, 3 * MIB as usize))],
    );
    path
}

const NAME_AMD64: &str = "MyOS 15.0-CURRENT-x86_64-20261124 base UFS";
const NAME_ARM64: &str = "MyOS 15.0-CURRENT-arm64-20261124 small ZFS";
const PARAM_AMD64: &str = "/myos/x86_64/base/ufs/15.0/CURRENT";
const PARAM_ARM64: &str = "/myos/arm64/small/zfs/15.0/CURRENT";

/// The `Created AMI in R region: ID` lines of a publish: (region, id) in order.
fn created(stdout: &str) -> Vec<(String, String)> {
    stdout
        .lines()
        .map(|l| {
            let rest = l
                .strip_prefix("Created AMI in ")
                .unwrap_or_else(|| panic!("not a Created line: {l}"));
            let (r, id) = rest.split_once(" region: ").unwrap();
            assert!(id.starts_with("ami-"), "{l}");
            (r.to_string(), id.to_string())
        })
        .collect()
}

/// Everything a publish leaves in moto, with ids replaced by names so two worlds can
/// be compared: per region, our AMIs (name, public), our snapshots (count by AMI
/// name tag or "copy"), and each parameter with the name of the AMI it points at.
#[derive(Debug, PartialEq, Eq)]
struct State {
    images: BTreeMap<String, Vec<(String, bool)>>,
    snapshots: BTreeMap<String, BTreeMap<String, usize>>,
    params: BTreeMap<String, BTreeMap<String, String>>,
}

async fn state(world: &World) -> State {
    let mut s = State {
        images: BTreeMap::new(),
        snapshots: BTreeMap::new(),
        params: BTreeMap::new(),
    };
    for region in REGIONS {
        let c = world.clients().await.in_region(region);
        let imgs = c.ec2.describe_images().owners("self").send().await.unwrap();
        let mut names: Vec<(String, bool)> = imgs
            .images()
            .iter()
            .map(|i| (i.name().unwrap().to_string(), i.public().unwrap_or(false)))
            .collect();
        names.sort();
        let id_to_name: BTreeMap<String, String> = imgs
            .images()
            .iter()
            .map(|i| (i.image_id().unwrap().into(), i.name().unwrap().into()))
            .collect();
        s.images.insert(region.into(), names);
        let snaps = c
            .ec2
            .describe_snapshots()
            .owner_ids("self")
            .filters(
                aws_sdk_ec2::types::Filter::builder()
                    .name("tag-key")
                    .values("ec2ami:managed-by")
                    .build(),
            )
            .send()
            .await
            .unwrap();
        let mut counts = BTreeMap::new();
        for sn in snaps.snapshots() {
            let k = sn
                .tags()
                .iter()
                .find(|t| t.key() == Some("ec2ami:ami-name"))
                .and_then(|t| t.value())
                .unwrap_or("other")
                .to_string();
            *counts.entry(k).or_insert(0) += 1;
        }
        s.snapshots.insert(region.into(), counts);
        let mut params = BTreeMap::new();
        for p in [PARAM_AMD64, PARAM_ARM64] {
            if let Ok(out) = c.ssm.get_parameter().name(p).send().await {
                let v = out.parameter().unwrap().value().unwrap().to_string();
                params.insert(
                    p.to_string(),
                    id_to_name
                        .get(&v)
                        .cloned()
                        .unwrap_or(format!("dangling {v}")),
                );
            }
        }
        s.params.insert(region.into(), params);
    }
    s
}

/// The state a complete publish of the example release must leave.
fn expected_state(public: bool) -> State {
    let mut s = State {
        images: BTreeMap::new(),
        snapshots: BTreeMap::new(),
        params: BTreeMap::new(),
    };
    for region in REGIONS {
        let mut names = vec![(NAME_AMD64.into(), public), (NAME_ARM64.into(), public)];
        names.sort();
        s.images.insert(region.into(), names);
        s.params.insert(
            region.into(),
            [(PARAM_AMD64, NAME_AMD64), (PARAM_ARM64, NAME_ARM64)]
                .into_iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        );
    }
    s
}

/// Compare images, parameters and the uploaded snapshots (one per image in the source
/// region; the snapshots behind copies are moto's business).
fn assert_complete(got: &State, public: bool) {
    let want = expected_state(public);
    assert_eq!(got.images, want.images, "AMIs per region");
    assert_eq!(got.params, want.params, "parameters per region");
    let uploads = &got.snapshots["us-east-1"];
    assert_eq!(uploads.get(NAME_AMD64), Some(&1), "{uploads:?}");
    assert_eq!(uploads.get(NAME_ARM64), Some(&1), "{uploads:?}");
}

async fn publish(world: &World, release: &Path, extra: &[&str]) -> Run {
    let mut args = vec!["publish", release.to_str().unwrap()];
    args.extend_from_slice(extra);
    world.run(&args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_the_example_release_to_three_regions_and_rerun() {
    let world = World::moto().await;
    let release = example_release(world.dir.path(), true);
    let run = publish(&world, &release, &[]).await;
    run.assert_ok();
    let lines = created(&run.stdout);
    let regions: Vec<&str> = lines.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(
        regions,
        [REGIONS.as_slice(), REGIONS.as_slice()].concat(),
        "{}",
        run.stdout
    );
    assert_complete(&state(&world).await, true);

    // The attributes moto drops, on the wire.
    let regs = world
        .proxy
        .requests()
        .into_iter()
        .filter(|r| r.operation == "RegisterImage" && r.status == 200)
        .map(|r| form(&r))
        .collect::<Vec<_>>();
    assert_eq!(regs.len(), 2, "one RegisterImage per image");
    for p in &regs {
        for (k, v) in [
            ("BootMode", "uefi-preferred"),
            ("EnaSupport", "true"),
            ("ImdsSupport", "v2.0"),
            ("RootDeviceName", "/dev/sda1"),
            ("BlockDeviceMapping.1.Ebs.VolumeType", "gp3"),
            ("BlockDeviceMapping.1.Ebs.VolumeSize", "10"),
        ] {
            assert_eq!(p.get(k).map(String::as_str), Some(v), "{k}: {p:?}");
        }
        assert!(p["BlockDeviceMapping.1.Ebs.SnapshotId"].starts_with("snap-"));
    }
    let archs: Vec<&str> = regs.iter().map(|p| p["Architecture"].as_str()).collect();
    assert_eq!(archs, ["x86_64", "arm64"]);
    let descriptions: Vec<&str> = regs.iter().map(|p| p["Description"].as_str()).collect();
    assert_eq!(
        descriptions,
        ["MyOS/x86_64 CURRENT@4f1e2d3", "MyOS/arm64 CURRENT@4f1e2d3"]
    );
    assert_eq!(world.proxy.count("CopyImage"), 4, "2 images x 2 regions");
    for p in world
        .proxy
        .requests()
        .iter()
        .filter(|r| r.operation == "PutParameter")
    {
        let body: serde_json::Value = serde_json::from_slice(p.body.as_ref().unwrap()).unwrap();
        assert_eq!(body["DataType"], "aws:ec2:image");
        assert_eq!(body["Type"], "String");
    }

    // What was uploaded is the image (moto checks no checksum: compare the bytes).
    let json = world
        .run(&["--output", "json", "publish", release.to_str().unwrap()])
        .await;
    json.assert_ok();
    let report: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    let snap = report["images"][0]["snapshot_id"].as_str().unwrap();
    let back = world.path("back.raw");
    world.download(snap, &back).await;
    assert_same_content(&world.path("base-ufs-amd64.raw"), &back);

    // A rerun creates nothing and prints the same lines.
    world.proxy.clear_requests();
    let again = publish(&world, &release, &[]).await;
    again.assert_ok();
    assert_eq!(again.stdout, run.stdout);
    let m = mutating(&world);
    assert!(
        m.iter().all(|op| op == "ModifyImageAttribute"),
        "a rerun only re-applies permissions: {m:?}"
    );
    assert_complete(&state(&world).await, true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_shows_every_action_and_changes_nothing() {
    let world = World::moto().await;
    let release = example_release(world.dir.path(), true);
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
    assert!(mutating(&world).is_empty(), "{:?}", mutating(&world));
    let plan: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let actions = plan["actions"].as_array().unwrap();
    let count = |step: &str, verb: &str| {
        actions
            .iter()
            .filter(|a| a["step"] == step && a["verb"] == verb)
            .count()
    };
    assert_eq!(count("snapshot", "create"), 2);
    assert_eq!(count("register", "create"), 2);
    assert_eq!(count("copy", "create"), 4);
    assert_eq!(count("param", "create"), 6);
    assert_eq!(count("share", "update"), 6);

    publish(&world, &release, &[]).await.assert_ok();
    world.proxy.clear_requests();
    let text = world
        .run(&["publish", release.to_str().unwrap(), "--plan"])
        .await;
    text.assert_ok();
    assert!(mutating(&world).is_empty());
    assert!(
        text.stdout
            .contains("0 to create, 0 to update, 0 to delete, 0 refused"),
        "{}",
        text.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_on_every_request_give_the_same_final_state() {
    let world = World::moto().await;
    let release = example_release(world.dir.path(), true);
    world.proxy.set_rules(vec![
        FaultRule::with_rate(None, Fault::Throttle, 0.10),
        FaultRule::with_rate(None, Fault::Status(503), 0.10),
    ]);
    let run = publish(&world, &release, &[]).await;
    run.assert_ok();
    let faults = world
        .proxy
        .requests()
        .iter()
        .filter(|r| r.fault.is_some())
        .count();
    assert!(
        faults > 5,
        "only {faults} faults injected: the test proves little"
    );
    world.proxy.set_rules(vec![]);
    assert_complete(&state(&world).await, true);
    assert_eq!(created(&run.stdout).len(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_at_many_points_a_rerun_finishes_with_nothing_duplicated() {
    // One uninterrupted run tells how many requests a publish makes.
    let reference = World::moto().await;
    let release = example_release(reference.dir.path(), false);
    publish(&reference, &release, &[]).await.assert_ok();
    let total = reference.proxy.requests().len();
    assert_complete(&state(&reference).await, false);
    drop(reference);

    // Kill -9 after k requests for k spread over the whole run (uploads, register,
    // copies, parameters), then run again until done.
    let points: Vec<usize> = (1..=12).map(|i| i * total / 13).collect();
    for k in points {
        let world = World::moto().await;
        let release = example_release(world.dir.path(), false);
        // The first k requests pass; the next is held, and the kill lands while it waits
        // (a hook: the same point on every machine).
        let gate = world.proxy.hold(None, k);
        let args = ["publish", release.to_str().unwrap(), "--workers", "2"];
        world
            .kill_at_gate(&gate, &args, Duration::from_secs(60))
            .await;
        let killed_after = world.proxy.requests().len();
        let run = publish(&world, &release, &[]).await;
        run.assert_ok();
        assert_eq!(
            created(&run.stdout).len(),
            6,
            "kill after {k}: {}",
            run.stdout
        );
        let got = state(&world).await;
        if got.images != expected_state(false).images {
            for (i, r) in world.proxy.requests().iter().enumerate() {
                if !r.operation.starts_with("PutSnapshotBlock") {
                    eprintln!("{i:3} {} {} {}", r.region, r.operation, r.status);
                }
            }
        }
        assert_complete(&got, false);
        eprintln!("killed after {killed_after}/{total} requests: rerun converged");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_started_but_never_journalled_is_known_as_ours_by_the_rerun() {
    // The race of a kill between StartSnapshot's answer and its journal entry, made
    // deterministic: the first StartSnapshot is carried out but its answer is lost, and
    // the run is killed -9 while its next StartSnapshot is held. A pending snapshot
    // tagged with this state database's id is left that the journal never heard of.
    let world = World::moto().await;
    let release = example_release(world.dir.path(), false);
    world.proxy.set_rules(vec![FaultRule::first_n(
        Some("StartSnapshot"),
        Fault::DropResponse,
        1,
    )]);
    let gate = world.proxy.hold(Some("StartSnapshot"), 1);
    let args = ["publish", release.to_str().unwrap()];
    let held = world
        .kill_at_gate(&gate, &args, Duration::from_secs(60))
        .await;
    assert!(held, "the second StartSnapshot was held");
    world.proxy.set_rules(vec![]);
    let left = state(&world).await.snapshots["us-east-1"].clone();
    assert_eq!(left.values().sum::<usize>(), 1, "one orphan: {left:?}");

    // The plan says what becomes of it; the rerun deletes it and uploads once.
    let plan = publish(&world, &release, &["--plan"]).await;
    plan.assert_ok();
    assert!(
        plan.stdout
            .contains("left by an interrupted run of this state database"),
        "{}",
        plan.stdout
    );
    assert!(!plan.stdout.contains("left alone"), "{}", plan.stdout);
    let run = publish(&world, &release, &[]).await;
    run.assert_ok();
    assert_complete(&state(&world).await, false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_release_files_fail_before_any_mutating_request() {
    let world = World::moto().await;
    let good = std::fs::read_to_string(example_release(world.dir.path(), false)).unwrap();
    let cases: Vec<(String, &str)> = vec![
        (
            good.replace("{flavour} {fs_upper}", "{flavor} {fs_upper}"),
            "unknown variable `{flavor}`",
        ),
        (
            good.replace("small-zfs-arm64.raw", "missing.raw"),
            "missing.raw",
        ),
        (
            good.replace("arch = \"arm64\"", "arch = \"x86_64\"")
                .replace("flavour = \"small\"", "flavour = \"base\"")
                .replace("fs = \"zfs\"", "fs = \"ufs\""),
            "both be named",
        ),
        (
            good.replace("/myos/", "/aws/service/myos/"),
            "public AMIs only",
        ),
        (good.replace("\"eu-west-1\"", "\"eu-west-9\""), "eu-west-9"),
        (good.replace("regions =", "regionz ="), "regionz"),
    ];
    for (text, needle) in cases {
        let path = world.path("bad.toml");
        std::fs::write(&path, &text).unwrap();
        let run = publish(&world, &path, &[]).await;
        run.assert_failed_with(needle);
    }
    assert!(mutating(&world).is_empty(), "{:?}", mutating(&world));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameters_are_not_clobbered_unless_allowed() {
    // Someone else's value in one region: an AMI of Amazon's (SSM keeps only AMI ids
    // of the region in an aws:ec2:image parameter).
    let world = World::moto_with(ec2ami_testkit::MotoOptions {
        amazon_images: true,
        ..Default::default()
    })
    .await;
    let release = example_release(world.dir.path(), false);
    let c = world.clients().await.in_region("us-west-2");
    let foreign = c
        .ec2
        .describe_images()
        .owners("amazon")
        .send()
        .await
        .unwrap()
        .images()[0]
        .image_id()
        .unwrap()
        .to_string();
    c.ssm
        .put_parameter()
        .name(PARAM_AMD64)
        .value(&foreign)
        .r#type(aws_sdk_ssm::types::ParameterType::String)
        .data_type("aws:ec2:image")
        .send()
        .await
        .unwrap();
    let run = publish(&world, &release, &[]).await;
    run.assert_failed_with(&format!("holds {foreign}"));
    assert!(run.stderr.contains("--allow-clobber") || run.stderr.contains("ssm_overwrite"));
    let value = |c: aws_sdk_ssm::Client| async move {
        c.get_parameter()
            .name(PARAM_AMD64)
            .send()
            .await
            .unwrap()
            .parameter()
            .unwrap()
            .value()
            .unwrap()
            .to_string()
    };
    assert_eq!(value(c.ssm.clone()).await, foreign);

    // Allowed in the release file: replaced, and the plan said old -> new first.
    let text = std::fs::read_to_string(&release)
        .unwrap()
        .replace("public = false", "public = false\nssm_overwrite = true");
    std::fs::write(&release, text).unwrap();
    let plan = publish(&world, &release, &["--plan"]).await;
    plan.assert_ok();
    assert!(
        plan.stdout
            .contains(&format!("{PARAM_AMD64}: {foreign} -> ami-")),
        "{}",
        plan.stdout
    );
    publish(&world, &release, &[]).await.assert_ok();
    assert_complete(&state(&world).await, false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn params_put_and_promote() {
    let world = World::moto().await;
    let release = example_release(world.dir.path(), false);
    let run = publish(&world, &release, &[]).await;
    run.assert_ok();
    let lines = created(&run.stdout);
    let (_, ami) = &lines[0];
    let regions = REGIONS.join(",");
    world.proxy.clear_requests();
    let put = world
        .run(&[
            "params",
            "put",
            "--image",
            ami,
            "--regions",
            &regions,
            "/myos/{arch}/{version}/latest-{region}",
        ])
        .await;
    put.assert_ok();
    assert_eq!(put.stdout.lines().count(), 3, "{}", put.stdout);
    for (region, id) in lines.iter().take(3) {
        let c = world.clients().await.in_region(region);
        let got = c
            .ssm
            .get_parameter()
            .name(format!("/myos/x86_64/15.0/latest-{region}"))
            .send()
            .await
            .unwrap();
        assert_eq!(got.parameter().unwrap().value(), Some(id.as_str()));
    }
    // An unknown template variable: refused before any write.
    world.proxy.clear_requests();
    world
        .run(&["params", "put", "--image", ami, "/myos/{nope}"])
        .await
        .assert_failed_with("unknown variable `{nope}`");
    assert!(mutating(&world).is_empty());

    // Promote the amd64 parameter to a "stable" name, then over the arm64 one only with
    // --allow-clobber.
    world
        .run(&[
            "params",
            "promote",
            PARAM_AMD64,
            "/myos/stable",
            "--regions",
            &regions,
        ])
        .await
        .assert_ok();
    let refused = world
        .run(&[
            "params",
            "promote",
            PARAM_ARM64,
            "/myos/stable",
            "--regions",
            &regions,
        ])
        .await;
    refused.assert_failed_with("--allow-clobber");
    let plan = world
        .run(&[
            "params",
            "promote",
            PARAM_ARM64,
            "/myos/stable",
            "--regions",
            &regions,
            "--allow-clobber",
            "--plan",
        ])
        .await;
    plan.assert_ok();
    assert_eq!(plan.stdout.matches(" -> ").count(), 3, "{}", plan.stdout);
    world
        .run(&[
            "params",
            "promote",
            PARAM_ARM64,
            "/myos/stable",
            "--regions",
            &regions,
            "--allow-clobber",
        ])
        .await
        .assert_ok();
    for (region, id) in lines.iter().skip(3) {
        let c = world.clients().await.in_region(region);
        let got = c
            .ssm
            .get_parameter()
            .name("/myos/stable")
            .send()
            .await
            .unwrap();
        assert_eq!(
            got.parameter().unwrap().value(),
            Some(id.as_str()),
            "{region}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compat_bsdec2_image_upload_accepts_its_flags_and_prints_its_lines() {
    let world = World::moto().await;
    let image = world.path("freebsd.raw");
    sparse_file(&image, 8 * MIB, &[(MIB, random_bytes(70, MIB as usize))]);
    let keys = world.path("aws.key");
    std::fs::write(
        &keys,
        "ACCESS_KEY_ID=testing\nACCESS_KEY_SECRET=testing-secret-42\n",
    )
    .unwrap();
    let name = "FreeBSD 14.1-STABLE-amd64-20241003 UEFI-PREFERRED base UFS";
    let args = [
        "compat",
        "bsdec2-image-upload",
        "--publicamis",
        "--allregions",
        "--ena",
        "--sriov",
        "--uefi-preferred",
        "--ssm-name",
        "/freebsd/amd64/base/ufs/14.1/STABLE",
        image.to_str().unwrap(),
        name,
        "FreeBSD/amd64 stable/14@abc",
        "us-west-2",
        "unused-bucket",
        keys.to_str().unwrap(),
    ];
    let run = world.run(&args).await;
    run.assert_ok();
    assert!(!run.stderr.contains("testing-secret-42"), "secret printed");
    let lines = created(&run.stdout);
    // --allregions: every region the world has enabled (asked here with DescribeRegions,
    // not through ec2ami's own region code), the upload region first, each once.
    let mut enabled = world.enabled_regions().await;
    enabled.sort();
    assert!(
        enabled.len() >= 16,
        "the world enables many regions: {enabled:?}"
    );
    let mut got: Vec<String> = lines.iter().map(|(r, _)| r.clone()).collect();
    got.sort();
    assert_eq!(got, enabled, "{}", run.stdout);
    assert_eq!(lines[0].0, "us-west-2");
    let mut copied_to: Vec<String> = params_of(&world, "CopyImage")
        .iter()
        .map(|p| p["SourceRegion"].clone())
        .collect();
    copied_to.dedup();
    assert_eq!(
        copied_to,
        ["us-west-2"],
        "every copy is from the upload region"
    );
    assert_eq!(world.proxy.count("CopyImage"), enabled.len() - 1);
    let reg = world
        .proxy
        .requests()
        .into_iter()
        .find(|r| r.operation == "RegisterImage")
        .map(|r| form(&r))
        .unwrap();
    assert_eq!(reg["Name"], name);
    assert_eq!(reg["BootMode"], "uefi-preferred");
    assert_eq!(reg["SriovNetSupport"], "simple");
    assert_eq!(reg["EnaSupport"], "true");
    assert_eq!(reg["Architecture"], "x86_64");
    // Public and a parameter in every region, pointing at that region's AMI.
    for (region, id) in lines.iter().take(4) {
        let c = world.clients().await.in_region(region);
        let img = c.ec2.describe_images().image_ids(id).send().await.unwrap();
        assert_eq!(img.images()[0].public(), Some(true), "{region}");
        let p = c
            .ssm
            .get_parameter()
            .name("/freebsd/amd64/base/ufs/14.1/STABLE")
            .send()
            .await
            .unwrap();
        assert_eq!(p.parameter().unwrap().value(), Some(id.as_str()));
    }
    // The same command again: the same lines, nothing new.
    world.proxy.clear_requests();
    let again = world.run(&args).await;
    again.assert_ok();
    assert_eq!(again.stdout, run.stdout);
    assert_eq!(
        world.proxy.count("RegisterImage") + world.proxy.count("CopyImage"),
        0
    );

    // A bad key file: a clear error, nothing sent, the secret not shown.
    std::fs::write(&keys, "ACCESS_KEY_ID=x\nSECRET=hunter2\n").unwrap();
    world.proxy.clear_requests();
    let bad = world.run(&args).await;
    bad.assert_failed_with("ACCESS_KEY_SECRET");
    assert!(!bad.stderr.contains("hunter2"));
    assert!(world.proxy.requests().is_empty());
}

/// The checks of `validate --output json`, keyed by (image, kind, region, target).
type Checks = BTreeMap<(String, String, String, String), (String, String)>;

async fn verdicts(world: &World, release: &Path) -> (Run, Checks) {
    let run = world
        .run(&["--output", "json", "validate", release.to_str().unwrap()])
        .await;
    let v: serde_json::Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", run.stdout, run.stderr));
    let map = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap().to_string();
            (
                (s("image"), s("kind"), s("region"), s("target")),
                (s("verdict"), s("detail")),
            )
        })
        .collect();
    (run, map)
}

/// The check of `image` of `kind` in `region` (`target` when given).
fn check(
    checks: &Checks,
    image: &str,
    kind: &str,
    region: &str,
    target: Option<&str>,
) -> (String, String) {
    let found: Vec<_> = checks
        .iter()
        .filter(|((i, k, r, t), _)| {
            i == image && k == kind && r == region && target.is_none_or(|want| t == want)
        })
        .map(|(_, v)| v.clone())
        .collect();
    assert_eq!(
        found.len(),
        1,
        "{image} {kind} {region} {target:?}: {checks:#?}"
    );
    found[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_says_correct_then_names_each_breakage() {
    let world = World::moto().await;
    let release = example_release(world.dir.path(), true);
    let run = publish(&world, &release, &[]).await;
    run.assert_ok();
    let lines = created(&run.stdout);
    let id = |i: usize| lines[i].1.clone();

    let (ok, checks) = verdicts(&world, &release).await;
    ok.assert_ok();
    // 2 images x 3 regions x (AMI, public permission, parameter).
    assert_eq!(checks.len(), 18, "{checks:#?}");
    assert!(checks.values().all(|(v, _)| v == "Correct"), "{checks:#?}");
    let table = world.run(&["validate", release.to_str().unwrap()]).await;
    table.assert_ok();
    assert!(
        table
            .stdout
            .contains("18 correct, 0 incorrect, 0 missing, 0 unreachable"),
        "{}",
        table.stdout
    );

    // Break three things: delete a copy, make an AMI private, point a parameter
    // elsewhere.
    let west = world.clients().await.in_region("us-west-2");
    west.ec2
        .deregister_image()
        .image_id(id(1))
        .send()
        .await
        .unwrap();
    let eu = world.clients().await.in_region("eu-west-1");
    eu.ec2
        .modify_image_attribute()
        .image_id(id(5))
        .launch_permission(
            aws_sdk_ec2::types::LaunchPermissionModifications::builder()
                .remove(
                    aws_sdk_ec2::types::LaunchPermission::builder()
                        .group(aws_sdk_ec2::types::PermissionGroup::All)
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    let east = world.clients().await;
    east.ssm
        .put_parameter()
        .name(PARAM_ARM64)
        .value(id(0))
        .overwrite(true)
        .r#type(aws_sdk_ssm::types::ParameterType::String)
        .send()
        .await
        .unwrap();

    let (bad, checks) = verdicts(&world, &release).await;
    assert_ne!(bad.code, Some(0), "validate must fail");
    assert_eq!(
        check(&checks, NAME_AMD64, "ami", "us-west-2", None),
        ("Missing".into(), "no AMI of that name".into())
    );
    let (v, d) = check(&checks, NAME_AMD64, "parameter", "us-west-2", None);
    assert_eq!(v, "Incorrect");
    assert!(d.contains("missing"), "{d}");
    assert_eq!(
        check(
            &checks,
            NAME_ARM64,
            "permission",
            "eu-west-1",
            Some("public")
        ),
        ("Incorrect".into(), "private, expected public".into())
    );
    assert_eq!(
        check(&checks, NAME_ARM64, "parameter", "us-east-1", None),
        (
            "Incorrect".into(),
            format!("holds {}, expected {}", id(0), id(3))
        )
    );
    let wrong = checks.values().filter(|(v, _)| v != "Correct").count();
    assert_eq!(wrong, 4, "exactly the breakages: {checks:#?}");

    // A service that cannot be asked: Unreachable, not Missing.
    world.proxy.set_rules(vec![FaultRule::with_rate(
        Some("GetParameters"),
        Fault::AccessDenied,
        1.0,
    )]);
    let (_, checks) = verdicts(&world, &release).await;
    world.proxy.set_rules(vec![]);
    let (v, d) = check(&checks, NAME_AMD64, "parameter", "eu-west-1", None);
    assert_eq!(v, "Unreachable");
    assert!(d.contains("AccessDenied"), "{d}");

    // A rerun of the publish repairs the copy, the permission and the parameter it
    // wrote itself; the one someone else changed is left alone without ssm_overwrite.
    let rerun = publish(&world, &release, &[]).await;
    rerun.assert_failed_with(&format!("{PARAM_ARM64} in us-east-1: NOT changed"));
    let (_, checks) = verdicts(&world, &release).await;
    let wrong: Vec<_> = checks.iter().filter(|(_, (v, _))| v != "Correct").collect();
    assert_eq!(wrong.len(), 1, "{wrong:#?}");
    assert_eq!(wrong[0].0.3, PARAM_ARM64);
    let text = std::fs::read_to_string(&release)
        .unwrap()
        .replace("public = true", "public = true\nssm_overwrite = true");
    std::fs::write(&release, text).unwrap();
    publish(&world, &release, &[]).await.assert_ok();
    verdicts(&world, &release).await.0.assert_ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_stops_cleanly_and_a_rerun_finishes() {
    let world = World::moto().await;
    let release = example_release(world.dir.path(), false);
    // The first block is held, so the signal lands mid-upload (a hook, not timing).
    let gate = world.proxy.hold(Some("PutSnapshotBlock"), 0);
    let child = world
        .ec2ami()
        .args(["publish", release.to_str().unwrap(), "--workers", "1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        gate.arrived(1, Duration::from_secs(30)).await,
        "no upload started"
    );
    // SAFETY: sending SIGINT to our own child process.
    unsafe { libc::kill(child.id().unwrap() as i32, libc::SIGINT) };
    gate.open();
    let out = child.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!(stderr.contains("was deleted"), "{stderr}");
    assert!(
        out.stdout.is_empty(),
        "no Created lines for an unfinished publish"
    );
    world.proxy.set_rules(vec![]);
    assert!(
        world.our_snapshots().await.is_empty(),
        "the unfinished snapshot is gone"
    );
    publish(&world, &release, &[]).await.assert_ok();
    assert_complete(&state(&world).await, false);
}
