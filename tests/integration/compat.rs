//! ec2ami as bsdec2-image-upload, run with the exact command lines FreeBSD's
//! `release/Makefile.ec2` builds (its recipe below, expanded with the Makefile's own
//! conditionals), installed under that name (a link to the binary), against moto
//! through the recording proxy: AMIs in every region, public, snapshots public, both
//! parameters, RegisterImage's attributes on the wire, only the key file's access key
//! on the wire, one SNS message (read from an SQS queue subscribed to the topic) with
//! the right content; kill -9 at several points and rerun; bad command lines.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ec2ami_testkit::moto::{AWS_ENV_TO_REMOVE, aws_test_env};
use ec2ami_testkit::{Fault, FaultRule};
use tokio::process::Command;

use crate::common::*;

/// The recipe of `ec2ami-${_FL}-${_FS}` in FreeBSD's release/Makefile.ec2 (main, with
/// the `--ssm-name-extra` and `--vmdk` options), the loop variables written as plain
/// names: SSMOPTS = SSMOPTS_${_FL}_${_FS}, IMAGE = ${EC2-${_FL:tu}${_FS:tu}IMAGE},
/// FL = ${_FL}, FS_TU = ${_FS:tu}.
const RECIPE: &str = r#"/usr/local/bin/bsdec2-image-upload ${PUBLISH} ${PUBLICSNAP} \
    ${EC2ARCH} ${SSMOPTS} ${SSMOPTSEXTRA} \
    ${BOOTMODEOPT} ${EC2_VMDK} --sriov --ena \
    ${.OBJDIR}/${IMAGE} \
    "${AMIBASENAME} ${FL} ${FS_TU}" \
    "${TYPE}/${TARGET} ${GITBRANCH}@${GITREV}" \
    ${AWSREGION} ${AWSBUCKET} ${AWSKEYFILE} \
    ${EC2SNSTOPIC} ${EC2SNSREL} ${EC2SNSVERS}"#;

/// The same recipe as stable branches carry it: no --ena, no --vmdk.
const RECIPE_NO_ENA: &str = r#"/usr/local/bin/bsdec2-image-upload ${PUBLISH} ${PUBLICSNAP} \
    ${EC2ARCH} ${SSMOPTS} ${SSMOPTSEXTRA} \
    ${BOOTMODEOPT} --sriov \
    ${.OBJDIR}/${IMAGE} \
    "${AMIBASENAME} ${FL} ${FS_TU}" \
    "${TYPE}/${TARGET} ${GITBRANCH}@${GITREV}" \
    ${AWSREGION} ${AWSBUCKET} ${AWSKEYFILE} \
    ${EC2SNSTOPIC} ${EC2SNSREL} ${EC2SNSVERS}"#;

/// The access key id in the key file: the only one that may appear on the wire.
const KEY_ID: &str = "AKIAKEYFILE000000001";
const KEY_SECRET: &str = "keyfile/Secret+0123456789abcdefghijklmno";
const SSMPREFIX: &str = "/freebsd-test";

/// One build as the release Makefiles see it.
#[derive(Clone)]
struct Build {
    target: &'static str,
    target_arch: &'static str,
    revision: &'static str,
    branch: &'static str,
    builddate: &'static str,
    gitbranch: &'static str,
    gitrev: &'static str,
    /// EC2_FORMAT: `raw` or `vmdks`.
    format: &'static str,
    /// AMIBOOTMETHOD (the Makefile's default: UEFI-PREFERRED).
    bootmethod: &'static str,
    public: bool,
    publicsnap: bool,
    sns_topic: Option<String>,
}

impl Build {
    fn release(target: &'static str) -> Build {
        Build {
            target,
            target_arch: if target == "arm64" {
                "aarch64"
            } else {
                "amd64"
            },
            revision: "15.0",
            branch: "RELEASE",
            builddate: "20251202",
            gitbranch: "releng/15.0",
            gitrev: "4fd3c9a2b1e0",
            format: "raw",
            bootmethod: "UEFI-PREFERRED",
            public: true,
            publicsnap: true,
            sns_topic: None,
        }
    }

    fn weekly(target: &'static str, branch: &'static str, builddate: &'static str) -> Build {
        Build {
            branch,
            builddate,
            revision: if branch == "CURRENT" { "16.0" } else { "15.0" },
            gitbranch: if branch == "CURRENT" {
                "main"
            } else {
                "stable/15"
            },
            gitrev: "n281234-0a1b2c3d4e5f",
            ..Build::release(target)
        }
    }

