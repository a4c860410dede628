//! `ec2ami prune` and `ec2ami deprecate` against moto in three regions, through the
//! recording proxy: a synthetic weekly history (several series and regions, snapshots
//! shared between images, images held by an SSM parameter, instances, launch templates,
//! being public; orphaned snapshots of every kind). Each test checks what remains in moto
//! and which requests the proxy saw. moto runs with a page size of 4, so every listing
//! takes several pages.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_ec2::types::{
    ArchitectureValues, BlockDeviceMapping, BootModeValues, EbsBlockDevice, LaunchPermission,
    LaunchPermissionModifications, PermissionGroup, RequestLaunchTemplateData, ResourceType, Tag,
    TagSpecification, VolumeType,
};
use aws_smithy_types::DateTime;
use aws_smithy_types::date_time::Format;
use ec2ami::aws::Clients;
use ec2ami::state::StateDb;
use ec2ami::state::journal::{Journal, Status, StepKey};
use ec2ami_testkit::{Fault, FaultRule, MotoOptions};
use serde_json::Value;

use crate::common::*;

const REGIONS: [&str; 3] = ["us-east-1", "us-west-2", "eu-west-1"];
const OWNERSHIP: (&str, &str) = ("ec2ami:managed-by", "ec2ami");
/// The harness's backdating tag (moto_ext.py).
const CREATED_AT: &str = "moto-ext:created-at";
const DAY: i64 = 86_400;
/// Weekly builds 2, 9, 16, 23, 30 and 37 days old.
const WEEK_AGES: [i64; 6] = [2, 9, 16, 23, 30, 37];
const SSM_CURRENT: &str = "/myos/amd64/base/ufs/15.0/CURRENT";
const JOURNAL_PARAM: &str = "/released/14.2-STABLE";
const LT_PARAM: &str = "/lt/image";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// `days` ago: the YYYYMMDD for a name and the RFC 3339 time for the backdating tag.
fn days_ago(days: i64) -> (String, String) {
    let t = DateTime::from_secs(now() - days * DAY)
        .fmt(Format::DateTime)
        .unwrap();
    (t[..10].replace('-', ""), t)
}

async fn moto_world() -> World {
    World::moto_with(MotoOptions {
        page_size: Some(4),
        ..MotoOptions::default()
    })
    .await
}

fn tag_spec(kind: ResourceType, pairs: &[(&str, &str)]) -> TagSpecification {
    TagSpecification::builder()
        .resource_type(kind)
        .set_tags(Some(
            pairs
                .iter()
                .map(|(k, v)| Tag::builder().key(*k).value(*v).build())
                .collect(),
        ))
        .build()
}

/// A completed snapshot made `age` days ago, with `description` and `tags`.
async fn snapshot(
    c: &Clients,
    gib: i32,
    description: &str,
    tags: &[(&str, &str)],
    age: i64,
) -> String {
    let volume = c
        .ec2
        .create_volume()
        .availability_zone(format!("{}a", c.region()))
        .size(gib)
        .send()
        .await
        .unwrap();
    let vid = volume.volume_id().unwrap();
    let snap = c
        .ec2
        .create_snapshot()
        .volume_id(vid)
        .description(description)
        .send()
        .await
        .unwrap();
    c.ec2.delete_volume().volume_id(vid).send().await.unwrap();
    let id = snap.snapshot_id().unwrap().to_string();
    let created = days_ago(age).1;
    let mut all: Vec<(&str, &str)> = tags.to_vec();
    all.push((CREATED_AT, &created));
    c.ec2
        .create_tags()
        .resources(&id)
        .set_tags(Some(
            all.iter()
                .map(|(k, v)| Tag::builder().key(*k).value(*v).build())
                .collect(),
        ))
        .send()
        .await
        .unwrap();
    id
}

/// Register `name` from `snap`, made `age` days ago; `managed`: with the ownership tag.
async fn register(c: &Clients, name: &str, snap: &str, age: i64, managed: bool) -> String {
    let created = days_ago(age).1;
    let mut tags = vec![(CREATED_AT, created.as_str())];
    if managed {
        tags.push(OWNERSHIP);
    }
    c.ec2
        .register_image()
        .name(name)
        .architecture(ArchitectureValues::X8664)
        .boot_mode(BootModeValues::UefiPreferred)
        .root_device_name("/dev/sda1")
        .virtualization_type("hvm")
        .block_device_mappings(
            BlockDeviceMapping::builder()
                .device_name("/dev/sda1")
                .ebs(
                    EbsBlockDevice::builder()
                        .snapshot_id(snap)
                        .volume_type(VolumeType::Gp3)
                        .delete_on_termination(true)
                        .build(),
                )
                .build(),
        )
        .tag_specifications(tag_spec(ResourceType::Image, &tags))
        .send()
        .await
        .unwrap()
        .image_id()
        .unwrap()
        .to_string()
}

/// Copy `image` from us-east-1 into `dest` as ec2ami does; the copy and its snapshot id.
async fn copy(dest: &Clients, image: &str, name: &str, age: i64) -> (String, String) {
    let created = days_ago(age).1;
    let id = dest
        .ec2
        .copy_image()
        .source_region("us-east-1")
        .source_image_id(image)
        .name(name)
        .tag_specifications(tag_spec(
            ResourceType::Image,
            &[OWNERSHIP, (CREATED_AT, &created)],
        ))
        .send()
        .await
        .unwrap()
        .image_id()
        .unwrap()
        .to_string();
    let img = dest
        .ec2
        .describe_images()
        .image_ids(&id)
        .send()
        .await
        .unwrap();
    let snap = img.images()[0].block_device_mappings()[0]
        .ebs()
        .unwrap()
        .snapshot_id()
        .unwrap()
        .to_string();
    (id, snap)
}

/// Every image id of the account in `c`'s region (all pages).
async fn image_ids(c: &Clients) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut token = None;
    loop {
        let page = c
            .ec2
            .describe_images()
            .owners("self")
            .set_next_token(token)
            .send()
            .await
            .unwrap();
        out.extend(
            page.images()
                .iter()
                .filter_map(|i| i.image_id().map(str::to_string)),
        );
        token = page.next_token().map(str::to_string);
        if token.is_none() {
            return out;
        }
    }
}

/// Every snapshot id of the account in `c`'s region (all pages).
async fn snapshot_ids(c: &Clients) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut token = None;
    loop {
        let page = c
            .ec2
            .describe_snapshots()
            .owner_ids("self")
            .set_next_token(token)
            .send()
            .await
            .unwrap();
        out.extend(
            page.snapshots()
                .iter()
                .filter_map(|s| s.snapshot_id().map(str::to_string)),
        );
        token = page.next_token().map(str::to_string);
        if token.is_none() {
            return out;
        }
    }
}

