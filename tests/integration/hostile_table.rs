//! The hostile-inputs table (issue 10): bad or hostile input for every command, each
//! checked for a non-zero exit with one line on stderr naming the input, nothing
//! created or left in the world (snapshots, images, parameters, instances counted),
//! no secret in any output, no panic, and an end within 10 s (a timeout that fails the
//! case, not a timing assert).

use std::path::Path;
use std::time::Duration;

use crate::common::*;

/// A secret key no output may show (moto accepts any).
const SECRET: &str = "hostile-SECRET-wJalrXUtnFEMI-K7MDENG";

/// One case: the arguments and the text of the input its error must name.
struct Case {
    args: Vec<String>,
    names: String,
}

fn case(args: &[&str], names: &str) -> Case {
    Case {
        args: args.iter().map(|s| s.to_string()).collect(),
        names: names.to_string(),
    }
}

/// What the world holds in the test region: snapshots, images, parameters, instances.
async fn census(world: &World) -> [usize; 4] {
    let c = world.clients().await;
    let snapshots = c
        .ec2
        .describe_snapshots()
        .owner_ids("self")
        .send()
        .await
        .unwrap()
        .snapshots()
        .len();
    let images = c
        .ec2
        .describe_images()
        .owners("self")
        .send()
        .await
        .unwrap()
        .images()
        .len();
    let parameters = c
        .ssm
        .describe_parameters()
        .send()
        .await
        .unwrap()
        .parameters()
        .len();
    let instances = c
        .ec2
        .describe_instances()
        .send()
        .await
        .unwrap()
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter(|i| {
            i.state()
                .and_then(|s| s.name())
                .is_some_and(|n| n.as_str() != "terminated")
        })
        .count();
    [snapshots, images, parameters, instances]
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// The files the cases point at.
fn fixtures(world: &World) -> std::collections::BTreeMap<&'static str, String> {
    let mut m = std::collections::BTreeMap::new();
    let dir = world.dir.path();
    m.insert("dir", s(dir));
    m.insert("missing", s(&world.path("missing.raw")));
    let empty = world.path("empty.raw");
    write_file(&empty, b"");
    m.insert("empty", s(&empty));
    let fifo = world.path("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    m.insert("fifo", s(&fifo));
    let raw = world.path("ok.raw");
    write_file(&raw, &random_bytes(9, 64 * 1024));
    m.insert("raw", s(&raw));
    let exists = world.path("exists.raw");
    write_file(&exists, b"keep me");
    m.insert("exists", s(&exists));
    let evil = world.path("evil\u{1b}]0;owned\u{7}\n.raw");
    m.insert("evil", s(&evil));
    let bad_toml = world.path("bad.toml");
    std::fs::write(&bad_toml, "[[image]\nname = ").unwrap();
    m.insert("bad_toml", s(&bad_toml));
    let outside = world.path("rel");
    std::fs::create_dir_all(&outside).unwrap();
    let release = outside.join("release.toml");
    std::fs::write(
        &release,
        "regions = [\"us-east-1\"]\n[[image]]\npath = \"/etc/passwd\"\nname = \"x-{date}\"\narch = \"x86_64\"\n",
    )
    .unwrap();
    m.insert("outside", s(&release));
    let garbage = world.path("garbage.txt");
    std::fs::write(&garbage, "\u{0}\u{1}binary\u{ff}").unwrap();
    m.insert("garbage", s(&garbage));
    let nonutf8 = world.path("nonutf8.txt");
    std::fs::write(&nonutf8, [0xffu8, 0xfe, 0x00, 0x41]).unwrap();
    m.insert("nonutf8", s(&nonutf8));
    let key_no_secret = world.path("nosecret.key");
    std::fs::write(&key_no_secret, "ACCESS_KEY_ID=AKIDX\n").unwrap();
    m.insert("key_no_secret", s(&key_no_secret));
    m
}

fn cases(f: &std::collections::BTreeMap<&'static str, String>) -> Vec<Case> {
    let g = |k: &str| f[k].clone();
    let (missing, dir, empty, fifo, raw, exists, evil) = (
        g("missing"),
        g("dir"),
        g("empty"),
        g("fifo"),
        g("raw"),
        g("exists"),
        g("evil"),
    );
    let (bad_toml, outside, garbage, nonutf8, nosecret) = (
        g("bad_toml"),
        g("outside"),
        g("garbage"),
        g("nonutf8"),
        g("key_no_secret"),
    );
    let ami = "ami-0123456789abcdef0";
    let snap = "snap-0123456789abcdef0";
    let evil_shown = "evil\\u{1b}]0;owned\\u{7}\\n.raw";
    vec![
        // upload
        case(&["upload", &missing], &missing),
        case(&["upload", &dir], &dir),
        case(&["upload", &empty], &empty),
        case(&["upload", &fifo], &fifo),
        case(&["upload", &evil], evil_shown),
        case(
            &["upload", &raw, "--tag", "ec2ami:managed-by=me"],
            "ec2ami:managed-by",
        ),
        case(
            &["upload", &raw, "--tag", "aws:cloudformation=x"],
            "aws:cloudformation",
        ),
        case(&["upload", &raw, "--tag", "novalue"], "novalue"),
        case(&["upload", &raw, "--workers", "0"], "`0`"),
        case(&["upload", &raw, "--wait-timeout", "soon"], "soon"),
        // download
        case(
            &["download", "snap-../../etc", &s(Path::new("/tmp/x"))],
            "snap-../../etc",
        ),
        case(&["download", snap, &exists], &exists),
        case(
            &["download", snap, &missing, "--workers", "100000"],
            "100000",
        ),
        // register
        case(&["register", "snap-XYZ", "--name", "name-ok"], "snap-XYZ"),
        case(
            &[
                "register",
                snap,
                "--name",
                "name-ok",
                "--deprecate-at",
                "2001-01-01",
            ],
            "2001-01-01",
        ),
        case(
            &[
                "register",
                snap,
                "--name",
                "name-ok",
                "--deprecate-in",
                "20000d",
            ],
            "10 years",
        ),
        case(
            &[
                "register",
                snap,
                "--name",
                "name-ok",
                "--tag",
                "ec2ami:image-size=1",
            ],
            "ec2ami:image-size",
        ),
        case(
            &[
                "register",
                snap,
                "--name",
                "name-ok",
                "--uefi-data",
                &missing,
            ],
            &missing,
        ),
        // copy, share
        case(&["copy", "ami-../../x", "--to", "us-west-2"], "ami-../../x"),
        case(&["copy", ami, "--to", "mars-north-1"], "mars-north-1"),
        case(&["share", "ami-XYZ", "--public"], "ami-XYZ"),
        case(
            &["share", ami, "--public", "--regions", "us-east-1;rm"],
            "us-east-1;rm",
        ),
        // params
        case(&["params", "put", "--image", "ami-", "/x"], "ami-"),
        case(&["params", "put", "--image", ami, "/x/{nope"], "{nope"),
        case(&["register", snap, "--name", "x"], "`x`"),
        case(&["params", "promote", "/a", "/b c"], "/b c"),
        case(&["params", "promote", "/a", "/b", "--regions", "xx"], "xx"),
        // publish, validate
        case(&["publish", &missing], &missing),
        case(&["publish", &bad_toml], &bad_toml),
        case(&["publish", &outside], "/etc/passwd"),
        case(&["validate", &missing], &missing),
        case(&["validate", &dir], &dir),
        // prune, deprecate
        case(&["prune", "--keep", "1", "--rate", "0"], "`0`"),
        case(&["prune", "--keep", "-1"], "-1"),
        case(&["prune", "--keep", "1", "--policy", &missing], &missing),
        case(&["prune", "--keep", "1", "--regions", "../etc"], "../etc"),
        case(&["prune", "--keep", "1", "--price-per-gb-month=-5"], "-5"),
        case(&["deprecate", "ami-XYZ", "--in", "30d"], "ami-XYZ"),
        case(&["deprecate", ami, "--at", "2001-01-01"], "2001-01-01"),
        // lifecycle
        case(&["disable", "ami-XYZ"], "ami-XYZ"),
        case(&["enable", ami, "--regions", "EU-WEST-1"], "EU-WEST-1"),
        case(
            &["restore", "snap-0123456789abcdef0"],
            "snap-0123456789abcdef0",
        ),
        // manifest
        case(&["manifest", "verify", &missing], &missing),
        case(&["manifest", "write", &missing, "--bucket", "b"], &missing),
        // compat
        case(
            &[
                "compat",
                "bsdec2-image-upload",
                &raw,
                "name-ok",
                "d",
                "us-east-1",
                "b",
                &missing,
            ],
            &missing,
        ),
        case(
            &[
                "compat",
                "bsdec2-image-upload",
                &raw,
                "name-ok",
                "d",
                "us-east-1",
                "b",
                &nosecret,
            ],
            &nosecret,
        ),
        case(
            &[
                "compat",
                "bsdec2-image-upload",
                &raw,
                "name-ok",
                "d",
                "mars",
                "b",
                &nosecret,
            ],
            "mars",
        ),
        case(
            &[
                "compat",
                "bsdec2-image-upload",
                &raw,
                "name-ok",
                "d",
                "us-east-1",
                "b",
                &nosecret,
                "t",
            ],
            "7 argument(s)",
        ),
        // bench, history, report
        case(
            &["bench", "ami-XYZ", "--instance-type", "c5.large"],
            "ami-XYZ",
        ),
        case(
            &["bench", ami, "--instance-type", "c5.large", "--runs", "0"],
            "'0'",
        ),
        case(
            &[
                "history",
                "import",
                "/dev/zero",
                "--ami",
                ami,
                "--instance-type",
                "c5.large",
                "--image-name",
                "x",
            ],
            "/dev/zero",
        ),
        case(
            &[
                "history",
                "import",
                &fifo,
                "--ami",
                ami,
                "--instance-type",
                "c5.large",
                "--image-name",
                "x",
            ],
            &fifo,
        ),
        case(
            &[
                "history",
                "import",
                &garbage,
                "--ami",
                ami,
                "--instance-type",
                "c5.large",
                "--image-name",
                "x",
            ],
            &garbage,
        ),
        case(
            &[
                "history",
                "import",
                &nonutf8,
                "--ami",
                ami,
                "--instance-type",
                "c5.large",
                "--image-name",
                "x",
            ],
            &nonutf8,
        ),
        case(
            &["history", "show", "no-such-benchmark"],
            "no-such-benchmark",
        ),
        case(&["report", "--out", "/proc/self"], "/proc/self"),
        // userdata, boot
        case(&["userdata", "--check", &missing], &missing),
        case(&["userdata", "--check", &fifo], &fifo),
        case(&["boot", &missing], &missing),
        case(&["boot", &empty], &empty),
        // global options
        case(&["--region", "mars-1", "upload", &raw], "mars-1"),
        case(
            &["--profile", "no-such-profile", "download", snap, &missing],
            "no-such-profile",
        ),
        case(&["--output", "yaml", "upload", &raw], "yaml"),
        case(&["--attempt-timeout", "forever", "upload", &raw], "forever"),
        case(&["completions", "powershell-9"], "powershell-9"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_inputs_fail_cleanly() {
    let world = World::moto().await;
    let f = fixtures(&world);
    let cases = cases(&f);
    assert!(cases.len() >= 40, "{} cases", cases.len());
    // A benchmark in the history, so that `report` gets as far as writing.
    let ebb = world.path("ebb.txt");
    std::fs::write(
        &ebb,
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
            ebb.to_str().unwrap(),
            "--ami",
            "ami-0a1b2c3d4e5f60718",
            "--instance-type",
            "c5.xlarge",
            "--image-name",
            "FreeBSD 14.1-STABLE-amd64-20241003 UEFI-PREFERRED base UFS",
        ])
        .await
        .assert_ok();
    let before = census(&world).await;
    let mut failures = Vec::new();
    for c in &cases {
        let mut cmd = world.ec2ami();
        cmd.env("AWS_SECRET_ACCESS_KEY", SECRET)
            .env("EC2AMI_LOG", "error")
            .env("TMPDIR", world.path("tmp"))
            .args(&c.args);
        std::fs::create_dir_all(world.path("tmp")).unwrap();
        let Ok(out) = tokio::time::timeout(Duration::from_secs(10), cmd.output()).await else {
            failures.push(format!("{:?}: still running after 10 s", c.args));
            continue;
        };
        let run = Run::from(out.unwrap());
        let mut problems = Vec::new();
        if run.code == Some(0) || run.code.is_none() {
            problems.push(format!("exit {:?}", run.code));
        }
        // bsdec2-image-upload's usage line follows its errors, as that tool prints it.
        let stderr: Vec<&str> = run
            .stderr
            .trim()
            .lines()
            .filter(|l| !l.starts_with("usage: bsdec2-image-upload"))
            .collect();
        let stderr = stderr.join("\n");
        if stderr.lines().count() != 1 {
            problems.push("not one line on stderr".to_string());
        }
        if !stderr.contains(&c.names) {
            problems.push(format!("stderr does not name `{}`", c.names));
        }
        for (what, text) in [("stdout", &run.stdout), ("stderr", &run.stderr)] {
            if text.contains(SECRET) {
                problems.push(format!("the secret key on {what}"));
            }
            if text.contains("panicked") {
                problems.push(format!("a panic on {what}"));
            }
            if text.chars().any(|ch| ch == '\u{1b}' || ch == '\u{7}') {
                problems.push(format!("a raw control character on {what}"));
            }
        }
        let left: Vec<_> = std::fs::read_dir(world.path("tmp")).unwrap().collect();
        if !left.is_empty() {
            problems.push(format!("left temporary files: {left:?}"));
        }
        let now = census(&world).await;
        if now != before {
            problems.push(format!(
                "the world changed: [snapshots, images, parameters, instances] {before:?} -> {now:?}"
            ));
        }
        if !problems.is_empty() {
            failures.push(format!(
                "{:?}: {}\n  stderr: {:?}",
                c.args,
                problems.join("; "),
                run.stderr
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
