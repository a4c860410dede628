//! `ec2ami test` against moto. moto launches the "instances"; `--connect-to` sends the
//! SSH banner probe and the smoke checks to a stand-in: the test world's real Debian
//! image booted locally in QEMU, whose metadata service serves what moto's instance
//! was given — the public key of the key pair it was launched with (read back from
//! moto) and its user data — and whose live serial console is what moto's
//! GetConsoleOutput answers (the harness's `console_output` knob). Without a boot, a
//! banner-only listener stands in. Every test checks on the wire and in moto that the
//! key pair was deleted and every instance terminated.

use std::io::Write;
use std::net::TcpListener;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use aws_sdk_ec2::types::{ArchitectureValues, Filter, InstanceAttributeName, InstanceStateName};
use base64::Engine;
use ec2ami_testkit::chromium::Browser;
use ec2ami_testkit::{BootFixture, BootSchedule};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::boot::{images, processes_mentioning};
use crate::common::*;

/// POST `doc` to the harness's config hook, straight to moto.
fn knobs(world: &World, doc: &Value) {
    moto_hook(world, "/moto-api/ec2ami/config", doc);
}

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
    world.proxy.clear_requests();
    ami
}

/// Our instances in moto: id, state, key name.
async fn instances(world: &World) -> Vec<(String, InstanceStateName, Option<String>)> {
    let clients = world.clients().await;
    let out = clients
        .ec2
        .describe_instances()
        .filters(
            Filter::builder()
                .name("tag:ec2ami:managed-by")
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
                i.key_name().map(str::to_string),
            )
        })
        .collect()
}

async fn assert_all_terminated(world: &World, expected: usize) {
    let all = instances(world).await;
    assert_eq!(all.len(), expected, "instances: {all:?}");
    for (id, state, _) in &all {
        assert!(
            matches!(
                state,
                InstanceStateName::Terminated | InstanceStateName::ShuttingDown
            ),
            "{id} left {state:?}"
        );
    }
}

/// The key pairs moto holds.
async fn key_pairs(world: &World) -> Vec<String> {
    let clients = world.clients().await;
    let out = clients.ec2.describe_key_pairs().send().await.unwrap();
    out.key_pairs()
        .iter()
        .filter_map(|k| k.key_name().map(str::to_string))
        .collect()
}

/// The key names of the successful `op` requests on the wire.
fn key_names_on_wire(world: &World, op: &str) -> Vec<String> {
    params_of(world, op)
        .into_iter()
        .map(|p| p.get("KeyName").cloned().unwrap_or_default())
        .collect()
}

/// Start `ec2ami ARGS` with stderr read into a string; `launched` gets a message per
/// instance launched.
fn spawn(
    world: &World,
    args: &[&str],
) -> (
    tokio::process::Child,
    tokio::sync::mpsc::UnboundedReceiver<String>,
    tokio::task::JoinHandle<String>,
) {
    let tmp = world.path("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let mut child = world
        .ec2ami()
        .env("TMPDIR", &tmp)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        let mut all = String::new();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(at) = line.find(": launched i-") {
                let _ = tx.send(line[at + 11..].trim().to_string());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    (child, rx, reader)
}

async fn finish(child: tokio::process::Child, reader: tokio::task::JoinHandle<String>) -> Run {
    let out = tokio::time::timeout(Duration::from_secs(600), child.wait_with_output())
        .await
        .expect("ec2ami test finishes")
        .unwrap();
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: reader.await.unwrap(),
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A listener that greets every connection with an SSH banner and nothing else.
fn banner_only() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let _ = s.write_all(b"SSH-2.0-OpenSSH_9.2p1 stand-in\r\n");
        }
    });
    addr
}

