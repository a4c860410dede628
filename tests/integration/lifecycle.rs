//! The whole life of a public image, on the wire and in moto's state: a protected
//! release (publish, validate, prune refusing, `--unprotect` and its cooldown), staged
//! retirement over a synthetic weekly history (disable, then delete on schedule;
//! `enable` restoring the journalled sharing; `restore` and `restore --last-prune`),
//! checks before anything is created (block public access, the public AMI quota,
//! regions not enabled), copies of many images waited for with one request per poll,
//! and bad input. The harness's slow-clock knobs (`/moto-api/ec2ami/config`) shorten
//! AWS's 24-hour cooldown and keep copies pending; they are set straight on moto, not
//! through the proxy.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_ec2::types::{
    BlockDeviceMapping, EbsBlockDevice, LaunchPermission, LaunchPermissionModifications,
    PermissionGroup, ResourceType, Tag, TagSpecification,
};
use aws_sdk_rbin::types::{ResourceType as BinType, RetentionPeriod, RetentionPeriodUnit};
use aws_smithy_types::DateTime;
use aws_smithy_types::date_time::Format;
use ec2ami::aws::Clients;
use ec2ami::state::StateDb;
use ec2ami::state::journal::{Journal, Status, StepKey};
use serde_json::{Value, json};

use crate::common::*;

const DAY: i64 = 86_400;
const OWNERSHIP: (&str, &str) = ("ec2ami:managed-by", "ec2ami");
const CREATED_AT: &str = "moto-ext:created-at";
const ACCOUNT: &str = "123456789012";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn rfc3339(t: i64) -> String {
    DateTime::from_secs(t).fmt(Format::DateTime).unwrap()
}

/// POST `doc` to one of the harness's moto-api hooks; its JSON answer.
fn hook(world: &World, path: &str, doc: &Value) -> Value {
    serde_json::from_str(&moto_hook(world, path, doc)).unwrap()
}

fn knobs(world: &World, doc: Value) {
    hook(world, "/moto-api/ec2ami/config", &doc);
}

fn count_in(world: &World, op: &str, region: &str) -> usize {
    world
        .proxy
        .requests()
        .iter()
        .filter(|r| r.operation == op && r.region == region && (200..300).contains(&r.status))
        .count()
}

/// A release of `images` (name suffix, extra TOML for the image) to `regions`.
fn release(dir: &Path, file: &str, top: &str, images: &[(&str, &str)]) -> PathBuf {
    let mut text = format!(
        "{top}\n[defaults]\nversion = \"15.0\"\nbranch = \"CURRENT\"\ndate = \"20261124\"\n\
         name = \"MyOS {{version}}-{{branch}}-{{flavour}}-{{date}}\"\nboot_mode = \"uefi-preferred\"\n\
         arch = \"x86_64\"\n"
    );
    for (i, (flavour, extra)) in images.iter().enumerate() {
        let path = dir.join(format!("{file}-{flavour}.raw"));
        sparse_file(
            &path,
            4 * MIB,
            &[(0, random_bytes(500 + i as u64, 64 * 1024))],
        );
        text.push_str(&format!(
            "\n[[image]]\npath = \"{}\"\nflavour = \"{flavour}\"\n{extra}\n",
            path.file_name().unwrap().to_str().unwrap()
        ));
    }
    let p = dir.join(format!("{file}.toml"));
    std::fs::write(&p, text).unwrap();
    p
}

/// Our first image in `c`'s region whose `filter` is `value` (disabled ones too).
async fn image_where(c: &Clients, filter: &str, value: &str) -> Option<aws_sdk_ec2::types::Image> {
    let out = c
        .ec2
        .describe_images()
        .owners("self")
        .include_disabled(true)
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name(filter)
                .values(value)
                .build(),
        )
        .send()
        .await
        .unwrap();
    out.images().first().cloned()
}

/// Our image named `name` in `c`'s region (disabled ones too).
async fn image_named(c: &Clients, name: &str) -> Option<aws_sdk_ec2::types::Image> {
    image_where(c, "name", name).await
}

/// Our image `id` in `c`'s region (disabled ones too).
async fn image(c: &Clients, id: &str) -> Option<aws_sdk_ec2::types::Image> {
    image_where(c, "image-id", id).await
}

