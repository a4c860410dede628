//! `ec2ami-testkit moto` stops, and says so, when its moto child dies (its proxy would
//! otherwise answer 502 to every request for ever).

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The children of `pid` (every thread's), from /proc.
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let text = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        out.extend(
            text.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    out
}

#[test]
fn the_world_exits_when_moto_dies() {
    let mut world = Command::new(env!("CARGO_BIN_EXE_ec2ami-testkit"))
        .arg("moto")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut url = String::new();
    BufReader::new(world.stdout.take().unwrap())
        .read_line(&mut url)
        .unwrap();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let moto = children(world.id());
    assert_eq!(moto.len(), 1, "one moto child: {moto:?}");
    // SAFETY: plain syscall on the moto process this test's child started.
    assert_eq!(
        unsafe { libc::kill(moto[0] as libc::pid_t, libc::SIGKILL) },
        0
    );

    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = world.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            world.kill().unwrap();
            panic!("ec2ami-testkit moto still running 20 s after moto died");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    world
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(!status.success(), "{status}: {stderr}");
    assert!(
        stderr.contains(&format!("moto (pid {}) exited", moto[0])),
        "{stderr}"
    );
}
