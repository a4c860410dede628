//! Bad input: a clear message, a non-zero exit, and not a single request sent.

use crate::common::*;

async fn refused(world: &World, args: &[&str], needle: &str) {
    let run = world.run(args).await;
    run.assert_failed_with(needle);
    assert!(run.stdout.is_empty(), "nothing on stdout: {}", run.stdout);
    assert!(
        world.proxy.requests().is_empty(),
        "{args:?} sent requests: {:?}",
        world
            .proxy
            .requests()
            .iter()
            .map(|r| r.operation.clone())
            .collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_images_are_refused_before_any_request() {
    let world = World::moto().await;
    let p = |n: &str| world.path(n).to_str().unwrap().to_string();

    refused(&world, &["upload", &p("missing.raw")], "cannot open").await;
    refused(
        &world,
        &["upload", world.dir.path().to_str().unwrap()],
        "not a regular file",
    )
    .await;

    write_file(&world.path("empty.raw"), b"");
    refused(&world, &["upload", &p("empty.raw")], "is empty").await;

    let fifo = world.path("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    refused(&world, &["upload", &p("fifo")], "not a regular file").await;

    // Over 64 TiB (sparse; tmpfs allows such a size where ext4 does not).
    let huge = tempfile::NamedTempFile::new_in("/dev/shm").unwrap();
    huge.as_file().set_len((64u64 << 40) + 512).unwrap();
    refused(&world, &["upload", huge.path().to_str().unwrap()], "64 TiB").await;

    // qcow2 without qemu-img: refused with the command that converts it.
    let qcow = world.path("x.qcow2");
    let mut header = b"QFI\xfb\0\0\0\x03".to_vec();
    header.resize(4096, 0);
    write_file(&qcow, &header);
    let run = world
        .ec2ami()
        .env("EC2AMI_QEMU_IMG", "/nonexistent/qemu-img")
        .args(["upload", qcow.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    let run = Run::from(run);
    run.assert_failed_with("qemu-img convert -f qcow2 -O raw");
    assert!(world.proxy.requests().is_empty());

    // Unreadable: only meaningful when not root (root reads through mode 000).
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        use std::os::unix::fs::PermissionsExt;
        let f = world.path("secret.raw");
        write_file(&f, b"data");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o000)).unwrap();
        refused(&world, &["upload", &p("secret.raw")], "cannot open").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_options_are_refused_before_any_request() {
    let world = World::moto().await;
    let img = world.path("ok.raw");
    write_file(&img, b"hello");
    let img = img.to_str().unwrap();
    refused(&world, &["upload", img, "--tag", "novalue"], "KEY=VALUE").await;
    refused(&world, &["upload", img, "--workers", "0"], "worker count").await;
    refused(
        &world,
        &["upload", img, "--wait-timeout", "soon"],
        "not a duration",
    )
    .await;
    refused(
        &world,
        &["--output", "yaml", "upload", img],
        "invalid value",
    )
    .await;

    let existing = world.path("exists.raw");
    write_file(&existing, b"keep me");
    refused(
        &world,
        &[
            "download",
            "snap-0123456789abcdef0",
            existing.to_str().unwrap(),
        ],
        "already exists",
    )
    .await;
    assert_eq!(std::fs::read(&existing).unwrap(), b"keep me");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_snapshot_is_a_clear_error() {
    let world = World::moto().await;
    let out = world.path("none.raw");
    let run = world
        .run(&["download", "snap-0123456789abcdef0", out.to_str().unwrap()])
        .await;
    run.assert_failed_with("ResourceNotFoundException");
    assert!(!out.exists());
}