    fn arch(&self) -> &'static str {
        // ${TARGET_ARCH:S/aarch64/arm64/}
        if self.target_arch == "aarch64" {
            "arm64"
        } else {
            self.target_arch
        }
    }

    /// The Makefile's variables for flavour `base` on UFS, as its conditionals set them.
    fn vars(&self, objdir: &Path, region: &str, keyfile: &Path) -> BTreeMap<&'static str, String> {
        let mut v = BTreeMap::new();
        let dated = matches!(self.branch, "CURRENT" | "STABLE" | "PRERELEASE");
        let suffix = if dated {
            format!("-{}", self.builddate)
        } else {
            String::new()
        };
        if self.public {
            v.insert("PUBLISH", "--public".to_string());
        }
        if self.publicsnap {
            v.insert("PUBLICSNAP", "--publicsnap".to_string());
        }
        if let Some(t) = &self.sns_topic {
            v.insert("EC2SNSTOPIC", t.clone());
            v.insert("EC2SNSREL", format!("{}-{}", self.revision, self.branch));
            v.insert("EC2SNSVERS", format!("{}@{}", self.gitbranch, self.gitrev));
        }
        if self.target_arch != "amd64" {
            v.insert("EC2ARCH", format!("--{}", self.arch()));
        }
        if self.target_arch == "amd64" {
            match self.bootmethod {
                "UEFI" => v.insert("BOOTMODEOPT", "--uefi".to_string()),
                "UEFI-PREFERRED" => v.insert("BOOTMODEOPT", "--uefi-preferred".to_string()),
                _ => None,
            };
        }
        let base = format!(
            "FreeBSD {}-{}-{}{suffix}",
            self.revision, self.branch, self.target
        );
        v.insert(
            "AMIBASENAME",
            if self.bootmethod == "UEFI-PREFERRED" {
                base
            } else {
                format!("{base} {}", self.bootmethod)
            },
        );
        if self.format == "vmdks" {
            v.insert("EC2_VMDK", "--vmdk".to_string());
        }
        let param = self.param();
        v.insert("SSMOPTS", format!("--ssm-name {param}"));
        if self.branch == "RELEASE" {
            v.insert("SSMOPTSEXTRA", format!("--ssm-name-extra {param}/latest"));
        }
        v.insert(".OBJDIR", objdir.display().to_string());
        v.insert("IMAGE", format!("ec2-base.ufs.{}", self.format));
        v.insert("FL", "base".to_string());
        v.insert("FS_TU", "UFS".to_string());
        v.insert("TYPE", "FreeBSD".to_string());
        v.insert("TARGET", self.target.to_string());
        v.insert("GITBRANCH", self.gitbranch.to_string());
        v.insert("GITREV", self.gitrev.to_string());
        v.insert("AWSREGION", region.to_string());
        v.insert("AWSBUCKET", "freebsd-ec2-upload-staging".to_string());
        v.insert("AWSKEYFILE", keyfile.display().to_string());
        v
    }

    fn param(&self) -> String {
        format!(
            "{SSMPREFIX}/{}/base/ufs/{}/{}",
            self.arch(),
            self.revision,
            self.branch
        )
    }

    fn params(&self) -> Vec<String> {
        let mut p = vec![self.param()];
        if self.branch == "RELEASE" {
            p.push(format!("{}/latest", self.param()));
        }
        p
    }

    fn ami_name(&self) -> String {
        let dated = matches!(self.branch, "CURRENT" | "STABLE" | "PRERELEASE");
        let suffix = if dated {
            format!("-{}", self.builddate)
        } else {
            String::new()
        };
        let method = if self.bootmethod == "UEFI-PREFERRED" {
            String::new()
        } else {
            format!(" {}", self.bootmethod)
        };
        format!(
            "FreeBSD {}-{}-{}{suffix}{method} base UFS",
            self.revision, self.branch, self.target
        )
    }
}

/// `recipe` with make's `${VAR}` expanded from `vars` (undefined: empty), then split
/// into words as sh does (backslash-newline joins lines, double quotes group).
fn expand(recipe: &str, vars: &BTreeMap<&'static str, String>) -> Vec<String> {
    let mut text = String::new();
    let mut rest = recipe;
    while let Some(at) = rest.find("${") {
        text.push_str(&rest[..at]);
        let end = rest[at..].find('}').unwrap() + at;
        let name = &rest[at + 2..end];
        text.push_str(vars.get(name).map(String::as_str).unwrap_or(""));
        rest = &rest[end + 1..];
    }
    text.push_str(rest);
    let text = text.replace("\\\n", " ");
    let (mut words, mut cur, mut quoted, mut any) = (Vec::new(), String::new(), false, false);
    for c in text.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    words.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        words.push(cur);
    }
    assert!(!quoted, "unbalanced quotes");
    words
}

/// The world's directory as the build host: `usr/local/bin/bsdec2-image-upload` (a
/// link to ec2ami), the key file, the object directory.
struct Host {
    bin: PathBuf,
    keyfile: PathBuf,
    objdir: PathBuf,
}

fn host(world: &World) -> Host {
    let bin = world.path("usr/local/bin");
    std::fs::create_dir_all(&bin).unwrap();
    let link = bin.join("bsdec2-image-upload");
    if !link.exists() {
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_ec2ami"), &link).unwrap();
    }
    let keyfile = world.path("aws.key");
    std::fs::write(
        &keyfile,
        format!("ACCESS_KEY_ID={KEY_ID}\nACCESS_KEY_SECRET={KEY_SECRET}\n"),
    )
    .unwrap();
    let objdir = world.path("obj/usr/src/amd64.amd64/release");
    std::fs::create_dir_all(&objdir).unwrap();
    Host {
        bin: link,
        keyfile,
        objdir,
    }
}