/// The synthetic history and what the policy `--keep 2 --min-age 3d` (with `--ssm-path
/// /myos` and the journal) must do with it.
struct History {
    /// (region, label) -> AMI id. Labels: A0..A5 (CURRENT amd64, every region), L0..L5
    /// (the same snapshots registered for BIOS, us-east-1), B0..B3 (STABLE arm64,
    /// us-east-1 and eu-west-1), R (a release), gold (uses A4's snapshot), other (not
    /// ec2ami's).
    ami: BTreeMap<(String, String), String>,
    /// (region, label) -> snapshot id; images' by their label, orphans by theirs.
    snap: BTreeMap<(String, String), String>,
    /// Images the plan deletes / guards (by id).
    delete: BTreeSet<String>,
    guarded: BTreeMap<String, &'static str>,
    /// Snapshots the plan deletes, and orphans it lists but keeps.
    delete_snaps: BTreeSet<String>,
    young_orphans: BTreeSet<String>,
    /// Per region, every image and snapshot before the prune.
    images_before: BTreeMap<String, BTreeSet<String>>,
    snaps_before: BTreeMap<String, BTreeSet<String>>,
}

impl History {
    fn ami(&self, region: &str, label: &str) -> String {
        self.ami[&(region.to_string(), label.to_string())].clone()
    }
    fn snap(&self, region: &str, label: &str) -> String {
        self.snap[&(region.to_string(), label.to_string())].clone()
    }
}

fn name_a(week: usize) -> String {
    format!(
        "MyOS 15.0-CURRENT-amd64-{} base UFS",
        days_ago(WEEK_AGES[week]).0
    )
}
fn name_l(week: usize) -> String {
    format!("{} BIOS", name_a(week))
}
fn name_b(week: usize) -> String {
    format!(
        "MyOS 14.2-STABLE-arm64-{} small ZFS",
        days_ago(WEEK_AGES[week]).0
    )
}

/// Build the history in moto (through the proxy; its requests are forgotten at the end).
async fn history(world: &World) -> History {
    let home = world.clients().await;
    let c: BTreeMap<&str, Clients> = REGIONS.iter().map(|r| (*r, home.in_region(r))).collect();
    let east = &c["us-east-1"];
    let mut ami = BTreeMap::new();
    let mut snap = BTreeMap::new();
    let key = |r: &str, l: &str| (r.to_string(), l.to_string());

    // CURRENT amd64: uploaded, registered twice (UEFI-preferred and BIOS names) from the
    // same snapshot, copied to the other regions.
    for (w, age) in WEEK_AGES.iter().enumerate() {
        let s = snapshot(east, 10, "MyOS 15.0-CURRENT amd64", &[OWNERSHIP], *age).await;
        snap.insert(key("us-east-1", &format!("A{w}")), s.clone());
        let a = register(east, &name_a(w), &s, *age, true).await;
        let l = register(east, &name_l(w), &s, *age, true).await;
        ami.insert(key("us-east-1", &format!("A{w}")), a.clone());
        ami.insert(key("us-east-1", &format!("L{w}")), l);
        for r in ["us-west-2", "eu-west-1"] {
            let (id, cs) = copy(&c[r], &a, &name_a(w), *age).await;
            ami.insert(key(r, &format!("A{w}")), id);
            snap.insert(key(r, &format!("A{w}")), cs);
        }
    }
    // STABLE arm64, four weeks, in us-east-1 and eu-west-1.
    for (w, &age) in WEEK_AGES.iter().enumerate().take(4) {
        let s = snapshot(east, 6, "MyOS 14.2-STABLE arm64", &[OWNERSHIP], age).await;
        snap.insert(key("us-east-1", &format!("B{w}")), s.clone());
        let b = register(east, &name_b(w), &s, age, true).await;
        ami.insert(key("us-east-1", &format!("B{w}")), b.clone());
        let (id, cs) = copy(&c["eu-west-1"], &b, &name_b(w), age).await;
        ami.insert(key("eu-west-1", &format!("B{w}")), id);
        snap.insert(key("eu-west-1", &format!("B{w}")), cs);
    }
    // A release (no date: its own series), a golden image sharing A4's snapshot, and an
    // old image ec2ami did not make.
    let s = snapshot(east, 10, "MyOS 14.1-RELEASE", &[OWNERSHIP], 60).await;
    snap.insert(key("us-east-1", "R"), s.clone());
    ami.insert(
        key("us-east-1", "R"),
        register(east, "MyOS 14.1-RELEASE-amd64 base UFS", &s, 60, true).await,
    );
    let a4 = snap[&key("us-east-1", "A4")].clone();
    ami.insert(
        key("us-east-1", "gold"),
        register(east, "MyOS golden", &a4, 10, true).await,
    );
    let s = snapshot(east, 8, "someone else's", &[], 100).await;
    snap.insert(key("us-east-1", "other"), s.clone());
    ami.insert(
        key("us-east-1", "other"),
        register(east, "Other 20200101", &s, 100, false).await,
    );

    // Orphans: ours (old and young), made for images that are gone, and not ours.
    let a0 = ami[&key("us-east-1", "A0")].clone();
    for (label, desc, tags, age) in [
        ("o-ours", "MyOS upload", vec![OWNERSHIP], 10),
        ("o-young", "MyOS upload", vec![OWNERSHIP], 1),
        (
            "o-gone",
            "Created by CreateImage(i-0123456789abcdef0) for ami-0000000000000dead from vol-0123456789abcdef0",
            vec![],
            10,
        ),
        (
            "o-live",
            &format!(
                "Created by CreateImage(i-0123456789abcdef0) for {a0} from vol-0123456789abcdef0"
            ),
            vec![],
            10,
        ),
        ("o-backup", "my backup", vec![], 10),
    ] {
        let s = snapshot(east, 4, desc, &tags, age).await;
        snap.insert(key("us-east-1", label), s);
    }
    let s = snapshot(
        &c["eu-west-1"],
        4,
        "Copied for DestinationAmi ami-00000000000000bad from SourceAmi ami-0000000000000000a \
         for SourceSnapshot snap-0000000000000000a. Task created on 1,700,000,000,000.",
        &[],
        10,
    )
    .await;
    snap.insert(key("eu-west-1", "o-copy"), s);

    // Guards.
    let ssm = |r: &str| c[r].ssm.clone();
    ssm("us-east-1")
        .put_parameter()
        .name(SSM_CURRENT)
        .value(&ami[&key("us-east-1", "A3")])
        .r#type(aws_sdk_ssm::types::ParameterType::String)
        .send()
        .await
        .unwrap();
    ssm("eu-west-1")
        .put_parameter()
        .name(JOURNAL_PARAM)
        .value(&ami[&key("eu-west-1", "B2")])
        .r#type(aws_sdk_ssm::types::ParameterType::String)
        .send()
        .await
        .unwrap();
    ssm("eu-west-1")
        .put_parameter()
        .name(LT_PARAM)
        .value(&ami[&key("eu-west-1", "A5")])
        .r#type(aws_sdk_ssm::types::ParameterType::String)
        .send()
        .await
        .unwrap();
    // The publish journal recorded the eu-west-1 parameter.
    let db = Arc::new(StateDb::open(&world.path("state/ec2ami/state.db")).unwrap());
    let j = Journal::open(&db, "rel-14.2", "release.toml", "{}").unwrap();
    j.record(
        &StepKey::new(&name_b(2), "param", "eu-west-1", JOURNAL_PARAM),
        Status::Done,
        Some(&ami[&key("eu-west-1", "B2")]),
        None,
    )
    .unwrap();
    drop((j, db));
    // A running instance in us-west-2, a stopped one in us-east-1.
    let run = |r: &'static str, label: &'static str| {
        let c = c[r].clone();
        let image = ami[&key(r, label)].clone();
        async move {
            let out = c
                .ec2
                .run_instances()
                .image_id(image)
                .min_count(1)
                .max_count(1)
                .send()
                .await
                .unwrap();
            out.instances()[0].instance_id().unwrap().to_string()
        }
    };
    run("us-west-2", "A5").await;
    let stopped = run("us-east-1", "L2").await;
    east.ec2
        .stop_instances()
        .instance_ids(stopped)
        .send()
        .await
        .unwrap();
    // Launch templates: in us-west-2 the latest version launches A2 (an older one A4);
    // in eu-west-1 one launches whatever LT_PARAM names (A5).
    let lt = |image: &str| RequestLaunchTemplateData::builder().image_id(image).build();
    let west = &c["us-west-2"];
    west.ec2
        .create_launch_template()
        .launch_template_name("web")
        .launch_template_data(lt(&ami[&key("us-west-2", "A4")]))
        .send()
        .await
        .unwrap();
    west.ec2
        .create_launch_template_version()
        .launch_template_name("web")
        .launch_template_data(lt(&ami[&key("us-west-2", "A2")]))
        .send()
        .await
        .unwrap();
    c["eu-west-1"]
        .ec2
        .create_launch_template()
        .launch_template_name("via-ssm")
        .launch_template_data(lt(&format!("resolve:ssm:{LT_PARAM}")))
        .send()
        .await
        .unwrap();
    // eu-west-1's copy of A4 is public.
    c["eu-west-1"]
        .ec2
        .modify_image_attribute()
        .image_id(&ami[&key("eu-west-1", "A4")])
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

    let mut images_before = BTreeMap::new();
    let mut snaps_before = BTreeMap::new();
    for r in REGIONS {
        images_before.insert(r.to_string(), image_ids(&c[r]).await);
        snaps_before.insert(r.to_string(), snapshot_ids(&c[r]).await);
    }
    let mut h = History {
        ami,
        snap,
        delete: BTreeSet::new(),
        guarded: BTreeMap::new(),
        delete_snaps: BTreeSet::new(),
        young_orphans: BTreeSet::new(),
        images_before,
        snaps_before,
    };
    // What `--keep 2 --min-age 3d` must do: in each series the two newest stay, and of
    // the older ones those guarded stay.
    for (r, labels) in [
        (
            "us-east-1",
            vec!["A2", "A4", "A5", "L3", "L4", "L5", "B2", "B3"],
        ),
        ("us-west-2", vec!["A3", "A4"]),
        ("eu-west-1", vec!["A2", "A3", "B3"]),
    ] {
        for l in labels {
            h.delete.insert(h.ami(r, l));
        }
    }
    for (r, l, why) in [
        ("us-east-1", "A3", SSM_CURRENT),
        ("us-east-1", "L2", "(stopped)"),
        ("us-west-2", "A2", "\"name\":\"web\",\"version\":2"),
        ("us-west-2", "A5", "(running)"),
        ("eu-west-1", "A4", "public"),
        ("eu-west-1", "A5", LT_PARAM),
        ("eu-west-1", "B2", JOURNAL_PARAM),
    ] {
        h.guarded.insert(h.ami(r, l), why);
    }
    // Snapshots: A5's goes (A5 and L5 both deleted); A2's stays (L2 guarded), A3's stays
    // (A3 guarded), A4's stays (the golden image uses it); copies go with their image.
    for (r, l) in [
        ("us-east-1", "A5"),
        ("us-east-1", "B2"),
        ("us-east-1", "B3"),
        ("us-east-1", "o-ours"),
        ("us-east-1", "o-gone"),
        ("us-west-2", "A3"),
        ("us-west-2", "A4"),
        ("eu-west-1", "A2"),
        ("eu-west-1", "A3"),
        ("eu-west-1", "B3"),
        ("eu-west-1", "o-copy"),
    ] {
        h.delete_snaps.insert(h.snap(r, l));
    }
    h.young_orphans.insert(h.snap("us-east-1", "o-young"));
    world.proxy.clear_requests();
    h
}

