//! The harness's moto extension (testkit/src/moto_ext.py) keeps the AMI state AWS keeps:
//! checked through the AWS SDK, as ec2ami sees it, so that tests of publish, validate and
//! prune can rely on what DescribeImages and DescribeSnapshots answer.

use std::time::{SystemTime, UNIX_EPOCH};

use aws_sdk_ec2::Client;
use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::{
    ArchitectureValues, BlockDeviceMapping, BootModeValues, EbsBlockDevice, Filter, Image,
    ImageBlockPublicAccessEnabledState, ImdsSupportValues, LaunchPermission,
    LaunchPermissionModifications, PermissionGroup, ResourceType, Tag, TagSpecification,
    TpmSupportValues, VolumeType,
};
use aws_smithy_types::DateTime;
use aws_smithy_types::date_time::Format;
use ec2ami_testkit::MotoOptions;

use crate::common::*;

/// moto's default account.
const ACCOUNT: &str = "123456789012";

/// The AWS error code of a failed call.
fn code<T: std::fmt::Debug, E: ProvideErrorMetadata + std::fmt::Debug>(r: Result<T, E>) -> String {
    let e = r.expect_err("the call should fail");
    e.code()
        .unwrap_or_else(|| panic!("no error code in {e:?}"))
        .to_string()
}

fn tags(spec: ResourceType, pairs: &[(&str, &str)]) -> TagSpecification {
    TagSpecification::builder()
        .resource_type(spec)
        .set_tags(Some(
            pairs
                .iter()
                .map(|(k, v)| Tag::builder().key(*k).value(*v).build())
                .collect(),
        ))
        .build()
}

fn tag_of(tags: &[Tag], key: &str) -> Option<String> {
    tags.iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
        .map(str::to_string)
}

fn filter(name: &str, value: &str) -> Filter {
    Filter::builder().name(name).values(value).build()
}

/// A completed snapshot of `gib` GiB in us-east-1.
async fn snapshot(ec2: &Client, gib: i32) -> String {
    let volume = ec2
        .create_volume()
        .availability_zone(format!("{REGION}a"))
        .size(gib)
        .send()
        .await
        .unwrap();
    let snap = ec2
        .create_snapshot()
        .volume_id(volume.volume_id().unwrap())
        .send()
        .await
        .unwrap();
    ec2.delete_volume()
        .volume_id(volume.volume_id().unwrap())
        .send()
        .await
        .unwrap();
    snap.snapshot_id().unwrap().to_string()
}

fn root_mapping(snapshot: &str, gib: i32) -> BlockDeviceMapping {
    BlockDeviceMapping::builder()
        .device_name("/dev/sda1")
        .ebs(
            EbsBlockDevice::builder()
                .snapshot_id(snapshot)
                .volume_size(gib)
                .volume_type(VolumeType::Gp3)
                .delete_on_termination(true)
                .iops(3000)
                .throughput(125)
                .build(),
        )
        .build()
}

/// Register `name` from `snapshot` with every attribute ec2ami sets.
async fn register(ec2: &Client, name: &str, snapshot: &str) -> String {
    ec2.register_image()
        .name(name)
        .description("MyOS/arm64 CURRENT@4f1e2d3")
        .architecture(ArchitectureValues::Arm64)
        .boot_mode(BootModeValues::Uefi)
        .ena_support(true)
        .sriov_net_support("simple")
        .imds_support(ImdsSupportValues::V20)
        .tpm_support(TpmSupportValues::V20)
        .root_device_name("/dev/sda1")
        .virtualization_type("hvm")
        .block_device_mappings(root_mapping(snapshot, 10))
        .tag_specifications(tags(
            ResourceType::Image,
            &[("branch", "CURRENT"), ("flavour", "base")],
        ))
        .send()
        .await
        .unwrap()
        .image_id()
        .unwrap()
        .to_string()
}

async fn describe(ec2: &Client, image_id: &str) -> Image {
    ec2.describe_images()
        .image_ids(image_id)
        .send()
        .await
        .unwrap()
        .images()
        .first()
        .cloned()
        .unwrap_or_else(|| panic!("{image_id} not described"))
}

