//! A plan is a promise: for each state a publish can find (nothing; an interrupted
//! upload in the journal; a completed snapshot without its AMI; an AMI without copies;
//! copies without permissions; a parameter holding another AMI), the mutating actions
//! `publish --plan` lists are exactly the mutating requests the run then sends, counted
//! per operation and region on the wire.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ec2ami_testkit::{Fault, FaultRule};

use crate::common::*;

const NAME_AMD64: &str = "MyOS 15.0-CURRENT-x86_64-20261124 base UFS";
const PARAM_ARM64: &str = "/myos/arm64/small/zfs/15.0/CURRENT";

/// A release that exercises every step: upload, register, copies, public sharing and an
/// account grant, public snapshots, deprecation, deregistration protection,
/// parameters and the announcement.
fn release(dir: &Path) -> PathBuf {
    let text = r#"
announce = { topic = "arn:aws:sns:us-east-1:123456789012:release-announce", release = "15.0-CURRENT", image = "main@4f1e2d3" }
regions = ["us-east-1", "us-west-2", "eu-west-1"]
public = true
public_snapshots = true
share_accounts = ["123456789012"]
ssm = ["/myos/{arch}/{flavour}/{fs}/{version}/{branch}"]

[defaults]
version = "15.0"
branch = "CURRENT"
date = "20261124"
name = "MyOS {version}-{branch}-{arch}-{date} {flavour} {fs_upper}"
boot_mode = "uefi-preferred"
deprecate_at = "2027-06-30"
protect = true

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
"#;
    let path = dir.join("release.toml");
    std::fs::write(&path, text).unwrap();
    sparse_file(
        &dir.join("base-ufs-amd64.raw"),
        16 * MIB,
        &[(0, random_bytes(70, 2 * MIB as usize))],
    );
    sparse_file(
        &dir.join("small-zfs-arm64.raw"),
        12 * MIB,
        &[(4 * MIB, random_bytes(71, 3 * MIB as usize))],
    );
    path
}

/// (operation, region) -> count.
type Requests = BTreeMap<(String, String), usize>;

/// The mutating requests a plan's actions stand for.
fn promised(plan: &serde_json::Value) -> Requests {
    let mut out = Requests::new();
    for a in plan["actions"].as_array().unwrap() {
        let (step, verb) = (a["step"].as_str().unwrap(), a["verb"].as_str().unwrap());
        let op = match (step, verb) {
            // Continuing an interrupted upload sends its blocks, not a StartSnapshot.
            ("snapshot", "create")
                if a["detail"]
                    .as_str()
                    .unwrap()
                    .contains("continuing the interrupted upload") =>
            {
                continue;
            }
            ("snapshot", "create") => "StartSnapshot",
            ("snapshot", "delete") => "DeleteSnapshot",
            ("register", "create") => "RegisterImage",
            ("copy", "create") => "CopyImage",
            ("share", "update") => "ModifyImageAttribute",
            ("snapshots", "update") => "ModifySnapshotAttribute",
            ("deprecate", "update") => "EnableImageDeprecation",
            ("deregister", "delete") => "DeregisterImage",
            ("unprotect", "update") => "DisableImageDeregistrationProtection",
            ("protect", "update") => "EnableImageDeregistrationProtection",
            ("param", "create" | "update") => "PutParameter",
            ("announce", "create") => "Publish",
            (_, "reuse" | "unchanged" | "refuse") => continue,
            other => panic!("unexpected action {other:?}: {a}"),
        };
        let region = a["region"].as_str().unwrap().to_string();
        *out.entry((op.to_string(), region)).or_default() += 1;
    }
    out
}

/// The mutating requests the proxy saw (the upload's blocks and tags aside: they belong
/// to StartSnapshot's upload).
fn sent(world: &World) -> Requests {
    let ops = [
        "StartSnapshot",
        "DeleteSnapshot",
        "RegisterImage",
        "CopyImage",
        "ModifyImageAttribute",
        "ModifySnapshotAttribute",
        "EnableImageDeprecation",
        "EnableImageDeregistrationProtection",
        "DeregisterImage",
        "DisableImageDeregistrationProtection",
        "PutParameter",
        "Publish",
    ];
    let mut out = Requests::new();
    for r in world.proxy.requests() {
        if ops.contains(&r.operation.as_str()) {
            *out.entry((r.operation.clone(), r.region.clone()))
                .or_default() += 1;
        }
    }
    out
}