/// The command line `words` (its first word the program) with the world's environment,
/// plus other credentials that must not be used: environment keys, a session token, a
/// profile with keys of its own.
fn command(world: &World, host: &Host, words: &[String]) -> Command {
    assert_eq!(words[0], "/usr/local/bin/bsdec2-image-upload");
    let mut cmd = Command::new(&host.bin);
    cmd.args(&words[1..]);
    for k in AWS_ENV_TO_REMOVE {
        cmd.env_remove(k);
    }
    let config = world.path("aws-config");
    std::fs::write(
        &config,
        "[profile leaky]\naws_access_key_id = AKIAPROFILE000000001\n\
         aws_secret_access_key = profile-secret\nregion = eu-west-1\n",
    )
    .unwrap();
    cmd.envs(aws_test_env(&world.proxy.url(), REGION))
        .env("AWS_ACCESS_KEY_ID", "AKIAENVIRONMENT00001")
        .env("AWS_SECRET_ACCESS_KEY", "environment-secret")
        .env("AWS_SESSION_TOKEN", "environment-session-token")
        .env("AWS_PROFILE", "leaky")
        .env("AWS_CONFIG_FILE", &config)
        .env("XDG_STATE_HOME", world.path("state"))
        .env("EC2AMI_PROGRESS_INTERVAL_MS", "100")
        .kill_on_drop(true);
    cmd
}

async fn run(world: &World, host: &Host, words: &[String]) -> Run {
    let out = tokio::time::timeout(
        Duration::from_secs(300),
        command(world, host, words).output(),
    )
    .await
    .expect("bsdec2-image-upload finishes within 5 minutes")
    .expect("it runs");
    Run::from(out)
}

/// `Created AMI in R region: ID` lines: (region, id), in order.
fn created(stdout: &str) -> Vec<(String, String)> {
    stdout
        .lines()
        .map(|l| {
            let rest = l
                .strip_prefix("Created AMI in ")
                .unwrap_or_else(|| panic!("not a Created line: {l}"));
            let (r, id) = rest.split_once(" region: ").unwrap();
            assert!(id.starts_with("ami-") && !id.contains(' '), "{l}");
            (r.to_string(), id.to_string())
        })
        .collect()
}

/// An SNS topic in `region` with an SQS queue subscribed to it: (topic ARN, queue URL).
async fn topic_with_queue(world: &World, region: &str, name: &str) -> (String, String) {
    let c = world.clients().await.in_region(region);
    let sns = aws_sdk_sns::Client::new(&c.config);
    let sqs = aws_sdk_sqs::Client::new(&c.config);
    let topic = sns
        .create_topic()
        .name(name)
        .send()
        .await
        .unwrap()
        .topic_arn()
        .unwrap()
        .to_string();
    let queue = sqs
        .create_queue()
        .queue_name(format!("{name}-queue"))
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_string();
    let attrs = sqs
        .get_queue_attributes()
        .queue_url(&queue)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap();
    let queue_arn =
        attrs.attributes().unwrap()[&aws_sdk_sqs::types::QueueAttributeName::QueueArn].clone();
    sns.subscribe()
        .topic_arn(&topic)
        .protocol("sqs")
        .endpoint(queue_arn)
        .send()
        .await
        .unwrap();
    (topic, queue)
}

/// Every message the queue holds (SNS notifications: their JSON envelopes), taken off.
async fn drain(world: &World, region: &str, queue: &str) -> Vec<serde_json::Value> {
    let c = world.clients().await.in_region(region);
    let sqs = aws_sdk_sqs::Client::new(&c.config);
    let mut out = Vec::new();
    loop {
        let got = sqs
            .receive_message()
            .queue_url(queue)
            .max_number_of_messages(10)
            .send()
            .await
            .unwrap();
        if got.messages().is_empty() {
            break;
        }
        for m in got.messages() {
            out.push(serde_json::from_str(m.body().unwrap()).unwrap());
            sqs.delete_message()
                .queue_url(queue)
                .receipt_handle(m.receipt_handle().unwrap())
                .send()
                .await
                .unwrap();
        }
    }
    out
}

/// The image the build made: a raw disk with data at a few places, or the same as a
/// streamOptimized VMDK (as FreeBSD's `vmdks` format). Returns the raw form.
fn build_image(host: &Host, build: &Build, seed: u64) -> PathBuf {
    let raw = host.objdir.join(format!("ec2-base.ufs.raw.{seed}"));
    sparse_file(
        &raw,
        24 * MIB,
        &[
            (0, random_bytes(seed, 512 * 1024)),
            (9 * MIB + 4096, random_bytes(seed + 1, 3 * MIB as usize)),
        ],
    );
    let image = host.objdir.join(format!("ec2-base.ufs.{}", build.format));
    if build.format == "vmdks" {
        let st = std::process::Command::new(qemu_img())
            .args(["convert", "-q", "-f", "raw", "-O", "vmdk", "-o"])
            .arg("subformat=streamOptimized")
            .arg(&raw)
            .arg(&image)
            .status()
            .unwrap();
        assert!(st.success(), "qemu-img convert failed");
    } else {
        std::fs::copy(&raw, &image).unwrap();
    }
    raw
}