/// The prune command line of these tests.
fn prune_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "--output",
        "json",
        "prune",
        "--regions",
        "us-east-1,us-west-2,eu-west-1",
        "--keep",
        "2",
        "--min-age",
        "3d",
        "--ssm-path",
        "/myos",
    ];
    v.extend_from_slice(extra);
    v
}

/// (image id, action, guard texts) of every image in a plan.
fn plan_images(plan: &Value) -> BTreeMap<String, (String, String)> {
    let mut out = BTreeMap::new();
    for r in plan["regions"].as_array().unwrap() {
        assert!(r["error"].is_null(), "region failed: {r}");
        for s in r["series"].as_array().unwrap() {
            for i in s["images"].as_array().unwrap() {
                let guards: Vec<String> = i["guards"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|g| g.to_string())
                    .collect();
                out.insert(
                    i["image_id"].as_str().unwrap().to_string(),
                    (i["action"].as_str().unwrap().to_string(), guards.join(" ")),
                );
            }
        }
    }
    out
}

/// Snapshot ids a plan deletes, and those it lists as orphans but keeps.
fn plan_snapshots(plan: &Value) -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut del, mut kept_orphans) = (BTreeSet::new(), BTreeSet::new());
    for r in plan["regions"].as_array().unwrap() {
        let with_images = r["series"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|s| s["images"].as_array().unwrap())
            .flat_map(|i| i["snapshots"].as_array().unwrap());
        for s in with_images {
            if s["action"] == "delete" {
                del.insert(s["snapshot_id"].as_str().unwrap().to_string());
            }
        }
        for s in r["orphans"].as_array().unwrap() {
            let id = s["snapshot_id"].as_str().unwrap().to_string();
            if s["action"] == "delete" {
                del.insert(id);
            } else {
                kept_orphans.insert(id);
            }
        }
    }
    (del, kept_orphans)
}

/// Check a plan against what the history says the policy must do.
fn check_plan(plan: &Value, h: &History) {
    let images = plan_images(plan);
    let selected: BTreeSet<&String> = h
        .ami
        .iter()
        .filter(|((_, l), _)| l != "other")
        .map(|(_, id)| id)
        .collect();
    assert_eq!(
        images.keys().collect::<BTreeSet<_>>(),
        selected,
        "the plan lists exactly ec2ami's images"
    );
    for (id, (action, guards)) in &images {
        let want = if h.delete.contains(id) {
            "delete"
        } else if h.guarded.contains_key(id) {
            "guarded"
        } else {
            "keep"
        };
        assert_eq!(action, want, "{id}: guards {guards}");
        if let Some(why) = h.guarded.get(id) {
            assert!(guards.contains(why), "{id}: `{why}` not in {guards}");
        }
    }
    let (del, kept_orphans) = plan_snapshots(plan);
    assert_eq!(del, h.delete_snaps, "snapshots the plan deletes");
    assert_eq!(kept_orphans, h.young_orphans, "orphans listed but kept");
    assert_eq!(plan["images_to_delete"], h.delete.len());
    assert_eq!(plan["snapshots_to_delete"], h.delete_snaps.len());
    // 10 GiB per A snapshot (5), 6 per B (3), 4 per orphan (3): moto reports no full
    // snapshot size, so volume sizes count.
    assert_eq!(plan["gib_freed"].as_f64(), Some(80.0));
    assert_eq!(plan["usd_per_month"].as_f64(), Some(4.0));
}