/// Plan, then run, and compare what the plan promised with what the run sent.
async fn plan_then_run(world: &World, release: &Path, expect_ok: bool) -> Requests {
    plan_then_run_with(world, release, &[], &[], expect_ok).await
}

/// [`plan_then_run`] with extra arguments for the plan and for the run.
async fn plan_then_run_with(
    world: &World,
    release: &Path,
    plan_args: &[&str],
    run_args: &[&str],
    expect_ok: bool,
) -> Requests {
    // The release's announcement topic (CreateTopic of an existing name is a no-op).
    let c = world.clients().await;
    aws_sdk_sns::Client::new(&c.config)
        .create_topic()
        .name("release-announce")
        .send()
        .await
        .unwrap();
    world.proxy.clear_requests();
    let mut args = vec![
        "--output",
        "json",
        "publish",
        release.to_str().unwrap(),
        "--plan",
    ];
    args.extend_from_slice(plan_args);
    let run = world.run(&args).await;
    run.assert_ok();
    assert!(mutating(world).is_empty(), "{:?}", mutating(world));
    let plan: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let promise = promised(&plan);
    world.proxy.clear_requests();
    let mut args = vec!["publish", release.to_str().unwrap()];
    args.extend_from_slice(run_args);
    let run = world.run(&args).await;
    if expect_ok {
        run.assert_ok();
    } else {
        assert!(run.code == Some(1), "{}", run.stderr);
    }
    assert_eq!(
        sent(world),
        promise,
        "the run did other than the plan said:\n{}",
        serde_json::to_string_pretty(&plan["actions"]).unwrap()
    );
    promise
}

fn count(r: &Requests, op: &str) -> usize {
    r.iter().filter(|((o, _), _)| o == op).map(|(_, n)| n).sum()
}

