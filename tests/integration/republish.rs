//! Publishing again (issue 10): an image file changed since its AMI was made is refused
//! (and `validate` says so) until `--replace --yes` deregisters what is ours and
//! publishes it again; a deprecation added later is set on the existing AMIs; two
//! publishers of one release racing leave one AMI per region and no orphaned snapshot;
//! Ctrl-C during a publish's conversion leaves no qemu-img and no temporary file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ec2ami_testkit::{Fault, FaultRule, MotoOptions, Realism};

use crate::common::*;

const NAME: &str = "MyOS 15.0-CURRENT-x86_64-20261124 base UFS";
const PARAM: &str = "/myos/x86_64/base";
const REGIONS: [&str; 2] = ["us-east-1", "us-west-2"];

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A one-image release in two regions with a parameter; `extra` goes at the top.
fn release(dir: &Path, extra: &str) -> PathBuf {
    let text = format!(
        r#"
regions = ["us-east-1", "us-west-2"]
ssm = ["/myos/{{arch}}/{{flavour}}"]
{extra}

[defaults]
version = "15.0"
branch = "CURRENT"
date = "20261124"
name = "MyOS {{version}}-{{branch}}-{{arch}}-{{date}} {{flavour}} {{fs_upper}}"

[[image]]
path = "base.raw"
arch = "x86_64"
flavour = "base"
fs = "ufs"
"#
    );
    let path = dir.join("release.toml");
    std::fs::write(&path, text).unwrap();
    if !dir.join("base.raw").exists() {
        sparse_file(
            &dir.join("base.raw"),
            8 * MIB,
            &[(0, random_bytes(80, MIB as usize))],
        );
    }
    path
}

/// Our AMIs named [`NAME`] per region (available or pending): region -> ids.
async fn amis(world: &World) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for region in REGIONS {
        let c = world.clients().await.in_region(region);
        let imgs = c.ec2.describe_images().owners("self").send().await.unwrap();
        let ids: Vec<String> = imgs
            .images()
            .iter()
            .filter(|i| i.name() == Some(NAME))
            .filter(|i| i.state().is_none_or(|s| s.as_str() != "deregistered"))
            .map(|i| i.image_id().unwrap().to_string())
            .collect();
        out.insert(region.to_string(), ids);
    }
    out
}

/// The snapshots per region, each with whether an AMI of that region uses it.
async fn snapshots(world: &World) -> BTreeMap<String, Vec<(String, bool)>> {
    let mut out = BTreeMap::new();
    for region in REGIONS {
        let c = world.clients().await.in_region(region);
        let imgs = c.ec2.describe_images().owners("self").send().await.unwrap();
        let used: Vec<String> = imgs
            .images()
            .iter()
            .flat_map(|i| i.block_device_mappings())
            .filter_map(|m| m.ebs().and_then(|e| e.snapshot_id()).map(str::to_string))
            .collect();
        // Every snapshot of the account (a fresh world: all ec2ami's; copies' snapshots
        // included, which carry no tag of ours).
        let snaps = c
            .ec2
            .describe_snapshots()
            .owner_ids("self")
            .send()
            .await
            .unwrap();
        let list = snaps
            .snapshots()
            .iter()
            .map(|s| {
                let id = s.snapshot_id().unwrap().to_string();
                let u = used.contains(&id);
                (id, u)
            })
            .collect();
        out.insert(region.to_string(), list);
    }
    out
}

async fn param(world: &World, region: &str) -> Option<String> {
    let c = world.clients().await.in_region(region);
    c.ssm
        .get_parameter()
        .name(PARAM)
        .send()
        .await
        .ok()
        .and_then(|o| o.parameter().and_then(|p| p.value()).map(str::to_string))
}