async fn permissions(c: &Clients, id: &str) -> BTreeSet<String> {
    let out = c
        .ec2
        .describe_image_attribute()
        .image_id(id)
        .attribute(aws_sdk_ec2::types::ImageAttributeName::LaunchPermission)
        .send()
        .await
        .unwrap();
    out.launch_permissions()
        .iter()
        .map(|p| match (p.group(), p.user_id()) {
            (Some(PermissionGroup::All), _) => "public".to_string(),
            (_, Some(u)) => format!("account:{u}"),
            _ => "other".to_string(),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// A protected release

const UEFI_ZLIB: &[u8] = &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01];

/// A variable store as `get-instance-uefi-data` gives it (base64 of `AMZNUEFI`, the
/// CRC32C of the body, the body: a 4-byte version and a zlib stream), built here from
/// the format rather than with ec2ami's code.
fn uefi_store(zlib: &[u8]) -> String {
    use base64::Engine;
    let crc32c = |data: &[u8]| {
        let mut crc = !0u32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0x82F6_3B78
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    };
    let mut body = 0u32.to_le_bytes().to_vec();
    body.extend_from_slice(zlib);
    let mut raw = b"AMZNUEFI".to_vec();
    raw.extend_from_slice(&crc32c(&body).to_le_bytes());
    raw.extend_from_slice(&body);
    base64::engine::general_purpose::STANDARD.encode(raw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protected_release_is_published_validated_and_pruned_only_when_unprotected() {
    // AWS's 24-hour cooldown, kept: the world ends it when the test says (below), so
    // the checks made while it runs never race a clock.
    let world = World::moto().await;
    let vars = uefi_store(UEFI_ZLIB);
    std::fs::write(world.path("vars.b64"), format!("{vars}\n")).unwrap();
    let rel = release(
        world.dir.path(),
        "protected",
        "regions = [\"us-east-1\", \"eu-west-1\"]",
        &[
            ("cool", "protect = \"cooldown\"\nuefi_data = \"vars.b64\""),
            ("plain", "protect = true"),
        ],
    );
    let run = world.run(&["publish", rel.to_str().unwrap()]).await;
    run.assert_ok();
    // On the wire: protection on each image and copy, with the cooldown where asked.
    let protects = params_of(&world, "EnableImageDeregistrationProtection");
    assert_eq!(protects.len(), 4, "{protects:?}");
    let cooled = protects
        .iter()
        .filter(|p| p.get("WithCooldown").map(String::as_str) == Some("true"))
        .count();
    assert_eq!(cooled, 2, "{protects:?}");
    let registers = params_of(&world, "RegisterImage");
    let with_uefi: Vec<_> = registers
        .iter()
        .filter(|r| r.contains_key("UefiData"))
        .collect();
    assert_eq!(with_uefi.len(), 1);
    assert_eq!(with_uefi[0]["UefiData"], vars);

    let home = world.clients().await;
    let (east, west) = (home.clone(), home.in_region("eu-west-1"));
    let cool = "MyOS 15.0-CURRENT-cool-20261124";
    let plain = "MyOS 15.0-CURRENT-plain-20261124";
    for c in [&east, &west] {
        let a = image_named(c, cool).await.unwrap();
        assert_eq!(a.deregistration_protection(), Some("enabled-with-cooldown"));
        let b = image_named(c, plain).await.unwrap();
        assert_eq!(b.deregistration_protection(), Some("enabled"));
        // The copy carries the UEFI data, as CopyImage does.
        let u = c
            .ec2
            .describe_image_attribute()
            .image_id(a.image_id().unwrap())
            .attribute(aws_sdk_ec2::types::ImageAttributeName::UefiData)
            .send()
            .await
            .unwrap();
        assert_eq!(u.uefi_data().and_then(|v| v.value()), Some(vars.as_str()));
    }

    // moto, as AWS, refuses to deregister a protected image.
    let a = image_named(&east, cool).await.unwrap();
    let e = east
        .ec2
        .deregister_image()
        .image_id(a.image_id().unwrap())
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        aws_sdk_ec2::error::ProvideErrorMetadata::code(&e),
        Some("OperationNotPermitted")
    );

    // validate checks the protection (and the UEFI data).
    let run = world
        .run(&["--output", "json", "validate", rel.to_str().unwrap()])
        .await;
    run.assert_ok();
    let v: Value = serde_json::from_str(&run.stdout).unwrap();
    let uefi_checks = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["kind"] == "uefi-data" && c["verdict"] == "Correct")
        .count();
    assert_eq!(uefi_checks, 2, "{}", run.stdout);
    let west_plain = image_named(&west, plain).await.unwrap();
    let west_plain = west_plain.image_id().unwrap();
    west.ec2
        .disable_image_deregistration_protection()
        .image_id(west_plain)
        .send()
        .await
        .unwrap();
    let run = world.run(&["validate", rel.to_str().unwrap()]).await;
    run.assert_failed_with("not as it should be");
    assert!(
        run.stdout.lines().any(|l| l.starts_with("Incorrect")
            && l.contains(west_plain)
            && l.contains("deregistration protection is disabled, expected protected")),
        "{}",
        run.stdout
    );
    // The plan says what a rerun does about it, and the rerun does exactly that.
    let run = world
        .run(&[
            "--output",
            "json",
            "publish",
            rel.to_str().unwrap(),
            "--plan",
        ])
        .await;
    run.assert_ok();
    let plan: Value = serde_json::from_str(&run.stdout).unwrap();
    let updates: Vec<&Value> = plan["actions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["step"] == "protect" && a["verb"] == "update")
        .collect();
    assert_eq!(updates.len(), 1, "{updates:?}");
    assert_eq!(updates[0]["region"], "eu-west-1");
    world.proxy.clear_requests();
    world
        .run(&["publish", rel.to_str().unwrap()])
        .await
        .assert_ok();
    assert_eq!(
        count_in(&world, "EnableImageDeregistrationProtection", "eu-west-1"),
        1
    );
    assert_eq!(world.proxy.count("EnableImageDeregistrationProtection"), 1);
    world
        .run(&["validate", rel.to_str().unwrap()])
        .await
        .assert_ok();

    // prune: the protected images are guarded, with the reason; nothing is deleted.
    let prune = [
        "prune",
        "--regions",
        "us-east-1,eu-west-1",
        "--keep",
        "0",
        "--min-age",
        "0s",
        "--yes",
    ];
    world.proxy.clear_requests();
    let run = world.run(&prune).await;
    run.assert_ok();
    assert!(
        run.stdout.contains("deregistration protection is on"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("pass --unprotect"), "{}", run.stdout);
    assert_eq!(world.proxy.count("DeregisterImage"), 0);
    assert_eq!(world.proxy.count("DisableImageDeregistrationProtection"), 0);

    // --unprotect: the plain one goes now; the one with the cooldown is unprotected and
    // left for a later run, which the plan and the report say.
    world.proxy.clear_requests();
    let mut unprotect = prune.to_vec();
    unprotect.push("--unprotect");
    let run = world.run(&unprotect).await;
    run.assert_ok();
    assert!(
        run.stdout
            .contains("24-hour cooldown: disabled now, deletable from"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("cooldown runs until"), "{}", run.stdout);
    assert_eq!(world.proxy.count("DisableImageDeregistrationProtection"), 4);
    assert_eq!(world.proxy.count("DeregisterImage"), 2);
    for c in [&east, &west] {
        assert!(image_named(c, plain).await.is_none(), "deleted");
        let a = image_named(c, cool).await.unwrap();
        assert!(
            a.deregistration_protection()
                .unwrap()
                .starts_with("disabled-until "),
            "{:?}",
            a.deregistration_protection()
        );
    }
    // While the cooldown runs, a prune keeps them and says until when.
    world.proxy.clear_requests();
    let run = world.run(&unprotect).await;
    run.assert_ok();
    assert!(
        run.stdout
            .contains("its deregistration protection cooldown runs until"),
        "{}",
        run.stdout
    );
    assert_eq!(world.proxy.count("DeregisterImage"), 0);
    // Nor can it be deregistered by hand meanwhile.
    let a = image_named(&east, cool).await.unwrap();
    assert!(
        east.ec2
            .deregister_image()
            .image_id(a.image_id().unwrap())
            .send()
            .await
            .is_err()
    );
    // Once it is over (24 h in AWS; the world's hook ends it now), a plain prune
    // deletes them.
    let ended = hook(&world, "/moto-api/ec2ami/end-cooldowns", &json!({}));
    assert_eq!(ended["ended"], 2, "{ended}");
    world.proxy.clear_requests();
    world.run(&prune).await.assert_ok();
    assert_eq!(world.proxy.count("DeregisterImage"), 2);
    for c in [&east, &west] {
        assert!(image_named(c, cool).await.is_none());
    }
}

// ---------------------------------------------------------------------------------------
// Staged retirement

/// A weekly series in us-east-1: `ages` days old, each its own snapshot, ours; newest
/// first. Returns (image, snapshot) ids.
async fn weekly(c: &Clients, ages: &[i64]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for age in ages {
        let created = rfc3339(now() - age * DAY);
        let date = created[..10].replace('-', "");
        let volume = c
            .ec2
            .create_volume()
            .availability_zone("us-east-1a")
            .size(2)
            .send()
            .await
            .unwrap();
        let vid = volume.volume_id().unwrap();
        let snap = c.ec2.create_snapshot().volume_id(vid).send().await.unwrap();
        c.ec2.delete_volume().volume_id(vid).send().await.unwrap();
        let sid = snap.snapshot_id().unwrap().to_string();
        c.ec2
            .create_tags()
            .resources(&sid)
            .tags(Tag::builder().key(OWNERSHIP.0).value(OWNERSHIP.1).build())
            .tags(Tag::builder().key(CREATED_AT).value(&created).build())
            .send()
            .await
            .unwrap();
        let id = c
            .ec2
            .register_image()
            .name(format!("MyOS 15.0-CURRENT-amd64-{date} base UFS"))
            .architecture(aws_sdk_ec2::types::ArchitectureValues::X8664)
            .root_device_name("/dev/sda1")
            .virtualization_type("hvm")
            .boot_mode(aws_sdk_ec2::types::BootModeValues::UefiPreferred)
            .block_device_mappings(
                BlockDeviceMapping::builder()
                    .device_name("/dev/sda1")
                    .ebs(
                        EbsBlockDevice::builder()
                            .snapshot_id(&sid)
                            .volume_size(2)
                            .build(),
                    )
                    .build(),
            )
            .tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::Image)
                    .tags(Tag::builder().key(OWNERSHIP.0).value(OWNERSHIP.1).build())
                    .tags(Tag::builder().key(CREATED_AT).value(&created).build())
                    .build(),
            )
            .send()
            .await
            .unwrap()
            .image_id()
            .unwrap()
            .to_string();
        out.push((id, sid));
    }
    out
}

async fn share(c: &Clients, id: &str) {
    c.ec2
        .modify_image_attribute()
        .image_id(id)
        .launch_permission(
            LaunchPermissionModifications::builder()
                .add(
                    LaunchPermission::builder()
                        .group(PermissionGroup::All)
                        .build(),
                )
                .add(LaunchPermission::builder().user_id(ACCOUNT).build())
                .build(),
        )
        .send()
        .await
        .unwrap();
}

async fn bin_rule(c: &Clients, kind: BinType, days: i32) {
    c.rbin
        .create_rule()
        .resource_type(kind)
        .retention_period(
            RetentionPeriod::builder()
                .retention_period_value(days)
                .retention_period_unit(RetentionPeriodUnit::Days)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
}

async fn in_bin(c: &Clients) -> (BTreeSet<String>, BTreeSet<String>) {
    let images = c.ec2.list_images_in_recycle_bin().send().await.unwrap();
    let snaps = c.ec2.list_snapshots_in_recycle_bin().send().await.unwrap();
    (
        images
            .images()
            .iter()
            .filter_map(|i| i.image_id().map(str::to_string))
            .collect(),
        snaps
            .snapshots()
            .iter()
            .filter_map(|s| s.snapshot_id().map(str::to_string))
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staged_retirement_disables_then_deletes_on_schedule_and_is_undone() {
    let world = World::moto().await;
    let c = world.clients().await;
    // Five weekly builds: 2, 9, 16, 23 and 30 days old; every one public and shared
    // with an account, as a publish leaves them.
    let imgs = weekly(&c, &[2, 9, 16, 23, 30]).await;
    for (id, _) in &imgs {
        share(&c, id).await;
    }
    let id = |n: usize| imgs[n].0.clone();
    let snap = |n: usize| imgs[n].1.clone();
    // The publish journal recorded the sharing of the 9-day-old one.
    let db = Arc::new(StateDb::open(&world.path("state/ec2ami/state.db")).unwrap());
    let j = Journal::open(&db, "rel", "release.toml", "{}").unwrap();
    j.record(
        &StepKey::new(
            "MyOS 1",
            "share",
            "us-east-1",
            &format!("public,account:{ACCOUNT}"),
        ),
        Status::Done,
        Some(&id(1)),
        None,
    )
    .unwrap();
    drop((j, db));
    // The Recycle Bin keeps AMIs 7 days and snapshots 10.
    bin_rule(&c, BinType::Ec2Image, 7).await;
    bin_rule(&c, BinType::EbsSnapshot, 10).await;
    let policy = world.path("policy.toml");
    std::fs::write(
        &policy,
        "keep = 1\nmin_age = \"1d\"\ndisable_after = \"0d\"\ndelete_after = \"14d\"\n",
    )
    .unwrap();
    let prune = |yes: bool| {
        let mut a = vec![
            "prune".to_string(),
            "--regions".into(),
            "us-east-1".into(),
            "--policy".into(),
            policy.to_str().unwrap().into(),
            "--include-public".into(),
        ];
        if yes {
            a.push("--yes".into());
        }
        a
    };
    let args = |v: &[String]| v.to_vec();

    // The plan: every image but the newest is disabled first; nothing is deleted.
    world.proxy.clear_requests();
    let run = world
        .run(
            &args(&prune(false))
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        )
        .await;
    run.assert_ok();
    assert!(mutating(&world).is_empty(), "{:?}", mutating(&world));
    assert_eq!(
        run.stdout.matches("\n    disable  ").count(),
        4,
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("1 retention rule(s) for AMIs, 1 for snapshots"),
        "{}",
        run.stdout
    );
    let run = world
        .run(
            &args(&prune(true))
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        )
        .await;
    run.assert_ok();
    let disabled: BTreeSet<String> = params_of(&world, "DisableImage")
        .iter()
        .map(|p| p["ImageId"].clone())
        .collect();
    assert_eq!(
        disabled,
        (1..5).map(id).collect(),
        "exactly the four older ones"
    );
    assert_eq!(world.proxy.count("DeregisterImage"), 0);
    assert_eq!(world.proxy.count("DeleteSnapshot"), 0);
    for n in 1..5 {
        let img = image(&c, &id(n)).await.unwrap();
        assert_eq!(img.state().unwrap().as_str(), "disabled");
        assert!(
            permissions(&c, &id(n)).await.is_empty(),
            "DisableImage drops the sharing"
        );
        assert!(
            img.tags()
                .iter()
                .any(|t| t.key() == Some("ec2ami:disabled-at"))
        );
    }
    // A disabled image cannot be launched.
    let e = c
        .ec2
        .run_instances()
        .image_id(id(1))
        .min_count(1)
        .max_count(1)
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        aws_sdk_ec2::error::ProvideErrorMetadata::code(&e),
        Some("InvalidAMIID.Unavailable")
    );

    // Time passes: the two oldest were disabled 20 days ago (their tag says when).
    for n in [3, 4] {
        c.ec2
            .create_tags()
            .resources(id(n))
            .tags(
                Tag::builder()
                    .key("ec2ami:disabled-at")
                    .value(rfc3339(now() - 20 * DAY))
                    .build(),
            )
            .send()
            .await
            .unwrap();
    }
    world.proxy.clear_requests();
    let run = world
        .run(
            &args(&prune(true))
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        )
        .await;
    run.assert_ok();
    let deleted: BTreeSet<String> = params_of(&world, "DeregisterImage")
        .iter()
        .map(|p| p["ImageId"].clone())
        .collect();
    assert_eq!(deleted, [id(3), id(4)].into(), "{}", run.stdout);
    assert_eq!(world.proxy.count("DisableImage"), 0, "already disabled");
    let until = |days: i64| rfc3339(now() + days * DAY)[..10].to_string();
    assert!(
        run.stdout.contains(&format!(
            "recoverable from the Recycle Bin until {} (7-day rule)",
            until(7)
        )),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains(&format!("until {} (10-day rule)", until(10))),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("deleted from"),
        "the two disabled this week wait: {}",
        run.stdout
    );
    let (bin_images, bin_snaps) = in_bin(&c).await;
    assert_eq!(bin_images, [id(3), id(4)].into());
    assert_eq!(bin_snaps, [snap(3), snap(4)].into());

    // enable brings one back, with the sharing the journal and the disable recorded.
    world.proxy.clear_requests();
    let run = world
        .run(&["enable", &id(1), "--regions", "us-east-1"])
        .await;
    run.assert_ok();
    assert!(run.stdout.contains("would be enabled"), "{}", run.stdout);
    assert!(mutating(&world).is_empty(), "{:?}", mutating(&world));
    let run = world
        .run(&["enable", &id(1), "--regions", "us-east-1", "--yes"])
        .await;
    run.assert_ok();
    assert_eq!(world.proxy.count("EnableImage"), 1);
    assert_eq!(
        image(&c, &id(1)).await.unwrap().state().unwrap().as_str(),
        "available"
    );
    assert_eq!(
        permissions(&c, &id(1)).await,
        ["public".to_string(), format!("account:{ACCOUNT}")].into()
    );

    // disable (the command) on the newest: plan first, then --yes.
    world.proxy.clear_requests();
    world
        .run(&["disable", &id(0), "--regions", "us-east-1"])
        .await
        .assert_ok();
    assert!(mutating(&world).is_empty());
    let run = world
        .run(&["disable", &id(0), "--regions", "us-east-1", "--yes"])
        .await;
    run.assert_ok();
    assert!(run.stdout.contains("recorded"), "{}", run.stdout);
    assert_eq!(world.proxy.count("DisableImage"), 1);
    assert_eq!(
        image(&c, &id(0)).await.unwrap().state().unwrap().as_str(),
        "disabled"
    );
    world
        .run(&["enable", &id(0), "--regions", "us-east-1", "--yes"])
        .await
        .assert_ok();
    assert_eq!(
        permissions(&c, &id(0)).await.len(),
        2,
        "re-shared from what disable recorded"
    );

    // Something deleted outside ec2ami after the prune stays in the bin...
    c.ec2
        .deregister_image()
        .image_id(id(2))
        .send()
        .await
        .unwrap();
    // ... while --last-prune restores exactly what the last prune deleted.
    world.proxy.clear_requests();
    let run = world.run(&["restore", "--last-prune"]).await;
    run.assert_ok();
    let restored_images: BTreeSet<String> = params_of(&world, "RestoreImageFromRecycleBin")
        .iter()
        .map(|p| p["ImageId"].clone())
        .collect();
    let restored_snaps: BTreeSet<String> = params_of(&world, "RestoreSnapshotFromRecycleBin")
        .iter()
        .map(|p| p["SnapshotId"].clone())
        .collect();
    assert_eq!(restored_images, [id(3), id(4)].into());
    assert_eq!(restored_snaps, [snap(3), snap(4)].into());
    for n in [3, 4] {
        assert!(image(&c, &id(n)).await.is_some());
    }
    let (bin_images, _) = in_bin(&c).await;
    assert_eq!(bin_images, [id(2)].into());
    // restore AMI_ID brings back a named one (its snapshot was never deleted).
    let run = world
        .run(&["restore", &id(2), "--regions", "us-east-1"])
        .await;
    run.assert_ok();
    assert!(image(&c, &id(2)).await.is_some());
    // Nothing left in the bin: a second restore says so and fails.
    let run = world
        .run(&["restore", &id(2), "--regions", "us-east-1"])
        .await;
    run.assert_failed_with("could not be restored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recently_launched_images_are_kept_with_unused_for() {
    let world = World::moto().await;
    let c = world.clients().await;
    let imgs = weekly(&c, &[2, 9, 16]).await;
    // Another account launched the 16-day-old one 3 days ago (no instance of ours).
    hook(
        &world,
        "/moto-api/ec2ami/last-launched",
        &json!({"region": "us-east-1", "image_id": imgs[2].0, "time": rfc3339(now() - 3 * DAY)}),
    );
    let base = [
        "prune",
        "--regions",
        "us-east-1",
        "--keep",
        "1",
        "--min-age",
        "1d",
    ];
    let mut args = base.to_vec();
    args.extend(["--unused-for", "30d", "--yes"]);
    world.proxy.clear_requests();
    let run = world.run(&args).await;
    run.assert_ok();
    assert!(
        run.stdout
            .contains("within --unused-for 30d (EC2 reports launches up to 24 h late)"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("reports a launch up to 24 hours late"),
        "{}",
        run.stdout
    );
    let deleted: Vec<String> = params_of(&world, "DeregisterImage")
        .iter()
        .map(|p| p["ImageId"].clone())
        .collect();
    assert_eq!(deleted, vec![imgs[1].0.clone()]);
    assert!(image(&c, &imgs[2].0).await.is_some());
}

// ---------------------------------------------------------------------------------------
// Checks before anything is created

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_release_that_would_fail_halfway_is_refused_before_any_upload() {
    let world = World::moto().await;
    let home = world.clients().await;
    // us-west-2 blocks public AMIs; eu-west-1 has one public AMI and a quota of 1.
    home.in_region("us-west-2")
        .ec2
        .enable_image_block_public_access()
        .image_block_public_access_state(
            aws_sdk_ec2::types::ImageBlockPublicAccessEnabledState::BlockNewSharing,
        )
        .send()
        .await
        .unwrap();
    knobs(&world, json!({"public_ami_quota": {"eu-west-1": 1}}));
    let west = home.in_region("eu-west-1");
    let old = {
        let volume = west
            .ec2
            .create_volume()
            .availability_zone("eu-west-1a")
            .size(1)
            .send()
            .await
            .unwrap();
        let snap = west
            .ec2
            .create_snapshot()
            .volume_id(volume.volume_id().unwrap())
            .send()
            .await
            .unwrap();
        west.ec2
            .register_image()
            .name("Old public image")
            .architecture(aws_sdk_ec2::types::ArchitectureValues::X8664)
            .root_device_name("/dev/sda1")
            .block_device_mappings(
                BlockDeviceMapping::builder()
                    .device_name("/dev/sda1")
                    .ebs(
                        EbsBlockDevice::builder()
                            .snapshot_id(snap.snapshot_id().unwrap())
                            .build(),
                    )
                    .build(),
            )
            .send()
            .await
            .unwrap()
            .image_id()
            .unwrap()
            .to_string()
    };
    west.ec2
        .modify_image_attribute()
        .image_id(&old)
        .launch_permission(
            LaunchPermissionModifications::builder()
                .add(
                    LaunchPermission::builder()
                        .group(PermissionGroup::All)
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    // me-south-1 is an opt-in region the account has not enabled.
    let rel = release(
        world.dir.path(),
        "public",
        "regions = [\"us-east-1\", \"us-west-2\", \"eu-west-1\", \"me-south-1\"]\npublic = true",
        &[("base", "")],
    );
    world.proxy.clear_requests();
    let run = world
        .run(&["publish", rel.to_str().unwrap(), "--plan"])
        .await;
    run.assert_failed_with("would make this publish fail halfway");
    for needle in [
        "PROBLEM me-south-1: region: not enabled for this account",
        "aws account enable-region --region-name me-south-1",
        "PROBLEM us-west-2: image-block-public-access",
        "aws ec2 disable-image-block-public-access --region us-west-2",
        "PROBLEM eu-west-1: public-ami-quota: 1 public AMI(s) there now and 1 to make public: 2, over the quota of 1 (Service Quotas)",
        "L-0E3CBAB9",
        "us-east-1: AMI block public access unblocked; public AMIs 0 now + 1 to make public, quota 5 (Service Quotas)",
    ] {
        assert!(
            run.stdout.contains(needle),
            "`{needle}` not in:\n{}",
            run.stdout
        );
    }
    assert!(mutating(&world).is_empty(), "{:?}", mutating(&world));
    // The publish refuses, before its first upload: not one mutating request.
    let run = world.run(&["publish", rel.to_str().unwrap()]).await;
    run.assert_failed_with(
        "3 problem(s) would make this publish fail halfway; nothing was created",
    );
    assert!(
        run.stderr.contains("us-west-2: image-block-public-access"),
        "{}",
        run.stderr
    );
    assert!(mutating(&world).is_empty(), "{:?}", mutating(&world));
    assert_eq!(world.proxy.count("StartSnapshot"), 0);
    // validate reports the same, per region.
    let run = world.run(&["validate", rel.to_str().unwrap()]).await;
    run.assert_failed_with("not as it should be");
    for r in ["us-west-2", "eu-west-1", "me-south-1"] {
        assert!(
            run.stdout
                .lines()
                .any(|l| l.starts_with("Incorrect") && l.contains("readiness") && l.contains(r)),
            "{r}:\n{}",
            run.stdout
        );
    }
    // Where Service Quotas may not be read, AWS's default is used, and said so.
    knobs(&world, json!({"service_quotas_denied": true}));
    let run = world
        .run(&["publish", rel.to_str().unwrap(), "--plan"])
        .await;
    assert!(
        run.stdout.contains("quota 5 (AWS's default; Service Quotas not read: GetServiceQuota L-0E3CBAB9 in us-east-1: AccessDeniedException"),
        "{}",
        run.stdout
    );
    assert!(
        !run.stdout.contains("PROBLEM eu-west-1"),
        "1 + 1 is within the default 5"
    );
}

// ---------------------------------------------------------------------------------------
// Waiting for copies

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twelve_copies_pending_in_one_region_are_polled_with_one_request_per_poll() {
    let world = World::moto().await;
    // Every copy stays pending (harness-only) until the test has seen all twelve
    // CopyImage calls answered and ends the wait (a hook): all twelve wait together,
    // however slow the machine.
    let flavours: Vec<String> = (0..12).map(|i| format!("f{i:02}")).collect();
    let images: Vec<(&str, &str)> = flavours.iter().map(|f| (f.as_str(), "")).collect();
    let rel = release(
        world.dir.path(),
        "twelve",
        "regions = [\"us-east-1\", \"eu-west-1\"]\ncopy_completion = \"30m\"",
        &images,
    );
    knobs(&world, json!({"copy_pending_seconds": 86400}));
    let publish = ["publish", rel.to_str().unwrap()];
    let (run, ()) = tokio::join!(world.run(&publish), async {
        assert!(
            world
                .proxy
                .answered("CopyImage", 12, Duration::from_secs(300))
                .await,
            "twelve CopyImage calls"
        );
        let ready = hook(&world, "/moto-api/ec2ami/copies-ready", &json!({}));
        assert_eq!(ready["ready"], 12, "{ready}");
    });
    run.assert_ok();
    // Time-based copies on the wire.
    let copies = params_of(&world, "CopyImage");
    assert_eq!(copies.len(), 12);
    assert!(
        copies.iter().all(|c| c
            .get("SnapshotCopyCompletionDurationMinutes")
            .map(String::as_str)
            == Some("30")),
        "{copies:?}"
    );
    let copy_ids: BTreeSet<String> = {
        let west = world.clients().await.in_region("eu-west-1");
        let mut ids = BTreeSet::new();
        for f in &flavours {
            ids.insert(
                image_named(&west, &format!("MyOS 15.0-CURRENT-{f}-20261124"))
                    .await
                    .unwrap()
                    .image_id()
                    .unwrap()
                    .to_string(),
            );
        }
        ids
    };
    // Every DescribeImages in eu-west-1 that looks at copies asks for all pending ones
    // at once (an image-id filter); none asks for one copy by id.
    let mut polls: Vec<BTreeSet<String>> = Vec::new();
    for r in world.proxy.requests() {
        if r.operation != "DescribeImages" || r.region != "eu-west-1" {
            continue;
        }
        let f = form(&r);
        assert!(
            !f.contains_key("ImageId.1"),
            "a copy polled on its own: {f:?}"
        );
        let by_id = f
            .iter()
            .any(|(k, v)| k.starts_with("Filter.") && k.ends_with(".Name") && v == "image-id");
        if by_id {
            polls.push(
                f.iter()
                    .filter(|(k, _)| k.starts_with("Filter.1.Value."))
                    .map(|(_, v)| v.clone())
                    .collect(),
            );
        }
    }
    assert!(!polls.is_empty());
    assert!(polls.iter().all(|p| p.is_subset(&copy_ids)), "{polls:?}");
    assert!(
        polls.iter().any(|p| p.len() == 12),
        "twelve pending together: {polls:?}"
    );
    // 12 copies pending together: each is looked at when its wait begins (the others
    // riding along), then all together on the schedule; a handful of polls beyond one
    // per copy, not dozens per copy.
    assert!(polls.len() <= 12 + 4, "{} polls: {polls:?}", polls.len());
}

// ---------------------------------------------------------------------------------------
// Bad input

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_lifecycle_input_is_refused_before_any_request() {
    let world = World::offline().await;
    let good = uefi_store(UEFI_ZLIB);
    std::fs::write(world.path("good.b64"), &good).unwrap();
    std::fs::write(world.path("huge.b64"), "A".repeat(64_004)).unwrap();
    std::fs::write(world.path("garbage.b64"), "this is not base64 at all!").unwrap();
    let (huge, garbage, goodf) = (
        world.path("huge.b64"),
        world.path("garbage.b64"),
        world.path("good.b64"),
    );
    let register = |extra: &[&str]| {
        let mut a = vec![
            "register",
            "snap-0123456789abcdef0",
            "--name",
            "MyOS bad input",
        ];
        a.extend_from_slice(extra);
        a.into_iter().map(str::to_string).collect::<Vec<_>>()
    };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "copy".into(),
                "ami-0123456789abcdef0".into(),
                "--to".into(),
                "eu-west-1".into(),
                "--completion".into(),
                "20m".into(),
            ],
            "not a multiple of 15 minutes",
        ),
        (
            vec![
                "copy".into(),
                "ami-0123456789abcdef0".into(),
                "--to".into(),
                "eu-west-1".into(),
                "--completion".into(),
                "49h".into(),
            ],
            "out of range",
        ),
        (
            vec![
                "copy".into(),
                "ami-0123456789abcdef0".into(),
                "--to".into(),
                "eu-west-1".into(),
                "--completion".into(),
                "0m".into(),
            ],
            "out of range",
        ),
        (
            register(&["--uefi-data", goodf.to_str().unwrap()]),
            "UEFI data needs a UEFI boot mode",
        ),
        (
            register(&["--boot-mode", "uefi", "--uefi-data", huge.to_str().unwrap()]),
            "more than the 64000 RegisterImage takes",
        ),
        (
            register(&[
                "--boot-mode",
                "uefi",
                "--uefi-data",
                garbage.to_str().unwrap(),
            ]),
            "not base64",
        ),
        (register(&["--protect=forever"]), "not a protection"),
        (
            vec![
                "prune".into(),
                "--keep".into(),
                "1".into(),
                "--unused-for".into(),
                "a while".into(),
            ],
            "not a duration",
        ),
        (
            vec![
                "prune".into(),
                "--keep".into(),
                "1".into(),
                "--delete-after".into(),
                "soon".into(),
            ],
            "not a duration",
        ),
        (
            vec!["disable".into(), "not-an-ami".into()],
            "is not an AMI id",
        ),
        (vec!["restore".into()], "required"),
    ];
    for (args, needle) in cases {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = world.run(&a).await;
        run.assert_failed_with(needle);
        let errors = run
            .stderr
            .lines()
            .filter(|l| l.starts_with("error"))
            .count();
        assert_eq!(errors, 1, "one clear error: {}", run.stderr);
    }
    // A release with a bad copy completion or protection value: refused before anything.
    for (top, extra, needle) in [
        (
            "copy_completion = \"10m\"",
            "",
            "`copy_completion`: copy completion `10m` is not a multiple of 15 minutes",
        ),
        (
            "",
            "protect = \"always\"",
            "`protect` must be true, false or \"cooldown\"",
        ),
        ("", "uefi_data = \"garbage.b64\"", "not base64"),
    ] {
        let rel = release(
            world.dir.path(),
            "bad",
            &format!("regions = [\"us-east-1\"]\n{top}"),
            &[("base", extra)],
        );
        for cmd in [
            vec!["publish", rel.to_str().unwrap()],
            vec!["publish", rel.to_str().unwrap(), "--plan"],
        ] {
            world.run(&cmd).await.assert_failed_with(needle);
        }
    }
    // Nothing reached the (absent) server.
    assert!(
        world.proxy.requests().is_empty(),
        "{:?}",
        world
            .proxy
            .requests()
            .iter()
            .map(|r| &r.operation)
            .collect::<Vec<_>>()
    );
    // A restore with no state database names it.
    let run = world.run(&["restore", "--last-prune"]).await;
    run.assert_failed_with("no state database");
}
