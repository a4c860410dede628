//! The metadata service (the one `ec2ami boot` gives its guests) and `ec2ami imds get`
//! against it on loopback: token flow, expiry, 401s, 404s, user data, the key, a silent
//! endpoint, IPv4 failing and IPv6 answering.

use std::net::SocketAddr;
use std::process::Output;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ec2ami::imds::{Imds, ImdsServer, InstanceMetadata, TOKEN_HEADER, TTL_HEADER};
use ec2ami_testkit::{BootFixture, BootSchedule};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;

const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAwdvYTinTEbsEDtmMGu+smYD5/Pp/3Pst/gWPNBRTbA ec2ami-boot";
const USER_DATA: &[u8] = b"#!/bin/sh\nprintf 'no newline at the end'";

fn imds() -> Arc<Imds> {
    let mut m = InstanceMetadata::local("ami-0123456789abcdef0", "qemu-tcg", "eu-north-1");
    m.public_key = Some(("ec2ami-boot".into(), KEY.into()));
    m.user_data = Some(USER_DATA.to_vec());
    Imds::new(m)
}

async fn server_on(addr: &str) -> ImdsServer {
    ImdsServer::tcp(imds(), &[addr.parse().unwrap()])
        .await
        .unwrap()
}

async fn get(args: &[&str]) -> (Output, Duration) {
    let t0 = Instant::now();
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        Command::new(env!("CARGO_BIN_EXE_ec2ami"))
            .arg("imds")
            .arg("get")
            .args(args)
            .env("EC2AMI_LOG", "warn")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("imds get never hangs")
    .unwrap();
    (out, t0.elapsed())
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// One raw HTTP/1.1 exchange (Connection: close), for what the client never does.
async fn raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("Content-Length: 0\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.unwrap();
    let status = resp[9..12].parse().unwrap();
    let body = resp.split_once("\r\n\r\n").unwrap().1.to_string();
    (status, body)
}

#[tokio::test]
async fn imds_get_uses_the_token_flow_and_answers_values_keys_user_data_and_404s() {
    let server = server_on("127.0.0.1:0").await;
    let ep = server.addrs()[0].to_string();
    let id = server.imds().metadata().instance_id.clone();

    let (o, _) = get(&["instance-id", "--endpoint", &ep]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(String::from_utf8(o.stdout).unwrap(), id);
    // The token first, then the value with it.
    let log = server.imds().requests();
    assert_eq!(log[0].to_string(), "PUT /latest/api/token 200");
    assert_eq!(log[1].to_string(), "GET /latest/meta-data/instance-id 200");
    assert!(log[1].with_token);

    let (o, _) = get(&["placement/availability-zone", "--endpoint", &ep]).await;
    assert_eq!(o.stdout, b"eu-north-1a");
    let (o, _) = get(&["public-keys/0/openssh-key", "--endpoint", &ep]).await;
    assert_eq!(String::from_utf8(o.stdout).unwrap(), format!("{KEY}\n"));
    // User data comes out byte for byte (scripts read it as is).
    let (o, _) = get(&["user-data", "--endpoint", &ep]).await;
    assert_eq!(o.stdout, USER_DATA);
    let (o, _) = get(&["dynamic/instance-identity/document", "--endpoint", &ep]).await;
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["instanceId"], id.as_str());

    let (o, _) = get(&["iam/security-credentials/", "--endpoint", &ep]).await;
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("does not exist (404)"),
        "{}",
        stderr(&o)
    );
    assert!(o.stdout.is_empty());
}

#[tokio::test]
async fn the_service_requires_a_token_that_has_not_expired() {
    let server = server_on("127.0.0.1:0").await;
    let addr = server.addrs()[0];
    assert_eq!(
        raw(addr, "GET", "/latest/meta-data/ami-id", &[]).await.0,
        401
    );
    assert_eq!(
        raw(
            addr,
            "GET",
            "/latest/meta-data/ami-id",
            &[(TOKEN_HEADER, "made-up")]
        )
        .await
        .0,
        401
    );
    assert_eq!(raw(addr, "PUT", "/latest/api/token", &[]).await.0, 400);
    let (st, token) = raw(addr, "PUT", "/latest/api/token", &[(TTL_HEADER, "1")]).await;
    assert_eq!(st, 200);
    let (st, body) = raw(
        addr,
        "GET",
        "/latest/meta-data/ami-id",
        &[(TOKEN_HEADER, &token)],
    )
    .await;
    assert_eq!((st, body.as_str()), (200, "ami-0123456789abcdef0"));
    // Its TTL over, the token is dead. The service's own clock decides when (the unit
    // test of `Imds::answer_at` checks the exact second): asked until it says so, with
    // a hang guard, not after a guessed pause.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (st, _) = raw(
            addr,
            "GET",
            "/latest/meta-data/ami-id",
            &[(TOKEN_HEADER, &token)],
        )
        .await;
        if st == 401 {
            break;
        }
        assert_eq!(st, 200, "valid until it expires");
        assert!(
            Instant::now() < deadline,
            "the 1-second token never expired"
        );
        // sleep-ok: the pace of a poll for a condition (the expiry), not a guess.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Dead for good.
    let (st, _) = raw(
        addr,
        "GET",
        "/latest/meta-data/ami-id",
        &[(TOKEN_HEADER, &token)],
    )
    .await;
    assert_eq!(st, 401);
}

