//! `ec2ami bench` against moto, probing the boot fixture on 127.0.0.1 with
//! `--connect-to` (moto's instance addresses are fake and never contacted). The
//! fixture goes silent -> refusing -> accepting on a known schedule; the phases must
//! follow it within a few hundred milliseconds (the test checks the phase logic, the
//! accuracy is measured by `cargo bench --bench probe_accuracy`). Every test checks in
//! moto that no instance was left running.

use std::process::Stdio;
use std::time::Duration;

use aws_sdk_ec2::types::{ArchitectureValues, Filter, InstanceStateName, Tag};
use ec2ami_testkit::{BootFixture, BootSchedule, Fault, FaultRule};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::common::*;

/// Register an AMI in moto, tagged as `ec2ami publish` tags its images.
async fn register_ami(world: &World, name: &str) -> String {
    let clients = world.clients().await;
    let ami = clients
        .ec2
        .register_image()
        .name(name)
        .architecture(ArchitectureValues::X8664)
        .root_device_name("/dev/sda1")
        .send()
        .await
        .unwrap()
        .image_id()
        .unwrap()
        .to_string();
    let tags = [
        ("ec2ami:version", "15.0"),
        ("ec2ami:branch", "CURRENT"),
        ("ec2ami:flavour", "base"),
        ("ec2ami:fs", "ufs"),
        ("ec2ami:arch", "amd64"),
        ("ec2ami:build-date", "20261122"),
    ];
    clients
        .ec2
        .create_tags()
        .resources(&ami)
        .set_tags(Some(
            tags.iter()
                .map(|(k, v)| Tag::builder().key(*k).value(*v).build())
                .collect(),
        ))
        .send()
        .await
        .unwrap();
    world.proxy.clear_requests();
    ami
}

/// Instances carrying ec2ami's ownership tag, with their state.
async fn our_instances(world: &World) -> Vec<(String, InstanceStateName)> {
    let clients = world.clients().await;
    let out = clients
        .ec2
        .describe_instances()
        .filters(
            Filter::builder()
                .name(format!("tag:{}", "ec2ami:managed-by"))
                .values("ec2ami")
                .build(),
        )
        .send()
        .await
        .unwrap();
    out.reservations()
        .iter()
        .flat_map(|r| r.instances())
        .map(|i| {
            (
                i.instance_id().unwrap().to_string(),
                i.state().and_then(|s| s.name()).cloned().unwrap(),
            )
        })
        .collect()
}

/// Assert moto knows `expected` instances of ours and none is left running.
async fn assert_all_terminated(world: &World, expected: usize) {
    let all = our_instances(world).await;
    assert_eq!(all.len(), expected, "instances: {all:?}");
    for (id, state) in &all {
        assert!(
            matches!(
                state,
                InstanceStateName::Terminated | InstanceStateName::ShuttingDown
            ),
            "{id} left {state:?}"
        );
    }
}

fn json(run: &Run) -> serde_json::Value {
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", run.stdout))
}