/// `validate --output json`: (kind, region) -> (verdict, detail) for the ami checks.
async fn ami_verdicts(world: &World, rel: &Path) -> (Run, BTreeMap<String, (String, String)>) {
    let run = world.run(&["--output", "json", "validate", s(rel)]).await;
    let v: serde_json::Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", run.stdout, run.stderr));
    let map = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["kind"] == "ami")
        .map(|c| {
            let g = |k: &str| c[k].as_str().unwrap().to_string();
            (g("region"), (g("verdict"), g("detail")))
        })
        .collect();
    (run, map)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_image_is_refused_reported_and_replaced() {
    let world = World::moto().await;
    let rel = release(world.dir.path(), "");
    let image = world.path("base.raw");
    world.run(&["publish", s(&rel)]).await.assert_ok();
    let old = amis(&world).await;
    assert!(old.values().all(|v| v.len() == 1), "{old:?}");
    let (run, _) = ami_verdicts(&world, &rel).await;
    run.assert_ok();

    // The image is rebuilt: other content, another size.
    std::fs::remove_file(&image).unwrap();
    sparse_file(
        &image,
        12 * MIB,
        &[(MIB, random_bytes(81, 2 * MIB as usize))],
    );

    // A rerun refuses, in one line that says what changed and the ways out, sending
    // nothing that changes anything.
    world.proxy.clear_requests();
    let run = world
        .ec2ami()
        .env("EC2AMI_LOG", "warn")
        .args(["publish", s(&rel)])
        .output()
        .await
        .unwrap();
    let run = Run::from(run);
    run.assert_failed_with("changed since");
    for needle in [
        NAME,
        "base.raw",
        old["us-east-1"][0].as_str(),
        "size 8388608 -> 12582912 bytes",
        "new build date or name",
        "--replace",
    ] {
        assert!(
            run.stderr.contains(needle),
            "lacks {needle}: {}",
            run.stderr
        );
    }
    assert_eq!(run.stderr.trim().lines().count(), 1, "{}", run.stderr);
    assert!(mutating(&world).is_empty(), "{:?}", mutating(&world));
    assert_eq!(amis(&world).await, old);

    // validate: Incorrect in both regions, saying why.
    let (run, verdicts) = ami_verdicts(&world, &rel).await;
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    for region in REGIONS {
        let (verdict, detail) = &verdicts[region];
        assert_eq!(verdict, "Incorrect", "{region}: {detail}");
        assert!(detail.contains("earlier version"), "{detail}");
    }

    // The plan: refused as a blocking problem; with --replace, exactly what goes.
    let plan = world.run(&["publish", s(&rel), "--plan"]).await;
    plan.assert_failed_with("would make this publish fail");
    assert!(plan.stdout.contains("image-changed"), "{}", plan.stdout);
    let plan = world
        .run(&[
            "--output",
            "json",
            "publish",
            s(&rel),
            "--plan",
            "--replace",
        ])
        .await;
    plan.assert_ok();
    let v: serde_json::Value = serde_json::from_str(&plan.stdout).unwrap();
    let replaced: Vec<(String, String, String)> = v["actions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["replaces"] == true)
        .map(|a| {
            let g = |k: &str| a[k].as_str().unwrap().to_string();
            (g("step"), g("region"), g("detail"))
        })
        .collect();
    let old_snaps = snapshots(&world).await;
    let mut expected = Vec::new();
    for region in REGIONS {
        expected.push((
            "deregister".to_string(),
            region.to_string(),
            old[region][0].clone(),
        ));
        for (snap, _) in &old_snaps[region] {
            expected.push(("snapshot".to_string(), region.to_string(), snap.clone()));
        }
    }
    assert_eq!(replaced.len(), expected.len(), "{replaced:?}");
    for (step, region, id) in &expected {
        assert!(
            replaced
                .iter()
                .any(|(s, r, d)| s == step && r == region && d.starts_with(id.as_str())),
            "{step} {region} {id} not in {replaced:?}"
        );
    }

    // --replace without --yes: says what would go, changes nothing.
    world.proxy.clear_requests();
    let run = world.run(&["publish", s(&rel), "--replace"]).await;
    run.assert_failed_with("nothing was changed");
    assert!(run.stderr.contains(&old["us-west-2"][0]), "{}", run.stderr);
    assert!(mutating(&world).is_empty(), "{:?}", mutating(&world));

    // --replace --yes: the old AMIs and snapshots are gone, new ones hold the new image.
    world
        .run(&["publish", s(&rel), "--replace", "--yes"])
        .await
        .assert_ok();
    let new = amis(&world).await;
    for region in REGIONS {
        assert_eq!(new[region].len(), 1, "{new:?}");
        assert_ne!(new[region], old[region], "{region}: replaced");
        assert_eq!(param(&world, region).await.as_ref(), Some(&new[region][0]));
        let snaps = &snapshots(&world).await[region];
        assert_eq!(snaps.len(), 1, "{region}: only the new one: {snaps:?}");
        assert!(snaps[0].1, "{region}: in use");
    }
    let c = world.clients().await;
    let img = c
        .ec2
        .describe_images()
        .image_ids(&new["us-east-1"][0])
        .send()
        .await
        .unwrap();
    let snap = img.images()[0].block_device_mappings()[0]
        .ebs()
        .unwrap()
        .snapshot_id()
        .unwrap()
        .to_string();
    let back = world.path("back.raw");
    world.download(&snap, &back).await;
    assert_same_content(&image, &back);
    let (run, _) = ami_verdicts(&world, &rel).await;
    run.assert_ok();
    // And a plain rerun is content.
    world.run(&["publish", s(&rel)]).await.assert_ok();
    assert_eq!(amis(&world).await, new);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_never_touches_an_ami_ec2ami_did_not_make() {
    let world = World::moto().await;
    let rel = release(world.dir.path(), "");
    world.run(&["publish", s(&rel)]).await.assert_ok();
    let old = amis(&world).await;
    // Someone takes the ownership tag off the source AMI; the image changes.
    let c = world.clients().await;
    c.ec2
        .delete_tags()
        .resources(&old["us-east-1"][0])
        .tags(
            aws_sdk_ec2::types::Tag::builder()
                .key("ec2ami:managed-by")
                .build(),
        )
        .send()
        .await
        .unwrap();
    sparse_file(
        &world.path("base.raw"),
        10 * MIB,
        &[(0, random_bytes(82, MIB as usize))],
    );
    world.proxy.clear_requests();
    let run = world.run(&["publish", s(&rel), "--replace", "--yes"]).await;
    run.assert_failed_with("was not made by ec2ami");
    assert!(mutating(&world).is_empty(), "{:?}", mutating(&world));
    assert_eq!(amis(&world).await, old);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deprecation_added_later_is_set_on_the_existing_amis() {
    let world = World::moto().await;
    let rel = release(world.dir.path(), "");
    world.run(&["publish", s(&rel)]).await.assert_ok();
    let ids = amis(&world).await;
    // The release now deprecates its images (a new release file: same AMIs).
    let text = std::fs::read_to_string(&rel).unwrap().replace(
        "date = \"20261124\"",
        "date = \"20261124\"\ndeprecate_at = \"2030-06-30\"",
    );
    std::fs::write(&rel, text).unwrap();
    let plan = world
        .run(&["--output", "json", "publish", s(&rel), "--plan"])
        .await;
    plan.assert_ok();
    let v: serde_json::Value = serde_json::from_str(&plan.stdout).unwrap();
    let deprecations: Vec<&serde_json::Value> = v["actions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["step"] == "deprecate")
        .collect();
    assert_eq!(deprecations.len(), 2, "{deprecations:?}");
    assert!(
        deprecations.iter().all(|a| a["verb"] == "update"),
        "{deprecations:?}"
    );
    world.proxy.clear_requests();
    world.run(&["publish", s(&rel)]).await.assert_ok();
    assert_eq!(world.proxy.count("EnableImageDeprecation"), 2);
    assert_eq!(amis(&world).await, ids, "the same AMIs");
    // Read back on the wire.
    for region in REGIONS {
        let c = world.clients().await.in_region(region);
        let out = c
            .ec2
            .describe_images()
            .image_ids(&ids[region][0])
            .send()
            .await
            .unwrap();
        let t = out.images()[0].deprecation_time().unwrap_or_default();
        assert!(t.starts_with("2030-06-30T00:00:00"), "{region}: {t}");
    }
    // Now set: nothing more to do.
    world.proxy.clear_requests();
    world.run(&["publish", s(&rel)]).await.assert_ok();
    assert_eq!(world.proxy.count("EnableImageDeprecation"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_undoes_the_ami_when_its_deprecation_fails() {
    let world = World::moto().await;
    sparse_file(
        &world.path("r.raw"),
        4 * MIB,
        &[(0, random_bytes(83, MIB as usize))],
    );
    let up = world.upload(&world.path("r.raw"), &[]).await;
    let snap = up["snapshot_id"].as_str().unwrap().to_string();
    world.proxy.set_rules(vec![FaultRule::with_rate(
        Some("EnableImageDeprecation"),
        Fault::AccessDenied,
        1.0,
    )]);
    let run = world
        .run(&[
            "register",
            &snap,
            "--name",
            "MyOS undone",
            "--deprecate-at",
            "2030-01-01",
        ])
        .await;
    world.proxy.set_rules(vec![]);
    run.assert_failed_with("was deregistered again");
    assert!(run.stderr.contains("deprecation"), "{}", run.stderr);
    let c = world.clients().await;
    let imgs = c.ec2.describe_images().owners("self").send().await.unwrap();
    let left: Vec<_> = imgs
        .images()
        .iter()
        .filter(|i| i.name() == Some("MyOS undone"))
        .filter(|i| i.state().is_none_or(|s| s.as_str() != "deregistered"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// The images named `name` the world still has (not deregistered).
async fn images_named(world: &World, name: &str) -> Vec<(String, String)> {
    let c = world.clients().await;
    let imgs = c.ec2.describe_images().owners("self").send().await.unwrap();
    imgs.images()
        .iter()
        .filter(|i| i.name() == Some(name))
        .filter(|i| i.state().is_none_or(|s| s.as_str() != "deregistered"))
        .map(|i| {
            let state = i
                .state()
                .map(|s| s.as_str().to_string())
                .unwrap_or_default();
            (i.image_id().unwrap_or_default().to_string(), state)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_undoes_the_ami_when_its_protection_fails() {
    let world = World::moto().await;
    sparse_file(
        &world.path("p.raw"),
        4 * MIB,
        &[(0, random_bytes(84, MIB as usize))],
    );
    let up = world.upload(&world.path("p.raw"), &[]).await;
    let snap = up["snapshot_id"].as_str().unwrap().to_string();
    world.proxy.set_rules(vec![FaultRule::with_rate(
        Some("EnableImageDeregistrationProtection"),
        Fault::AccessDenied,
        1.0,
    )]);
    let run = world
        .run(&["register", &snap, "--name", "MyOS unprotected", "--protect"])
        .await;
    world.proxy.set_rules(vec![]);
    assert_eq!(world.proxy.count("RegisterImage"), 1, "it was registered");
    run.assert_failed_with("was deregistered again");
    assert!(
        run.stderr.contains("from deregistration failed"),
        "{}",
        run.stderr
    );
    let errors = run.stderr.lines().filter(|l| l.starts_with("error:"));
    assert_eq!(errors.count(), 1, "one line: {}", run.stderr);
    assert_eq!(images_named(&world, "MyOS unprotected").await, vec![]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_keeps_and_names_an_ami_its_wait_ran_out_on() {
    // RegisterImage's image stays pending for 6 s: a 1 s wait runs out on it.
    let world = World::moto_with(MotoOptions {
        realism: Realism {
            latency: vec![("RegisterImage".into(), Duration::from_secs(6))],
            ..Realism::default()
        },
        ..MotoOptions::default()
    })
    .await;
    sparse_file(
        &world.path("w.raw"),
        4 * MIB,
        &[(0, random_bytes(85, MIB as usize))],
    );
    let up = world.upload(&world.path("w.raw"), &[]).await;
    let snap = up["snapshot_id"].as_str().unwrap().to_string();
    let name = "MyOS slow";
    let run = world
        .run(&["register", &snap, "--name", name, "--wait-timeout", "1s"])
        .await;
    run.assert_failed_with("is kept (pending)");
    let left = images_named(&world, name).await;
    assert_eq!(left.len(), 1, "{left:?}");
    let (id, state) = &left[0];
    assert_eq!(state, "pending");
    assert!(
        run.stderr.contains(id.as_str()),
        "names the AMI: {}",
        run.stderr
    );
    assert_eq!(world.proxy.count("DeregisterImage"), 0);
    // Run again: the same AMI, reused once it is available; no second one.
    world.proxy.clear_requests();
    let again = world.run(&["register", &snap, "--name", name]).await;
    again.assert_ok();
    assert_eq!(again.stdout.trim(), id.as_str());
    assert_eq!(world.proxy.count("RegisterImage"), 0);
    assert_eq!(
        images_named(&world, name).await,
        vec![(id.clone(), "available".into())]
    );
}

/// `ec2ami publish` with its own state database.
fn publisher(world: &World, rel: &Path, state: &str) -> tokio::process::Command {
    let mut cmd = world.ec2ami();
    cmd.env("XDG_STATE_HOME", world.path(state))
        .args(["publish", s(rel)])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_publishers_racing_leave_one_ami_per_region_and_no_orphan() {
    let world = World::moto().await;
    let rel = release(world.dir.path(), "");
    // Both finish their upload and wait at CompleteSnapshot: the second surveyed while
    // the first's snapshot was unfinished, so both upload, then both register.
    let gate = world.proxy.hold(Some("CompleteSnapshot"), 0);
    let a = publisher(&world, &rel, "state-a").spawn().unwrap();
    assert!(gate.arrived(1, Duration::from_secs(60)).await, "a uploads");
    let b = publisher(&world, &rel, "state-b").spawn().unwrap();
    assert!(
        gate.arrived(2, Duration::from_secs(60)).await,
        "b uploads too"
    );
    gate.open();
    let (a, b) = tokio::join!(a.wait_with_output(), b.wait_with_output());
    let (a, b) = (Run::from(a.unwrap()), Run::from(b.unwrap()));
    for r in [&a, &b] {
        assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    }
    // Same content: the loser adopts the winner's AMI.
    a.assert_ok();
    b.assert_ok();
    assert!(
        a.stderr.contains("another publisher") || b.stderr.contains("another publisher"),
        "a:\n{}\nb:\n{}",
        a.stderr,
        b.stderr
    );
    let ids = amis(&world).await;
    for region in REGIONS {
        assert_eq!(ids[region].len(), 1, "{region}: {ids:?}");
        let snaps = &snapshots(&world).await[region];
        assert!(
            snaps.iter().all(|(_, used)| *used),
            "{region}: orphans {snaps:?}"
        );
    }
    assert_eq!(a.stdout, b.stdout, "both name the same AMIs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_racing_publisher_of_other_content_fails_clearly_and_leaves_nothing() {
    let world = World::moto().await;
    // Two copies of the release file in two trees, with different images of one name.
    let (da, db) = (world.path("a"), world.path("b"));
    std::fs::create_dir_all(&da).unwrap();
    std::fs::create_dir_all(&db).unwrap();
    let (ra, rb) = (release(&da, ""), release(&db, ""));
    sparse_file(
        &db.join("base.raw"),
        8 * MIB,
        &[(0, random_bytes(84, MIB as usize))],
    );
    let gate = world.proxy.hold(Some("CompleteSnapshot"), 0);
    let a = publisher(&world, &ra, "state-a").spawn().unwrap();
    assert!(gate.arrived(1, Duration::from_secs(60)).await, "a uploads");
    let b = publisher(&world, &rb, "state-b").spawn().unwrap();
    assert!(
        gate.arrived(2, Duration::from_secs(60)).await,
        "b uploads too"
    );
    gate.open();
    let (a, b) = tokio::join!(a.wait_with_output(), b.wait_with_output());
    let (a, b) = (Run::from(a.unwrap()), Run::from(b.unwrap()));
    let (ok, lost) = match (a.code, b.code) {
        (Some(0), Some(1)) => (a, b),
        (Some(1), Some(0)) => (b, a),
        other => panic!(
            "one wins, one fails: {other:?}\na:\n{}\nb:\n{}",
            a.stderr, b.stderr
        ),
    };
    assert!(!ok.stdout.is_empty());
    assert!(
        lost.stderr.contains("by another publisher"),
        "{}",
        lost.stderr
    );
    assert!(
        lost.stderr.contains("deleted this run's snapshot"),
        "{}",
        lost.stderr
    );
    let ids = amis(&world).await;
    for region in REGIONS {
        assert_eq!(ids[region].len(), 1, "{region}: {ids:?}");
        let snaps = &snapshots(&world).await[region];
        assert!(
            snaps.iter().all(|(_, used)| *used),
            "{region}: orphans {snaps:?}"
        );
    }
}

/// True while process `pid` runs (a zombie counts as gone).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_during_a_publish_conversion_stops_qemu_img_and_leaves_no_file() {
    use std::os::unix::fs::PermissionsExt;
    let world = World::moto().await;
    let rel = release(world.dir.path(), "");
    let text = std::fs::read_to_string(&rel)
        .unwrap()
        .replace("base.raw", "base.qcow2");
    std::fs::write(&rel, text).unwrap();
    let qcow = world.path("base.qcow2");
    let out = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", s(&qcow), "64M"])
        .output()
        .expect("qemu-img is installed (apt-get install qemu-utils)");
    assert!(out.status.success());
    // A qemu-img whose conversion never ends (info and check are the real ones).
    let pidfile = world.path("convert.pid");
    let fake = world.path("qemu-img");
    write_file(
        &fake,
        format!(
            "#!/bin/sh\nif [ \"$1\" = convert ]; then echo $$ > {}; exec sleep 600; fi\n\
             exec qemu-img \"$@\"\n",
            s(&pidfile)
        )
        .as_bytes(),
    );
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let tmp = world.path("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let child = world
        .ec2ami()
        .env("EC2AMI_QEMU_IMG", &fake)
        .env("TMPDIR", &tmp)
        .args(["publish", s(&rel)])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let qemu_pid: i32 = loop {
        if let Some(pid) = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|t| t.trim().parse().ok())
        {
            break pid;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the conversion never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // SAFETY: SIGINT to our own child.
    unsafe {
        libc::kill(child.id().unwrap() as i32, libc::SIGINT);
    }
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("ec2ami exits after Ctrl-C")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!(out.stdout.is_empty());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while alive(qemu_pid) {
        assert!(
            std::time::Instant::now() < deadline,
            "qemu-img ({qemu_pid}) outlived ec2ami"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
    assert!(world.our_snapshots().await.is_empty(), "nothing uploaded");
    assert!(
        !mutating(&world).iter().any(|op| op != "CreateTags"),
        "{:?}",
        mutating(&world)
    );
}
