//! register, copy and share against moto in several regions, through the recording
//! proxy. The requests ec2ami sends are checked as the proxy saw them, and the images they
//! leave as the harness's moto describes them (its extension keeps AMI attributes,
//! mappings, tags and deprecation as AWS does).

use aws_smithy_types::DateTime;
use aws_smithy_types::date_time::Format;
use ec2ami_testkit::{Fault, FaultRule};

use crate::common::*;

async fn uploaded_snapshot(world: &World) -> String {
    let image = world.path("os.raw");
    write_file(&image, &random_bytes(40, 3 * MIB as usize));
    let report = world.upload(&image, &[]).await;
    report["snapshot_id"].as_str().unwrap().to_string()
}

/// The AMI `image_id` as moto describes it in `region`.
async fn describe(world: &World, region: &str, image_id: &str) -> aws_sdk_ec2::types::Image {
    let clients = world.clients().await.in_region(region);
    clients
        .ec2
        .describe_images()
        .image_ids(image_id)
        .send()
        .await
        .unwrap()
        .images()
        .first()
        .cloned()
        .unwrap_or_else(|| panic!("{image_id} not in {region}"))
}

async fn own_images(world: &World, region: &str) -> Vec<aws_sdk_ec2::types::Image> {
    let clients = world.clients().await.in_region(region);
    clients
        .ec2
        .describe_images()
        .owners("self")
        .send()
        .await
        .unwrap()
        .images()
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_sends_every_attribute_and_reruns_reuse() {
    let world = World::moto().await;
    let snap = uploaded_snapshot(&world).await;
    world.proxy.clear_requests();
    let name = "MyOS 15.0-CURRENT-amd64-20261122 UEFI-PREFERRED base UFS";
    // Two years ahead: EC2 refuses a deprecation date in the past.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let deprecate = DateTime::from_secs(now + 730 * 86_400)
        .fmt(Format::DateTime)
        .unwrap()[..10]
        .to_string();
    let args = [
        "register",
        &snap,
        "--name",
        name,
        "--description",
        "MyOS/amd64 CURRENT@4f1e2d3",
        "--boot-mode",
        "uefi-preferred",
        "--ena",
        "--sriov",
        "--tpm",
        "--deprecate-at",
        &deprecate,
        "--tag",
        "branch=CURRENT",
    ];
    let run = world.run(&args).await;
    run.assert_ok();
    let ami = run.stdout.trim().to_string();
    assert!(ami.starts_with("ami-"), "{ami}");

    let reg = params_of(&world, "RegisterImage");
    assert_eq!(reg.len(), 1);
    let p = &reg[0];
    for (k, v) in [
        ("Name", name),
        ("Description", "MyOS/amd64 CURRENT@4f1e2d3"),
        ("Architecture", "x86_64"),
        ("RootDeviceName", "/dev/sda1"),
        ("VirtualizationType", "hvm"),
        ("BootMode", "uefi-preferred"),
        ("EnaSupport", "true"),
        ("SriovNetSupport", "simple"),
        ("TpmSupport", "v2.0"),
        ("ImdsSupport", "v2.0"),
        ("BlockDeviceMapping.1.DeviceName", "/dev/sda1"),
        ("BlockDeviceMapping.1.Ebs.SnapshotId", snap.as_str()),
        ("BlockDeviceMapping.1.Ebs.VolumeType", "gp3"),
        ("BlockDeviceMapping.1.Ebs.VolumeSize", "10"),
        ("BlockDeviceMapping.1.Ebs.DeleteOnTermination", "true"),
    ] {
        assert_eq!(p.get(k).map(String::as_str), Some(v), "{k} in {p:?}");
    }
    let dep = params_of(&world, "EnableImageDeprecation");
    assert_eq!(
        dep[0].get("ImageId").map(String::as_str),
        Some(ami.as_str())
    );
    assert!(
        dep[0]
            .get("DeprecateAt")
            .map(String::as_str)
            .unwrap()
            .starts_with(&format!("{deprecate}T00:00:00"))
    );
    // The image EC2 keeps: attributes, the one mapping, deprecation and tags.
    let img = describe(&world, REGION, &ami).await;
    assert_eq!(img.architecture().map(|a| a.as_str()), Some("x86_64"));
    assert_eq!(img.boot_mode().map(|b| b.as_str()), Some("uefi-preferred"));
    assert_eq!(img.ena_support(), Some(true));
    assert_eq!(img.sriov_net_support(), Some("simple"));
    assert_eq!(img.tpm_support().map(|t| t.as_str()), Some("v2.0"));
    assert_eq!(img.imds_support().map(|i| i.as_str()), Some("v2.0"));
    let maps = img.block_device_mappings();
    assert_eq!(maps.len(), 1, "{maps:?}");
    assert_eq!(
        maps[0].ebs().and_then(|e| e.snapshot_id()),
        Some(snap.as_str())
    );
    assert_eq!(
        img.deprecation_time(),
        Some(format!("{deprecate}T00:00:00.000Z").as_str())
    );
    let tag = |k: &str| {
        img.tags()
            .iter()
            .find(|t| t.key() == Some(k))
            .and_then(|t| t.value())
            .map(str::to_string)
    };
    assert_eq!(tag("branch").as_deref(), Some("CURRENT"));
    assert_eq!(tag("ec2ami:source-snapshot"), Some(snap.clone()));

    // Again: the same AMI, nothing registered.
    world.proxy.clear_requests();
    let again = world.run(&args).await;
    again.assert_ok();
    assert_eq!(again.stdout.trim(), ami);
    assert_eq!(world.proxy.count("RegisterImage"), 0);

    // The name taken by another snapshot's image: a clear error, nothing registered.
    let other = world
        .run(&["register", "snap-0123456789abcdef0", "--name", name])
        .await;
    other.assert_failed_with("already exists");
    assert_eq!(world.proxy.count("RegisterImage"), 0);
    assert_eq!(own_images(&world, REGION).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arm64_defaults_and_impossible_specs() {
    let world = World::moto().await;
    let snap = uploaded_snapshot(&world).await;
    world.proxy.clear_requests();
    world
        .run(&["register", &snap, "--name", "MyOS arm64", "--arch", "arm64"])
        .await
        .assert_ok();
    let p = &params_of(&world, "RegisterImage")[0];
    assert_eq!(p.get("BootMode").map(String::as_str), Some("uefi"));
    assert_eq!(p.get("Architecture").map(String::as_str), Some("arm64"));
    assert_eq!(p.get("ImdsSupport").map(String::as_str), Some("v2.0"));

    world.proxy.clear_requests();
    for (args, needle) in [
        (vec!["--tpm"], "needs a UEFI boot mode"),
        (
            vec!["--arch", "arm64", "--boot-mode", "legacy-bios"],
            "legacy-bios",
        ),
        (vec!["--volume-type", "gp9"], "unknown volume type"),
        (vec!["--arch", "amd64"], "unknown architecture"),
    ] {
        let mut full = vec!["register", snap.as_str(), "--name", "MyOS x"];
        full.extend(args);
        world.run(&full).await.assert_failed_with(needle);
    }
    assert!(
        world.proxy.requests().is_empty(),
        "refused before any request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_to_regions_then_share_and_revoke() {
    let world = World::moto().await;
    let snap = uploaded_snapshot(&world).await;
    let run = world
        .run(&["register", &snap, "--name", "MyOS copy test", "--ena"])
        .await;
    run.assert_ok();
    let ami = run.stdout.trim().to_string();
    world.proxy.clear_requests();
    // 10 % throttling on everything: the result must be the same.
    world
        .proxy
        .set_rules(vec![FaultRule::with_rate(None, Fault::Throttle, 0.10)]);

    let run = world
        .run(&["copy", &ami, "--to", "us-west-2,eu-west-1,us-east-1"])
        .await;
    run.assert_ok();
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", run.stdout);
    assert_eq!(lines[0], format!("Created AMI in us-east-1 region: {ami}"));
    let mut copies = std::collections::BTreeMap::new();
    for line in &lines[1..] {
        let rest = line.strip_prefix("Created AMI in ").unwrap();
        let (region, id) = rest.split_once(" region: ").unwrap();
        copies.insert(region.to_string(), id.to_string());
    }
    assert_eq!(
        copies.keys().cloned().collect::<Vec<_>>(),
        vec!["eu-west-1", "us-west-2"]
    );
    let cp = params_of(&world, "CopyImage");
    assert_eq!(cp.len(), 2, "one CopyImage per region");
    for p in &cp {
        assert_eq!(
            p.get("SourceImageId").map(String::as_str),
            Some(ami.as_str())
        );
        assert_eq!(p.get("SourceRegion").map(String::as_str), Some("us-east-1"));
        assert_eq!(p.get("Name").map(String::as_str), Some("MyOS copy test"));
        assert!(
            p.get("ClientToken")
                .map(String::as_str)
                .is_some_and(|t| t.len() == 32)
        );
    }
    for (region, id) in &copies {
        let img = describe(&world, region, id).await;
        assert_eq!(img.name(), Some("MyOS copy test"));
        assert_eq!(img.ena_support(), Some(true), "{region}");
        assert_eq!(img.source_image_id(), Some(ami.as_str()), "{region}");
        let copied = img.block_device_mappings()[0].ebs().unwrap().snapshot_id();
        assert!(copied.is_some_and(|s| s != snap), "{region}: own snapshot");
        assert!(
            img.tags()
                .iter()
                .any(|t| t.key() == Some("ec2ami:source-image") && t.value() == Some(ami.as_str()))
        );
        assert_eq!(own_images(&world, region).await.len(), 1);
    }

    // A rerun copies nothing and prints the same lines.
    world.proxy.clear_requests();
    let again = world
        .run(&["copy", &ami, "--to", "us-west-2,eu-west-1,us-east-1"])
        .await;
    again.assert_ok();
    assert_eq!(again.stdout, run.stdout);
    assert_eq!(world.proxy.count("CopyImage"), 0);

    let regions = "us-east-1,us-west-2,eu-west-1";
    world
        .run(&["share", &ami, "--public", "--regions", regions])
        .await
        .assert_ok();
    assert!(
        describe(&world, REGION, &ami)
            .await
            .public()
            .unwrap_or(false)
    );
    for (region, id) in &copies {
        assert!(
            describe(&world, region, id).await.public().unwrap_or(false),
            "{region}"
        );
    }
    world
        .run(&["share", &ami, "--public", "--revoke", "--regions", regions])
        .await
        .assert_ok();
    for (region, id) in copies.iter().chain([(&REGION.to_string(), &ami)]) {
        assert!(
            !describe(&world, region, id).await.public().unwrap_or(false),
            "{region}"
        );
    }
    world.proxy.set_rules(vec![]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_copy_and_share_requests_change_nothing() {
    let world = World::moto().await;
    let mutating = |w: &World| {
        w.proxy
            .requests()
            .iter()
            .filter(|r| !r.operation.starts_with("Describe") && !r.operation.starts_with("Get"))
            .count()
    };
    world
        .run(&["copy", "ami-0123456789abcdef0", "--to", "us-west-2,mars-1"])
        .await
        .assert_failed_with("mars-1");
    world
        .run(&["share", "ami-0123456789abcdef0", "--account", "12345"])
        .await
        .assert_failed_with("12 digits");
    world
        .run(&["share", "ami-0123456789abcdef0"])
        .await
        .assert_failed_with("nothing to share");
    world
        .run(&[
            "share",
            "ami-0123456789abcdef0",
            "--public",
            "--regions",
            "us-east-1",
        ])
        .await
        .assert_failed_with("not found");
    assert_eq!(mutating(&world), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_public_share_says_why_and_what_to_do() {
    let world = World::moto().await;
    let snap = uploaded_snapshot(&world).await;
    let run = world
        .run(&["register", &snap, "--name", "MyOS public test"])
        .await;
    run.assert_ok();
    let ami = run.stdout.trim().to_string();
    let clients = world.clients().await;
    clients
        .ec2
        .enable_image_block_public_access()
        .image_block_public_access_state(
            aws_sdk_ec2::types::ImageBlockPublicAccessEnabledState::BlockNewSharing,
        )
        .send()
        .await
        .unwrap();
    let refused = world
        .run(&["share", &ami, "--public", "--regions", REGION])
        .await;
    refused.assert_failed_with("block public access for AMIs is on in us-east-1");
    assert!(
        refused
            .stderr
            .contains("aws ec2 disable-image-block-public-access --region us-east-1"),
        "{}",
        refused.stderr
    );
    assert!(
        !describe(&world, REGION, &ami)
            .await
            .public()
            .unwrap_or(false)
    );
    // Sharing with one account is still allowed.
    world
        .run(&[
            "share",
            &ami,
            "--account",
            "123456789012",
            "--regions",
            REGION,
        ])
        .await
        .assert_ok();
}