/// Image ids matching `filters` among the account's own images.
async fn own_ids(ec2: &Client, filters: Vec<Filter>) -> Vec<String> {
    let mut ids: Vec<String> = ec2
        .describe_images()
        .owners("self")
        .set_filters(Some(filters))
        .send()
        .await
        .unwrap()
        .images()
        .iter()
        .filter_map(|i| i.image_id().map(str::to_string))
        .collect();
    ids.sort();
    ids
}

async fn snapshot_exists(ec2: &Client, id: &str) -> bool {
    match ec2.describe_snapshots().snapshot_ids(id).send().await {
        Ok(out) => !out.snapshots().is_empty(),
        Err(e) if e.code() == Some("InvalidSnapshot.NotFound") => false,
        Err(e) => panic!("DescribeSnapshots {id}: {e:?}"),
    }
}

async fn snapshot_count(ec2: &Client) -> usize {
    ec2.describe_snapshots()
        .owner_ids("self")
        .send()
        .await
        .unwrap()
        .snapshots()
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_keeps_attributes_mappings_and_tags() {
    let world = World::moto().await;
    let ec2 = world.clients().await.ec2;
    let snap = snapshot(&ec2, 4).await;
    let ami = register(&ec2, "MyOS 15.0 arm64", &snap).await;

    let img = describe(&ec2, &ami).await;
    assert_eq!(img.name(), Some("MyOS 15.0 arm64"));
    assert_eq!(img.description(), Some("MyOS/arm64 CURRENT@4f1e2d3"));
    assert_eq!(img.architecture(), Some(&ArchitectureValues::Arm64));
    assert_eq!(img.boot_mode(), Some(&BootModeValues::Uefi));
    assert_eq!(img.ena_support(), Some(true));
    assert_eq!(img.sriov_net_support(), Some("simple"));
    assert_eq!(img.imds_support(), Some(&ImdsSupportValues::V20));
    assert_eq!(img.tpm_support(), Some(&TpmSupportValues::V20));
    assert_eq!(img.root_device_name(), Some("/dev/sda1"));
    assert_eq!(img.root_device_type().map(|t| t.as_str()), Some("ebs"));
    assert_eq!(img.virtualization_type().map(|t| t.as_str()), Some("hvm"));
    assert_eq!(img.owner_id(), Some(ACCOUNT));
    assert_eq!(img.deprecation_time(), None);
    assert_eq!(tag_of(img.tags(), "branch").as_deref(), Some("CURRENT"));
    assert_eq!(tag_of(img.tags(), "flavour").as_deref(), Some("base"));

    // Exactly the mapping given: no invented snapshot.
    let maps = img.block_device_mappings();
    assert_eq!(maps.len(), 1, "{maps:?}");
    assert_eq!(maps[0].device_name(), Some("/dev/sda1"));
    let ebs = maps[0].ebs().unwrap();
    assert_eq!(ebs.snapshot_id(), Some(snap.as_str()));
    assert_eq!(ebs.volume_size(), Some(10));
    assert_eq!(ebs.volume_type(), Some(&VolumeType::Gp3));
    assert_eq!(ebs.delete_on_termination(), Some(true));
    assert_eq!(ebs.iops(), Some(3000));
    assert_eq!(ebs.throughput(), Some(125));
    assert_eq!(ebs.encrypted(), Some(false));
    assert_eq!(snapshot_count(&ec2).await, 1, "no snapshot but ours");

    // DescribeImageAttribute answers each attribute (moto alone: HTTP 500 or nothing).
    let attr = |name: &'static str| {
        let ec2 = ec2.clone();
        let ami = ami.clone();
        async move {
            ec2.describe_image_attribute()
                .image_id(ami)
                .attribute(name.into())
                .send()
                .await
                .unwrap()
        }
    };
    let value = |v: Option<&aws_sdk_ec2::types::AttributeValue>| {
        v.and_then(|v| v.value()).map(str::to_string)
    };
    assert_eq!(
        value(attr("bootMode").await.boot_mode()).as_deref(),
        Some("uefi")
    );
    assert_eq!(
        value(attr("imdsSupport").await.imds_support()).as_deref(),
        Some("v2.0")
    );
    assert_eq!(
        value(attr("tpmSupport").await.tpm_support()).as_deref(),
        Some("v2.0")
    );
    assert_eq!(
        value(attr("sriovNetSupport").await.sriov_net_support()).as_deref(),
        Some("simple")
    );
    assert_eq!(
        value(attr("description").await.description()).as_deref(),
        Some("MyOS/arm64 CURRENT@4f1e2d3")
    );
    assert!(
        attr("launchPermission")
            .await
            .launch_permissions()
            .is_empty()
    );
    ec2.modify_image_attribute()
        .image_id(&ami)
        .launch_permission(
            LaunchPermissionModifications::builder()
                .add(LaunchPermission::builder().user_id("210987654321").build())
                .build(),
        )
        .send()
        .await
        .unwrap();
    let perms = attr("launchPermission").await;
    let users: Vec<_> = perms
        .launch_permissions()
        .iter()
        .filter_map(|p| p.user_id())
        .collect();
    assert_eq!(users, vec!["210987654321"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_refuses_what_aws_refuses() {
    let world = World::moto().await;
    let clients = world.clients().await;
    let ec2 = &clients.ec2;
    let snap = snapshot(ec2, 4).await;
    let ami = register(ec2, "MyOS taken", &snap).await;
    // A valid request but for what each check changes (builders append mappings, so each
    // names its own).
    let attempt = |snapshot: &str, gib: i32| {
        ec2.register_image()
            .name("MyOS other")
            .architecture(ArchitectureValues::X8664)
            .root_device_name("/dev/sda1")
            .virtualization_type("hvm")
            .block_device_mappings(root_mapping(snapshot, gib))
    };

    assert_eq!(
        code(attempt(&snap, 10).name("MyOS taken").send().await),
        "InvalidAMIName.Duplicate"
    );
    assert_eq!(
        code(attempt(&snap, 10).name("MyOS {bad}").send().await),
        "InvalidAMIName.Malformed"
    );
    assert_eq!(
        code(attempt("snap-0123456789abcdef0", 10).send().await),
        "InvalidSnapshot.NotFound"
    );
    assert_eq!(
        code(
            attempt(&snap, 10)
                .architecture(ArchitectureValues::from("amd64"))
                .send()
                .await
        ),
        "InvalidParameterValue"
    );
    assert_eq!(
        code(
            attempt(&snap, 10)
                .boot_mode(BootModeValues::from("bios"))
                .send()
                .await
        ),
        "InvalidParameterValue"
    );
    // A volume smaller than its 4 GiB snapshot.
    assert_eq!(
        code(attempt(&snap, 2).send().await),
        "InvalidBlockDeviceMapping"
    );
    assert_eq!(
        code(
            attempt(&snap, 10)
                .tag_specifications(tags(ResourceType::Snapshot, &[("k", "v")]))
                .send()
                .await
        ),
        "InvalidParameterValue"
    );
    assert_eq!(
        own_ids(ec2, vec![]).await,
        vec![ami.clone()],
        "nothing registered"
    );

    // Names are unique per region, not across regions.
    let west = clients.in_region("us-west-2").ec2;
    let copy = west
        .copy_image()
        .source_image_id(&ami)
        .source_region(REGION)
        .name("MyOS taken")
        .send()
        .await
        .unwrap();
    assert!(copy.image_id().is_some_and(|i| i != ami));
    assert_eq!(
        code(
            west.copy_image()
                .source_image_id(&ami)
                .source_region(REGION)
                .name("MyOS taken")
                .send()
                .await
        ),
        "InvalidAMIName.Duplicate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_makes_snapshots_applies_tags_and_honours_client_token() {
    let world = World::moto().await;
    let clients = world.clients().await;
    let ec2 = &clients.ec2;
    let snap = snapshot(ec2, 4).await;
    let source = register(ec2, "MyOS copy source", &snap).await;
    // A system tag, as AWS services set them (moto lets a client do it): never copied.
    ec2.create_tags()
        .resources(&source)
        .tags(Tag::builder().key("aws:internal").value("x").build())
        .send()
        .await
        .unwrap();
    let west = clients.in_region("us-west-2").ec2;
    let copy = || {
        west.copy_image()
            .source_image_id(&source)
            .source_region(REGION)
            .name("MyOS copy source")
            .client_token("copy-token-1")
            .copy_image_tags(true)
            .tag_specifications(tags(
                ResourceType::Image,
                &[("ec2ami:source-image", &source)],
            ))
            .tag_specifications(tags(ResourceType::Snapshot, &[("ec2ami:owner", "test")]))
    };
    let started = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let id = copy().send().await.unwrap().image_id().unwrap().to_string();
    assert_ne!(id, source);

    let img = describe(&west, &id).await;
    assert_eq!(img.name(), Some("MyOS copy source"));
    assert_eq!(img.description(), Some("MyOS/arm64 CURRENT@4f1e2d3"));
    assert_eq!(img.architecture(), Some(&ArchitectureValues::Arm64));
    assert_eq!(img.boot_mode(), Some(&BootModeValues::Uefi));
    assert_eq!(img.ena_support(), Some(true));
    assert_eq!(img.sriov_net_support(), Some("simple"));
    assert_eq!(img.imds_support(), Some(&ImdsSupportValues::V20));
    assert_eq!(img.tpm_support(), Some(&TpmSupportValues::V20));
    assert_eq!(img.root_device_name(), Some("/dev/sda1"));
    assert_eq!(img.virtualization_type().map(|t| t.as_str()), Some("hvm"));
    assert_eq!(img.source_image_id(), Some(source.as_str()));
    assert_eq!(img.source_image_region(), Some(REGION));
    // The source's user tags (CopyImageTags) and the TagSpecification, no system tags.
    assert_eq!(tag_of(img.tags(), "branch").as_deref(), Some("CURRENT"));
    assert_eq!(
        tag_of(img.tags(), "ec2ami:source-image").as_deref(),
        Some(source.as_str())
    );
    assert_eq!(tag_of(img.tags(), "aws:internal"), None);

    // The copy's mapping points at a new snapshot in the destination region.
    let maps = img.block_device_mappings();
    assert_eq!(maps.len(), 1, "{maps:?}");
    let ebs = maps[0].ebs().unwrap();
    let copied = ebs.snapshot_id().unwrap().to_string();
    assert_ne!(copied, snap);
    assert_eq!(ebs.volume_size(), Some(10));
    assert_eq!(ebs.volume_type(), Some(&VolumeType::Gp3));
    let snaps = west
        .describe_snapshots()
        .owner_ids("self")
        .send()
        .await
        .unwrap()
        .snapshots()
        .to_vec();
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    let s = &snaps[0];
    assert_eq!(s.snapshot_id(), Some(copied.as_str()));
    assert_eq!(s.volume_size(), Some(10));
    assert_eq!(s.owner_id(), Some(ACCOUNT));
    assert_eq!(tag_of(s.tags(), "ec2ami:owner").as_deref(), Some("test"));
    let description = s.description().unwrap();
    let prefix = format!(
        "Copied for DestinationAmi {id} from SourceAmi {source} for SourceSnapshot {snap}. Task created on "
    );
    let millis: u128 = description
        .strip_prefix(&prefix)
        .and_then(|rest| rest.strip_suffix('.'))
        .unwrap_or_else(|| panic!("{description:?} does not start with {prefix:?}"))
        .replace(',', "")
        .parse()
        .unwrap();
    assert!(
        millis.abs_diff(started.as_millis()) < 60_000,
        "{description}"
    );

    // The same ClientToken: the same image, nothing new.
    let again = copy().send().await.unwrap();
    assert_eq!(again.image_id(), Some(id.as_str()));
    assert_eq!(own_ids(&west, vec![]).await, vec![id.clone()]);
    assert_eq!(snapshot_count(&west).await, 1);
    // The same token with other parameters is refused.
    assert_eq!(
        code(copy().name("MyOS renamed").send().await),
        "IdempotentParameterMismatch"
    );

    // Without CopyImageTags the source's tags stay behind; without a snapshot
    // TagSpecification the snapshot is untagged.
    let eu = clients.in_region("eu-west-1").ec2;
    let plain = eu
        .copy_image()
        .source_image_id(&source)
        .source_region(REGION)
        .name("MyOS copy source")
        .send()
        .await
        .unwrap();
    let img = describe(&eu, plain.image_id().unwrap()).await;
    assert!(img.tags().is_empty(), "{:?}", img.tags());

    assert_eq!(
        code(
            west.copy_image()
                .source_image_id("ami-0123456789abcdef0")
                .source_region(REGION)
                .name("MyOS missing")
                .send()
                .await
        ),
        "InvalidAMIID.NotFound"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deprecation_is_kept_and_cleared() {
    let world = World::moto().await;
    let ec2 = world.clients().await.ec2;
    let snap = snapshot(&ec2, 4).await;
    let ami = register(&ec2, "MyOS deprecated", &snap).await;

    // 400 days ahead at hh:mm:40: AWS rounds the seconds to the nearest minute.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let minute = (now + 400 * 86_400) / 60 * 60;
    ec2.enable_image_deprecation()
        .image_id(&ami)
        .deprecate_at(DateTime::from_secs(minute + 40))
        .send()
        .await
        .unwrap();
    let expected = DateTime::from_secs(minute + 60)
        .fmt(Format::DateTime)
        .unwrap()
        .replace('Z', ".000Z");
    assert_eq!(
        describe(&ec2, &ami).await.deprecation_time(),
        Some(expected.as_str())
    );

    assert_eq!(
        code(
            ec2.enable_image_deprecation()
                .image_id(&ami)
                .deprecate_at(DateTime::from_secs(now - 86_400))
                .send()
                .await
        ),
        "InvalidParameterValue"
    );
    assert_eq!(
        code(
            ec2.enable_image_deprecation()
                .image_id("ami-0123456789abcdef0")
                .deprecate_at(DateTime::from_secs(minute))
                .send()
                .await
        ),
        "InvalidAMIID.NotFound"
    );

    ec2.disable_image_deprecation()
        .image_id(&ami)
        .send()
        .await
        .unwrap();
    assert_eq!(describe(&ec2, &ami).await.deprecation_time(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deregister_deletes_associated_snapshots_only_when_asked() {
    let world = World::moto().await;
    let ec2 = world.clients().await.ec2;
    let (kept, deleted, shared) = (
        snapshot(&ec2, 4).await,
        snapshot(&ec2, 4).await,
        snapshot(&ec2, 4).await,
    );
    let a = register(&ec2, "MyOS a", &kept).await;
    let b = register(&ec2, "MyOS b", &deleted).await;
    let c = register(&ec2, "MyOS c", &shared).await;
    let d = register(&ec2, "MyOS d", &shared).await;

    // A snapshot an image maps cannot be deleted.
    assert_eq!(
        code(ec2.delete_snapshot().snapshot_id(&kept).send().await),
        "InvalidSnapshot.InUse"
    );

    let out = ec2.deregister_image().image_id(&a).send().await.unwrap();
    assert!(out.delete_snapshot_results().is_empty());
    assert!(snapshot_exists(&ec2, &kept).await, "kept without the flag");

    let out = ec2
        .deregister_image()
        .image_id(&b)
        .delete_associated_snapshots(true)
        .send()
        .await
        .unwrap();
    let results: Vec<_> = out
        .delete_snapshot_results()
        .iter()
        .map(|r| {
            (
                r.snapshot_id().unwrap().to_string(),
                r.return_code().unwrap().as_str().to_string(),
            )
        })
        .collect();
    assert_eq!(results, vec![(deleted.clone(), "success".to_string())]);
    assert!(
        !snapshot_exists(&ec2, &deleted).await,
        "deleted with the flag"
    );

    // A snapshot another image still maps is skipped.
    let out = ec2
        .deregister_image()
        .image_id(&c)
        .delete_associated_snapshots(true)
        .send()
        .await
        .unwrap();
    assert_eq!(
        out.delete_snapshot_results()[0]
            .return_code()
            .map(|c| c.as_str()),
        Some("skipped")
    );
    assert!(snapshot_exists(&ec2, &shared).await);
    assert_eq!(own_ids(&ec2, vec![]).await, vec![d]);

    // Once no image maps it, the snapshot can go.
    ec2.delete_snapshot()
        .snapshot_id(&kept)
        .send()
        .await
        .unwrap();
    assert!(!snapshot_exists(&ec2, &kept).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_filters_and_owners() {
    // Amazon's public images are loaded: "self" must leave them out.
    let world = World::moto_with(MotoOptions {
        amazon_images: true,
        ..MotoOptions::default()
    })
    .await;
    let ec2 = world.clients().await.ec2;
    let (s1, s2) = (snapshot(&ec2, 4).await, snapshot(&ec2, 4).await);
    let one = register(&ec2, "MyOS one", &s1).await;
    let two = register(&ec2, "MyOS two", &s2).await;
    ec2.create_tags()
        .resources(&two)
        .tags(Tag::builder().key("stage").value("beta").build())
        .send()
        .await
        .unwrap();

    assert_eq!(own_ids(&ec2, vec![]).await.len(), 2, "self: ours only");
    let everyone = ec2.describe_images().send().await.unwrap();
    assert!(
        everyone.images().len() > 2,
        "moto loaded no Amazon images: the owner check proves nothing"
    );
    assert_eq!(
        own_ids(&ec2, vec![filter("block-device-mapping.snapshot-id", &s2)]).await,
        vec![two.clone()]
    );
    assert!(
        own_ids(
            &ec2,
            vec![filter(
                "block-device-mapping.snapshot-id",
                "snap-0123456789abcdef0"
            )]
        )
        .await
        .is_empty()
    );
    assert_eq!(
        own_ids(&ec2, vec![filter("name", "MyOS one")]).await,
        vec![one.clone()]
    );
    assert_eq!(
        own_ids(&ec2, vec![filter("tag:stage", "beta")]).await,
        vec![two.clone()]
    );
    assert_eq!(
        own_ids(&ec2, vec![filter("tag-key", "stage")]).await,
        vec![two.clone()]
    );
    assert_eq!(
        own_ids(&ec2, vec![filter("image-id", &one)]).await,
        vec![one.clone()]
    );
    assert_eq!(
        own_ids(&ec2, vec![filter("state", "available")])
            .await
            .len(),
        2
    );
    assert!(
        own_ids(&ec2, vec![filter("is-public", "true")])
            .await
            .is_empty()
    );

    // Snapshots: OwnerIds=self leaves out Amazon's.
    let all = ec2.describe_snapshots().send().await.unwrap();
    assert!(all.snapshots().len() > 2);
    let mut mine: Vec<String> = ec2
        .describe_snapshots()
        .owner_ids("self")
        .send()
        .await
        .unwrap()
        .snapshots()
        .iter()
        .map(|s| s.snapshot_id().unwrap().to_string())
        .collect();
    mine.sort();
    let mut expected = vec![s1, s2];
    expected.sort();
    assert_eq!(mine, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_public_access_stops_public_sharing_per_region() {
    let world = World::moto().await;
    let clients = world.clients().await;
    let ec2 = &clients.ec2;
    let west = clients.in_region("us-west-2").ec2;
    let snap = snapshot(ec2, 4).await;
    let ami = register(ec2, "MyOS public", &snap).await;
    let state = |c: &Client| {
        let c = c.clone();
        async move {
            c.get_image_block_public_access_state()
                .send()
                .await
                .unwrap()
                .image_block_public_access_state()
                .map(str::to_string)
        }
    };
    let make_public = || {
        ec2.modify_image_attribute()
            .image_id(&ami)
            .launch_permission(
                LaunchPermissionModifications::builder()
                    .add(
                        LaunchPermission::builder()
                            .group(PermissionGroup::All)
                            .build(),
                    )
                    .build(),
            )
    };

    assert_eq!(state(ec2).await.as_deref(), Some("unblocked"));
    let on = ec2
        .enable_image_block_public_access()
        .image_block_public_access_state(ImageBlockPublicAccessEnabledState::BlockNewSharing)
        .send()
        .await
        .unwrap();
    assert_eq!(
        on.image_block_public_access_state().map(|s| s.as_str()),
        Some("block-new-sharing")
    );
    assert_eq!(state(ec2).await.as_deref(), Some("block-new-sharing"));
    assert_eq!(
        state(&west).await.as_deref(),
        Some("unblocked"),
        "per region"
    );

    assert_eq!(code(make_public().send().await), "OperationNotPermitted");
    assert_eq!(describe(ec2, &ami).await.public(), Some(false));
    // Sharing with one account is not public sharing.
    ec2.modify_image_attribute()
        .image_id(&ami)
        .launch_permission(
            LaunchPermissionModifications::builder()
                .add(LaunchPermission::builder().user_id("210987654321").build())
                .build(),
        )
        .send()
        .await
        .unwrap();

    let off = ec2
        .disable_image_block_public_access()
        .send()
        .await
        .unwrap();
    assert_eq!(
        off.image_block_public_access_state().map(|s| s.as_str()),
        Some("unblocked")
    );
    make_public().send().await.unwrap();
    assert_eq!(describe(ec2, &ami).await.public(), Some(true));
}