/// A publish that fails at `operation` (denied), leaving what came before it.
async fn publish_denied(world: &World, release: &Path, operation: &str) {
    world.proxy.set_rules(vec![FaultRule::with_rate(
        Some(operation),
        Fault::AccessDenied,
        1.0,
    )]);
    let run = world.run(&["publish", release.to_str().unwrap()]).await;
    assert!(
        run.code == Some(1),
        "{operation} was denied: {}",
        run.stderr
    );
    world.proxy.set_rules(vec![]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_nothing() {
    let world = World::moto().await;
    let rel = release(world.dir.path());
    let p = plan_then_run(&world, &rel, true).await;
    assert_eq!(count(&p, "StartSnapshot"), 2);
    assert_eq!(count(&p, "CopyImage"), 4);
    assert_eq!(count(&p, "PutParameter"), 6);
    assert_eq!(count(&p, "Publish"), 1);
    // And then everything is in place: the plan promises nothing, the run sends nothing.
    let p = plan_then_run(&world, &rel, true).await;
    assert!(p.is_empty(), "{p:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_upload_killed_midway() {
    let world = World::moto().await;
    let rel = release(world.dir.path());
    // The first block is held: the kill lands mid-upload (a hook, not timing).
    let gate = world.proxy.hold(Some("PutSnapshotBlock"), 0);
    let mut child = world
        .ec2ami()
        .args(["publish", rel.to_str().unwrap(), "--workers", "1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        gate.arrived(1, Duration::from_secs(30)).await,
        "no upload started"
    );
    child.start_kill().unwrap(); // SIGKILL: no clean-up
    let _ = child.wait().await;
    gate.open();
    assert_eq!(
        world.our_snapshots().await.len(),
        1,
        "the unfinished snapshot"
    );
    // The plan and the run continue the killed upload (issue 12): nothing deleted, one
    // StartSnapshot (the other image's).
    let p = plan_then_run(&world, &rel, true).await;
    assert_eq!(count(&p, "DeleteSnapshot"), 0, "{p:?}");
    assert_eq!(count(&p, "StartSnapshot"), 1, "{p:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_completed_snapshots_and_no_amis() {
    let world = World::moto().await;
    let rel = release(world.dir.path());
    publish_denied(&world, &rel, "RegisterImage").await;
    let p = plan_then_run(&world, &rel, true).await;
    assert_eq!(count(&p, "StartSnapshot"), 0, "reused: {p:?}");
    assert_eq!(count(&p, "DeleteSnapshot"), 0, "{p:?}");
    assert_eq!(count(&p, "RegisterImage"), 2, "{p:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_amis_and_no_copies() {
    let world = World::moto().await;
    let rel = release(world.dir.path());
    publish_denied(&world, &rel, "CopyImage").await;
    let p = plan_then_run(&world, &rel, true).await;
    assert_eq!(count(&p, "RegisterImage"), 0, "{p:?}");
    assert_eq!(count(&p, "CopyImage"), 4, "{p:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_copies_and_no_permissions() {
    let world = World::moto().await;
    let rel = release(world.dir.path());
    publish_denied(&world, &rel, "ModifyImageAttribute").await;
    let p = plan_then_run(&world, &rel, true).await;
    assert_eq!(count(&p, "CopyImage"), 0, "{p:?}");
    assert_eq!(count(&p, "ModifyImageAttribute"), 6, "{p:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_parameter_holding_another_ami() {
    let world = World::moto().await;
    let rel = release(world.dir.path());
    world
        .run(&["publish", rel.to_str().unwrap()])
        .await
        .assert_ok();
    // Someone points one region's arm64 parameter at the amd64 AMI.
    let c = world.clients().await.in_region("us-west-2");
    let imgs = c.ec2.describe_images().owners("self").send().await.unwrap();
    let other = imgs
        .images()
        .iter()
        .find(|i| i.name() == Some(NAME_AMD64))
        .and_then(|i| i.image_id())
        .unwrap()
        .to_string();
    c.ssm
        .put_parameter()
        .name(PARAM_ARM64)
        .value(&other)
        .r#type(aws_sdk_ssm::types::ParameterType::String)
        .data_type("aws:ec2:image")
        .overwrite(true)
        .send()
        .await
        .unwrap();
    // Without ssm_overwrite: refused by the plan, and not written by the run.
    let p = plan_then_run(&world, &rel, false).await;
    assert!(p.is_empty(), "{p:?}");
    // With it: one update, planned and sent.
    let text = std::fs::read_to_string(&rel)
        .unwrap()
        .replace("public = true", "public = true\nssm_overwrite = true");
    std::fs::write(&rel, text).unwrap();
    let p = plan_then_run(&world, &rel, true).await;
    assert_eq!(
        p,
        Requests::from([
            (("PutParameter".into(), "us-west-2".into()), 1),
            // A changed release file is a new release: announced anew.
            (("Publish".into(), "us-east-1".into()), 1),
        ])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_changed_image_replaced() {
    let world = World::moto().await;
    let rel = release(world.dir.path());
    world
        .run(&["publish", rel.to_str().unwrap()])
        .await
        .assert_ok();
    // The amd64 image is rebuilt.
    let image = world.dir.path().join("base-ufs-amd64.raw");
    std::fs::remove_file(&image).unwrap();
    sparse_file(
        &image,
        20 * MIB,
        &[(MIB, random_bytes(72, 2 * MIB as usize))],
    );
    let p = plan_then_run_with(&world, &rel, &["--replace"], &["--replace", "--yes"], true).await;
    // Its AMI and two copies are unprotected, deregistered and their snapshots deleted;
    // then it is published anew (the arm64 image untouched).
    assert_eq!(
        count(&p, "DisableImageDeregistrationProtection"),
        3,
        "{p:?}"
    );
    assert_eq!(count(&p, "DeregisterImage"), 3, "{p:?}");
    assert_eq!(count(&p, "DeleteSnapshot"), 3, "{p:?}");
    assert_eq!(count(&p, "StartSnapshot"), 1, "{p:?}");
    assert_eq!(count(&p, "RegisterImage"), 1, "{p:?}");
    assert_eq!(count(&p, "CopyImage"), 2, "{p:?}");
    assert_eq!(count(&p, "PutParameter"), 3, "{p:?}");
    let p = plan_then_run(&world, &rel, true).await;
    assert!(p.is_empty(), "{p:?}");
}