/// A front for the service that spoils the token of the first GET it forwards (as if
/// the token had expired between the client's two requests).
async fn spoiling_front(upstream: SocketAddr) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let spoiled = Arc::new(std::sync::atomic::AtomicBool::new(false));
        loop {
            let (mut down, _) = l.accept().await.unwrap();
            let spoiled = spoiled.clone();
            tokio::spawn(async move {
                let mut up = TcpStream::connect(upstream).await.unwrap();
                let (mut buf, mut back) = (vec![0u8; 65536], vec![0u8; 65536]);
                loop {
                    tokio::select! {
                        n = down.read(&mut buf) => {
                            let n = match n { Ok(0) | Err(_) => return, Ok(n) => n };
                            let mut text = String::from_utf8_lossy(&buf[..n]).into_owned();
                            if text.starts_with("GET ") && !spoiled.swap(true, std::sync::atomic::Ordering::SeqCst) {
                                text = text.replace(&format!("{TOKEN_HEADER}: "), &format!("{TOKEN_HEADER}: spoiled"));
                            }
                            if up.write_all(text.as_bytes()).await.is_err() { return; }
                        }
                        n = up.read(&mut back) => {
                            let n = match n { Ok(0) | Err(_) => return, Ok(n) => n };
                            if down.write_all(&back[..n]).await.is_err() { return; }
                        }
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_token_refused_mid_way_is_replaced_once() {
    let server = server_on("127.0.0.1:0").await;
    let front = spoiling_front(server.addrs()[0]).await;
    let (o, _) = get(&["instance-type", "--endpoint", &front.to_string()]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(o.stdout, b"qemu-tcg");
    let log: Vec<String> = server
        .imds()
        .requests()
        .iter()
        .map(|r| r.to_string())
        .collect();
    assert_eq!(
        log,
        [
            "PUT /latest/api/token 200",
            "GET /latest/meta-data/instance-type 401",
            "PUT /latest/api/token 200",
            "GET /latest/meta-data/instance-type 200",
        ]
    );
}

#[tokio::test]
async fn a_silent_endpoint_is_given_up_within_the_timeout() {
    // Accepts connections and never says a word.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ep = silent.local_addr().unwrap().to_string();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let held = tokio::spawn({
        let accepted = accepted.clone();
        async move {
            let mut keep = Vec::new();
            loop {
                keep.push(silent.accept().await.unwrap().0);
                accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    });
    let (o, took) = get(&["instance-id", "--endpoint", &ep, "--timeout", "1s"]).await;
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("no instance metadata service answered within 1s"),
        "{}",
        stderr(&o)
    );
    assert!(
        stderr(&o).contains("no answer within 100 ms"),
        "{}",
        stderr(&o)
    );
    eprintln!("silent endpoint: gave up after {took:?}");
    // It gave up by itself (`get` has the hang guard): asked, and at most its 10
    // attempts, not for ever. A count, not a duration (BENCHMARKS.md has the figures).
    let n = accepted.load(std::sync::atomic::Ordering::SeqCst);
    assert!((1..=10).contains(&n), "{n} connections");
    held.abort();

    // SYNs dropped (the address black-holed): the connect timeout.
    let hole = BootFixture::start(BootSchedule::never()).unwrap();
    let (o, took) = get(&[
        "instance-id",
        "--endpoint",
        &hole.addr().to_string(),
        "--timeout",
        "1s",
    ])
    .await;
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("no connection within 100 ms"),
        "{}",
        stderr(&o)
    );
    eprintln!("black-holed endpoint: gave up after {took:?}");
}

#[tokio::test]
async fn ipv6_is_asked_only_when_ipv4_cannot_be_connected_to() {
    let v6 = server_on("[::1]:0").await;
    let v6_ep = v6.addrs()[0].to_string();
    // IPv4 refused (nothing listens): IPv6 answers.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let refused = closed.local_addr().unwrap().to_string();
    drop(closed);
    let (o, _) = get(&["instance-id", "--endpoint", &refused, "--endpoint", &v6_ep]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        String::from_utf8(o.stdout).unwrap(),
        v6.imds().metadata().instance_id
    );
    // IPv4 black-holed: the 100 ms connect timeout, then IPv6.
    let hole = BootFixture::start(BootSchedule::never()).unwrap();
    let (o, _) = get(&[
        "ami-id",
        "--endpoint",
        &hole.addr().to_string(),
        "--endpoint",
        &v6_ep,
    ])
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(o.stdout, b"ami-0123456789abcdef0");
    let asked = v6.imds().requests().len();
    assert_eq!(asked, 4);
    // IPv4 connected but slow to answer: IPv6 is not asked (it would not be faster).
    let slow = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let slow_ep = slow.local_addr().unwrap().to_string();
    let held = tokio::spawn(async move {
        let mut keep = Vec::new();
        loop {
            keep.push(slow.accept().await.unwrap().0);
        }
    });
    let (o, _) = get(&[
        "ami-id",
        "--endpoint",
        &slow_ep,
        "--endpoint",
        &v6_ep,
        "--timeout",
        "1s",
    ])
    .await;
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert_eq!(v6.imds().requests().len(), asked, "IPv6 was asked");
    held.abort();
}

#[tokio::test]
async fn endpoints_are_loopback_only() {
    // Refused when the arguments are parsed, before any connect; 198.51.100.1 is a
    // documentation address (RFC 5737) that routes nowhere.
    for bad in [
        "169.254.169.254:80",
        "[fd00:ec2::254]:80",
        "198.51.100.1:80",
        "nonsense",
    ] {
        let (o, _) = get(&["instance-id", "--endpoint", bad]).await;
        assert_eq!(o.status.code(), Some(2));
        assert!(
            stderr(&o).contains("loopback addresses only")
                || stderr(&o).contains("is not ADDR:PORT"),
            "{bad}: {}",
            stderr(&o)
        );
    }
    // The service itself will not listen elsewhere.
    assert!(
        ImdsServer::tcp(imds(), &["0.0.0.0:0".parse().unwrap()])
            .await
            .is_err()
    );
}

/// A front for the service that forwards everything and keeps what the client sent.
async fn recording_front(upstream: SocketAddr) -> (SocketAddr, Arc<std::sync::Mutex<String>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(std::sync::Mutex::new(String::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let (mut down, _) = l.accept().await.unwrap();
            let log = log.clone();
            tokio::spawn(async move {
                let mut up = TcpStream::connect(upstream).await.unwrap();
                let (mut buf, mut back) = (vec![0u8; 65536], vec![0u8; 65536]);
                loop {
                    tokio::select! {
                        n = down.read(&mut buf) => {
                            let n = match n { Ok(0) | Err(_) => return, Ok(n) => n };
                            log.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
                            if up.write_all(&buf[..n]).await.is_err() { return; }
                        }
                        n = up.read(&mut back) => {
                            let n = match n { Ok(0) | Err(_) => return, Ok(n) => n };
                            if down.write_all(&back[..n]).await.is_err() { return; }
                        }
                    }
                }
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn token_ttl_is_the_lifetime_asked_for() {
    let server = server_on("127.0.0.1:0").await;
    let (front, seen) = recording_front(server.addrs()[0]).await;
    let ep = front.to_string();
    let (o, _) = get(&["instance-id", "--endpoint", &ep, "--token-ttl", "60"]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let sent = seen.lock().unwrap().to_ascii_lowercase();
    let put = sent
        .split("put /latest/api/token")
        .nth(1)
        .expect("a token request");
    let head = put.split("\r\n\r\n").next().unwrap();
    assert!(
        head.contains(&format!("{}: 60\r\n", TTL_HEADER.to_ascii_lowercase())),
        "{head}"
    );
    // The default is the longest lifetime the service allows.
    seen.lock().unwrap().clear();
    let (o, _) = get(&["instance-id", "--endpoint", &ep]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let sent = seen.lock().unwrap().to_ascii_lowercase();
    assert!(
        sent.contains(&format!("{}: 21600\r\n", TTL_HEADER.to_ascii_lowercase())),
        "{sent}"
    );
    // Out of the service's range: refused before anything is sent.
    seen.lock().unwrap().clear();
    let (o, _) = get(&["instance-id", "--endpoint", &ep, "--token-ttl", "21601"]).await;
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(seen.lock().unwrap().is_empty());
}