fn secs(v: &serde_json::Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

const NAME: &str = "MyOS 15.0-CURRENT-amd64-20261122 UEFI-PREFERRED base UFS";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phases_follow_the_fixture_schedule() {
    let world = World::moto().await;
    let ami = register_ami(&world, NAME).await;
    let silent = 2.0;
    let refusing = 1.0;
    let fixture = BootFixture::start(BootSchedule::boot(
        Duration::from_secs_f64(silent),
        Duration::from_secs_f64(refusing),
    ))
    .unwrap();
    let fixture_start = std::time::SystemTime::now();
    let addr = fixture.addr().to_string();
    let run = world
        .run(&[
            "--output",
            "json",
            "bench",
            &ami,
            "--instance-type",
            "c5.xlarge",
            "--runs",
            "1",
            "--connect-to",
            &addr,
            "--timeout",
            "20s",
        ])
        .await;
    run.assert_ok();
    let out = json(&run);
    let r = &out["runs"][0];
    assert_eq!(r["status"], "ok", "{r}");
    let pending = secs(r, "pending_to_running_s");
    let closed = secs(r, "running_to_closed_s");
    let open = secs(r, "closed_to_open_s");
    // The port started refusing `silent` s after the fixture started. The log says
    // when RunInstances answered: from then, pending -> running and running -> closed
    // must add up to the rest of the silent stretch.
    let launched_line = run
        .stderr
        .lines()
        .find(|l| l.contains("run 1/1: launched i-"))
        .unwrap_or_else(|| panic!("no launch in the log:\n{}", run.stderr));
    let stamp = launched_line.split_whitespace().next().unwrap();
    let launched =
        aws_smithy_types::DateTime::from_str(stamp, aws_smithy_types::date_time::Format::DateTime)
            .unwrap_or_else(|e| panic!("{stamp}: {e}"));
    let launched = std::time::SystemTime::try_from(launched).unwrap();
    let launched_after = launched
        .duration_since(fixture_start)
        .unwrap()
        .as_secs_f64();
    let expected = silent - launched_after;
    assert!(
        (pending + closed - expected).abs() < 0.3,
        "pending + closed = {:.3} s; the schedule says {expected:.3} s ({r})",
        pending + closed
    );
    // The silent stretch is not mistaken for "closed": most of it is running -> closed.
    assert!(closed > 1.0, "running -> closed {closed:.3} s ({r})");
    assert!(
        (refusing - 0.3..=refusing + 0.3).contains(&open),
        "closed -> open {open:.3} s, schedule {refusing} s"
    );
    assert!(r["probes"].as_u64().unwrap() > 100, "{r}");
    // The build came from the AMI's tags; the history has it.
    assert_eq!(out["build"]["branch"], "15-CURRENT");
    assert_eq!(out["build"]["build_date"], "20261122");
    assert!(out["history_id"].as_i64().is_some());
    assert_eq!(world.proxy.count("RunInstances"), 1);
    assert_all_terminated(&world, 1).await;

    let show = world
        .run(&["--output", "json", "history", "show", &ami])
        .await;
    show.assert_ok();
    let h = json(&show);
    assert_eq!(h[0]["instance_type"], "c5.xlarge");
    assert_eq!(h[0]["flavour"], "base");
    assert_eq!(h[0]["runs"][0]["status"], "ok");
    assert_eq!(h[0]["runs"][0]["closed_to_open_s"], r["closed_to_open_s"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_run_prints_the_four_ec2_boot_bench_lines() {
    let world = World::moto().await;
    let ami = register_ami(&world, NAME).await;
    let fixture = BootFixture::start(BootSchedule::up()).unwrap();
    let run = world
        .run(&[
            "bench",
            &ami,
            "--instance-type",
            "t3.micro",
            "--runs",
            "1",
            "--connect-to",
            &fixture.addr().to_string(),
        ])
        .await;
    run.assert_ok();
    let lines: Vec<&str> = run.stdout.lines().collect();
    let labels = [
        "RunInstances API call took: ",
        "Moving from pending to running took: ",
        "Moving from running to port closed took: ",
        "Moving from port closed to port open took: ",
    ];
    assert_eq!(lines.len(), 4, "{}", run.stdout);
    for (line, label) in lines.iter().zip(labels) {
        let figure = line
            .strip_prefix(label)
            .and_then(|l| l.strip_suffix(" s"))
            .unwrap_or_else(|| panic!("`{line}` is not `{label}... s`"));
        let (int, frac) = figure.split_once('.').unwrap();
        assert!(int.parse::<u64>().is_ok() && frac.len() == 6, "{line}");
    }
    // An open port never seen closed: closed is taken to be open.
    assert_eq!(
        lines[3],
        "Moving from port closed to port open took: 0.000000 s"
    );
    assert_all_terminated(&world, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_runs_give_a_table_and_json_with_every_run() {
    let world = World::moto().await;
    let ami = register_ami(&world, NAME).await;
    let fixture = BootFixture::start(BootSchedule::up()).unwrap();
    let addr = fixture.addr().to_string();
    // Throttled polls slow the poller down; they do not fail the run.
    world.proxy.set_rules(vec![FaultRule::first_n(
        Some("DescribeInstances"),
        Fault::Throttle,
        3,
    )]);
    let base = [
        "bench",
        ami.as_str(),
        "--instance-type",
        "c5.xlarge",
        "--connect-to",
        addr.as_str(),
    ];
    let mut args = base.to_vec();
    args.extend(["--runs", "4", "--concurrency", "3"]);
    let run = world.run(&args).await;
    run.assert_ok();
    for needle in [
        "phase",
        "median s",
        "RunInstances",
        "pending -> running",
        "running -> port closed",
        "port closed -> port open",
        "total",
        "3 runs measured (1 discarded, 0 timed out, 0 failed)",
    ] {
        assert!(run.stdout.contains(needle), "`{needle}` in\n{}", run.stdout);
    }
    assert_eq!(world.proxy.count("RunInstances"), 4);

    let mut args = vec!["--output", "json"];
    args.extend(base);
    args.extend(["--runs", "3", "--no-discard-first", "--concurrency", "3"]);
    let run = world.run(&args).await;
    run.assert_ok();
    let out = json(&run);
    let runs = out["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 3);
    for (i, r) in runs.iter().enumerate() {
        assert_eq!(r["run"], i + 1);
        assert_eq!(r["discarded"], false);
        assert_eq!(r["status"], "ok");
        assert!(r["instance_id"].as_str().unwrap().starts_with("i-"));
        assert_eq!(r["closed_to_open_s"], 0.0);
    }
    assert_eq!(out["summary"]["total"]["count"], 3);
    assert_all_terminated(&world, 7).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phase_timeout_is_reported_not_invented_and_the_instance_terminated() {
    let world = World::moto().await;
    let ami = register_ami(&world, NAME).await;
    let fixture = BootFixture::start(BootSchedule::never()).unwrap();
    let run = world
        .run(&[
            "bench",
            &ami,
            "--instance-type",
            "c5.xlarge",
            "--runs",
            "1",
            "--timeout",
            "1s",
            "--connect-to",
            &fixture.addr().to_string(),
        ])
        .await;
    run.assert_failed_with("run 1 timed out in running -> port closed");
    assert!(
        run.stdout
            .contains("Moving from running to port closed took: timed out\n"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("Moving from port closed to port open took: not reached")
    );
    assert_all_terminated(&world, 1).await;
    let h = json(
        &world
            .run(&["--output", "json", "history", "show", &ami])
            .await,
    );
    let r = &h[0]["runs"][0];
    assert_eq!(r["status"], "timed_out");
    assert_eq!(r["timed_out_phase"], "running_to_closed");
    assert_eq!(r["running_to_closed_s"], serde_json::Value::Null);
}

/// Start `ec2ami ARGS` and wait until its log says `launched` `n` times.
async fn start_and_wait_for_launches(
    world: &World,
    args: &[&str],
    n: usize,
) -> (tokio::process::Child, tokio::task::JoinHandle<String>) {
    let mut child = world
        .ec2ami()
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        let mut all = String::new();
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains(": launched i-") {
                let _ = tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    for _ in 0..n {
        tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("instances launched within 30 s")
            .expect("ec2ami still running");
    }
    (child, reader)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_terminates_every_instance() {
    let world = World::moto().await;
    let ami = register_ami(&world, NAME).await;
    let fixture = BootFixture::start(BootSchedule::never()).unwrap();
    let addr = fixture.addr().to_string();
    let args = [
        "bench",
        ami.as_str(),
        "--instance-type",
        "c5.xlarge",
        "--runs",
        "3",
        "--no-discard-first",
        "--concurrency",
        "3",
        "--timeout",
        "60s",
        "--connect-to",
        addr.as_str(),
    ];
    let (mut child, reader) = start_and_wait_for_launches(&world, &args, 3).await;
    // All three are being probed (the fixture never answers): interrupt.
    let running = our_instances(&world).await;
    assert_eq!(running.len(), 3, "{running:?}");
    assert!(
        running
            .iter()
            .all(|(_, s)| *s == InstanceStateName::Running)
    );
    let pid = child.id().unwrap() as i32;
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(pid, libc::SIGINT) };
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("exits within 30 s of Ctrl-C")
        .unwrap();
    let stderr = reader.await.unwrap();
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert_all_terminated(&world, 3).await;
    // Nothing left in the journal either.
    let cleanup = world.run(&["bench", "--cleanup"]).await;
    cleanup.assert_ok();
    assert_eq!(cleanup.stdout.trim(), "nothing to terminate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_benchmark_is_cleaned_up_by_the_next_start_and_by_cleanup() {
    let world = World::moto().await;
    let ami = register_ami(&world, NAME).await;
    let never = BootFixture::start(BootSchedule::never()).unwrap();
    let never_addr = never.addr().to_string();
    let args = [
        "bench",
        ami.as_str(),
        "--instance-type",
        "c5.xlarge",
        "--runs",
        "1",
        "--timeout",
        "60s",
        "--connect-to",
        never_addr.as_str(),
    ];
    // kill -9: no chance to clean up; the instance is left running.
    let (mut child, _reader) = start_and_wait_for_launches(&world, &args, 1).await;
    child.kill().await.unwrap();
    let leaked = our_instances(&world).await;
    assert_eq!(leaked.len(), 1);
    assert_eq!(leaked[0].1, InstanceStateName::Running);

    // The next benchmark terminates it before launching its own.
    let up = BootFixture::start(BootSchedule::up()).unwrap();
    let next = world
        .run(&[
            "bench",
            &ami,
            "--instance-type",
            "c5.xlarge",
            "--runs",
            "1",
            "--connect-to",
            &up.addr().to_string(),
        ])
        .await;
    next.assert_ok();
    assert!(
        next.stderr.contains(&format!(
            "terminated 1 instance(s) an earlier benchmark left running: {}",
            leaked[0].0
        )),
        "{}",
        next.stderr
    );
    assert_all_terminated(&world, 2).await;

    // Again, this time cleaned up by `bench --cleanup`.
    let (mut child, _reader) = start_and_wait_for_launches(&world, &args, 1).await;
    child.kill().await.unwrap();
    let cleanup = world.run(&["--output", "json", "bench", "--cleanup"]).await;
    cleanup.assert_ok();
    let report = json(&cleanup);
    assert_eq!(report["terminated"].as_array().unwrap().len(), 1);
    assert_eq!(report["cleared"], 1);
    // One instance per run: the two killed runs' and the one in between.
    assert_all_terminated(&world, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_run_instances_answer_leaves_nothing_running() {
    // The answer to the first RunInstances is lost after the world launched the
    // instance; the retry carries the same ClientToken, so the world (like AWS) answers
    // the same instance: one instance in all, and it is terminated.
    let world = World::moto().await;
    let ami = register_ami(&world, NAME).await;
    let fixture = BootFixture::start(BootSchedule::up()).unwrap();
    world.proxy.set_rules(vec![FaultRule::first_n(
        Some("RunInstances"),
        Fault::DropResponse,
        1,
    )]);
    let run = world
        .run(&[
            "bench",
            &ami,
            "--instance-type",
            "c5.xlarge",
            "--runs",
            "1",
            "--connect-to",
            &fixture.addr().to_string(),
        ])
        .await;
    run.assert_ok();
    assert_eq!(world.proxy.count("RunInstances"), 2);
    let tokens: Vec<String> = params_of(&world, "RunInstances")
        .into_iter()
        .chain(
            world
                .proxy
                .requests()
                .iter()
                .filter(|r| r.operation == "RunInstances" && r.status != 200)
                .map(form),
        )
        .map(|p| p["ClientToken"].clone())
        .collect();
    assert_eq!(tokens.len(), 2);
    assert_eq!(
        tokens[0], tokens[1],
        "the retry carries the same ClientToken"
    );
    assert_all_terminated(&world, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_ami_launches_nothing() {
    let world = World::moto().await;
    let run = world
        .run(&[
            "bench",
            "ami-0123456789abcdef0",
            "--instance-type",
            "c5.xlarge",
            "--connect-to",
            "127.0.0.1:9",
        ])
        .await;
    run.assert_failed_with("ami-0123456789abcdef0 not found in us-east-1");
    assert_eq!(world.proxy.count("RunInstances"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launch_options_reach_run_instances() {
    let world = World::moto().await;
    let ami = register_ami(&world, NAME).await;
    let clients = world.clients().await;
    let subnet = clients
        .ec2
        .describe_subnets()
        .send()
        .await
        .unwrap()
        .subnets()[0]
        .subnet_id()
        .unwrap()
        .to_string();
    let group = clients
        .ec2
        .describe_security_groups()
        .send()
        .await
        .unwrap()
        .security_groups()[0]
        .group_id()
        .unwrap()
        .to_string();
    world.proxy.clear_requests();
    let user_data = world.path("user-data");
    std::fs::write(
        &user_data,
        "#!/bin/sh\nfirstboot_freebsd_update_enable=NO\n",
    )
    .unwrap();
    let fixture = BootFixture::start(BootSchedule::up()).unwrap();
    world
        .run(&[
            "bench",
            &ami,
            "--instance-type",
            "m7g.large",
            "--runs",
            "1",
            "--subnet",
            &subnet,
            "--security-group",
            &group,
            "--user-data",
            user_data.to_str().unwrap(),
            "--connect-to",
            &fixture.addr().to_string(),
        ])
        .await
        .assert_ok();
    let sent = params_of(&world, "RunInstances");
    assert_eq!(sent.len(), 1);
    let p = &sent[0];
    let get = |k: &str| {
        p.get(k)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("{k} not sent: {p:?}"))
    };
    assert_eq!(get("ImageId"), ami);
    let name = format!("ec2ami bench {ami}");
    assert!(p.values().any(|v| *v == name), "Name tag {name}: {p:?}");
    assert_eq!(get("InstanceType"), "m7g.large");
    assert_eq!(get("MinCount"), "1");
    assert_eq!(get("MaxCount"), "1");
    assert_eq!(get("SubnetId"), subnet);
    assert_eq!(get("SecurityGroupId.1"), group);
    assert_eq!(get("InstanceInitiatedShutdownBehavior"), "terminate");
    use base64::Engine;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(get("UserData"))
        .unwrap();
    assert_eq!(decoded, std::fs::read(&user_data).unwrap());
    // The ClientToken is the token tag: a lost answer can be found again.
    let token = get("ClientToken");
    let tags: Vec<(&str, &str)> = (1..=3)
        .map(|i| {
            (
                get(&format!("TagSpecification.1.Tag.{i}.Key")),
                get(&format!("TagSpecification.1.Tag.{i}.Value")),
            )
        })
        .collect();
    assert_eq!(get("TagSpecification.1.ResourceType"), "instance");
    assert!(tags.contains(&("ec2ami:managed-by", "ec2ami")), "{tags:?}");
    assert!(tags.contains(&("ec2ami:bench-token", token)), "{tags:?}");
    assert!(
        !p.iter().any(|(k, _)| k == "Ipv6AddressCount"),
        "IPv6 only on --ipv6"
    );
    assert_all_terminated(&world, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_needs_the_address_to_probe() {
    // --ipv6 asks for an IPv6 address; moto gives none, so the instance is `running`
    // without an address to probe: pending -> running never ends and times out.
    let world = World::moto().await;
    let ami = register_ami(&world, NAME).await;
    let fixture = BootFixture::start(BootSchedule::up()).unwrap();
    let run = world
        .run(&[
            "bench",
            &ami,
            "--instance-type",
            "c5.xlarge",
            "--runs",
            "1",
            "--ipv6",
            "--timeout",
            "1s",
            "--connect-to",
            &fixture.addr().to_string(),
        ])
        .await;
    run.assert_failed_with("run 1 timed out in pending -> running");
    assert!(
        run.stdout
            .contains("Moving from pending to running took: timed out")
    );
    let sent = params_of(&world, "RunInstances");
    assert!(
        sent[0].get("Ipv6AddressCount").map(String::as_str) == Some("1"),
        "{sent:?}"
    );
    // Polled often, but never more than the in-flight bound at once: about 20 a second.
    let polls = world.proxy.count("DescribeInstances");
    assert!(
        (5..=40).contains(&polls),
        "{polls} DescribeInstances in 1 s"
    );
    assert_all_terminated(&world, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_no_ipv6_build_flags_discard_first_and_no_history_take_effect() {
    let world = World::moto().await;
    let ami = register_ami(&world, NAME).await;
    let fixture = BootFixture::start(BootSchedule::up()).unwrap();
    let port = fixture.addr().port().to_string();
    // --connect-to an address alone: the probe goes to --port there. --no-ipv6 undoes
    // --ipv6; the build flags override what the AMI's tags say.
    let run = world
        .run(&[
            "--output",
            "json",
            "bench",
            &ami,
            "--instance-type",
            "t3.micro",
            "--runs",
            "2",
            "--no-discard-first",
            "--discard-first",
            "--ipv6",
            "--no-ipv6",
            "--connect-to",
            "127.0.0.1",
            "--port",
            &port,
            "--image-name",
            "Other 14.2-STABLE-arm64-20250101 small ZFS",
            "--os-version",
            "14.2",
            "--branch",
            "14-STABLE",
            "--flavour",
            "small",
            "--fs",
            "zfs",
            "--arch",
            "arm64",
            "--build-date",
            "20250101",
        ])
        .await;
    run.assert_ok();
    let out = json(&run);
    assert_eq!(out["runs"][0]["status"], "ok", "{out}");
    // The last of --no-discard-first / --discard-first wins.
    assert_eq!(out["runs"][0]["discarded"], true, "--discard-first: {out}");
    assert_eq!(out["runs"][1]["discarded"], false, "{out}");
    let sent = params_of(&world, "RunInstances");
    assert_eq!(sent.len(), 2);
    assert!(
        sent.iter().all(|p| !p.contains_key("Ipv6AddressCount")),
        "--no-ipv6 wins: {sent:?}"
    );
    let history = |world: &World| {
        let mut cmd = world.ec2ami();
        cmd.args(["--output", "json", "history", "list"]);
        async move {
            let run = Run::from(cmd.output().await.unwrap());
            run.assert_ok();
            json(&run).as_array().unwrap().clone()
        }
    };
    let h = history(&world).await;
    assert_eq!(h.len(), 1);
    for (k, v) in [
        ("image_name", "Other 14.2-STABLE-arm64-20250101 small ZFS"),
        ("version", "14.2"),
        ("branch", "14-STABLE"),
        ("flavour", "small"),
        ("fs", "zfs"),
        ("arch", "arm64"),
        ("build_date", "20250101"),
    ] {
        assert_eq!(h[0][k], v, "{k} in {}", h[0]);
    }
    assert_eq!(h[0]["runs"][0]["discarded"], true);
    // --no-history: measured, not recorded.
    world
        .run(&[
            "bench",
            &ami,
            "--instance-type",
            "t3.micro",
            "--runs",
            "1",
            "--connect-to",
            "127.0.0.1",
            "--port",
            &port,
            "--no-history",
        ])
        .await
        .assert_ok();
    assert_eq!(
        history(&world).await.len(),
        1,
        "--no-history recorded nothing"
    );
    // A --port where nothing listens: the probe sees it closed and never open.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port().to_string();
    drop(closed);
    let run = world
        .run(&[
            "bench",
            &ami,
            "--instance-type",
            "t3.micro",
            "--runs",
            "1",
            "--connect-to",
            "127.0.0.1",
            "--port",
            &closed_port,
            "--timeout",
            "1s",
            "--no-history",
        ])
        .await;
    run.assert_failed_with("timed out in port closed -> port open");
    assert_all_terminated(&world, 4).await;
}
