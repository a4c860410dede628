//! Clear and fast failures (issue 10): missing credentials, an explicit profile, a
//! promotion to an `/aws/` name, malformed ids and regions, errors that were Debug
//! dumps, and the cosmetic ones. Each fails before its fix.

use std::time::Duration;

use crate::common::*;
use ec2ami_testkit::{Fault, FaultRule};

/// Run `ec2ami ARGS` with `envs` set and `remove` removed, within `limit` (a timeout
/// that fails the case, not a timing assert).
async fn run_env(
    world: &World,
    args: &[&str],
    envs: &[(&str, &str)],
    remove: &[&str],
    limit: Duration,
) -> Run {
    let mut cmd = world.ec2ami();
    for k in remove {
        cmd.env_remove(k);
    }
    cmd.envs(envs.iter().copied()).args(args);
    let out = tokio::time::timeout(limit, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{args:?} still running after {limit:?}"))
        .unwrap();
    Run::from(out)
}

fn ops(world: &World) -> Vec<String> {
    world
        .proxy
        .requests()
        .iter()
        .map(|r| r.operation.clone())
        .collect()
}

/// The error lines of stderr (log lines have no `error:` prefix).
fn error_lines(run: &Run) -> Vec<&str> {
    run.stderr
        .lines()
        .filter(|l| l.starts_with("error:"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_credentials_fail_at_once_saying_what_to_set() {
    let world = World::offline().await;
    let out = world.path("out.raw");
    let run = run_env(
        &world,
        &["download", "snap-0123456789abcdef0", out.to_str().unwrap()],
        &[("EC2AMI_LOG", "info")],
        &["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"],
        Duration::from_secs(10),
    )
    .await;
    run.assert_failed_with("no AWS credentials found");
    for what in ["AWS_ACCESS_KEY_ID", "--profile", "aws sso login"] {
        assert!(
            run.stderr.contains(what),
            "says to set {what}: {}",
            run.stderr
        );
    }
    // Permanent: never retried (each retry is an info line).
    assert!(!run.stderr.contains("retrying"), "{}", run.stderr);
    assert_eq!(error_lines(&run).len(), 1, "{}", run.stderr);
    assert!(
        ops(&world).is_empty(),
        "nothing can be sent unsigned: {:?}",
        ops(&world)
    );
    assert!(!out.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_explicit_profile_wins_over_the_environment_and_must_exist() {
    let world = World::moto().await;
    let config = world.path("aws-config");
    let creds = world.path("aws-credentials");
    std::fs::write(&config, "[profile release]\nregion = us-east-1\n").unwrap();
    std::fs::write(
        &creds,
        "[release]\naws_access_key_id = AKIDPROFILEKEY\naws_secret_access_key = profile-secret\n",
    )
    .unwrap();
    let files = [
        ("AWS_CONFIG_FILE", config.to_str().unwrap()),
        ("AWS_SHARED_CREDENTIALS_FILE", creds.to_str().unwrap()),
    ];
    // The environment has keys too (aws_test_env's): the profile's must sign.
    let run = run_env(
        &world,
        &[
            "--profile",
            "release",
            "share",
            "ami-0123456789abcdef0",
            "--public",
        ],
        &files,
        &[],
        Duration::from_secs(60),
    )
    .await;
    let requests = world.proxy.requests();
    assert!(!requests.is_empty(), "{}", run.stderr);
    for r in &requests {
        let auth = r.header("authorization").unwrap_or_default();
        assert!(
            auth.contains("Credential=AKIDPROFILEKEY/"),
            "{} signed with {auth}",
            r.operation
        );
    }

    // A profile that does not exist: an error naming it, nothing sent.
    world.proxy.clear_requests();
    let run = run_env(
        &world,
        &[
            "--profile",
            "relaese",
            "share",
            "ami-0123456789abcdef0",
            "--public",
        ],
        &files,
        &[],
        Duration::from_secs(10),
    )
    .await;
    run.assert_failed_with("profile `relaese` is not defined");
    assert!(
        run.stderr.contains("release"),
        "lists the profiles: {}",
        run.stderr
    );
    assert_eq!(error_lines(&run).len(), 1, "{}", run.stderr);
    assert!(ops(&world).is_empty(), "{:?}", ops(&world));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promoting_a_private_ami_to_an_aws_name_is_refused_before_any_write() {
    let world = World::moto().await;
    let image = world.path("os.raw");
    write_file(&image, &random_bytes(41, 2 * MIB as usize));
    let snap = world.upload(&image, &[]).await["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    let reg = world
        .run(&["register", &snap, "--name", "private-one"])
        .await;
    reg.assert_ok();
    let ami = reg.stdout.trim().to_string();
    world
        .run(&[
            "params",
            "put",
            "--image",
            &ami,
            "--regions",
            REGION,
            "/myos/latest",
        ])
        .await
        .assert_ok();
    world.proxy.clear_requests();
    let run = world
        .run(&[
            "params",
            "promote",
            "/myos/latest",
            "/aws/service/myos/latest",
            "--regions",
            REGION,
        ])
        .await;
    run.assert_failed_with("for public AMIs only");
    assert!(run.stderr.contains("a private AMI"), "{}", run.stderr);
    assert!(!run.stdout.contains("created"), "{}", run.stdout);
    assert!(
        !mutating(&world).iter().any(|o| o == "PutParameter"),
        "{:?}",
        mutating(&world)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_ids_and_regions_are_refused_before_any_request() {
    let world = World::offline().await;
    let out = world.path("out.raw");
    let out = out.to_str().unwrap();
    let bad_snap = "snap-../../etc";
    let bad_ami = "ami-XYZ";
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["download", bad_snap, out], bad_snap),
        (vec!["register", bad_snap, "--name", "n"], bad_snap),
        (vec!["copy", bad_ami, "--to", "us-west-2"], bad_ami),
        (
            vec!["copy", "ami-0123456789abcdef0", "--to", "mars-1"],
            "mars-1",
        ),
        (
            vec![
                "copy",
                "ami-0123456789abcdef0",
                "--to",
                "us-west-2",
                "--best-effort",
                "x",
            ],
            "`x`",
        ),
        (vec!["share", bad_ami, "--public"], bad_ami),
        (
            vec![
                "share",
                "ami-0123456789abcdef0",
                "--public",
                "--regions",
                "us-nowhere-1",
            ],
            "us-nowhere-1",
        ),
        (vec!["deprecate", bad_ami, "--in", "30d"], bad_ami),
        (vec!["params", "put", "--image", bad_ami, "/x"], bad_ami),
        (
            vec!["params", "promote", "/a", "/b", "--regions", "eu-west-1,zz"],
            "`zz`",
        ),
        (vec!["prune", "--keep", "1", "--regions", "../x"], "../x"),
        (
            vec!["bench", bad_ami, "--instance-type", "c5.large"],
            bad_ami,
        ),
        (vec!["disable", bad_ami], bad_ami),
        (
            vec!["enable", "ami-0123456789abcdef0", "--regions", "US-EAST-1"],
            "US-EAST-1",
        ),
        (vec!["restore", bad_ami], bad_ami),
        (
            vec![
                "--region",
                "mars-1",
                "download",
                "snap-0123456789abcdef0",
                out,
            ],
            "mars-1",
        ),
        (
            vec![
                "--region",
                "us-east-1/../x",
                "register",
                "snap-0123456789abcdef0",
                "--name",
                "n",
            ],
            "us-east-1/../x",
        ),
    ];
    for (args, needle) in cases {
        world.proxy.clear_requests();
        let run = run_env(&world, &args, &[], &[], Duration::from_secs(10)).await;
        run.assert_failed_with(needle);
        assert_eq!(
            run.stderr.trim().lines().count(),
            1,
            "{args:?}: one line: {}",
            run.stderr
        );
        assert!(ops(&world).is_empty(), "{args:?} sent {:?}", ops(&world));
    }
    // AWS_REGION is checked as --region is.
    world.proxy.clear_requests();
    let run = run_env(
        &world,
        &["download", "snap-0123456789abcdef0", out],
        &[
            ("AWS_REGION", "moon-base-1"),
            ("AWS_DEFAULT_REGION", "moon-base-1"),
        ],
        &[],
        Duration::from_secs(10),
    )
    .await;
    run.assert_failed_with("`moon-base-1` is not an AWS region name");
    assert!(ops(&world).is_empty(), "{:?}", ops(&world));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ebs_403_without_an_error_type_is_a_sentence() {
    let world = World::strict(Default::default()).await;
    world.proxy.set_rules(vec![FaultRule::with_rate(
        Some("StartSnapshot"),
        Fault::Untyped(403),
        1.0,
    )]);
    let image = world.path("os.raw");
    write_file(&image, &random_bytes(42, MIB as usize));
    let run = world.run(&["upload", image.to_str().unwrap()]).await;
    run.assert_failed_with("StartSnapshot");
    let errors = error_lines(&run);
    assert_eq!(errors.len(), 1, "{}", run.stderr);
    let e = errors[0];
    assert!(e.contains("403") || e.contains("Forbidden"), "{e}");
    for dump in ["Error {", "unhandled error", "Some(", "ErrorMetadata"] {
        assert!(!e.contains(dump), "a Debug dump: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_report_directory_is_a_sentence() {
    let world = World::offline().await;
    let file = world.path("ebb.txt");
    std::fs::write(
        &file,
        "RunInstances API call took: 1.5 s\n\
         Moving from pending to running took: 6.9 s\n\
         Moving from running to port closed took: 12.3 s\n\
         Moving from port closed to port open took: 11.4 s\n",
    )
    .unwrap();
    world
        .run(&[
            "history",
            "import",
            file.to_str().unwrap(),
            "--ami",
            "ami-0a1b2c3d4e5f60718",
            "--instance-type",
            "c5.xlarge",
            "--image-name",
            "FreeBSD 14.1-STABLE-amd64-20241003 UEFI-PREFERRED base UFS",
        ])
        .await
        .assert_ok();
    // A directory nobody can create files in, root included.
    let run = world.run(&["report", "--out", "/proc/self"]).await;
    assert!(run.code.is_some_and(|c| c != 0), "{}", run.stderr);
    let errors = error_lines(&run);
    assert_eq!(errors.len(), 1, "{}", run.stderr);
    let e = errors[0];
    assert!(e.contains("/proc/self"), "names the path: {e}");
    for dump in ["Os {", "IoError(", "ImageError(", "kind:"] {
        assert!(!e.contains(dump), "a Debug dump: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cosmetic_messages() {
    let world = World::offline().await;
    // Control characters in a path are shown escaped, never sent to the terminal.
    let evil = world.path("evil\u{1b}[31m\nerror: fake.raw");
    let run = world.run(&["upload", evil.to_str().unwrap()]).await;
    run.assert_failed_with("cannot open");
    assert!(!run.stderr.contains('\u{1b}'), "{:?}", run.stderr);
    assert_eq!(error_lines(&run).len(), 1, "{:?}", run.stderr);

    // --rate 0: the valid range said properly.
    let run = world.run(&["prune", "--keep", "1", "--rate", "0"]).await;
    run.assert_failed_with("above 0 and at most 1000");
    assert!(!run.stderr.contains("from 0"), "{}", run.stderr);

    // A file without a single run: no "line 0".
    let empty = world.path("nothing.txt");
    std::fs::write(&empty, "hello\nworld\n").unwrap();
    let run = world
        .run(&[
            "--region",
            "us-east-1",
            "history",
            "import",
            empty.to_str().unwrap(),
            "--ami",
            "ami-0a1b2c3d4e5f60718",
            "--instance-type",
            "c5.xlarge",
            "--image-name",
            "x",
        ])
        .await;
    run.assert_failed_with("no ec2-boot-bench output");
    assert!(!run.stderr.contains("line 0"), "{}", run.stderr);

    // bsdec2-image-upload takes 6 or 9 arguments: 7 and 8 are refused.
    let image = world.path("i.raw");
    write_file(&image, b"x");
    let keys = world.path("k.key");
    std::fs::write(&keys, "ACCESS_KEY_ID=a\nACCESS_KEY_SECRET=b\n").unwrap();
    let six = [
        image.to_str().unwrap(),
        "name",
        "desc",
        "us-east-1",
        "bucket",
        keys.to_str().unwrap(),
    ];
    for extra in [&["topic"][..], &["topic", "15.0"][..]] {
        world.proxy.clear_requests();
        let mut args = vec!["compat", "bsdec2-image-upload"];
        args.extend(six);
        args.extend(extra);
        let run = world.run(&args).await;
        run.assert_failed_with("takes 6");
        assert!(ops(&world).is_empty(), "{:?}", ops(&world));
    }
}