/// `Key=value` of a recorded form request.
fn form_value(body: &Option<bytes::Bytes>, key: &str) -> Option<String> {
    let text = std::str::from_utf8(body.as_ref()?).ok()?;
    text.split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.to_string())
}

/// The ids of the successful `operation` requests the proxy saw, from `key`.
fn succeeded(world: &World, operation: &str, key: &str) -> Vec<String> {
    world
        .proxy
        .requests()
        .iter()
        .filter(|r| r.operation == operation && r.status == 200)
        .filter_map(|r| form_value(&r.body, key))
        .collect()
}

/// After `--yes`: exactly the planned images and snapshots are gone, in moto and on the
/// wire.
async fn check_deleted(world: &World, h: &History) {
    let home = world.clients().await;
    for r in REGIONS {
        let c = home.in_region(r);
        let want: BTreeSet<String> = h.images_before[r]
            .iter()
            .filter(|id| !h.delete.contains(*id))
            .cloned()
            .collect();
        assert_eq!(image_ids(&c).await, want, "images left in {r}");
        let want: BTreeSet<String> = h.snaps_before[r]
            .iter()
            .filter(|id| !h.delete_snaps.contains(*id))
            .cloned()
            .collect();
        assert_eq!(snapshot_ids(&c).await, want, "snapshots left in {r}");
    }
    let deregistered: Vec<String> = succeeded(world, "DeregisterImage", "ImageId");
    assert_eq!(
        deregistered.iter().cloned().collect::<BTreeSet<_>>(),
        h.delete,
        "DeregisterImage requests"
    );
    assert_eq!(deregistered.len(), h.delete.len(), "each image once");
    let deleted: Vec<String> = succeeded(world, "DeleteSnapshot", "SnapshotId");
    assert_eq!(
        deleted.iter().cloned().collect::<BTreeSet<_>>(),
        h.delete_snaps,
        "DeleteSnapshot requests"
    );
    assert_eq!(deleted.len(), h.delete_snaps.len(), "each snapshot once");
    // Nothing but deregistrations and snapshot deletions changed anything.
    let other: Vec<String> = mutating(world)
        .into_iter()
        .filter(|op| op != "DeregisterImage" && op != "DeleteSnapshot")
        .collect();
    assert!(other.is_empty(), "unexpected mutating requests: {other:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_keeps_what_the_policy_says_and_changes_nothing() {
    let world = moto_world().await;
    let h = history(&world).await;
    let run = world.run(&prune_args(&[])).await;
    let reqs = world.proxy.requests();
    run.assert_ok();
    let plan: Value = serde_json::from_str(&run.stdout).unwrap();
    check_plan(&plan, &h);
    // Without --yes not one mutating request, and everything is still there.
    assert_eq!(mutating(&world), Vec::<String>::new());
    let home = world.clients().await;
    for r in REGIONS {
        assert_eq!(image_ids(&home.in_region(r)).await, h.images_before[r]);
    }
    // One paged listing per region, never a DescribeImages per image: with 4 images a
    // page, each region takes ceil(images / 4) DescribeImages requests in all.
    for r in REGIONS {
        let n = reqs
            .iter()
            .filter(|q| q.operation == "DescribeImages" && q.region == r)
            .count();
        assert_eq!(
            n,
            h.images_before[r].len().div_ceil(4),
            "DescribeImages in {r}"
        );
    }
    assert!(
        !reqs
            .iter()
            .any(|q| q.operation == "DescribeImages" && form_value(&q.body, "ImageId.1").is_some()),
        "no DescribeImages by id while planning"
    );
    // The text plan says the same, with the reasons and the estimate.
    let run = world.run(&prune_args(&[])[2..]).await;
    run.assert_ok();
    for needle in [
        "MyOS 15.0-CURRENT-amd64-{date} base UFS  [keep 2, min-age 3d]",
        &format!("SSM parameter {SSM_CURRENT} points at it"),
        "older than the 2 newest",
        "also used by",
        "made by CreateImage for ami-0000000000000dead, which no longer exists",
        "made by ec2ami, used by no image; younger than min-age 3d",
        "total: delete 13 image(s) and 11 snapshot(s) in 3 region(s), freeing 80 GiB, about $4.00/month",
        "an estimate",
        "nothing was deleted: run again with --yes",
    ] {
        assert!(
            run.stdout.contains(needle),
            "`{needle}` not in:\n{}",
            run.stdout
        );
    }
    assert_eq!(mutating(&world), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn yes_deletes_exactly_the_plan_and_the_guarded_and_shared_survive() {
    let world = moto_world().await;
    let h = history(&world).await;
    let run = world.run(&prune_args(&["--yes", "--rate", "50"])).await;
    run.assert_ok();
    let out: Value = serde_json::from_str(&run.stdout).unwrap();
    check_plan(&out["plan"], &h);
    let report = &out["report"];
    assert_eq!(report["failed"], 0);
    assert_eq!(report["skipped"], 0);
    assert_eq!(report["images_deleted"], h.delete.len());
    assert_eq!(report["snapshots_deleted"], h.delete_snaps.len());
    check_deleted(&world, &h).await;
    // Each deletion is reported on stderr as it happens.
    for id in h.delete.iter().chain(&h.delete_snaps) {
        assert!(
            run.stderr.contains(&format!(" {id} in ")),
            "{id} not reported"
        );
    }
    // The golden image's snapshot (also A4's) and the guarded ones' are still there.
    let east = world.clients().await;
    assert!(
        snapshot_ids(&east)
            .await
            .contains(&h.snap("us-east-1", "A4"))
    );
    // A second run finds nothing more to delete.
    world.proxy.clear_requests();
    let run = world.run(&prune_args(&["--yes"])).await;
    run.assert_ok();
    let out: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(out["plan"]["images_to_delete"], 0);
    assert_eq!(out["plan"]["snapshots_to_delete"], 0);
    assert_eq!(mutating(&world), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_percent_throttling_gives_the_same_final_state() {
    let world = moto_world().await;
    let h = history(&world).await;
    world
        .proxy
        .set_rules(vec![FaultRule::with_rate(None, Fault::Throttle, 0.10)]);
    let run = world.run(&prune_args(&["--yes", "--rate", "50"])).await;
    let throttled = world
        .proxy
        .requests()
        .iter()
        .filter(|r| r.fault.is_some())
        .count();
    world.proxy.set_rules(vec![]);
    run.assert_ok();
    assert!(throttled > 5, "only {throttled} requests throttled");
    assert!(run.stderr.contains("retrying"), "retries are logged");
    let out: Value = serde_json::from_str(&run.stdout).unwrap();
    check_plan(&out["plan"], &h);
    check_deleted(&world, &h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_that_fails_does_not_stop_the_others_and_the_exit_code_says_so() {
    let world = moto_world().await;
    let h = history(&world).await;
    world.proxy.set_rules(vec![
        FaultRule::first_n(Some("DeregisterImage"), Fault::AccessDenied, 1000)
            .in_region("eu-west-1"),
    ]);
    let run = world.run(&prune_args(&["--yes", "--rate", "50"])).await;
    world.proxy.set_rules(vec![]);
    run.assert_failed_with("failed or were not done");
    let out: Value = serde_json::from_str(&run.stdout).unwrap();
    let report = &out["report"];
    let eu: Vec<&Value> = report["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["region"] == "eu-west-1")
        .collect();
    assert!(!eu.is_empty());
    for o in &eu {
        let kind = o["kind"].as_str().unwrap();
        let status = o["status"].as_str().unwrap();
        let id = o["id"].as_str().unwrap();
        // Orphans need no deregistration: they still go.
        if id == h.snap("eu-west-1", "o-copy") {
            assert_eq!(status, "deleted");
        } else if kind == "image" {
            assert_eq!(status, "failed", "{o}");
            assert!(
                o["detail"]
                    .as_str()
                    .unwrap()
                    .contains("UnauthorizedOperation")
                    || o["detail"].as_str().unwrap().contains("AccessDenied"),
                "{o}"
            );
        } else {
            assert_eq!(status, "not_done", "{o}");
        }
    }
    // The other regions are done.
    let home = world.clients().await;
    for r in ["us-east-1", "us-west-2"] {
        let left = image_ids(&home.in_region(r)).await;
        assert!(h.delete.iter().all(|id| !left.contains(id)), "{r}");
    }
    let eu_left = image_ids(&home.in_region("eu-west-1")).await;
    assert_eq!(
        eu_left, h.images_before["eu-west-1"],
        "nothing deregistered in eu-west-1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_that_cannot_be_read_is_named_and_the_others_are_pruned() {
    let world = moto_world().await;
    let home = world.clients().await;
    let mut old = BTreeMap::new();
    for r in ["us-east-1", "eu-west-1"] {
        let c = home.in_region(r);
        let s = snapshot(&c, 4, "MyOS", &[OWNERSHIP], 37).await;
        old.insert(r, register(&c, &name_a(5), &s, 37, true).await);
        let s = snapshot(&c, 4, "MyOS", &[OWNERSHIP], 2).await;
        register(&c, &name_a(0), &s, 2, true).await;
    }
    world.proxy.clear_requests();
    world.proxy.set_rules(vec![
        FaultRule::first_n(Some("DescribeImages"), Fault::AccessDenied, 1000)
            .in_region("eu-west-1"),
    ]);
    let run = world
        .run(&[
            "prune",
            "--regions",
            "us-east-1,eu-west-1",
            "--keep",
            "1",
            "--yes",
        ])
        .await;
    world.proxy.set_rules(vec![]);
    run.assert_failed_with(
        "1 region(s) could not be looked at, nothing was planned there: eu-west-1: DescribeImages",
    );
    assert!(
        run.stdout
            .contains("eu-west-1\n  NOT LOOKED AT: DescribeImages"),
        "{}",
        run.stdout
    );
    assert_eq!(
        succeeded(&world, "DeregisterImage", "ImageId"),
        vec![old["us-east-1"].clone()]
    );
    assert!(
        image_ids(&home.in_region("eu-west-1"))
            .await
            .contains(&old["eu-west-1"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphans_are_removed_only_when_ours_or_for_a_missing_image() {
    let world = moto_world().await;
    let c = world.clients().await;
    let live_snap = snapshot(&c, 4, "MyOS", &[OWNERSHIP], 30).await;
    let live = register(&c, "MyOS 1-20200101", &live_snap, 30, true).await;
    // An ec2ami snapshot used by an image ec2ami did not register: in use, not an orphan.
    let used = snapshot(&c, 4, "MyOS", &[OWNERSHIP], 30).await;
    register(&c, "Other 1", &used, 30, false).await;
    let mk = |desc: String, tags: Vec<(&'static str, &'static str)>, age| {
        let c = c.clone();
        async move { snapshot(&c, 2, &desc, &tags, age).await }
    };
    let ours = mk("MyOS upload".into(), vec![OWNERSHIP], 10).await;
    let ours_young = mk("MyOS upload".into(), vec![OWNERSHIP], 0).await;
    let for_missing = mk(
        "Created by CreateImage(i-0123456789abcdef0) for ami-0123456789abcdef0 from vol-0123456789abcdef0".into(),
        vec![],
        10,
    )
    .await;
    let copy_missing = mk(
        "Copied for DestinationAmi ami-0fedcba9876543210 from SourceAmi ami-0123 for SourceSnapshot snap-0123. Task created on 1,700,000,000,000.".into(),
        vec![],
        10,
    )
    .await;
    let for_live = mk(
        format!(
            "Created by CreateImage(i-0123456789abcdef0) for {live} from vol-0123456789abcdef0"
        ),
        vec![],
        10,
    )
    .await;
    let other_tag = mk(
        "MyOS upload".into(),
        vec![("ec2ami:managed-by", "someone-else")],
        10,
    )
    .await;
    let foreign = mk("nightly backup of vol-0123".into(), vec![], 10).await;
    world.proxy.clear_requests();

    let args = [
        "--output",
        "json",
        "prune",
        "--regions",
        "us-east-1",
        "--keep",
        "5",
    ];
    let run = world.run(&args).await;
    run.assert_ok();
    let plan: Value = serde_json::from_str(&run.stdout).unwrap();
    let orphans: BTreeMap<String, String> = plan["regions"][0]["orphans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["snapshot_id"].as_str().unwrap().to_string(),
                o["action"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: BTreeMap<String, String> = [
        (&ours, "delete"),
        (&ours_young, "keep"),
        (&for_missing, "delete"),
        (&copy_missing, "delete"),
    ]
    .into_iter()
    .map(|(id, a)| (id.clone(), a.to_string()))
    .collect();
    assert_eq!(orphans, want);
    assert_eq!(mutating(&world), Vec::<String>::new());

    // --skip-orphans: none looked for.
    let mut skip = args.to_vec();
    skip.push("--skip-orphans");
    let run = world.run(&skip).await;
    run.assert_ok();
    let plan: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(plan["regions"][0]["orphans"], serde_json::json!([]));

    let mut yes = args.to_vec();
    yes.push("--yes");
    let run = world.run(&yes).await;
    run.assert_ok();
    let left = snapshot_ids(&c).await;
    for gone in [&ours, &for_missing, &copy_missing] {
        assert!(!left.contains(gone), "{gone} should be deleted");
    }
    for kept in [
        &live_snap,
        &used,
        &ours_young,
        &for_live,
        &other_tag,
        &foreign,
    ] {
        assert!(left.contains(kept), "{kept} should stay");
    }
    let mut deleted = succeeded(&world, "DeleteSnapshot", "SnapshotId");
    deleted.sort();
    let mut want = vec![ours, for_missing, copy_missing];
    want.sort();
    assert_eq!(deleted, want);
    assert_eq!(world.proxy.count("DeregisterImage"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guard_that_appears_after_the_plan_keeps_the_image() {
    let world = moto_world().await;
    let c = world.clients().await;
    let mut ids = Vec::new();
    for (w, age) in WEEK_AGES.iter().take(4).enumerate() {
        let s = snapshot(&c, 4, "MyOS", &[OWNERSHIP], *age).await;
        ids.push(register(&c, &name_a(w), &s, *age, true).await);
    }
    world.proxy.clear_requests();
    // The first deregistration is held (a hook, not a rate): while it waits, this test
    // launches an instance from the image planned second and points a parameter at the
    // third; the guards are looked at again before each later deletion.
    let gate = world.proxy.hold(Some("DeregisterImage"), 0);
    let mut cmd = world.ec2ami();
    cmd.args([
        "--output",
        "json",
        "prune",
        "--regions",
        "us-east-1",
        "--keep",
        "1",
        "--ssm-path",
        "/late",
        "--rate",
        "20",
        "--yes",
    ]);
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        gate.arrived(1, Duration::from_secs(60)).await,
        "no deregistration started"
    );
    c.ec2
        .run_instances()
        .image_id(&ids[2])
        .min_count(1)
        .max_count(1)
        .send()
        .await
        .unwrap();
    c.ssm
        .put_parameter()
        .name("/late/rollback")
        .value(&ids[3])
        .r#type(aws_sdk_ssm::types::ParameterType::String)
        .send()
        .await
        .unwrap();
    gate.open();
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let run = Run::from(out);
    run.assert_ok();
    let report: Value = serde_json::from_str(&run.stdout).unwrap();
    let status: BTreeMap<String, (String, String)> = report["report"]["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["kind"] == "image")
        .map(|o| {
            (
                o["id"].as_str().unwrap().to_string(),
                (
                    o["status"].as_str().unwrap().to_string(),
                    o["detail"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect();
    assert_eq!(status[&ids[1]].0, "deleted");
    assert_eq!(status[&ids[2]].0, "skipped", "{:?}", status[&ids[2]]);
    assert!(
        status[&ids[2]].1.contains("in use by instance"),
        "{:?}",
        status[&ids[2]]
    );
    assert_eq!(status[&ids[3]].0, "skipped");
    assert!(status[&ids[3]].1.contains("SSM parameter /late/rollback"));
    let left = image_ids(&c).await;
    assert_eq!(
        left,
        [&ids[0], &ids[2], &ids[3]].into_iter().cloned().collect()
    );
    assert_eq!(
        succeeded(&world, "DeregisterImage", "ImageId"),
        vec![ids[1].clone()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_starts_no_new_deletion_and_names_what_was_left() {
    let world = moto_world().await;
    let c = world.clients().await;
    let mut ids = Vec::new();
    let mut snaps = Vec::new();
    for (w, age) in WEEK_AGES.iter().take(4).enumerate() {
        let s = snapshot(&c, 4, "MyOS", &[OWNERSHIP], *age).await;
        ids.push(register(&c, &name_a(w), &s, *age, true).await);
        snaps.push(s);
    }
    world.proxy.clear_requests();
    // The first deregistration is held: the signal lands while it is in flight.
    let gate = world.proxy.hold(Some("DeregisterImage"), 0);
    let mut cmd = world.ec2ami();
    cmd.args([
        "--output",
        "json",
        "prune",
        "--regions",
        "us-east-1",
        "--keep",
        "1",
        "--rate",
        "20",
        "--yes",
    ]);
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        gate.arrived(1, Duration::from_secs(60)).await,
        "no deregistration started"
    );
    // SAFETY: signalling the child this test started.
    unsafe { libc::kill(child.id().unwrap() as i32, libc::SIGINT) };
    gate.open();
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("stops promptly")
        .unwrap();
    let run = Run::from(out);
    assert_eq!(run.code, Some(130), "{}", run.stderr);
    let report: Value = serde_json::from_str(&run.stdout).unwrap();
    let outcomes: Vec<(String, String, String)> = report["report"]["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["id"].as_str().unwrap().to_string(),
                o["status"].as_str().unwrap().to_string(),
                o["detail"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(report["report"]["interrupted"], true);
    // The one image deregistered, its snapshot named with the command that deletes it,
    // everything after it not started.
    assert_eq!(outcomes[0].0, ids[1]);
    assert_eq!(outcomes[0].1, "deleted");
    assert_eq!(outcomes[1].0, snaps[1]);
    assert_eq!(outcomes[1].1, "not_done");
    assert!(
        outcomes[1].2.contains(&format!(
            "aws ec2 delete-snapshot --region us-east-1 --snapshot-id {}",
            snaps[1]
        )),
        "{}",
        outcomes[1].2
    );
    assert!(
        outcomes[2..].iter().all(|o| o.1 == "not_done"),
        "{outcomes:?}"
    );
    assert_eq!(outcomes.len(), 6);
    assert_eq!(world.proxy.count("DeregisterImage"), 1);
    assert_eq!(world.proxy.count("DeleteSnapshot"), 0);
    let left = image_ids(&c).await;
    assert_eq!(
        left,
        [&ids[0], &ids[2], &ids[3]].into_iter().cloned().collect()
    );
    assert!(snapshot_ids(&c).await.contains(&snaps[1]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_clearly_and_nothing_is_deleted() {
    let world = moto_world().await;
    let c = world.clients().await;
    let s = snapshot(&c, 4, "MyOS", &[OWNERSHIP], 30).await;
    let old = register(&c, &name_a(5), &s, 37, true).await;
    let s = snapshot(&c, 4, "MyOS", &[OWNERSHIP], 2).await;
    register(&c, &name_a(0), &s, 2, true).await;
    world.proxy.clear_requests();
    let policy = world.path("policy.toml");
    std::fs::write(&policy, "keep = -2\n").unwrap();
    let policy = policy.to_str().unwrap();
    let cases: [(&[&str], &str, Option<i32>); 8] = [
        (
            &["prune", "--keep", "1", "--series-pattern", "(unclosed"],
            "is not a valid regex",
            Some(2),
        ),
        (
            &["prune", "--keep", "1", "--series-pattern", "^MyOS (.*)$"],
            "no named group `date`",
            Some(2),
        ),
        (
            &["prune", "--keep", "-1"],
            "--keep must be 0 or more, not -1",
            Some(2),
        ),
        (
            &["prune", "--policy", policy],
            "keep must be 0 or more, not -2",
            Some(1),
        ),
        (
            &["prune", "--policy", "/nonexistent/policy.toml"],
            "cannot read policy file",
            Some(1),
        ),
        (&["prune"], "no retention policy", Some(1)),
        (
            &["prune", "--keep", "1", "--ssm-path", "myos"],
            "must start with /",
            Some(1),
        ),
        (
            &["deprecate", &old, "--at", "2020-01-01"],
            "in the past",
            Some(1),
        ),
    ];
    for (args, needle, code) in cases {
        let run = world.run(args).await;
        run.assert_failed_with(needle);
        assert_eq!(run.code, code, "{args:?}: {}", run.stderr);
        assert!(world.proxy.requests().is_empty(), "{args:?} sent requests");
    }
    // An unknown region: refused before any request (its name is not a region's).
    let run = world
        .run(&[
            "prune",
            "--keep",
            "1",
            "--regions",
            "us-east-1,mars-north-1",
        ])
        .await;
    run.assert_failed_with("`mars-north-1` is not an AWS region name");
    let ops: Vec<String> = world
        .proxy
        .requests()
        .iter()
        .map(|r| r.operation.clone())
        .collect();
    assert!(ops.is_empty(), "{ops:?}");
    // The old image, which a valid `--keep 1 --yes` would delete, is still there.
    assert!(image_ids(&c).await.contains(&old));
    let run = world
        .run(&[
            "--output",
            "json",
            "prune",
            "--regions",
            "us-east-1",
            "--keep",
            "1",
        ])
        .await;
    run.assert_ok();
    let plan: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(
        plan["images_to_delete"], 1,
        "the valid command would delete it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deprecate_sets_times_on_an_image_and_its_copies_and_on_older_series_members() {
    let world = moto_world().await;
    let home = world.clients().await;
    let west = home.in_region("us-west-2");
    let mut east_ids = Vec::new();
    let mut west_ids = Vec::new();
    for (w, &age) in WEEK_AGES.iter().enumerate().take(3) {
        let s = snapshot(&home, 4, "MyOS", &[OWNERSHIP], age).await;
        let id = register(&home, &name_a(w), &s, age, true).await;
        west_ids.push(copy(&west, &id, &name_a(w), age).await.0);
        east_ids.push(id);
    }
    world.proxy.clear_requests();
    let deprecation = |c: Clients, id: String| async move {
        c.ec2
            .describe_images()
            .image_ids(id)
            .send()
            .await
            .unwrap()
            .images()[0]
            .deprecation_time()
            .map(str::to_string)
    };
    let at = DateTime::from_secs(now() + 90 * DAY)
        .fmt(Format::DateTime)
        .unwrap();
    let at_day = &at[..10];
    let series = "MyOS 15.0-CURRENT-amd64-{date} base UFS";
    let args = [
        "deprecate",
        "--series",
        series,
        "--keep",
        "1",
        "--at",
        at_day,
        "--regions",
        "us-east-1,us-west-2",
    ];
    // --plan changes nothing.
    let mut plan = args.to_vec();
    plan.push("--plan");
    let run = world.run(&plan).await;
    run.assert_ok();
    assert_eq!(
        run.stdout.matches("would be deprecated").count(),
        4,
        "{}",
        run.stdout
    );
    assert_eq!(mutating(&world), Vec::<String>::new());
    let run = world.run(&args).await;
    run.assert_ok();
    assert_eq!(
        run.stdout.matches(" deprecated at ").count(),
        4,
        "{}",
        run.stdout
    );
    let want = format!("{at_day}T00:00:00.000Z");
    for (ids, c) in [(&east_ids, &home), (&west_ids, &west)] {
        assert_eq!(
            deprecation(c.clone(), ids[0].clone()).await,
            None,
            "the newest stays"
        );
        for id in &ids[1..] {
            assert_eq!(
                deprecation(c.clone(), id.clone()).await.as_deref(),
                Some(want.as_str())
            );
        }
    }
    assert_eq!(world.proxy.count("EnableImageDeprecation"), 4);
    // Again: nothing to change.
    world.proxy.clear_requests();
    let run = world.run(&args).await;
    run.assert_ok();
    assert_eq!(run.stdout.matches("already deprecated").count(), 4);
    assert_eq!(world.proxy.count("EnableImageDeprecation"), 0);
    // One image by id: it and its copy.
    let run = world
        .run(&[
            "deprecate",
            &east_ids[0],
            "--in",
            "30d",
            "--regions",
            "us-east-1,us-west-2",
        ])
        .await;
    run.assert_ok();
    assert!(
        deprecation(home.clone(), east_ids[0].clone())
            .await
            .is_some()
    );
    assert!(
        deprecation(west.clone(), west_ids[0].clone())
            .await
            .is_some()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_max_age_price_and_disable_after_change_what_is_pruned() {
    // One region; a managed weekly series (5, 12, 19 and 26 days old) and an unmanaged
    // one (5 and 40 days old) with the same name pattern. Each image has its own
    // 10 GiB snapshot.
    let world = moto_world().await;
    let c = world.clients().await.in_region("us-east-1");
    let mut ours = BTreeMap::new();
    for age in [5, 12, 19, 26] {
        let s = snapshot(&c, 10, "flags", &[OWNERSHIP], age).await;
        let name = format!("Flags 1.0-amd64-{} base", days_ago(age).0);
        ours.insert(age, register(&c, &name, &s, age, true).await);
    }
    let mut theirs = BTreeMap::new();
    for age in [5, 40] {
        let s = snapshot(&c, 10, "other", &[], age).await;
        let name = format!("Flags 1.0-arm64-{} base", days_ago(age).0);
        theirs.insert(age, register(&c, &name, &s, age, false).await);
    }
    world.proxy.clear_requests();
    let plan = |extra: &[&str]| {
        let mut args = vec![
            "--output",
            "json",
            "prune",
            "--regions",
            "us-east-1",
            "--name",
            "Flags *",
            "--keep",
            "10",
            "--min-age",
            "1d",
            "--skip-orphans",
        ];
        args.extend_from_slice(extra);
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let world = &world;
        async move {
            let run = world
                .run(&args.iter().map(String::as_str).collect::<Vec<_>>())
                .await;
            run.assert_ok();
            serde_json::from_str::<Value>(&run.stdout).unwrap()
        }
    };
    let deleted = |p: &Value| -> BTreeSet<String> {
        plan_images(p)
            .into_iter()
            .filter(|(_, (a, _))| a == "delete")
            .map(|(id, _)| id)
            .collect()
    };
    // --keep 10 alone deletes nothing; --max-age 20d deletes what is older, in both
    // series (--name selects regardless of the ownership tag).
    let p = plan(&[]).await;
    assert!(deleted(&p).is_empty(), "{p}");
    assert_eq!(plan_images(&p).len(), 6);
    let p = plan(&["--max-age", "20d"]).await;
    assert_eq!(
        deleted(&p),
        BTreeSet::from([ours[&26].clone(), theirs[&40].clone()])
    );
    // --managed: the unmanaged series is not even a candidate.
    let p = plan(&["--max-age", "20d", "--managed"]).await;
    assert_eq!(plan_images(&p).len(), 4, "{p}");
    assert_eq!(deleted(&p), BTreeSet::from([ours[&26].clone()]));
    // The estimate: 10 GiB at the default price, then at --price-per-gb-month 0.5.
    assert_eq!(p["gib_freed"].as_f64(), Some(10.0));
    assert_eq!(p["usd_per_month"].as_f64(), Some(0.5));
    let p = plan(&[
        "--max-age",
        "20d",
        "--managed",
        "--price-per-gb-month",
        "0.5",
    ])
    .await;
    assert_eq!(p["usd_per_month"].as_f64(), Some(5.0));
    assert!(mutating(&world).is_empty(), "plans change nothing");
    // --disable-after 0d --yes: the image the policy lets go is disabled, not deleted.
    plan(&[
        "--max-age",
        "20d",
        "--managed",
        "--disable-after",
        "0d",
        "--yes",
    ])
    .await;
    let disabled: Vec<String> = params_of(&world, "DisableImage")
        .into_iter()
        .map(|p| p["ImageId"].clone())
        .collect();
    assert_eq!(disabled, vec![ours[&26].clone()]);
    assert_eq!(world.proxy.count("DeregisterImage"), 0);
    let img = c
        .ec2
        .describe_images()
        .image_ids(&ours[&26])
        .include_disabled(true)
        .send()
        .await
        .unwrap();
    assert_eq!(img.images()[0].state().unwrap().as_str(), "disabled");
    assert!(
        image_ids(&c).await.contains(&theirs[&40]),
        "not managed: untouched"
    );
}

/// The faults of a world that behaves like AWS under load: 10 % of the requests prune
/// makes answered with their service's documented throttling codes, 5 % with a 503.
fn aws_under_load() -> Vec<FaultRule> {
    use ec2ami_testkit::proxy::vocabulary;
    let mut rules = Vec::new();
    for (service, ops) in [
        (
            "ec2",
            &[
                "DescribeImages",
                "DescribeSnapshots",
                "DeregisterImage",
                "DeleteSnapshot",
            ][..],
        ),
        ("ssm", &["GetParametersByPath"][..]),
    ] {
        let throttles: Vec<_> = vocabulary::retryable(service)
            .into_iter()
            .filter(|d| d.code.contains("Throttl") || d.code.contains("Limit"))
            .collect();
        assert!(!throttles.is_empty(), "{service} has throttling codes");
        for d in &throttles {
            for op in ops {
                rules.push(FaultRule::with_rate(
                    Some(op),
                    Fault::Code(d.code),
                    0.10 / throttles.len() as f64,
                ));
            }
        }
    }
    rules.push(FaultRule::with_rate(None, Fault::Status(503), 0.05));
    rules
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_realism_and_kill_9_at_seeded_points_prune_deletes_exactly_the_plan() {
    // New images pending for one answer; throttling codes and 5xx; prune killed -9 at
    // points a seeded RNG picks (printed: EC2AMI_TEST_SEED=N reproduces a run), each
    // kill landing while a held deletion waits at the proxy; then a last run. The end
    // is the plan's: exactly the planned images and snapshots gone, each deleted once.
    let world = World::moto_with(MotoOptions {
        page_size: Some(4),
        realism: ec2ami_testkit::Realism {
            pending_polls: 1,
            ..Default::default()
        },
        ..MotoOptions::default()
    })
    .await;
    let h = history(&world).await;
    // The history is weeks old: every image's first (pending) answer is behind it, and
    // the snapshots of its copies are as old as the copies (moto dates them now).
    let home = world.clients().await;
    for r in REGIONS {
        let c = home.in_region(r);
        let mut images = Vec::new();
        let mut token = None;
        loop {
            let page = c
                .ec2
                .describe_images()
                .owners("self")
                .set_next_token(token)
                .send()
                .await
                .unwrap();
            images.extend(page.images().to_vec());
            token = page.next_token().map(str::to_string);
            if token.is_none() {
                break;
            }
        }
        for img in &images {
            let Some(created) = img
                .tags()
                .iter()
                .find(|t| t.key() == Some(CREATED_AT))
                .and_then(|t| t.value())
            else {
                continue;
            };
            for m in img.block_device_mappings() {
                let Some(snap) = m.ebs().and_then(|e| e.snapshot_id()) else {
                    continue;
                };
                let dated = c
                    .ec2
                    .describe_snapshots()
                    .snapshot_ids(snap)
                    .send()
                    .await
                    .unwrap()
                    .snapshots()
                    .iter()
                    .any(|s| s.tags().iter().any(|t| t.key() == Some(CREATED_AT)));
                if !dated {
                    c.ec2
                        .create_tags()
                        .resources(snap)
                        .tags(Tag::builder().key(CREATED_AT).value(created).build())
                        .send()
                        .await
                        .unwrap();
                }
            }
        }
    }
    world.proxy.clear_requests();
    let seed: u64 = std::env::var("EC2AMI_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| now() as u64);
    eprintln!("kill points from seed {seed} (EC2AMI_TEST_SEED={seed} reproduces them)");
    let mut rng = fastrand::Rng::with_seed(seed);
    world.proxy.set_rules(aws_under_load());
    let mut kills = 0;
    for round in 0..3 {
        let op = ["DeregisterImage", "DeleteSnapshot"][rng.usize(..2)];
        let after = rng.usize(0..4);
        let gate = world.proxy.hold(Some(op), after);
        let args = prune_args(&["--yes", "--rate", "50"]);
        let held = world
            .kill_at_gate(&gate, &args, Duration::from_secs(120))
            .await;
        kills += usize::from(held);
        eprintln!("round {round}: {op} held after {after}: killed: {held}");
    }
    let run = world.run(&prune_args(&["--yes", "--rate", "50"])).await;
    let faults = world
        .proxy
        .requests()
        .iter()
        .filter(|r| r.fault.is_some())
        .count();
    world.proxy.set_rules(vec![]);
    run.assert_ok();
    if let Ok(out) = serde_json::from_str::<Value>(&run.stdout) {
        for r in out["plan"]["regions"].as_array().into_iter().flatten() {
            eprintln!("last run, {}: orphans {}", r["region"], r["orphans"]);
        }
    }
    assert!(kills >= 1, "no kill landed: the test proves little");
    assert!(faults >= 5, "only {faults} faults: the test proves little");
    // What is left is the plan's, in moto; each deletion was answered once.
    for r in REGIONS {
        let c = home.in_region(r);
        let want: BTreeSet<String> = h.images_before[r]
            .iter()
            .filter(|id| !h.delete.contains(*id))
            .cloned()
            .collect();
        assert_eq!(image_ids(&c).await, want, "images left in {r}");
        let want: BTreeSet<String> = h.snaps_before[r]
            .iter()
            .filter(|id| !h.delete_snaps.contains(*id))
            .cloned()
            .collect();
        assert_eq!(snapshot_ids(&c).await, want, "snapshots left in {r}");
    }
    for (op, key, want) in [
        ("DeregisterImage", "ImageId", &h.delete),
        ("DeleteSnapshot", "SnapshotId", &h.delete_snaps),
    ] {
        let done = succeeded(&world, op, key);
        let set: BTreeSet<String> = done.iter().cloned().collect();
        assert!(set.is_subset(want), "{op}: {set:?} not all planned");
        assert_eq!(
            done.len(),
            set.len(),
            "{op}: something deleted twice: {done:?}"
        );
    }
    // Nothing but deletions changed anything.
    let other: Vec<String> = mutating(&world)
        .into_iter()
        .filter(|op| op != "DeregisterImage" && op != "DeleteSnapshot")
        .collect();
    assert!(other.is_empty(), "unexpected mutating requests: {other:?}");
}