fn is_png(p: &Path) -> bool {
    let b = std::fs::read(p).unwrap();
    b.starts_with(b"\x89PNG\r\n\x1a\n") && &b[12..16] == b"IHDR"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_on_moto_runs_the_checks_on_a_booted_guest_keeps_the_console_and_cleans_up() {
    let img = images();
    let world = World::moto().await;
    let ami = register_ami(&world, "ec2ami-test debian 20261201").await;
    // The user data, made by `ec2ami userdata`.
    let script = world.path("setup.sh");
    write_file(
        &script,
        b"#!/bin/sh\necho \"user-data ran as $(id -un)\" > /var/tmp/ec2ami-user-data\n",
    );
    let made = world
        .run(&["userdata", "--script", script.to_str().unwrap()])
        .await;
    made.assert_ok();
    let ud = world.path("user-data");
    write_file(&ud, made.stdout.as_bytes());
    let console = world.path("guest-console.txt");
    knobs(
        &world,
        &json!({"console_output": {"*": {"file": console.display().to_string()}}}),
    );
    let port = free_port();
    let connect = format!("127.0.0.1:{port}");
    let artifacts = world.path("artifacts");
    let junit = world.path("results.xml");
    // The second check passes once only: the first instance type passes, the second
    // fails at it (both are served by the one guest).
    let once = "test ! -e /var/tmp/seen && touch /var/tmp/seen";
    // A third check from a file, run as the user --ssh-user names.
    let checks_file = world.path("smoke.txt");
    write_file(&checks_file, b"# who the checks log in as\nid -un\n");
    let args = [
        "--output",
        "json",
        "test",
        ami.as_str(),
        "--instance-type",
        "t3.micro,m7i.large",
        "--check",
        "cat /var/tmp/ec2ami-user-data",
        "--check",
        once,
        "--checks",
        checks_file.to_str().unwrap(),
        "--ssh-user",
        "ec2-user",
        "--user-data",
        ud.to_str().unwrap(),
        "--connect-to",
        &connect,
        "--artifacts",
        artifacts.to_str().unwrap(),
        "--junit",
        junit.to_str().unwrap(),
        "--timeout",
        "5m",
    ];
    let (child, mut launched, reader) = spawn(&world, &args);
    let first = tokio::time::timeout(Duration::from_secs(60), launched.recv())
        .await
        .expect("an instance launched within 60 s")
        .expect("ec2ami test runs");
    // What moto's instance was given is what the guest gets.
    let clients = world.clients().await;
    let (_, _, key_name) = instances(&world)
        .await
        .into_iter()
        .find(|(id, _, _)| first.starts_with(id.as_str()))
        .unwrap();
    let key_name = key_name.expect("launched with a key pair");
    let kp = clients
        .ec2
        .describe_key_pairs()
        .key_names(&key_name)
        .include_public_key(true)
        .send()
        .await
        .unwrap();
    let public_key = kp.key_pairs()[0].public_key().unwrap().trim().to_string();
    assert!(public_key.starts_with("ssh-ed25519 "), "{public_key}");
    let attr = clients
        .ec2
        .describe_instance_attribute()
        .instance_id(first.split_whitespace().next().unwrap())
        .attribute(InstanceAttributeName::UserData)
        .send()
        .await
        .unwrap();
    let user_data = base64::engine::general_purpose::STANDARD
        .decode(attr.user_data().unwrap().value().unwrap())
        .unwrap();
    assert_eq!(user_data, made.stdout.as_bytes());
    let mut opts = ec2ami::boot::BootOptions::new(
        &img.polyglot(),
        vec![
            env!("CARGO_BIN_EXE_ec2ami").into(),
            "imds".into(),
            "relay".into(),
        ],
    );
    opts.firmware = "bios".parse().unwrap();
    opts.user_data = Some(user_data);
    opts.failure_dir = world.path("guest-failures");
    opts.stand_in = Some(ec2ami::boot::StandIn {
        public_key,
        ssh_port: port,
        console_file: console.clone(),
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let guest = tokio::spawn(async move {
        ec2ami::boot::run(&opts, async {
            let _ = stopped.await;
        })
        .await
    });
    let run = finish(child, reader).await;
    let _ = stop.send(());
    let guest = guest.await.unwrap().unwrap();
    assert_eq!(guest.runs.len(), 1);
    let served: Vec<String> = guest.runs[0]
        .metadata_requests
        .iter()
        .map(|r| format!("{} {} {}", r.method, r.path, r.status))
        .collect();
    assert!(
        served
            .iter()
            .any(|r| r.contains("public-keys/0/openssh-key 200")),
        "{served:?}"
    );

    // One passed, one failed at the check.
    assert_ne!(run.code, Some(0), "{}", run.stderr);
    let doc: Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", run.stdout, run.stderr));
    let cells = doc["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 2, "{doc}");
    let (pass, fail) = (&cells[0], &cells[1]);
    assert_eq!(pass["instance_type"], "t3.micro");
    assert_eq!(pass["verdict"], "passed", "{}", run.stderr);
    assert_eq!(pass["checks"][0]["stdout"], "user-data ran as root\n");
    assert_eq!(
        pass["checks"][2]["stdout"], "ec2-user\n",
        "--checks, as --ssh-user"
    );
    assert!(pass["banner"].as_str().unwrap().starts_with("SSH-2.0-"));
    // No --capture: a passing test keeps nothing.
    assert_eq!(pass["console_output"], Value::Null);
    assert_eq!(pass["screenshot"], Value::Null);
    assert_eq!(fail["verdict"], "failed");
    assert_eq!(fail["failing_check"], once);
    assert!(
        run.stderr.contains("1 of 2 test(s) did not pass"),
        "{}",
        run.stderr
    );
    // A failure keeps the console output (the guest's, through GetConsoleOutput) and a
    // screenshot, with the run.
    let kept = Path::new(fail["console_output"].as_str().unwrap());
    assert!(kept.starts_with(&artifacts));
    let text = std::fs::read_to_string(kept).unwrap();
    assert!(text.contains("Linux version"), "{text}");
    assert!(is_png(Path::new(fail["screenshot"].as_str().unwrap())));
    for c in cells {
        let b = c["phases"].as_array().unwrap();
        assert!(b.iter().all(|p| p.as_f64().is_some()), "{c}");
    }
    // JUnit: two cases, one failure naming the check.
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(xml.contains("tests=\"2\" failures=\"1\""), "{xml}");
    assert!(xml.contains("type=\"check\""), "{xml}");
    // The key pair: imported once, deleted once, on the wire and in moto.
    assert_eq!(
        key_names_on_wire(&world, "ImportKeyPair"),
        std::slice::from_ref(&key_name)
    );
    assert_eq!(
        key_names_on_wire(&world, "DeleteKeyPair"),
        std::slice::from_ref(&key_name)
    );
    assert!(!key_pairs(&world).await.contains(&key_name));
    // The private key is never printed.
    let private = std::fs::read_dir(world.path("tmp"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("ec2ami-test-"))
        .count();
    assert_eq!(private, 0, "the key's temporary directory is removed");
    assert!(!run.stdout.contains("PRIVATE KEY") && !run.stderr.contains("PRIVATE KEY"));
    assert_all_terminated(&world, 2).await;
    // History: both tests, with their verdicts.
    let show = world
        .run(&["--output", "json", "history", "show", &ami])
        .await;
    show.assert_ok();
    let h: Value = serde_json::from_str(&show.stdout).unwrap();
    assert_eq!(h.as_array().unwrap().len(), 2, "{h}");
    assert_eq!(h[0]["source"], "test");

    // The report's test matrix, in headless Chromium: a green and a red cell, the red
    // one linking its console output and screenshot, which load from the page.
    let out = world.path("report");
    let report = world.run(&["report", "--out", out.to_str().unwrap()]).await;
    report.assert_ok();
    let index = out.join("index.html");
    let url = format!("file://{}", index.display());
    let (cells, shot_width, console_text) = tokio::task::spawn_blocking(move || {
        let mut b = Browser::start(&["--window-size=1200,900"]).expect("chromium starts");
        b.open(&url, "document.readyState === 'complete'").unwrap();
        let cells = b
            .eval(
                "JSON.stringify([...document.querySelectorAll('table.tests td[data-verdict]')]\
                 .map(td => [td.className, [...td.querySelectorAll('a')].map(a => a.className)]))",
            )
            .unwrap();
        let width = b
            .eval(
                "new Promise(r => { const i = new Image(); i.onload = () => r(i.naturalWidth); \
                 i.onerror = () => r(-1); \
                 i.src = document.querySelector('td.fail a.screenshot').href; })",
            )
            .unwrap();
        let console_href = b
            .eval("document.querySelector('td.fail a.console').href")
            .unwrap();
        b.open(
            console_href.as_str().unwrap(),
            "document.readyState === 'complete'",
        )
        .unwrap();
        let text = b.eval("document.body.innerText").unwrap();
        (cells, width, text)
    })
    .await
    .unwrap();
    let cells: Value = serde_json::from_str(cells.as_str().unwrap()).unwrap();
    assert_eq!(
        cells,
        json!([["fail", ["console", "screenshot"]], ["pass", []]]),
        "the matrix: m7i.large failed, t3.micro passed (columns sorted)"
    );
    assert!(shot_width.as_i64().unwrap() > 0, "the screenshot loads");
    assert!(
        console_text.as_str().unwrap().contains("Linux version"),
        "{console_text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_keeps_the_console_and_a_screenshot_of_a_passing_test() {
    let world = World::moto().await;
    let ami = register_ami(&world, "ec2ami-test capture 20261201").await;
    knobs(
        &world,
        &json!({"console_output": {"*": {"text": "Linux version 6.1.0-cloud-amd64\nlogin: \n"}}}),
    );
    let addr = banner_only().to_string();
    let artifacts = world.path("artifacts");
    let clients = world.clients().await;
    let subnets = clients.ec2.describe_subnets().send().await.unwrap();
    let subnet = subnets.subnets()[0].subnet_id().unwrap().to_string();
    let groups = clients.ec2.describe_security_groups().send().await.unwrap();
    let group = groups.security_groups()[0].group_id().unwrap().to_string();
    let run = world
        .run(&[
            "--output",
            "json",
            "test",
            &ami,
            "--instance-type",
            "c7i.large",
            "--subnet",
            &subnet,
            "--security-group",
            &group,
            "--connect-to",
            &addr,
            "--capture",
            "--artifacts",
            artifacts.to_str().unwrap(),
            "--no-history",
        ])
        .await;
    run.assert_ok();
    let doc: Value = serde_json::from_str(&run.stdout).unwrap();
    let c = &doc["cells"][0];
    assert_eq!(c["verdict"], "passed");
    let kept = std::fs::read_to_string(c["console_output"].as_str().unwrap()).unwrap();
    assert_eq!(kept, "Linux version 6.1.0-cloud-amd64\nlogin: \n");
    assert!(is_png(Path::new(c["screenshot"].as_str().unwrap())));
    assert_eq!(world.proxy.count("GetConsoleScreenshot"), 1);
    let launched = params_of(&world, "RunInstances");
    assert_eq!(launched.len(), 1);
    assert_eq!(launched[0].get("SubnetId"), Some(&subnet));
    assert_eq!(launched[0].get("SecurityGroupId.1"), Some(&group));
    let name = format!("ec2ami test {ami}");
    assert!(
        launched[0].values().any(|v| *v == name),
        "Name tag {name}: {:?}",
        launched[0]
    );
    assert!(doc["instance_minutes"].as_f64().unwrap() > 0.0);
    let history = world.run(&["--output", "json", "history", "list"]).await;
    history.assert_ok();
    assert!(
        !history.stdout.contains(&ami),
        "--no-history: {}",
        history.stdout
    );
    assert_eq!(key_names_on_wire(&world, "DeleteKeyPair").len(), 1);
    assert_all_terminated(&world, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_mid_test_leaves_no_instance_no_key_pair_and_exits_130() {
    let world = World::moto().await;
    let ami = register_ami(&world, "ec2ami-test sigint 20261201").await;
    // sshd never answers.
    let never = BootFixture::start(BootSchedule::never()).unwrap();
    let addr = never.addr().to_string();
    let args = [
        "test",
        ami.as_str(),
        "--instance-type",
        "t3.micro",
        "--connect-to",
        addr.as_str(),
        "--timeout",
        "5m",
    ];
    let (child, mut launched, reader) = spawn(&world, &args);
    tokio::time::timeout(Duration::from_secs(60), launched.recv())
        .await
        .expect("launched within 60 s")
        .expect("ec2ami test runs");
    let live = instances(&world).await;
    assert_eq!(live.len(), 1);
    let key_name = live[0].2.clone().unwrap();
    assert!(key_pairs(&world).await.contains(&key_name));
    let pid = child.id().unwrap() as i32;
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(pid, libc::SIGINT) };
    let run = finish(child, reader).await;
    assert_eq!(run.code, Some(130), "{}", run.stderr);
    assert!(run.stderr.contains("interrupted"), "{}", run.stderr);
    assert_all_terminated(&world, 1).await;
    assert!(!key_pairs(&world).await.contains(&key_name));
    assert_eq!(
        key_names_on_wire(&world, "DeleteKeyPair"),
        std::slice::from_ref(&key_name)
    );
    // No process of it is left (ec2ami test starts no QEMU; ssh and its probes are
    // gone), and no temporary directory with the private key.
    assert!(processes_mentioning(&key_name).is_empty());
    assert!(
        processes_mentioning(&format!("-p {}", never.addr().port())).is_empty(),
        "an ssh left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_test_is_cleaned_up_at_the_next_start_and_bad_input_is_refused() {
    let world = World::moto().await;
    let ami = register_ami(&world, "ec2ami-test kill 20261201").await;
    let never = BootFixture::start(BootSchedule::never()).unwrap();
    let addr = never.addr().to_string();
    let args = [
        "test",
        ami.as_str(),
        "--instance-type",
        "t3.micro",
        "--connect-to",
        addr.as_str(),
    ];
    let (mut child, mut launched, _reader) = spawn(&world, &args);
    tokio::time::timeout(Duration::from_secs(60), launched.recv())
        .await
        .expect("launched within 60 s")
        .expect("ec2ami test runs");
    child.kill().await.unwrap();
    let leaked = instances(&world).await;
    let key_name = leaked[0].2.clone().unwrap();
    // The next run (which times out at the banner) first cleans up the killed one's.
    let next = world
        .run(&[
            "--output",
            "json",
            "test",
            &ami,
            "--instance-type",
            "t3.micro",
            "--connect-to",
            &addr,
            "--timeout",
            "2s",
        ])
        .await;
    assert_ne!(next.code, Some(0), "{}", next.stderr);
    assert!(
        next.stderr.contains("an earlier run left running"),
        "{}",
        next.stderr
    );
    assert!(next.stderr.contains(&key_name), "{}", next.stderr);
    let doc: Value = serde_json::from_str(&next.stdout).unwrap();
    assert_eq!(doc["cells"][0]["verdict"], "timed_out");
    assert!(doc["cells"][0]["console_output"].as_str().is_some());
    assert_all_terminated(&world, 2).await;
    assert!(key_pairs(&world).await.is_empty());

    // Bad input: nothing is launched or imported.
    let bad_ud = world.path("bad-user-data");
    write_file(&bad_ud, b">etc/rc.conf.local\nsshd_enable=\"YES\"\n");
    world.proxy.clear_requests();
    for (args, want) in [
        (
            vec![
                "test",
                "ami-0123456789abcdef0",
                "--instance-type",
                "t3.micro",
            ],
            "not found",
        ),
        (
            vec![
                "test",
                ami.as_str(),
                "--instance-type",
                "t3.micro",
                "--user-data",
                bad_ud.to_str().unwrap(),
            ],
            "ec2ami userdata --check",
        ),
        (
            vec!["test", ami.as_str(), "--instance-type", "t3.micro,"],
            "empty instance type",
        ),
        (
            vec![
                "test",
                ami.as_str(),
                "--instance-type",
                "t3.micro",
                "--regions",
                "eu-west-1",
            ],
            "--regions needs a release file",
        ),
    ] {
        let r = world.run(&args).await;
        r.assert_failed_with(want);
    }
    assert_eq!(world.proxy.count("RunInstances"), 0);
    assert_eq!(world.proxy.count("ImportKeyPair"), 0);
}

/// `bench --capture`: while the run's pending-to-running poll is held at the proxy (a
/// hook, not a sleep), the capture loop keeps taking screenshots at
/// `--capture-interval`; every frame it took is a PNG in `--capture-dir`, with the
/// console output, and the four phases are still measured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_capture_keeps_frames_and_the_console_output() {
    let world = World::moto().await;
    let ami = register_ami(&world, "ec2ami-bench capture 20261201").await;
    knobs(
        &world,
        &json!({"console_output": {"*": {"text": "FreeBSD/amd64 (ec2) login: \n"}}}),
    );
    let addr = banner_only().to_string();
    let dir = world.path("captures");
    let polls = world.proxy.hold(Some("DescribeInstances"), 0);
    let shots = world.proxy.hold(Some("GetConsoleScreenshot"), 3);
    let mut cmd = world.ec2ami();
    cmd.args([
        "--output",
        "json",
        "bench",
        &ami,
        "--instance-type",
        "t3.micro",
        "--runs",
        "1",
        "--connect-to",
        &addr,
        "--capture",
        "--capture-interval",
        "50ms",
        "--capture-dir",
        dir.to_str().unwrap(),
        "--no-history",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    // Three screenshots passed and a fourth is asked for while the run is still
    // waiting for its instance: the loop runs during the phases.
    assert!(
        shots.arrived(1, Duration::from_secs(120)).await,
        "no screenshots while the instance was pending"
    );
    assert!(polls.held() >= 1, "the capture ran before the first poll");
    shots.open();
    polls.open();
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("bench finishes")
        .unwrap();
    let run = Run::from(out);
    run.assert_ok();
    let doc: Value = serde_json::from_str(&run.stdout).unwrap();
    let cap = &doc["captures"][0];
    let run_dir = Path::new(cap["dir"].as_str().unwrap());
    assert!(run_dir.starts_with(&dir), "{cap}");
    let frames = cap["frames"].as_u64().unwrap() as usize;
    assert!(frames >= 4, "{cap}");
    let answered = world
        .proxy
        .requests()
        .into_iter()
        .filter(|r| r.operation == "GetConsoleScreenshot" && r.status == 200)
        .count();
    assert_eq!(frames, answered, "one frame per screenshot taken");
    for i in 1..=frames {
        assert!(
            is_png(&run_dir.join(format!("frame-{i:04}.png"))),
            "frame {i}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(run_dir.join("console.txt")).unwrap(),
        "FreeBSD/amd64 (ec2) login: \n"
    );
    assert!(
        doc["runs"][0]["total_s"].as_f64().is_some(),
        "the phases are measured: {doc}"
    );
    assert_all_terminated(&world, 1).await;
}

/// `test RELEASE.toml`: each image's AMI is found by the name the release gives it, in
/// the release's source region; an image not published yet is refused before anything
/// is launched or imported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_file_names_the_amis_to_test() {
    let world = World::moto().await;
    let region = world.clients().await.region().to_string();
    let (a, b) = (world.path("a.raw"), world.path("b.raw"));
    write_file(&a, &[0u8; 4096]);
    write_file(&b, &[0u8; 4096]);
    let release = world.path("release.toml");
    write_file(
        &release,
        format!(
            r#"regions = ["{region}"]

[defaults]
version = "1.0"
branch = "TEST"
date = "20261201"
arch = "x86_64"
fs = "ext4"
name = "ec2ami-test-{{flavour}}-{{date}}"
description = "ec2ami test image {{flavour}}"

[[image]]
path = "a.raw"
flavour = "one"

[[image]]
path = "b.raw"
flavour = "two"
"#
        )
        .as_bytes(),
    );
    let one = register_ami(&world, "ec2ami-test-one-20261201").await;
    let addr = banner_only().to_string();
    let args = [
        "--output",
        "json",
        "test",
        release.to_str().unwrap(),
        "--instance-type",
        "t3.micro",
        "--connect-to",
        &addr,
        "--no-history",
    ];
    // The second image has no AMI yet.
    let run = world.run(&args).await;
    run.assert_failed_with("no AMI named `ec2ami-test-two-20261201`");
    assert_eq!(world.proxy.count("RunInstances"), 0);
    assert_eq!(world.proxy.count("ImportKeyPair"), 0);

    let two = register_ami(&world, "ec2ami-test-two-20261201").await;
    let run = world.run(&args).await;
    run.assert_ok();
    let doc: Value = serde_json::from_str(&run.stdout).unwrap();
    let tested: Vec<&str> = doc["cells"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["image_id"].as_str().unwrap())
        .collect();
    assert_eq!(tested, [one.as_str(), two.as_str()]);
    let launched: Vec<String> = params_of(&world, "RunInstances")
        .into_iter()
        .map(|p| p["ImageId"].clone())
        .collect();
    assert_eq!(launched, [one.clone(), two.clone()]);
    assert_all_terminated(&world, 2).await;
}
