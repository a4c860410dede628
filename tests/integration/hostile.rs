//! Hostile and broken inputs (issue 10): images that name host files, damaged images,
//! release files pointing outside their tree. Each is refused with one sentence naming
//! the input, before any request, and nothing is left behind.

use std::path::Path;

use crate::common::*;

/// Run qemu-img (the test needs it: it fails with the install hint when it is missing).
fn qemu_img(args: &[&str]) {
    let out = std::process::Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img is installed (apt-get install qemu-utils)");
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A secret host file an image might try to pull in.
fn secret(world: &World) -> std::path::PathBuf {
    let p = world.path("host-secret");
    let mut data = b"TOP-SECRET-HOST-FILE".to_vec();
    data.resize(64 * 1024, b'S');
    write_file(&p, &data);
    p
}

/// Refused before any request, with `needle` on stderr, nothing on stdout, one line,
/// no temporary raw file left in `tmp`.
async fn refused(world: &World, args: &[&str], needle: &str) {
    world.proxy.clear_requests();
    let tmp = world.path("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let out = world
        .ec2ami()
        .env("TMPDIR", &tmp)
        .env("EC2AMI_LOG", "warn")
        .args(args)
        .output()
        .await
        .unwrap();
    let run = Run::from(out);
    run.assert_failed_with(needle);
    assert!(run.stdout.is_empty(), "nothing on stdout: {}", run.stdout);
    assert_eq!(
        run.stderr.trim().lines().count(),
        1,
        "one line: {}",
        run.stderr
    );
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    let ops: Vec<String> = world
        .proxy
        .requests()
        .iter()
        .map(|r| r.operation.clone())
        .collect();
    assert!(ops.is_empty(), "{args:?} sent requests: {ops:?}");
    let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().collect();
    assert!(left.is_empty(), "{args:?} left temporary files: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_naming_host_files_are_refused() {
    let world = World::moto().await;
    let secret = secret(&world);

    // qcow2 with a backing file: the overlay's unwritten clusters read the host file.
    let base = world.path("base.raw");
    std::fs::copy(&secret, &base).unwrap();
    let overlay = world.path("overlay.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        s(&base),
        "-F",
        "raw",
        s(&overlay),
    ]);
    refused(&world, &["upload", s(&overlay)], "backing file").await;
    refused(&world, &["upload", s(&overlay)], s(&base)).await;

    // qcow2 with an external data file.
    let data = world.path("data.raw");
    let with_data = world.path("with-data.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        &format!("data_file={}", s(&data)),
        s(&with_data),
        "1M",
    ]);
    refused(&world, &["upload", s(&with_data)], "external data file").await;

    // A VMDK descriptor whose FLAT extent is a host file.
    let vmdk = world.path("evil.vmdk");
    write_file(
        &vmdk,
        format!(
            "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n\
             createType=\"monolithicFlat\"\n\nRW 128 FLAT \"{}\" 0\n",
            s(&secret)
        )
        .as_bytes(),
    );
    refused(&world, &["upload", s(&vmdk)], "FLAT extent file").await;

    // A sparse VMDK naming a parent (a delta link).
    let sparse = world.path("delta.vmdk");
    qemu_img(&["create", "-q", "-f", "vmdk", s(&sparse), "1M"]);
    let mut bytes = std::fs::read(&sparse).unwrap();
    let at = bytes
        .windows(9)
        .position(|w| w == b"parentCID")
        .expect("an embedded descriptor");
    // Written over the descriptor's NUL padding: nothing else in the file moves.
    let end = at + bytes[at..].iter().position(|&b| b == 0).unwrap();
    let hint = format!("parentFileNameHint=\"{}\"\n", s(&secret));
    bytes[end..end + hint.len()].copy_from_slice(hint.as_bytes());
    write_file(&sparse, &bytes);
    refused(&world, &["upload", s(&sparse)], "backing file").await;

    // publish refuses them too, before any request.
    let rel = world.path("release.toml");
    write_file(
        &rel,
        b"regions = [\"us-east-1\"]\n[[image]]\npath = \"overlay.qcow2\"\n\
          name = \"hostile-{date}\"\narch = \"x86_64\"\n",
    );
    refused(&world, &["publish", s(&rel)], "backing file").await;
    refused(&world, &["publish", "--plan", s(&rel)], "backing file").await;
    assert!(world.our_snapshots().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_backing_file_opts_in() {
    let world = World::moto().await;
    let base = world.path("base.raw");
    write_file(&base, &random_bytes(3, 1 << 20));
    let overlay = world.path("overlay.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        s(&base),
        "-F",
        "raw",
        s(&overlay),
    ]);
    let report = world.upload(&overlay, &["--allow-backing-file"]).await;
    let out = world.path("back.raw");
    world
        .download(report["snapshot_id"].as_str().unwrap(), &out)
        .await;
    // The snapshot holds the backing file's content: what the operator asked for.
    assert_eq!(nonzero_blocks(&out), nonzero_blocks(&base));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_images_are_refused_before_converting() {
    let world = World::moto().await;
    let raw = world.path("os.raw");
    write_file(&raw, &random_bytes(5, 4 << 20));
    for (fmt, ext) in [
        ("qcow2", "qcow2"),
        ("vmdk", "vmdk"),
        ("vhdx", "vhdx"),
        ("vpc", "vhd"),
    ] {
        let full = world.path(&format!("full.{ext}"));
        qemu_img(&["convert", "-f", "raw", "-O", fmt, s(&raw), s(&full)]);
        let bytes = std::fs::read(&full).unwrap();
        let cut = world.path(&format!("cut.{ext}"));
        write_file(&cut, &bytes[..bytes.len() / 2]);
        refused(&world, &["upload", s(&cut)], s(&cut)).await;
        // A whole image still goes through the same checks.
        let r = world.upload(&full, &[]).await;
        // VHD rounds the disk up to its CHS geometry.
        let size = r["size_bytes"].as_u64().unwrap();
        assert!(
            size == 4 << 20 || fmt == "vpc" && size > 4 << 20,
            "{fmt}: {size}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_image_paths_stay_in_the_release_tree() {
    let world = World::moto().await;
    let dir = world.path("rel");
    std::fs::create_dir_all(&dir).unwrap();
    let outside = world.path("outside.raw");
    write_file(&outside, &random_bytes(7, 1 << 20));
    let rel = dir.join("release.toml");
    let release = |path: &str, extra: &str| {
        write_file(
            &rel,
            format!(
                "regions = [\"us-east-1\"]\n{extra}\n[[image]]\npath = \"{path}\"\n\
                 name = \"tree-{{date}}\"\narch = \"x86_64\"\n"
            )
            .as_bytes(),
        );
    };

    release("../outside.raw", "");
    refused(&world, &["publish", s(&rel)], "allow_paths_outside = true").await;
    release(s(&outside), "");
    refused(
        &world,
        &["publish", "--plan", s(&rel)],
        "outside the release file's directory",
    )
    .await;
    std::os::unix::fs::symlink(&outside, dir.join("link.raw")).unwrap();
    release("link.raw", "");
    refused(&world, &["publish", s(&rel)], "outside.raw").await;
    release("/etc/passwd", "");
    refused(&world, &["publish", s(&rel)], "/etc/passwd").await;

    // Not a regular file, even inside the tree.
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    release("sub", "");
    refused(&world, &["publish", s(&rel)], "not a regular file").await;
    release("/dev/null", "allow_paths_outside = true");
    refused(&world, &["publish", s(&rel)], "not a regular file").await;

    // Opted in: the plan names the file it reads, fully resolved.
    release("link.raw", "allow_paths_outside = true");
    let plan = world.run(&["publish", "--plan", s(&rel)]).await;
    plan.assert_ok();
    let real = std::fs::canonicalize(&outside).unwrap();
    assert!(plan.stdout.contains(s(&real)), "{}", plan.stdout);
    assert!(mutating(&world).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_changed_during_upload_fails_and_its_snapshot_is_deleted() {
    let world = World::moto().await;
    let image = world.path("os.raw");
    write_file(&image, &random_bytes(11, 4 << 20));
    // The blocks wait at the proxy (a gate, opened once the file has been written to):
    // the file changes while the upload is under way, whatever the machine's speed.
    let gate = world.proxy.hold(Some("PutSnapshotBlock"), 0);
    let child = world
        .ec2ami()
        .args(["upload", s(&image)])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        gate.arrived(1, std::time::Duration::from_secs(60)).await,
        "the upload never started"
    );
    {
        use std::io::{Seek, Write};
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&image)
            .unwrap();
        f.seek(std::io::SeekFrom::Start(3 << 20)).unwrap();
        f.write_all(b"changed by someone else").unwrap();
    }
    gate.open();
    let run = Run::from(child.wait_with_output().await.unwrap());
    run.assert_failed_with("changed while it was being uploaded");
    assert!(run.stderr.contains(s(&image)), "{}", run.stderr);
    let ops: Vec<String> = world
        .proxy
        .requests()
        .iter()
        .map(|r| r.operation.clone())
        .collect();
    assert!(!ops.iter().any(|o| o == "CompleteSnapshot"), "{ops:?}");
    assert!(ops.iter().any(|o| o == "DeleteSnapshot"), "{ops:?}");
    assert!(world.our_snapshots().await.is_empty());
}

/// Refused before any request, `needle` on stderr (clap's usage errors take a few lines).
async fn refused_loosely(world: &World, args: &[&str], needle: &str) {
    world.proxy.clear_requests();
    let run = world.run(args).await;
    run.assert_failed_with(needle);
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    let ops: Vec<String> = world
        .proxy
        .requests()
        .iter()
        .map(|r| r.operation.clone())
        .collect();
    assert!(ops.is_empty(), "{args:?} sent requests: {ops:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deprecations_and_reserved_tags_are_refused_before_any_request() {
    let world = World::moto().await;
    let img = world.path("os.raw");
    write_file(&img, &random_bytes(1, 1 << 20));
    let snap = "snap-0123456789abcdef0";
    let register = |extra: &'static [&'static str]| {
        let mut v = vec!["register", snap, "--name", "hostile-1", "--arch", "x86_64"];
        v.extend_from_slice(extra);
        v
    };
    refused(
        &world,
        &register(&["--deprecate-at", "2020-01-01"]),
        "in the past",
    )
    .await;
    refused(
        &world,
        &register(&["--deprecate-in", "4000d"]),
        "10 years ahead",
    )
    .await;
    refused_loosely(
        &world,
        &register(&["--tag", "ec2ami:managed-by=me"]),
        "tag `ec2ami:managed-by` is reserved",
    )
    .await;
    refused_loosely(
        &world,
        &["upload", s(&img), "--tag", "ec2ami:image-size=1"],
        "tag `ec2ami:image-size` is reserved",
    )
    .await;
    let rel = world.path("release.toml");
    for (extra, needle) in [
        ("deprecate_at = \"2020-01-01\"", "in the past"),
        ("tags = { \"ec2ami:managed-by\" = \"x\" }", "is reserved"),
    ] {
        write_file(
            &rel,
            format!(
                "regions = [\"us-east-1\"]\n[[image]]\npath = \"os.raw\"\n\
                 name = \"dep-{{date}}\"\narch = \"x86_64\"\n{extra}\n"
            )
            .as_bytes(),
        );
        refused(&world, &["publish", s(&rel)], needle).await;
    }
    assert!(world.our_snapshots().await.is_empty());
}

/// True while process `pid` runs (a zombie counts as gone).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_conversion_stops_qemu_img_and_leaves_no_file() {
    use std::os::unix::fs::PermissionsExt;
    let world = World::moto().await;
    let qcow = world.path("os.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", s(&qcow), "64M"]);
    // A qemu-img whose conversion never ends (info and check are the real ones).
    let pidfile = world.path("convert.pid");
    let fake = world.path("qemu-img");
    write_file(
        &fake,
        format!(
            "#!/bin/sh\nif [ \"$1\" = convert ]; then echo $$ > {}; exec sleep 600; fi\n\
             exec qemu-img \"$@\"\n",
            s(&pidfile)
        )
        .as_bytes(),
    );
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let tmp = world.path("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let mut child = world
        .ec2ami()
        .env("EC2AMI_QEMU_IMG", &fake)
        .env("TMPDIR", &tmp)
        .args(["upload", s(&qcow)])
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let qemu_pid: i32 = loop {
        if let Some(pid) = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|t| t.trim().parse().ok())
        {
            break pid;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the conversion never started"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    // SAFETY: kill with the pid of our own child.
    unsafe {
        libc::kill(child.id().unwrap() as i32, libc::SIGTERM);
    }
    let status = tokio::time::timeout(std::time::Duration::from_secs(20), child.wait())
        .await
        .expect("ec2ami exits after SIGTERM")
        .unwrap();
    assert!(!status.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while alive(qemu_pid) {
        assert!(
            std::time::Instant::now() < deadline,
            "qemu-img ({qemu_pid}) outlived ec2ami"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
    assert!(world.proxy.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_import_reads_only_bounded_regular_files() {
    let world = World::offline().await;
    let fifo = world.path("fifo");
    let c = std::ffi::CString::new(s(&fifo)).unwrap();
    // SAFETY: mkfifo with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let big = world.path("big.txt");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(65 << 20).unwrap();
    let import = |file: &str| {
        vec![
            "history".to_string(),
            "import".into(),
            file.into(),
            "--ami".into(),
            "ami-0123456789abcdef0".into(),
            "--instance-type".into(),
            "c7i.large".into(),
        ]
    };
    for (file, needle) in [
        ("/dev/zero", "/dev/zero is not a regular file"),
        (s(&fifo), "is not a regular file"),
        (s(&big), "more than the 67108864 bytes"),
    ] {
        let args = import(file);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = tokio::time::timeout(std::time::Duration::from_secs(20), world.run(&args))
            .await
            .expect("refused at once, not read forever");
        run.assert_failed_with(needle);
    }
    assert!(world.proxy.requests().is_empty());
}