/// qemu-img, which the VMDK cases need (`scripts/test` installs it).
pub fn qemu_img() -> PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join("qemu-img"))
        .find(|p| p.is_file())
        .expect("qemu-img is needed for the VMDK cases: apt-get install qemu-utils")
}

/// Every request since the proxy's last clear was signed with the key file's key only.
fn only_key_file_credentials(world: &World) {
    let requests = world.proxy.requests();
    assert!(!requests.is_empty());
    for r in &requests {
        let auth = r
            .header("authorization")
            .unwrap_or_else(|| panic!("{} {} {} is not signed", r.operation, r.method, r.path));
        assert!(
            auth.contains(&format!("Credential={KEY_ID}/")),
            "{} signed with another key: {auth}",
            r.operation
        );
        assert!(
            r.header("x-amz-security-token").is_none(),
            "{}: the environment's session token leaked",
            r.operation
        );
    }
}

/// Run one Makefile invocation and check everything it promises; returns its lines.
async fn check_build(
    world: &World,
    host: &Host,
    build: &Build,
    recipe: &str,
    seed: u64,
    queue: Option<&(String, String)>,
) -> Vec<(String, String)> {
    let raw = build_image(host, build, seed);
    let region = "us-west-2";
    let words = expand(recipe, &build.vars(&host.objdir, region, &host.keyfile));
    world.proxy.clear_requests();
    let out = run(world, host, &words).await;
    out.assert_ok();
    assert!(!out.stderr.contains(KEY_SECRET), "the secret was printed");
    only_key_file_credentials(world);

    // stdout: one line per enabled region, the source first.
    let lines = created(&out.stdout);
    // The regions the world enables, asked with DescribeRegions (not ec2ami's code).
    let all = world.enabled_regions().await;
    assert_eq!(lines.len(), all.len(), "{}", out.stdout);
    assert_eq!(lines[0].0, region);
    let mut seen: Vec<&str> = lines.iter().map(|(r, _)| r.as_str()).collect();
    seen.sort();
    let mut want: Vec<&str> = all.iter().map(String::as_str).collect();
    want.sort();
    assert_eq!(seen, want);

    // stderr: bsdec2-image-upload's progress lines.
    for l in [
        "Registering AMI... done.",
        "Marking images as public... done.",
        "Storing AMI Ids in SSM Parameter Store... done.",
        "Waiting for AMI copying to us-east-1... done.",
    ] {
        assert!(
            out.stderr.lines().any(|x| x == l),
            "no `{l}` in:\n{}",
            out.stderr
        );
    }
    assert!(
        out.stderr.contains("Copying AMI to regions: "),
        "{}",
        out.stderr
    );
    if build.publicsnap {
        assert!(
            out.stderr.lines().any(|x| x.starts_with("Marking snap-")
                && x.ends_with(&format!(" in {region} as public... done."))),
            "{}",
            out.stderr
        );
    }

    // RegisterImage as the flags say.
    let reg = params_of(world, "RegisterImage");
    assert_eq!(reg.len(), 1);
    let reg = &reg[0];
    assert_eq!(reg["Name"], build.ami_name());
    assert_eq!(
        reg["Description"],
        format!(
            "FreeBSD/{} {}@{}",
            build.target, build.gitbranch, build.gitrev
        )
    );
    assert_eq!(
        reg["Architecture"],
        if build.arch() == "arm64" {
            "arm64"
        } else {
            "x86_64"
        }
    );
    let boot = match (build.arch(), build.bootmethod) {
        ("arm64", _) => "uefi",
        (_, "UEFI") => "uefi",
        (_, "UEFI-PREFERRED") => "uefi-preferred",
        _ => "legacy-bios",
    };
    assert_eq!(reg["BootMode"], boot);
    assert_eq!(reg["SriovNetSupport"], "simple");
    let ena = recipe.contains("--ena");
    assert_eq!(
        reg.get("EnaSupport").is_some_and(|v| v == "true"),
        ena,
        "{reg:?}"
    );
    assert_eq!(reg["RootDeviceName"], "/dev/sda1");

    // In every region: one AMI of that name, public, its snapshots public, both
    // parameters naming it.
    for (r, id) in &lines {
        let c = world.clients().await.in_region(r);
        let imgs = c
            .ec2
            .describe_images()
            .owners("self")
            .filters(
                aws_sdk_ec2::types::Filter::builder()
                    .name("name")
                    .values(build.ami_name())
                    .build(),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(imgs.images().len(), 1, "{r}: {:?}", imgs.images());
        let img = &imgs.images()[0];
        assert_eq!(img.image_id(), Some(id.as_str()));
        assert_eq!(img.public(), Some(build.public), "{r}");
        let snap = img.block_device_mappings()[0]
            .ebs()
            .and_then(|e| e.snapshot_id())
            .unwrap()
            .to_string();
        let perm = c
            .ec2
            .describe_snapshot_attribute()
            .snapshot_id(&snap)
            .attribute(aws_sdk_ec2::types::SnapshotAttributeName::CreateVolumePermission)
            .send()
            .await
            .unwrap();
        let public = perm
            .create_volume_permissions()
            .iter()
            .any(|p| p.group() == Some(&aws_sdk_ec2::types::PermissionGroup::All));
        assert_eq!(public, build.publicsnap, "{r} {snap}");
        for p in build.params() {
            let got = c.ssm.get_parameter().name(&p).send().await.unwrap();
            assert_eq!(
                got.parameter().unwrap().value(),
                Some(id.as_str()),
                "{r} {p}"
            );
        }
    }

    // What was uploaded is the image (a VMDK converted back to its raw blocks).
    let source_snap = world.clients().await.in_region(region);
    let img = source_snap
        .ec2
        .describe_images()
        .image_ids(&lines[0].1)
        .send()
        .await
        .unwrap();
    let snap = img.images()[0].block_device_mappings()[0]
        .ebs()
        .and_then(|e| e.snapshot_id())
        .unwrap()
        .to_string();
    let back = world.path(&format!("back-{seed}.raw"));
    let dl = world
        .run(&[
            "--region",
            region,
            "download",
            &snap,
            back.to_str().unwrap(),
        ])
        .await;
    dl.assert_ok();
    assert_same_content(&raw, &back);

    // The announcement: one message, subject and document as bsdec2-image-upload's.
    if let (Some(topic), Some((_, queue))) = (&build.sns_topic, queue) {
        let topic_region = topic.split(':').nth(3).unwrap();
        let msgs = drain(world, topic_region, queue).await;
        assert_eq!(msgs.len(), 1, "{msgs:#?}");
        let m = &msgs[0];
        assert_eq!(m["TopicArn"], topic.as_str());
        assert_eq!(
            m["Subject"],
            format!("New {}-{} AMIs", build.revision, build.branch)
        );
        let doc: serde_json::Value = serde_json::from_str(m["Message"].as_str().unwrap()).unwrap();
        let v1 = &doc["v1"];
        assert_eq!(
            v1["ReleaseVersion"],
            format!("{}-{}", build.revision, build.branch)
        );
        assert_eq!(
            v1["ImageVersion"],
            format!("{}@{}", build.gitbranch, build.gitrev)
        );
        let regions = v1["Regions"].as_object().unwrap();
        assert_eq!(regions.len(), lines.len());
        for (r, id) in &lines {
            let entries = regions[r].as_array().unwrap();
            assert_eq!(entries.len(), 1);
            assert_eq!(entries[0]["Name"], build.ami_name());
            assert_eq!(
                entries[0]["Architecture"],
                if build.arch() == "arm64" {
                    "arm64"
                } else {
                    "x86_64"
                }
            );
            assert_eq!(entries[0]["ImageId"], id.as_str());
        }
        // The regions in stdout's order (a JSON object keeps the order it was written in;
        // serde_json's Value does not, so read the text).
        let text = m["Message"].as_str().unwrap();
        let mut at = 0;
        for (r, _) in &lines {
            let pos = text.find(&format!("\"{r}\": [")).unwrap();
            assert!(pos > at, "{r} out of order:\n{text}");
            at = pos;
        }
        assert_eq!(params_of(world, "Publish").len(), 1);
        let publish = world
            .proxy
            .requests()
            .into_iter()
            .find(|r| r.operation == "Publish")
            .unwrap();
        assert_eq!(
            publish.region, topic_region,
            "published in the topic's region"
        );
    }
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn makefile_release_builds_amd64_and_arm64() {
    let world = World::moto().await;
    let host = host(&world);
    let topic = topic_with_queue(&world, "us-east-1", "freebsd-release").await;
    let mut amd64 = Build::release("amd64");
    amd64.sns_topic = Some(topic.0.clone());
    let words = expand(
        RECIPE,
        &amd64.vars(&host.objdir, "us-west-2", &host.keyfile),
    );
    // The line the Makefile builds for a RELEASE: no date, both parameters, --ena.
    assert_eq!(
        words[..17],
        [
            "/usr/local/bin/bsdec2-image-upload",
            "--public",
            "--publicsnap",
            "--ssm-name",
            "/freebsd-test/amd64/base/ufs/15.0/RELEASE",
            "--ssm-name-extra",
            "/freebsd-test/amd64/base/ufs/15.0/RELEASE/latest",
            "--uefi-preferred",
            "--sriov",
            "--ena",
            &format!("{}/ec2-base.ufs.raw", host.objdir.display()),
            "FreeBSD 15.0-RELEASE-amd64 base UFS",
            "FreeBSD/amd64 releng/15.0@4fd3c9a2b1e0",
            "us-west-2",
            "freebsd-ec2-upload-staging",
            &host.keyfile.display().to_string(),
            &topic.0,
        ]
    );
    assert_eq!(words[17..], ["15.0-RELEASE", "releng/15.0@4fd3c9a2b1e0"]);
    check_build(&world, &host, &amd64, RECIPE, 100, Some(&topic)).await;

    // arm64 with the recipe of a branch that passes no --ena.
    let (t2, q2) = topic_with_queue(&world, "eu-west-1", "freebsd-release-arm64").await;
    let mut arm64 = Build::release("arm64");
    arm64.sns_topic = Some(t2.clone());
    check_build(&world, &host, &arm64, RECIPE_NO_ENA, 200, Some(&(t2, q2))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn makefile_weekly_builds_current_vmdk_and_stable_without_ena() {
    let world = World::moto().await;
    let host = host(&world);
    let topic = topic_with_queue(&world, "us-east-1", "freebsd-snapshots").await;
    // A weekly 16.0-CURRENT arm64 build, its image a streamOptimized VMDK.
    let mut current = Build::weekly("arm64", "CURRENT", "20251204");
    current.format = "vmdks";
    current.publicsnap = false;
    current.sns_topic = Some(topic.0.clone());
    let words = expand(
        RECIPE,
        &current.vars(&host.objdir, "us-west-2", &host.keyfile),
    );
    assert_eq!(
        words[1..8],
        [
            "--public",
            "--arm64",
            "--ssm-name",
            "/freebsd-test/arm64/base/ufs/16.0/CURRENT",
            "--vmdk",
            "--sriov",
            "--ena"
        ]
    );
    assert_eq!(words[9], "FreeBSD 16.0-CURRENT-arm64-20251204 base UFS");
    check_build(&world, &host, &current, RECIPE, 300, Some(&topic)).await;

    // A weekly 15-STABLE amd64 build booting UEFI, with the recipe without --ena, and
    // no announcement (six arguments).
    let mut stable = Build::weekly("amd64", "STABLE", "20251204");
    stable.bootmethod = "UEFI";
    let words = expand(
        RECIPE_NO_ENA,
        &stable.vars(&host.objdir, "us-west-2", &host.keyfile),
    );
    assert_eq!(words.len(), 1 + 6 + 6, "{words:?}");
    assert_eq!(
        words[7],
        format!("{}/ec2-base.ufs.raw", host.objdir.display())
    );
    assert_eq!(words[8], "FreeBSD 15.0-STABLE-amd64-20251204 UEFI base UFS");
    check_build(&world, &host, &stable, RECIPE_NO_ENA, 400, None).await;
    assert!(drain(&world, "us-east-1", &topic.1).await.is_empty());
}

/// (name, id) of the account's AMIs in `region`.
async fn amis_in(world: &World, region: &str) -> Vec<(String, String)> {
    let c = world.clients().await.in_region(region);
    let imgs = c.ec2.describe_images().owners("self").send().await.unwrap();
    let mut v: Vec<_> = imgs
        .images()
        .iter()
        .map(|i| {
            (
                i.name().unwrap_or_default().to_string(),
                i.image_id().unwrap_or_default().to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

/// Start the command, hold its request of `operation` after the first `n` at the
/// proxy (a gate: it is mid-phase, whatever the machine's speed), then kill -9 it.
async fn kill_after(world: &World, host: &Host, words: &[String], operation: &str, n: usize) {
    let gate = world.proxy.hold(Some(operation), n);
    let mut child = command(world, host, words)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let held = tokio::select! {
        held = gate.arrived(1, Duration::from_secs(120)) => held,
        status = child.wait() => panic!("finished before {operation} x{}: {status:?}", n + 1),
    };
    assert!(held, "{operation} never reached {}", n + 1);
    child.start_kill().unwrap(); // SIGKILL: no clean-up
    let _ = child.wait().await;
    // Opened only once the program is dead: whether the held request still reaches the
    // world or not, nobody reads its answer (a request AWS got from a killed client).
    drop(gate);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_at_any_point_a_rerun_finishes_with_one_announcement() {
    let world = World::moto().await;
    let host = host(&world);
    let topic = topic_with_queue(&world, "us-east-1", "freebsd-release").await;
    let mut build = Build::release("amd64");
    build.sns_topic = Some(topic.0.clone());
    let raw = build_image(&host, &build, 500);
    let words = expand(
        RECIPE,
        &build.vars(&host.objdir, "us-west-2", &host.keyfile),
    );
    // 1: during the upload; 2: during the copies; 3: while the parameters are written
    // (before the announcement).
    for (op, n) in [
        ("PutSnapshotBlock", 2),
        ("CopyImage", 3),
        ("PutParameter", 3),
    ] {
        world.proxy.clear_requests();
        kill_after(&world, &host, &words, op, n).await;
    }
    assert_eq!(world.proxy.count("Publish"), 0);
    assert!(drain(&world, "us-east-1", &topic.1).await.is_empty());

    // 4: SNS refuses the announcement: a warning, exit 0, the AMIs are published.
    world.proxy.clear_requests();
    world.proxy.set_rules(vec![FaultRule::with_rate(
        Some("Publish"),
        Fault::AccessDenied,
        1.0,
    )]);
    let denied = run(&world, &host, &words).await;
    world.proxy.set_rules(vec![]);
    denied.assert_ok();
    assert!(
        denied.stderr.contains("release announcement") && denied.stderr.contains("was not sent"),
        "{}",
        denied.stderr
    );
    let lines = created(&denied.stdout);
    assert!(drain(&world, "us-east-1", &topic.1).await.is_empty());

    // 5: the rerun sends it, once.
    world.proxy.clear_requests();
    let done = run(&world, &host, &words).await;
    done.assert_ok();
    assert_eq!(done.stdout, denied.stdout);
    assert_eq!(world.proxy.count("Publish"), 1);
    for op in ["StartSnapshot", "RegisterImage", "CopyImage"] {
        assert_eq!(world.proxy.count(op), 0, "{op} sent again");
    }
    let msgs = drain(&world, "us-east-1", &topic.1).await;
    assert_eq!(msgs.len(), 1);

    // 6: once it went out, a rerun sends nothing.
    world.proxy.clear_requests();
    let again = run(&world, &host, &words).await;
    again.assert_ok();
    assert_eq!(again.stdout, denied.stdout);
    assert_eq!(world.proxy.count("Publish"), 0);
    assert!(drain(&world, "us-east-1", &topic.1).await.is_empty());

    // Nothing duplicated: one AMI of the name per region, one snapshot of ours in the
    // source region (the interrupted upload's was deleted), the image as built.
    for (region, id) in &lines {
        let amis = amis_in(&world, region).await;
        assert_eq!(amis, vec![(build.ami_name(), id.clone())], "{region}");
    }
    let src = world.clients().await.in_region("us-west-2");
    let snaps = src
        .ec2
        .describe_snapshots()
        .owner_ids("self")
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("tag-key")
                .values("ec2ami:managed-by")
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(snaps.snapshots().len(), 1, "{:?}", snaps.snapshots());
    let back = world.path("back.raw");
    world
        .run(&[
            "--region",
            "us-west-2",
            "download",
            snaps.snapshots()[0].snapshot_id().unwrap(),
            back.to_str().unwrap(),
        ])
        .await
        .assert_ok();
    assert_same_content(&raw, &back);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_command_lines_are_refused_before_any_request() {
    let world = World::offline().await;
    let host = host(&world);
    let build = Build::release("amd64");
    build_image(&host, &build, 600);
    let good = expand(
        RECIPE,
        &build.vars(&host.objdir, "us-west-2", &host.keyfile),
    );
    let image = good[10].clone();
    let pos = |extra: &[&str]| {
        let mut v = vec!["/usr/local/bin/bsdec2-image-upload".to_string()];
        v.extend(good[1..10].iter().cloned());
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let six: Vec<String> = good[10..16].to_vec();
    let six_with = |keyfile: &Path| {
        let mut v = six.clone();
        v[5] = keyfile.display().to_string();
        v
    };
    let key = |name: &str, text: &[u8]| {
        let p = world.path(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let wrong_line = key(
        "wrong-line.key",
        format!("ACCESS_KEY_ID={KEY_ID}\nSECRET_KEY={KEY_SECRET}\n").as_bytes(),
    );
    let cr_only = key(
        "cr.key",
        format!("ACCESS_KEY_ID={KEY_ID}\rACCESS_KEY_SECRET={KEY_SECRET}\r").as_bytes(),
    );
    let no_secret = key(
        "no-secret.key",
        format!("ACCESS_KEY_ID={KEY_ID}\n").as_bytes(),
    );
    let raw_as_vmdk = {
        let mut v = pos(&["--vmdk"]);
        v.extend(six.iter().cloned());
        v
    };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            {
                let mut v = pos(&["--bogus"]);
                v.extend(six.iter().cloned());
                v
            },
            "unknown flag `--bogus`",
        ),
        (
            {
                let mut v = pos(&[]);
                v.extend(six.iter().cloned());
                v.push("arn:aws:sns:us-east-1:123456789012:t".into());
                v
            },
            "7 argument(s)",
        ),
        (
            {
                let mut v = pos(&[]);
                v.extend(six.iter().cloned());
                v.extend([
                    "arn:aws:sns:us-east-1:123456789012:t".into(),
                    "15.0-RELEASE".into(),
                ]);
                v
            },
            "8 argument(s)",
        ),
        (
            {
                let mut v = pos(&[]);
                v.extend(six_with(&wrong_line));
                v
            },
            "line 2: unknown key `SECRET_KEY`",
        ),
        (
            {
                let mut v = pos(&[]);
                v.extend(six_with(&cr_only));
                v
            },
            "carriage return",
        ),
        (
            {
                let mut v = pos(&[]);
                v.extend(six_with(&no_secret));
                v
            },
            "no ACCESS_KEY_SECRET= line",
        ),
        (raw_as_vmdk, "--vmdk was given but"),
        (
            {
                let mut v = pos(&[]);
                v.extend(six.iter().cloned());
                v.extend([
                    "arn:aws:sqs:us-east-1:123456789012:q".into(),
                    "15.0-RELEASE".into(),
                    "x".into(),
                ]);
                v
            },
            "is not an SNS topic ARN",
        ),
        (
            {
                let mut v = pos(&[]);
                v.extend(six.iter().cloned());
                v.push("--ena".into());
                v
            },
            "`--ena` is after them",
        ),
    ];
    for (words, want) in cases {
        world.proxy.clear_requests();
        let out = run(&world, &host, &words).await;
        assert_eq!(out.code, Some(1), "{want}: {:?}\n{}", out.code, out.stderr);
        let first = out.stderr.lines().next().unwrap_or_default();
        assert!(
            first.starts_with("error: ") && first.contains(want),
            "{want}: {}",
            out.stderr
        );
        assert!(
            !out.stderr.contains(KEY_SECRET),
            "secret shown: {}",
            out.stderr
        );
        assert!(out.stdout.is_empty());
        assert!(
            world.proxy.requests().is_empty(),
            "{want}: {:?}",
            world.proxy.requests()
        );
    }
    assert!(std::path::Path::new(&image).exists());

    // A CRLF key file is read as bsdec2-image-upload reads it (the CR is not part of the
    // key): the run gets as far as AWS, signing with the key file's id.
    let crlf = key(
        "crlf.key",
        format!("ACCESS_KEY_ID={KEY_ID}\r\nACCESS_KEY_SECRET={KEY_SECRET}\r\n").as_bytes(),
    );
    world.proxy.clear_requests();
    world
        .proxy
        .set_rules(vec![FaultRule::with_rate(None, Fault::AccessDenied, 1.0)]);
    let mut v = pos(&[]);
    v.extend(six_with(&crlf));
    let out = run(&world, &host, &v).await;
    world.proxy.set_rules(vec![]);
    assert_eq!(out.code, Some(1), "every call is denied: {}", out.stderr);
    assert!(out.stderr.contains("DescribeRegions"), "{}", out.stderr);
    let first = world.proxy.requests();
    assert!(!first.is_empty());
    assert!(
        first[0]
            .header("authorization")
            .unwrap()
            .contains(&format!("Credential={KEY_ID}/"))
    );

    // -v: the version, exit 0, nothing else done.
    world.proxy.clear_requests();
    let out = run(
        &world,
        &host,
        &["/usr/local/bin/bsdec2-image-upload".into(), "-v".into()],
    )
    .await;
    assert_eq!(out.code, Some(0));
    assert!(
        out.stderr.starts_with("bsdec2-image-upload (ec2ami "),
        "{}",
        out.stderr
    );
    assert!(world.proxy.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_file_announces_the_whole_release_in_one_message() {
    let world = World::moto().await;
    let (topic, queue) = topic_with_queue(&world, "eu-west-1", "myos-release").await;
    let text = format!(
        r#"
regions = ["us-east-1", "us-west-2", "eu-west-1"]
public = true
announce = {{ topic = "{topic}", release = "15.0-CURRENT", image = "main@4f1e2d3" }}

[defaults]
version = "15.0"
branch = "CURRENT"
date = "20261124"
name = "MyOS {{version}}-{{branch}}-{{arch}}-{{date}} {{flavour}} UFS"

[[image]]
path = "base-amd64.raw"
arch = "x86_64"
flavour = "base"

[[image]]
path = "small-arm64.raw"
arch = "arm64"
flavour = "small"
"#
    );
    let rel = world.path("release.toml");
    std::fs::write(&rel, text).unwrap();
    for (name, seed) in [("base-amd64.raw", 1), ("small-arm64.raw", 2)] {
        sparse_file(
            &world.path(name),
            8 * MIB,
            &[(MIB, random_bytes(seed, MIB as usize))],
        );
    }
    let plan = world
        .run(&["publish", rel.to_str().unwrap(), "--plan"])
        .await;
    plan.assert_ok();
    assert!(
        plan.stdout.lines().any(|l| l.contains("announce")
            && l.contains("eu-west-1")
            && l.contains("create")
            && l.contains("`New 15.0-CURRENT AMIs`")),
        "{}",
        plan.stdout
    );
    let run = world.run(&["publish", rel.to_str().unwrap()]).await;
    run.assert_ok();
    let lines = created(&run.stdout);
    assert_eq!(lines.len(), 6);
    let msgs = drain(&world, "eu-west-1", &queue).await;
    assert_eq!(
        msgs.len(),
        1,
        "one message for the whole release: {msgs:#?}"
    );
    assert_eq!(msgs[0]["Subject"], "New 15.0-CURRENT AMIs");
    let doc: serde_json::Value =
        serde_json::from_str(msgs[0]["Message"].as_str().unwrap()).unwrap();
    let regions = doc["v1"]["Regions"].as_object().unwrap();
    assert_eq!(regions.len(), 3);
    let mut listed: Vec<(String, String)> = regions
        .iter()
        .flat_map(|(r, items)| {
            items
                .as_array()
                .unwrap()
                .iter()
                .map(|i| (r.clone(), i["ImageId"].as_str().unwrap().to_string()))
                .collect::<Vec<_>>()
        })
        .collect();
    listed.sort();
    let mut want = lines.clone();
    want.sort();
    assert_eq!(listed, want);
    let archs: Vec<&str> = regions["us-west-2"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["Architecture"].as_str().unwrap())
        .collect();
    assert_eq!(archs, ["x86_64", "arm64"]);
    // Journalled: the plan now says it was sent, and a rerun sends nothing.
    let plan = world
        .run(&["publish", rel.to_str().unwrap(), "--plan"])
        .await;
    assert!(
        plan.stdout
            .lines()
            .any(|l| l.contains("announce") && l.contains("unchanged")),
        "{}",
        plan.stdout
    );
    world.proxy.clear_requests();
    world
        .run(&["publish", rel.to_str().unwrap()])
        .await
        .assert_ok();
    assert_eq!(world.proxy.count("Publish"), 0);
    assert!(drain(&world, "eu-west-1", &queue).await.is_empty());
}
