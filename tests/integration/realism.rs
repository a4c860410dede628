//! ec2ami in a world that behaves like AWS rather than like moto: every retryable
//! error code each service documents, sent the way the service sends it; images and
//! snapshots that stay `pending`, images that are invisible for a while after they are
//! made, copies that fail in one region. Each test checks the final state read back
//! from the world and what went over the wire, computed here independently.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ec2ami_testkit::proxy::vocabulary;
use ec2ami_testkit::{Fault, FaultRule, MotoOptions, Realism};

use crate::common::*;

/// A release of `images` images (x86_64 / arm64 alternating) to `regions`, each with a
/// parameter `/realism/{arch}/{n}`; `best_effort` regions as given.
fn release(dir: &Path, regions: &[&str], images: usize, best_effort: &[&str]) -> PathBuf {
    let list = |rs: &[&str]| {
        rs.iter()
            .map(|r| format!("{r:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut text = format!(
        r#"
regions = [{}]
best_effort = [{}]
ssm = ["/realism/{{arch}}/{{n}}"]

[defaults]
version = "1.0"
name = "Realism {{version}} {{arch}} {{n}}"
boot_mode = "uefi"
"#,
        list(regions),
        list(best_effort)
    );
    for i in 0..images {
        text.push_str(&format!(
            "\n[[image]]\npath = \"img{i}.raw\"\narch = \"{}\"\nn = \"{i}\"\n",
            arch(i)
        ));
        sparse_file(
            &dir.join(format!("img{i}.raw")),
            8 * MIB,
            &[(i as u64 * MIB, random_bytes(700 + i as u64, MIB as usize))],
        );
    }
    let path = dir.join("release.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn arch(i: usize) -> &'static str {
    if i.is_multiple_of(2) {
        "x86_64"
    } else {
        "arm64"
    }
}

fn image_name(i: usize) -> String {
    format!("Realism 1.0 {} {i}", arch(i))
}

fn param(i: usize) -> String {
    format!("/realism/{}/{i}", arch(i))
}

/// Per region: our images (name -> (id, state, public)) and each parameter's value.
#[derive(Debug)]
struct Seen {
    images: BTreeMap<String, BTreeMap<String, (String, String)>>,
    params: BTreeMap<String, BTreeMap<String, String>>,
}

/// Read the world back (the checks ride out faults with the SDK's own retries).
async fn seen(world: &World, regions: &[&str], images: usize) -> Seen {
    let mut s = Seen {
        images: BTreeMap::new(),
        params: BTreeMap::new(),
    };
    world.proxy.set_rules(vec![]);
    for region in regions {
        let c = world.clients().await.in_region(region);
        let out = c.ec2.describe_images().owners("self").send().await.unwrap();
        let imgs = out
            .images()
            .iter()
            .map(|i| {
                (
                    i.name().unwrap().to_string(),
                    (
                        i.image_id().unwrap().to_string(),
                        i.state()
                            .map(|s| s.as_str().to_string())
                            .unwrap_or_default(),
                    ),
                )
            })
            .collect();
        s.images.insert(region.to_string(), imgs);
        let mut params = BTreeMap::new();
        for i in 0..images {
            if let Ok(out) = c.ssm.get_parameter().name(param(i)).send().await {
                params.insert(
                    param(i),
                    out.parameter().unwrap().value().unwrap().to_string(),
                );
            }
        }
        s.params.insert(region.to_string(), params);
    }
    s
}

/// Every image of the release is available in every region in `complete`, once, and
/// each parameter there points at it.
fn assert_published(s: &Seen, complete: &[&str], images: usize) {
    for region in complete {
        let imgs = &s.images[*region];
        assert_eq!(imgs.len(), images, "{region}: {imgs:?}");
        for i in 0..images {
            let (id, state) = imgs
                .get(&image_name(i))
                .unwrap_or_else(|| panic!("{region}: no {}: {imgs:?}", image_name(i)));
            assert_eq!(state, "available", "{region} {id}");
            assert_eq!(
                s.params[*region].get(&param(i)),
                Some(id),
                "{region}: {} points at {id}",
                param(i)
            );
        }
    }
}

/// The operations of each service a publish calls often enough to carry injected
/// faults, in the order codes are spread over them.
fn carriers(service: &str) -> &'static [&'static str] {
    match service {
        "ebs" => &["PutSnapshotBlock", "StartSnapshot", "CompleteSnapshot"],
        "ec2" => &[
            "DescribeImages",
            "RegisterImage",
            "CopyImage",
            "DescribeSnapshots",
        ],
        "ssm" => &["PutParameter", "GetParameters"],
        _ => &[],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_survives_every_documented_retryable_code() {
    let world = World::moto().await;
    let regions = ["us-east-1", "us-west-2"];
    let rel = release(world.dir.path(), &regions, 2, &[]);
    // Each documented retryable code of EC2, EBS and SSM, once, on an operation of its
    // service that a publish calls (STS: ec2ami calls it only through the SDK's
    // credential providers; its codes are checked by the retry layer's unit tests).
    let mut rules = Vec::new();
    let mut expected = Vec::new();
    for service in ["ebs", "ec2", "ssm"] {
        let ops = carriers(service);
        for (i, d) in vocabulary::retryable(service).into_iter().enumerate() {
            let op = ops[i % ops.len()];
            rules.push(FaultRule::first_n(Some(op), Fault::Code(d.code), 1));
            expected.push((op, d.code));
        }
    }
    assert!(expected.len() >= 15, "{expected:?}");
    world.proxy.set_rules(rules);
    let run = world.run(&["publish", rel.to_str().unwrap()]).await;
    run.assert_ok();
    // Every code was sent (a test where a fault did not fire proves nothing) ...
    let faults: Vec<(String, String)> = world
        .proxy
        .requests()
        .into_iter()
        .filter_map(|r| r.fault.map(|f| (r.operation, f)))
        .collect();
    for (op, code) in &expected {
        assert!(
            faults
                .iter()
                .any(|(o, f)| o == op && *f == format!("Code({code})")),
            "{code} was never sent to {op}: {faults:?}"
        );
    }
    // ... and retried: the log names each retry.
    for (_, code) in &expected {
        assert!(
            run.stderr
                .lines()
                .any(|l| l.contains("retrying") && l.contains(code)),
            "no retry of {code} logged:\n{}",
            run.stderr
        );
    }
    let s = seen(&world, &regions, 2).await;
    assert_published(&s, &regions, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_codes_fail_fast_naming_the_code() {
    let world = World::moto().await;
    let regions = ["us-east-1"];
    let rel = release(world.dir.path(), &regions, 1, &[]);
    for (op, code) in [
        ("StartSnapshot", "ServiceQuotaExceededException"),
        ("RegisterImage", "IdempotentParameterMismatch"),
    ] {
        world
            .proxy
            .set_rules(vec![FaultRule::first_n(Some(op), Fault::Code(code), 100)]);
        world.proxy.clear_requests();
        let run = world.run(&["publish", rel.to_str().unwrap()]).await;
        run.assert_failed_with(code);
        assert_eq!(world.proxy.count(op), 1, "{code} is not retried");
    }
}

/// A world whose images and snapshots take time: pending for `polls` answers and the
/// scaled latency model, new images invisible for one answer, copies failing in `fail`.
async fn slow_world(polls: u32, fail: &[&str]) -> World {
    let mut realism = Realism::scaled(0.005, polls);
    realism.invisible_polls = 1;
    realism.fail_copies_to = fail.iter().map(|r| r.to_string()).collect();
    World::moto_with(MotoOptions {
        realism,
        ..MotoOptions::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_world_shows_pending_invisible_and_failed_states() {
    // The world itself, through the SDK: ec2ami's tests are only as good as this.
    let world = slow_world(2, &["eu-west-1"]).await;
    let c = world.clients().await;
    let img = world.path("w.raw");
    sparse_file(&img, 4 * MIB, &[(0, random_bytes(9, MIB as usize))]);
    // A direct-API snapshot is pending until CompleteSnapshot, then for 2 answers.
    let up = world.upload(&img, &[]).await;
    let snap = up["snapshot_id"].as_str().unwrap().to_string();
    let reg = c
        .ec2
        .register_image()
        .name("world-check")
        .architecture(aws_sdk_ec2::types::ArchitectureValues::X8664)
        .root_device_name("/dev/sda1")
        .virtualization_type("hvm")
        .block_device_mappings(
            aws_sdk_ec2::types::BlockDeviceMapping::builder()
                .device_name("/dev/sda1")
                .ebs(
                    aws_sdk_ec2::types::EbsBlockDevice::builder()
                        .snapshot_id(&snap)
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    let id = reg.image_id().unwrap().to_string();
    let by_id = || async {
        c.ec2
            .describe_images()
            .image_ids(&id)
            .send()
            .await
            .map(|o| o.images()[0].state().unwrap().as_str().to_string())
    };
    // Invisible first (eventual consistency): AWS's InvalidAMIID.NotFound.
    let e = by_id().await.unwrap_err();
    assert_eq!(
        aws_sdk_ec2::error::ProvideErrorMetadata::code(&e),
        Some("InvalidAMIID.NotFound"),
        "{e:?}"
    );
    assert_eq!(by_id().await.unwrap(), "pending");
    assert_eq!(by_id().await.unwrap(), "pending");
    // Then available once the (scaled) registration time has passed: the world's state
    // polled until it changes (its latency is what it simulates), with a hang guard.
    let t0 = std::time::Instant::now();
    let mut state = by_id().await.unwrap();
    while state == "pending" {
        assert!(t0.elapsed() < Duration::from_secs(120), "never available");
        // sleep-ok: the pace of a poll for a condition (the image's state).
        tokio::time::sleep(Duration::from_millis(100)).await;
        state = by_id().await.unwrap();
    }
    assert_eq!(state, "available");
    // A copy to the failing region ends failed, with a reason.
    let eu = c.in_region("eu-west-1");
    let copy = eu
        .ec2
        .copy_image()
        .source_image_id(&id)
        .source_region("us-east-1")
        .name("world-check")
        .send()
        .await
        .unwrap();
    let cid = copy.image_id().unwrap().to_string();
    let t0 = std::time::Instant::now();
    let last = loop {
        let out = eu.ec2.describe_images().image_ids(&cid).send().await;
        if let Ok(o) = out {
            let i = &o.images()[0];
            if i.state().unwrap().as_str() != "pending" {
                break i.clone();
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "the copy stays pending"
        );
        // sleep-ok: the pace of a poll for a condition (the copy's state).
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(last.state().unwrap().as_str(), "failed");
    let reason = last.state_reason().unwrap();
    assert_eq!(reason.code(), Some("Server.InternalError"));
    assert!(
        reason
            .message()
            .unwrap()
            .contains("Copy of the image failed")
    );
    // The EBS direct APIs answer an unknown snapshot with 404 ResourceNotFoundException
    // (moto: a 500), passed through by the proxy as is.
    let e = c
        .ebs
        .list_snapshot_blocks()
        .snapshot_id("snap-0123456789abcdef0")
        .send()
        .await
        .unwrap_err();
    let svc = e.into_service_error();
    assert!(svc.is_resource_not_found_exception(), "{svc:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_waits_out_pending_and_invisible_images_and_keeps_best_effort_failures() {
    let regions = ["us-east-1", "us-west-2", "eu-west-1"];
    let world = slow_world(2, &["eu-west-1"]).await;
    let rel = release(world.dir.path(), &regions, 2, &["eu-west-1"]);
    let run = world.run(&["publish", rel.to_str().unwrap()]).await;
    run.assert_ok();
    assert!(
        run.stderr.contains("eu-west-1") && run.stderr.contains("Copy of the image failed"),
        "the best-effort failure is reported with its reason:\n{}",
        run.stderr
    );
    let s = seen(&world, &regions, 2).await;
    assert_published(&s, &["us-east-1", "us-west-2"], 2);
    // The failed copies: no parameter points at them.
    assert!(
        s.params["eu-west-1"].is_empty(),
        "no parameter for a failed copy: {:?}",
        s.params["eu-west-1"]
    );
    // ec2ami waited by polling: more DescribeImages than images, not one per image.
    let polls = world.proxy.count("DescribeImages");
    assert!(polls > 2 * regions.len(), "{polls} DescribeImages");

    // The same failure in a region that is not best effort fails the publish, naming
    // the region and AWS's reason.
    let world = slow_world(1, &["us-west-2"]).await;
    let rel = release(world.dir.path(), &regions[..2], 1, &[]);
    let run = world.run(&["publish", rel.to_str().unwrap()]).await;
    run.assert_failed_with("us-west-2");
    assert!(
        run.stderr.contains("Copy of the image failed"),
        "{}",
        run.stderr
    );
}

/// Register a small image through ec2ami in `world` (us-east-1): its id.
async fn one_image(world: &World) -> String {
    let rel = release(world.dir.path(), &["us-east-1"], 1, &[]);
    world
        .run(&["publish", rel.to_str().unwrap()])
        .await
        .assert_ok();
    let s = seen(world, &["us-east-1"], 1).await;
    s.images["us-east-1"][&image_name(0)].0.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssm_keeps_its_data_type_and_drops_values_that_are_not_amis() {
    let world = World::moto().await;
    let id = one_image(&world).await;
    let c = world.clients().await;
    // The world: an aws:ec2:image value that is no AMI is answered with success and
    // not stored; a data type does not change.
    let put = c
        .ssm
        .put_parameter()
        .name("/realism/bogus")
        .value("ami-0123456789abcdef0")
        .r#type(aws_sdk_ssm::types::ParameterType::String)
        .data_type("aws:ec2:image")
        .send()
        .await
        .unwrap();
    assert_eq!(put.version(), 1);
    let e = c
        .ssm
        .get_parameter()
        .name("/realism/bogus")
        .send()
        .await
        .unwrap_err();
    assert!(
        e.into_service_error().is_parameter_not_found(),
        "an invalid aws:ec2:image value is not stored"
    );
    c.ssm
        .put_parameter()
        .name("/realism/text")
        .value("hello")
        .r#type(aws_sdk_ssm::types::ParameterType::String)
        .send()
        .await
        .unwrap();

    // ec2ami: overwriting the text parameter with an AMI id fails clearly, and the
    // parameter keeps its value.
    let run = world
        .run(&[
            "params",
            "put",
            "--image",
            &id,
            "--regions",
            "us-east-1",
            "--allow-clobber",
            "/realism/text",
        ])
        .await;
    run.assert_failed_with("/realism/text");
    assert!(run.stderr.contains("data type"), "{}", run.stderr);
    let v = c.ssm.get_parameter().name("/realism/text").send().await;
    assert_eq!(v.unwrap().parameter().unwrap().value(), Some("hello"));

    // A parameter whose AMI is gone, promoted: SSM answers success and stores nothing;
    // ec2ami's read-back notices and says so.
    c.ec2.deregister_image().image_id(&id).send().await.unwrap();
    world.proxy.clear_requests();
    let run = world
        .run(&[
            "params",
            "promote",
            &param(0),
            "/realism/stable",
            "--regions",
            "us-east-1",
            "--wait-timeout",
            "2s",
        ])
        .await;
    run.assert_failed_with("/realism/stable");
    assert!(
        run.stderr.contains("reads back as nothing") && run.stderr.contains(&id),
        "{}",
        run.stderr
    );
    assert_eq!(
        world.proxy.count("PutParameter"),
        1,
        "one write, then reads"
    );
    assert!(
        world.proxy.count("GetParameters") > 2,
        "read back until the deadline"
    );
    let e = c
        .ssm
        .get_parameter()
        .name("/realism/stable")
        .send()
        .await
        .unwrap_err();
    assert!(e.into_service_error().is_parameter_not_found());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deprecation_and_client_token_limits_are_aws_limits() {
    let world = World::moto().await;
    let id = one_image(&world).await;
    let c = world.clients().await;
    let years = |n: f64| {
        aws_sdk_ec2::primitives::DateTime::from_secs(
            aws_sdk_ec2::primitives::DateTime::from(std::time::SystemTime::now()).secs()
                + (n * 365.0 * 86_400.0) as i64,
        )
    };
    let deprecate = |at| {
        c.ec2
            .enable_image_deprecation()
            .image_id(&id)
            .deprecate_at(at)
            .send()
    };
    // Private: up to 10 years ahead.
    deprecate(years(5.0)).await.unwrap();
    // Public: at most 2 years after creation.
    c.ec2
        .modify_image_attribute()
        .image_id(&id)
        .launch_permission(
            aws_sdk_ec2::types::LaunchPermissionModifications::builder()
                .add(
                    aws_sdk_ec2::types::LaunchPermission::builder()
                        .group(aws_sdk_ec2::types::PermissionGroup::All)
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    let e = deprecate(years(2.5)).await.unwrap_err();
    assert_eq!(
        aws_sdk_ec2::error::ProvideErrorMetadata::code(&e),
        Some("InvalidParameterValue")
    );
    deprecate(years(1.5)).await.unwrap();
    // ClientToken: at most 64 ASCII characters.
    let e = c
        .in_region("us-west-2")
        .ec2
        .copy_image()
        .source_image_id(&id)
        .source_region("us-east-1")
        .name("too-long-token")
        .client_token("x".repeat(65))
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        aws_sdk_ec2::error::ProvideErrorMetadata::code(&e),
        Some("InvalidParameterValue")
    );
    // RunInstances honours ClientToken: the same token, the same instance.
    let launch = |token: &'static str, t: &'static str| {
        c.ec2
            .run_instances()
            .image_id(&id)
            .instance_type(t.into())
            .min_count(1)
            .max_count(1)
            .client_token(token)
            .send()
    };
    let a = launch("tok-1", "c5.xlarge").await.unwrap();
    let b = launch("tok-1", "c5.xlarge").await.unwrap();
    assert_eq!(
        a.instances()[0].instance_id(),
        b.instances()[0].instance_id()
    );
    let e = launch("tok-1", "m5.large").await.unwrap_err();
    assert_eq!(
        aws_sdk_ec2::error::ProvideErrorMetadata::code(&e),
        Some("IdempotentParameterMismatch")
    );
    let n = c
        .ec2
        .describe_instances()
        .send()
        .await
        .unwrap()
        .reservations()
        .iter()
        .map(|r| r.instances().len())
        .sum::<usize>();
    assert_eq!(n, 1);

    // ec2ami refuses a public release deprecated past the limit before creating anything.
    let rel = release(world.dir.path(), &["us-east-1"], 1, &[]);
    let text = std::fs::read_to_string(&rel).unwrap().replace(
        "[defaults]",
        "public = true\n\n[defaults]\ndeprecate_in = \"800d\"",
    );
    std::fs::write(&rel, text).unwrap();
    world.proxy.clear_requests();
    let run = world.run(&["publish", rel.to_str().unwrap()]).await;
    run.assert_failed_with("2 years ahead for a public AMI");
    assert!(mutating(&world).is_empty(), "{:?}", mutating(&world));
}

/// The launch permissions of `image` in `region`, read back from the world as
/// "user:ID" / "org:ARN" / "ou:ARN" / "group:all".
async fn permissions(world: &World, region: &str, image: &str) -> Vec<String> {
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
            if let Some(u) = p.user_id() {
                format!("user:{u}")
            } else if let Some(o) = p.organization_arn() {
                format!("org:{o}")
            } else if let Some(o) = p.organizational_unit_arn() {
                format!("ou:{o}")
            } else {
                format!("group:{:?}", p.group())
            }
        })
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharing_and_revoking_reach_every_region_on_the_wire_and_in_the_world() {
    const ACCOUNT: &str = "111122223333";
    const ORG: &str = "arn:aws:organizations::123456789012:organization/o-abc123def4";
    const OU: &str = "arn:aws:organizations::123456789012:ou/o-abc123def4/ou-ab12-cdef3456";
    let world = World::moto().await;
    let regions = ["us-east-1", "us-west-2", "eu-west-1"];
    let rel = release(world.dir.path(), &regions, 1, &[]);
    world
        .run(&["publish", rel.to_str().unwrap()])
        .await
        .assert_ok();
    let s = seen(&world, &regions, 1).await;
    let ids: BTreeMap<&str, String> = regions
        .iter()
        .map(|r| (*r, s.images[*r][&image_name(0)].0.clone()))
        .collect();
    let want: Vec<String> = {
        let mut v = vec![
            format!("user:{ACCOUNT}"),
            format!("org:{ORG}"),
            format!("ou:{OU}"),
        ];
        v.sort();
        v
    };
    let share = |revoke: bool| {
        let mut args = vec![
            "share".to_string(),
            ids["us-east-1"].clone(),
            "--account".into(),
            ACCOUNT.into(),
            "--org".into(),
            ORG.into(),
            "--ou".into(),
            OU.into(),
            "--regions".into(),
            regions.join(","),
        ];
        if revoke {
            args.push("--revoke".into());
        }
        args
    };
    for revoke in [false, true] {
        world.proxy.clear_requests();
        let args = share(revoke);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        world.run(&args).await.assert_ok();
        // On the wire: one ModifyImageAttribute per region, for that region's image,
        // adding (or removing) all three.
        let verb = if revoke { "Remove" } else { "Add" };
        for region in regions {
            let sent: Vec<_> = world
                .proxy
                .requests()
                .into_iter()
                .filter(|r| {
                    r.operation == "ModifyImageAttribute" && r.region == region && r.status == 200
                })
                .map(|r| form(&r))
                .collect();
            assert_eq!(sent.len(), 1, "{region}: {sent:?}");
            let p = &sent[0];
            assert_eq!(p["ImageId"], ids[region], "{region}");
            let mut values: Vec<String> = p
                .iter()
                .filter(|(k, _)| k.starts_with(&format!("LaunchPermission.{verb}.")))
                .map(|(k, v)| {
                    let kind = match k.rsplit('.').next().unwrap() {
                        "UserId" => "user",
                        "OrganizationArn" => "org",
                        "OrganizationalUnitArn" => "ou",
                        other => other,
                    };
                    format!("{kind}:{v}")
                })
                .collect();
            values.sort();
            assert_eq!(values, want, "{region}: {p:?}");
            // Read back from the world.
            let now = permissions(&world, region, &ids[region]).await;
            if revoke {
                assert!(now.is_empty(), "{region}: {now:?}");
            } else {
                assert_eq!(now, want, "{region}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_four_image_release_to_five_regions_under_realism() {
    // Pending states, new images invisible for a while, a copy that fails in the
    // best-effort region, 10 % of requests answered with their service's throttling
    // codes and 5 % with 5xx: all correct, nothing duplicated or leaked.
    let regions = [
        "us-east-1",
        "us-west-2",
        "eu-west-1",
        "eu-central-1",
        "ap-southeast-2",
    ];
    let world = slow_world(1, &["ap-southeast-2"]).await;
    let rel = release(world.dir.path(), &regions, 4, &["ap-southeast-2"]);
    world.proxy.set_rules(publish_under_load());
    let run = world.run(&["publish", rel.to_str().unwrap()]).await;
    run.assert_ok();
    let faults = world
        .proxy
        .requests()
        .iter()
        .filter(|r| r.fault.is_some())
        .count();
    assert!(faults >= 10, "only {faults} faults: the test proves little");
    let s = seen(&world, &regions, 4).await;
    assert_published(&s, &regions[..4], 4);
    // The best-effort region: its copies failed (once each: no second copy), and no
    // parameter points at them.
    let failed = &s.images["ap-southeast-2"];
    assert_eq!(failed.len(), 4, "{failed:?}");
    assert!(failed.values().all(|(_, st)| st == "failed"), "{failed:?}");
    assert!(s.params["ap-southeast-2"].is_empty());
    // Nothing duplicated: one upload per image, one copy per image and region.
    let uploads = params_of(&world, "StartSnapshot").len();
    assert_eq!(uploads, 4, "one snapshot per image");
    let mut copies: Vec<(String, String)> = world
        .proxy
        .requests()
        .iter()
        .filter(|r| r.operation == "CopyImage" && r.status == 200)
        .map(|r| (r.region.clone(), form(r)["Name"].clone()))
        .collect();
    copies.sort();
    let n = copies.len();
    copies.dedup();
    // A retried CopyImage whose answer was lost carries the same ClientToken: the
    // world answers the same image, so duplicates on the wire are not duplicates.
    assert_eq!(
        copies.len(),
        4 * 4,
        "a copy per image and destination ({n} sent)"
    );
    // A rerun finishes with nothing new.
    world.proxy.set_rules(vec![]);
    world.proxy.clear_requests();
    let again = world.run(&["publish", rel.to_str().unwrap()]).await;
    again.assert_ok();
    let m = mutating(&world);
    assert!(
        m.iter()
            .all(|op| op == "ModifyImageAttribute" || op == "CopyImage"),
        "{m:?}"
    );
    let s2 = seen(&world, &regions, 4).await;
    assert_eq!(
        s2.images["us-east-1"].len(),
        4,
        "no new image in the source region"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_public_access_changes_take_effect_late_and_publish_copes() {
    // AWS: an Enable/DisableImageBlockPublicAccess is in force "within 10 minutes";
    // until then the old state holds. The world keeps a change pending for 10 minutes
    // and puts it in force when the test says (a hook, not a clock).
    let world = World::moto_with(MotoOptions {
        realism: Realism {
            bpa_delay: Duration::from_secs(600),
            ..Realism::default()
        },
        ..MotoOptions::default()
    })
    .await;
    let dir = world.dir.path();
    sparse_file(
        &dir.join("bpa.raw"),
        4 * MIB,
        &[(0, random_bytes(90, MIB as usize))],
    );
    let rel = dir.join("release.toml");
    std::fs::write(
        &rel,
        "regions = [\"us-east-1\"]\npublic = true\n\n[[image]]\npath = \"bpa.raw\"\n\
         arch = \"x86_64\"\nname = \"BPA 1.0\"\nboot_mode = \"uefi\"\n",
    )
    .unwrap();
    let c = world.clients().await;
    let state = || async {
        c.ec2
            .get_image_block_public_access_state()
            .send()
            .await
            .unwrap()
            .image_block_public_access_state()
            .unwrap()
            .to_string()
    };
    // The pending change takes effect now (the world's hook).
    let in_force = || {
        let done: serde_json::Value = serde_json::from_str(&moto_hook(
            &world,
            "/moto-api/ec2ami/bpa-in-force",
            &serde_json::json!({}),
        ))
        .unwrap();
        assert_eq!(done["applied"], 1, "one pending change: {done}");
    };
    c.ec2
        .enable_image_block_public_access()
        .image_block_public_access_state(
            aws_sdk_ec2::types::ImageBlockPublicAccessEnabledState::BlockNewSharing,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(state().await, "unblocked", "not in force yet");
    in_force();
    assert_eq!(state().await, "block-new-sharing");
    // In force: the publish refuses before it changes anything, naming the fix.
    world.proxy.clear_requests();
    let refused = world.run(&["publish", rel.to_str().unwrap()]).await;
    refused.assert_failed_with("block public access for AMIs is on");
    assert!(mutating(&world).is_empty(), "{:?}", mutating(&world));
    // Turned off, but not yet in force: still refused, saying it takes a while.
    c.ec2
        .disable_image_block_public_access()
        .send()
        .await
        .unwrap();
    world.proxy.clear_requests();
    let still = world.run(&["publish", rel.to_str().unwrap()]).await;
    still.assert_failed_with("takes up to 10 minutes");
    assert!(mutating(&world).is_empty(), "{:?}", mutating(&world));
    assert_eq!(state().await, "block-new-sharing", "still not in force");
    in_force();
    assert_eq!(state().await, "unblocked");
    // In force: the publish makes the image public, read back.
    let done = world.run(&["publish", rel.to_str().unwrap()]).await;
    done.assert_ok();
    let s = seen(&world, &["us-east-1"], 0).await;
    let (id, _) = &s.images["us-east-1"]["BPA 1.0"];
    assert_eq!(
        permissions(&world, "us-east-1", id).await,
        vec!["group:Some(All)".to_string()]
    );
}

/// The faults of AWS under load for a publish: 10 % of the requests of the operations
/// it calls most answered with their service's documented throttling codes, 5 % of all
/// with a 503.
fn publish_under_load() -> Vec<FaultRule> {
    let mut rules = Vec::new();
    for service in ["ebs", "ec2", "ssm"] {
        let throttles: Vec<_> = vocabulary::retryable(service)
            .into_iter()
            .filter(|d| d.code.contains("Throttl") || d.code.contains("Limit"))
            .collect();
        for d in &throttles {
            for op in carriers(service) {
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

/// What a region holds of ours, read back without faults: every image (id, name,
/// state, the snapshots of its mappings) and every snapshot (id, state).
#[derive(Debug)]
struct Held {
    images: Vec<(String, String, String, Vec<String>)>,
    snapshots: Vec<(String, String)>,
}

async fn held(world: &World, region: &str) -> Held {
    world.proxy.set_rules(vec![]);
    let c = world.clients().await.in_region(region);
    let out = c.ec2.describe_images().owners("self").send().await.unwrap();
    let images = out
        .images()
        .iter()
        .map(|i| {
            (
                i.image_id().unwrap_or_default().to_string(),
                i.name().unwrap_or_default().to_string(),
                i.state()
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_default(),
                i.block_device_mappings()
                    .iter()
                    .filter_map(|m| m.ebs().and_then(|e| e.snapshot_id()))
                    .map(str::to_string)
                    .collect(),
            )
        })
        .collect();
    let out = c
        .ec2
        .describe_snapshots()
        .owner_ids("self")
        .send()
        .await
        .unwrap();
    let snapshots = out
        .snapshots()
        .iter()
        .map(|s| {
            (
                s.snapshot_id().unwrap_or_default().to_string(),
                s.state()
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_default(),
            )
        })
        .collect();
    Held { images, snapshots }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_realism_killed_at_seeded_points_a_rerun_publishes_everything_once() {
    // The release and world of the end-to-end run above (pending states, invisible new
    // images, a failed copy in the best-effort region, throttling codes and 5xx); the
    // publish is killed -9 at request k, for k a seeded RNG picks over the whole run
    // (EC2AMI_TEST_SEED=N reproduces them), while a proxy gate holds request k; a rerun
    // then finishes, and the world holds each image once in each region, each with its
    // one snapshot, every parameter pointing at it, and nothing else of ours.
    let regions = [
        "us-east-1",
        "us-west-2",
        "eu-west-1",
        "eu-central-1",
        "ap-southeast-2",
    ];
    let best_effort = "ap-southeast-2";
    // One uninterrupted run tells how many requests a publish makes here.
    let reference = slow_world(1, &[best_effort]).await;
    let rel = release(reference.dir.path(), &regions, 4, &[best_effort]);
    reference.proxy.set_rules(publish_under_load());
    reference
        .run(&["publish", rel.to_str().unwrap()])
        .await
        .assert_ok();
    let total = reference.proxy.requests().len();
    drop(reference);

    let seed: u64 = std::env::var("EC2AMI_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
        });
    let mut rng = fastrand::Rng::with_seed(seed);
    // One point in each third of the run: uploads, copies and their waits, parameters.
    const POINTS: usize = 3;
    let points: Vec<usize> = (0..POINTS)
        .map(|i| rng.usize(1.max(i * total / POINTS)..((i + 1) * total / POINTS).max(2)))
        .collect();
    eprintln!(
        "kill points {points:?} of {total} requests from seed {seed} \
         (EC2AMI_TEST_SEED={seed} reproduces them)"
    );
    let mut kills = 0;
    for k in points {
        let at = format!("seed {seed}, kill at request {k} of ~{total}");
        let world = slow_world(1, &[best_effort]).await;
        let rel = release(world.dir.path(), &regions, 4, &[best_effort]);
        world.proxy.set_rules(publish_under_load());
        // The first k requests pass; the next is held, and the kill lands while it waits.
        let gate = world.proxy.hold(None, k);
        let args = ["publish", rel.to_str().unwrap()];
        let killed = world
            .kill_at_gate(&gate, &args, Duration::from_secs(120))
            .await;
        kills += usize::from(killed);
        let before = world.proxy.requests().len();
        let run = world.run(&["publish", rel.to_str().unwrap()]).await;
        assert!(
            run.code == Some(0),
            "{at}: the rerun failed:\n{}",
            run.stderr
        );
        // Every image available in every complete region, once, its parameter on it.
        let s = seen(&world, &regions, 4).await;
        for region in &regions[..4] {
            let imgs = &s.images[*region];
            assert_eq!(imgs.len(), 4, "{at}: {region}: {imgs:?}");
            for i in 0..4 {
                let (id, state) = imgs
                    .get(&image_name(i))
                    .unwrap_or_else(|| panic!("{at}: {region}: no {}: {imgs:?}", image_name(i)));
                assert_eq!(state, "available", "{at}: {region} {id}");
                assert_eq!(
                    s.params[*region].get(&param(i)),
                    Some(id),
                    "{at}: {region}: {} points at {id}",
                    param(i)
                );
            }
        }
        assert!(
            s.params[best_effort].is_empty(),
            "{at}: no parameter for a failed copy: {:?}",
            s.params[best_effort]
        );
        // Nothing duplicated, nothing leaked: per region, one image per name (the
        // failed copies of the best-effort region included), one snapshot per image,
        // each completed and used by an image.
        for region in regions {
            let h = held(&world, region).await;
            let mut names: Vec<&str> = h.images.iter().map(|i| i.1.as_str()).collect();
            names.sort();
            names.dedup();
            assert_eq!(names.len(), h.images.len(), "{at}: {region}: {h:?}");
            assert_eq!(h.images.len(), 4, "{at}: {region}: {h:?}");
            if region == best_effort {
                assert!(
                    h.images.iter().all(|i| i.2 == "failed"),
                    "{at}: {region}: {h:?}"
                );
            }
            let used: Vec<&String> = h.images.iter().flat_map(|i| i.3.iter()).collect();
            assert_eq!(
                h.snapshots.len(),
                h.images.len(),
                "{at}: {region}: one snapshot per image: {h:?}"
            );
            for (id, state) in &h.snapshots {
                assert!(
                    used.contains(&id),
                    "{at}: {region}: {id} ({state}) is used by no image: {h:?}"
                );
                // The world keeps a snapshot `pending` for its first answers (a copy's
                // too, read here for the first time): not failed is what counts.
                assert!(
                    state == "completed" || state == "pending",
                    "{at}: {region}: {id}: {h:?}"
                );
            }
        }
        eprintln!("{at}: killed: {killed}, after {before} requests; the rerun converged");
    }
    assert!(kills >= 2, "seed {seed}: only {kills} kills landed");
}
