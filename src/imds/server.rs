//! The local instance metadata service: what an EC2 image's first-boot code (FreeBSD's
//! ec2-scripts and configinit, cloud-init, the test image's few lines) asks
//! 169.254.169.254 for, answered as EC2 answers it, IMDSv2 token flow included.
//!
//! One [`Imds`] holds the instance's metadata, the session tokens it issued and a log of
//! the requests it answered. It serves connections on loopback TCP ([`ImdsServer::tcp`],
//! for tests and `ec2ami imds get`'s tests) or on a Unix socket ([`ImdsServer::unix`]),
//! to which `ec2ami boot` relays each connection QEMU's user networking forwards from
//! the guest's 169.254.169.254:80 (`guestfwd=...-cmd:`), so tokens live in one process
//! whatever the number of guest connections.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite, BufReader};
use tokio::task::{JoinHandle, JoinSet};

use super::http::{self, Request, Response};

/// Header of a token request: how long the token lives, in seconds.
pub const TTL_HEADER: &str = "X-aws-ec2-metadata-token-ttl-seconds";
/// Header carrying the session token on every request.
pub const TOKEN_HEADER: &str = "X-aws-ec2-metadata-token";
/// The longest token lifetime EC2 grants (6 hours).
pub const MAX_TOKEN_TTL: u64 = 21600;
/// A connection idle this long is closed.
const IDLE: Duration = Duration::from_secs(60);

/// What the instance is, as the metadata service tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceMetadata {
    /// `i-` and 17 hex digits.
    pub instance_id: String,
    /// The AMI it was launched from.
    pub ami_id: String,
    /// Instance type.
    pub instance_type: String,
    /// Region.
    pub region: String,
    /// Availability zone.
    pub availability_zone: String,
    /// The private IPv4 address (the guest's DHCP address).
    pub local_ipv4: Ipv4Addr,
    /// The network interface's MAC address.
    pub mac: String,
    /// The key pair's name and its public key (OpenSSH format), if launched with one.
    pub public_key: Option<(String, String)>,
    /// User data, if any.
    pub user_data: Option<Vec<u8>>,
    /// `x86_64` or `arm64` (the identity document's architecture).
    pub architecture: String,
    /// Answer requests without a token too (IMDSv1), as an AMI registered with
    /// `ImdsSupport` unset allows; EC2's IMDSv2-only images refuse them with 401.
    pub allow_v1: bool,
}

impl InstanceMetadata {
    /// Metadata for a local boot: a fresh instance id, the region's first zone, the
    /// address and MAC QEMU's user networking gives the guest.
    pub fn local(ami_id: &str, instance_type: &str, region: &str) -> InstanceMetadata {
        let hex = uuid::Uuid::new_v4().simple().to_string();
        InstanceMetadata {
            instance_id: format!("i-{}", &hex[..17]),
            ami_id: ami_id.to_string(),
            instance_type: instance_type.to_string(),
            region: region.to_string(),
            availability_zone: format!("{region}a"),
            local_ipv4: Ipv4Addr::new(169, 254, 169, 15),
            mac: "52:54:00:12:34:56".to_string(),
            public_key: None,
            user_data: None,
            architecture: "x86_64".to_string(),
            allow_v1: false,
        }
    }

    /// The private DNS name EC2 gives that address in this region.
    pub fn hostname(&self) -> String {
        let ip = self.local_ipv4.to_string().replace('.', "-");
        if self.region == "us-east-1" {
            format!("ip-{ip}.ec2.internal")
        } else {
            format!("ip-{ip}.{}.compute.internal", self.region)
        }
    }

    /// Every leaf of the tree, by path under `/latest/`.
    fn tree(&self) -> BTreeMap<String, Vec<u8>> {
        let mut t = BTreeMap::new();
        let mut put = |k: &str, v: String| {
            t.insert(k.to_string(), v.into_bytes());
        };
        let host = self.hostname();
        let md = "meta-data/";
        put(&format!("{md}ami-id"), self.ami_id.clone());
        put(&format!("{md}ami-launch-index"), "0".into());
        put(&format!("{md}block-device-mapping/ami"), "/dev/sda1".into());
        put(
            &format!("{md}block-device-mapping/root"),
            "/dev/sda1".into(),
        );
        put(&format!("{md}hostname"), host.clone());
        put(&format!("{md}instance-action"), "none".into());
        put(&format!("{md}instance-id"), self.instance_id.clone());
        put(&format!("{md}instance-life-cycle"), "on-demand".into());
        put(&format!("{md}instance-type"), self.instance_type.clone());
        put(&format!("{md}local-hostname"), host.clone());
        put(&format!("{md}local-ipv4"), self.local_ipv4.to_string());
        put(&format!("{md}mac"), self.mac.clone());
        let nic = format!("{md}network/interfaces/macs/{}/", self.mac);
        put(&format!("{nic}device-number"), "0".into());
        put(&format!("{nic}local-hostname"), host.clone());
        put(&format!("{nic}local-ipv4s"), self.local_ipv4.to_string());
        put(&format!("{nic}mac"), self.mac.clone());
        put(
            &format!("{nic}subnet-ipv4-cidr-block"),
            "169.254.169.0/24".into(),
        );
        put(
            &format!("{md}placement/availability-zone"),
            self.availability_zone.clone(),
        );
        put(&format!("{md}placement/region"), self.region.clone());
        if let Some((_, key)) = &self.public_key {
            put(
                &format!("{md}public-keys/0/openssh-key"),
                format!("{}\n", key.trim_end()),
            );
        }
        put(&format!("{md}reservation-id"), "r-0000000000000000".into());
        put(&format!("{md}security-groups"), "default".into());
        put(&format!("{md}services/domain"), "amazonaws.com".into());
        put(&format!("{md}services/partition"), "aws".into());
        let doc = serde_json::json!({
            "accountId": "000000000000",
            "architecture": self.architecture,
            "availabilityZone": self.availability_zone,
            "imageId": self.ami_id,
            "instanceId": self.instance_id,
            "instanceType": self.instance_type,
            "privateIp": self.local_ipv4.to_string(),
            "region": self.region,
            "version": "2017-09-30",
        });
        put(
            "dynamic/instance-identity/document",
            serde_json::to_string_pretty(&doc).expect("a JSON value serialises"),
        );
        if let Some(data) = &self.user_data {
            t.insert("user-data".to_string(), data.clone());
        }
        t
    }
}

/// One request the service answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImdsRequest {
    /// Method.
    pub method: String,
    /// Path.
    pub path: String,
    /// The status answered.
    pub status: u16,
    /// The request carried a token that was valid.
    pub with_token: bool,
}

impl std::fmt::Display for ImdsRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {}", self.method, self.path, self.status)
    }
}

/// The metadata service's state: the metadata, live tokens, the request log.
#[derive(Debug)]
pub struct Imds {
    meta: InstanceMetadata,
    tree: BTreeMap<String, Vec<u8>>,
    tokens: Mutex<HashMap<String, Instant>>,
    log: Mutex<Vec<ImdsRequest>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn not_found() -> Response {
    Response::text(404, "Not Found")
}

/// Whether a path segment names an API version (`latest`, `1.0`, `2009-04-04`...).
fn is_version(s: &str) -> bool {
    s == "latest"
        || s == "1.0"
        || (s.len() == 10
            && s.bytes().enumerate().all(|(i, b)| {
                if i == 4 || i == 7 {
                    b == b'-'
                } else {
                    b.is_ascii_digit()
                }
            }))
}

impl Imds {
    /// A service answering for `meta`.
    pub fn new(meta: InstanceMetadata) -> Arc<Imds> {
        Arc::new(Imds {
            tree: meta.tree(),
            meta,
            tokens: Mutex::new(HashMap::new()),
            log: Mutex::new(Vec::new()),
        })
    }

    /// The metadata served.
    pub fn metadata(&self) -> &InstanceMetadata {
        &self.meta
    }

    /// Every request answered so far, in order.
    pub fn requests(&self) -> Vec<ImdsRequest> {
        lock(&self.log).clone()
    }

    /// Answer one request now.
    pub fn answer(&self, req: &Request) -> Response {
        self.answer_at(req, Instant::now())
    }

    /// Answer one request as of `now` (tests move the clock).
    pub fn answer_at(&self, req: &Request, now: Instant) -> Response {
        let (resp, with_token) = self.route(req, now);
        lock(&self.log).push(ImdsRequest {
            method: req.method.clone(),
            path: req.path.clone(),
            status: resp.status,
            with_token,
        });
        resp
    }

    fn route(&self, req: &Request, now: Instant) -> (Response, bool) {
        // The query string is ignored, as EC2 does.
        let path = req.path.split('?').next().unwrap_or_default();
        if path == "/latest/api/token" {
            return match req.method.as_str() {
                "PUT" => (self.token(req, now), false),
                _ => (Response::text(405, "Method Not Allowed"), false),
            };
        }
        if req.method != "GET" && req.method != "HEAD" {
            return (Response::text(405, "Method Not Allowed"), false);
        }
        let with_token = req
            .header(TOKEN_HEADER)
            .is_some_and(|t| lock(&self.tokens).get(t).is_some_and(|exp| *exp > now));
        if !with_token && (req.header(TOKEN_HEADER).is_some() || !self.meta.allow_v1) {
            return (Response::text(401, "Unauthorized"), false);
        }
        let mut resp = self.get(path);
        if req.method == "HEAD" {
            resp.body.clear();
        }
        (resp, with_token)
    }

    /// PUT /latest/api/token.
    fn token(&self, req: &Request, now: Instant) -> Response {
        // EC2 refuses token requests that went through a proxy.
        if req.header("X-Forwarded-For").is_some() {
            return Response::text(403, "Forbidden");
        }
        let ttl = req
            .header(TTL_HEADER)
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|t| (1..=MAX_TOKEN_TTL).contains(t));
        let Some(ttl) = ttl else {
            return Response::text(400, "Bad Request");
        };
        let mut bytes = [0u8; 32];
        bytes[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        bytes[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        use base64::Engine;
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let mut tokens = lock(&self.tokens);
        tokens.retain(|_, exp| *exp > now);
        tokens.insert(token.clone(), now + Duration::from_secs(ttl));
        let mut resp = Response::text(200, token);
        resp.headers.push((TTL_HEADER.to_string(), ttl.to_string()));
        resp
    }

    /// GET of a metadata path.
    fn get(&self, path: &str) -> Response {
        let rest = path.trim_start_matches('/');
        if rest.is_empty() {
            return Response::text(200, "1.0\n2007-01-19\n2009-04-04\n2016-09-02\nlatest");
        }
        let (version, rest) = rest.split_once('/').unwrap_or((rest, ""));
        if !is_version(version) {
            return not_found();
        }
        if rest.is_empty() {
            let mut top = vec!["dynamic", "meta-data"];
            if self.meta.user_data.is_some() {
                top.push("user-data");
            }
            return Response::text(200, top.join("\n"));
        }
        let dir = rest.ends_with('/');
        let key = rest.trim_end_matches('/');
        if !dir && let Some(v) = self.tree.get(key) {
            let mut resp = Response::text(200, v.clone());
            if key == "dynamic/instance-identity/document" {
                resp.headers[0].1 = "application/json".into();
            }
            return resp;
        }
        if key == "meta-data/public-keys" {
            return match &self.meta.public_key {
                Some((name, _)) => Response::text(200, format!("0={name}")),
                None => not_found(),
            };
        }
        // A directory: its children, sub-directories with a trailing slash.
        let prefix = format!("{key}/");
        let mut children: Vec<String> = Vec::new();
        for k in self.tree.keys().filter(|k| k.starts_with(&prefix)) {
            let tail = &k[prefix.len()..];
            let child = match tail.split_once('/') {
                Some((d, _)) => format!("{d}/"),
                None => tail.to_string(),
            };
            if children.last() != Some(&child) {
                children.push(child);
            }
        }
        if key == "meta-data" && self.meta.public_key.is_none() {
            children.retain(|c| c != "public-keys/");
        }
        if children.is_empty() {
            return not_found();
        }
        Response::text(200, children.join("\n"))
    }

    /// Serve HTTP/1.1 requests on one connection until the peer closes it, asks to, or
    /// is idle for a minute.
    pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(self: Arc<Self>, stream: S) {
        let (r, mut w) = tokio::io::split(stream);
        let mut r = BufReader::new(r);
        loop {
            let req = match tokio::time::timeout(IDLE, http::read_request(&mut r)).await {
                Ok(Ok(Some(req))) => req,
                Ok(Ok(None)) | Err(_) => return,
                Ok(Err(e)) => {
                    tracing::debug!("metadata service: bad request: {e}");
                    let _ =
                        http::write_response(&mut w, &Response::text(400, "Bad Request"), false)
                            .await;
                    return;
                }
            };
            let resp = self.answer(&req);
            tracing::debug!(
                "metadata service: {} {} {}",
                req.method,
                req.path,
                resp.status
            );
            if http::write_response(&mut w, &resp, !req.close)
                .await
                .is_err()
                || req.close
            {
                return;
            }
        }
    }
}

/// A running metadata service; dropping it stops it (and every open connection).
#[derive(Debug)]
pub struct ImdsServer {
    imds: Arc<Imds>,
    addrs: Vec<SocketAddr>,
    socket: Option<PathBuf>,
    task: JoinHandle<()>,
}

impl Drop for ImdsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ImdsServer {
    /// Serve on these loopback TCP addresses (port 0: any free port). Only loopback
    /// addresses are accepted: the service is for this machine's tests and guests.
    pub async fn tcp(imds: Arc<Imds>, addrs: &[SocketAddr]) -> io::Result<ImdsServer> {
        if let Some(a) = addrs.iter().find(|a| !a.ip().is_loopback()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the metadata service listens on loopback only, not {a}"),
            ));
        }
        let mut listeners = Vec::new();
        for a in addrs {
            listeners.push(tokio::net::TcpListener::bind(a).await?);
        }
        let bound = listeners
            .iter()
            .map(|l| l.local_addr())
            .collect::<io::Result<Vec<_>>>()?;
        let served = imds.clone();
        let task = tokio::spawn(async move {
            // Dropping this set (the task aborted) aborts every accept loop, and each
            // loop's own set its connections.
            let mut accepts = JoinSet::new();
            for l in listeners {
                let tx = served.clone();
                accepts.spawn(async move {
                    let mut conns = JoinSet::new();
                    loop {
                        match l.accept().await {
                            Ok((s, _)) => {
                                let _ = s.set_nodelay(true);
                                conns.spawn(tx.clone().serve(s));
                            }
                            Err(e) => tracing::debug!("metadata service: accept: {e}"),
                        }
                        while conns.try_join_next().is_some() {}
                    }
                });
            }
            while accepts.join_next().await.is_some() {}
        });
        Ok(ImdsServer {
            imds,
            addrs: bound,
            socket: None,
            task,
        })
    }

    /// Serve on a Unix socket at `path` (created; removed when the server is dropped
    /// with its directory, or by the caller).
    pub fn unix(imds: Arc<Imds>, path: &Path) -> io::Result<ImdsServer> {
        let listener = tokio::net::UnixListener::bind(path)?;
        let served = imds.clone();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                match listener.accept().await {
                    Ok((s, _)) => {
                        conns.spawn(served.clone().serve(s));
                    }
                    Err(e) => tracing::debug!("metadata service: accept: {e}"),
                }
                while conns.try_join_next().is_some() {}
            }
        });
        Ok(ImdsServer {
            imds,
            addrs: Vec::new(),
            socket: Some(path.to_owned()),
            task,
        })
    }

    /// The TCP addresses served (with the ports chosen).
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The Unix socket served.
    pub fn socket(&self) -> Option<&Path> {
        self.socket.as_deref()
    }

    /// The service's state (metadata, request log).
    pub fn imds(&self) -> &Arc<Imds> {
        &self.imds
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn imds() -> Arc<Imds> {
        let mut m = InstanceMetadata::local("ami-0123456789abcdef0", "qemu-tcg", "eu-west-1");
        m.public_key = Some(("ec2ami-boot".into(), "ssh-ed25519 AAAAC3Nza test".into()));
        m.user_data = Some(b"#!/bin/sh\necho hi\n".to_vec());
        Imds::new(m)
    }

    fn req(method: &str, path: &str, headers: &[(&str, &str)]) -> Request {
        Request {
            method: method.into(),
            path: path.into(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Request::default()
        }
    }

    fn token(s: &Imds, ttl: &str, now: Instant) -> String {
        let r = s.answer_at(&req("PUT", "/latest/api/token", &[(TTL_HEADER, ttl)]), now);
        assert_eq!(r.status, 200);
        assert_eq!(r.header(TTL_HEADER), Some(ttl));
        String::from_utf8(r.body).unwrap()
    }

    fn get(s: &Imds, path: &str, tok: &str, now: Instant) -> (u16, String) {
        let r = s.answer_at(&req("GET", path, &[(TOKEN_HEADER, tok)]), now);
        (r.status, String::from_utf8(r.body).unwrap())
    }

    #[test]
    fn token_flow_and_expiry() {
        let s = imds();
        let t0 = Instant::now();
        // No token: IMDSv2 only.
        let r = s.answer_at(&req("GET", "/latest/meta-data/instance-id", &[]), t0);
        assert_eq!(r.status, 401);
        let tok = token(&s, "2", t0);
        let (st, id) = get(&s, "/latest/meta-data/instance-id", &tok, t0);
        assert_eq!(st, 200);
        assert!(id.starts_with("i-") && id.len() == 19, "{id}");
        // Still valid just before the TTL, not at it.
        let later = t0 + Duration::from_millis(1999);
        assert_eq!(get(&s, "/latest/meta-data/ami-id", &tok, later).0, 200);
        let expired = t0 + Duration::from_secs(2);
        assert_eq!(get(&s, "/latest/meta-data/ami-id", &tok, expired).0, 401);
        assert_eq!(get(&s, "/latest/meta-data/ami-id", "forged", t0).0, 401);
        let log = s.requests();
        assert_eq!(log.len(), 6);
        assert!(log[2].with_token && !log[4].with_token);
    }

    #[test]
    fn token_requests_are_checked_as_ec2_does() {
        let s = imds();
        let now = Instant::now();
        for ttl in ["0", "21601", "abc", ""] {
            let r = s.answer_at(&req("PUT", "/latest/api/token", &[(TTL_HEADER, ttl)]), now);
            assert_eq!(r.status, 400, "ttl {ttl:?}");
        }
        let r = s.answer_at(&req("PUT", "/latest/api/token", &[]), now);
        assert_eq!(r.status, 400);
        let r = s.answer_at(
            &req(
                "PUT",
                "/latest/api/token",
                &[(TTL_HEADER, "60"), ("X-Forwarded-For", "10.0.0.1")],
            ),
            now,
        );
        assert_eq!(r.status, 403);
        let r = s.answer_at(&req("GET", "/latest/api/token", &[]), now);
        assert_eq!(r.status, 405);
        assert_eq!(token(&s, "21600", now).len(), 43);
    }

    #[test]
    fn paths_and_listings_as_ec2_answers_them() {
        let s = imds();
        let now = Instant::now();
        let tok = token(&s, "60", now);
        let g = |p: &str| get(&s, p, &tok, now);
        assert_eq!(
            g("/latest/meta-data/ami-id"),
            (200, "ami-0123456789abcdef0".into())
        );
        assert_eq!(g("/latest/meta-data/instance-type").1, "qemu-tcg");
        assert_eq!(g("/latest/meta-data/local-ipv4").1, "169.254.169.15");
        assert_eq!(
            g("/latest/meta-data/hostname").1,
            "ip-169-254-169-15.eu-west-1.compute.internal"
        );
        assert_eq!(g("/latest/meta-data/placement/region").1, "eu-west-1");
        assert_eq!(
            g("/latest/meta-data/placement/availability-zone").1,
            "eu-west-1a"
        );
        assert_eq!(
            g("/latest/meta-data/placement/").1,
            "availability-zone\nregion"
        );
        assert_eq!(g("/latest/meta-data/public-keys/").1, "0=ec2ami-boot");
        assert_eq!(g("/latest/meta-data/public-keys/0/").1, "openssh-key");
        assert_eq!(
            g("/latest/meta-data/public-keys/0/openssh-key").1,
            "ssh-ed25519 AAAAC3Nza test\n"
        );
        // FreeBSD's ec2_fetchkey asks the 1.0 API.
        assert_eq!(g("/1.0/meta-data/public-keys/0/openssh-key").0, 200);
        assert_eq!(g("/latest/user-data"), (200, "#!/bin/sh\necho hi\n".into()));
        let listing = g("/latest/meta-data/").1;
        let entries: Vec<&str> = listing.lines().collect();
        for want in [
            "ami-id",
            "hostname",
            "instance-id",
            "instance-type",
            "local-ipv4",
            "placement/",
            "public-keys/",
            "network/",
            "services/",
        ] {
            assert!(entries.contains(&want), "{want} missing from {listing:?}");
        }
        assert!(!listing.ends_with('\n'));
        assert_eq!(g("/latest/meta-data").1, listing);
        assert_eq!(g("/latest/").1, "dynamic\nmeta-data\nuser-data");
        assert!(g("/").1.ends_with("latest"));
        let doc: serde_json::Value =
            serde_json::from_str(&g("/latest/dynamic/instance-identity/document").1).unwrap();
        assert_eq!(doc["region"], "eu-west-1");
        for missing in [
            "/latest/meta-data/iam/info",
            "/latest/meta-data/ami-id/",
            "/latest/meta-data/nothing",
            "/nonsense/meta-data/ami-id",
        ] {
            assert_eq!(g(missing).0, 404, "{missing}");
        }
    }

    #[test]
    fn without_key_or_user_data_those_paths_are_absent() {
        let s = Imds::new(InstanceMetadata::local("ami-1", "qemu-tcg", "us-east-1"));
        let now = Instant::now();
        let tok = token(&s, "60", now);
        assert_eq!(get(&s, "/latest/user-data", &tok, now).0, 404);
        assert_eq!(get(&s, "/latest/meta-data/public-keys/", &tok, now).0, 404);
        assert!(
            !get(&s, "/latest/meta-data/", &tok, now)
                .1
                .contains("public-keys")
        );
        assert_eq!(get(&s, "/latest/", &tok, now).1, "dynamic\nmeta-data");
        assert_eq!(
            get(&s, "/latest/meta-data/hostname", &tok, now).1,
            "ip-169-254-169-15.ec2.internal"
        );
    }

    #[test]
    fn imdsv1_only_when_allowed() {
        let mut m = InstanceMetadata::local("ami-1", "qemu-tcg", "us-east-1");
        m.allow_v1 = true;
        let s = Imds::new(m);
        let r = s.answer(&req("GET", "/latest/meta-data/ami-id", &[]));
        assert_eq!(r.status, 200);
        // A wrong token is still refused.
        let r = s.answer(&req(
            "GET",
            "/latest/meta-data/ami-id",
            &[(TOKEN_HEADER, "x")],
        ));
        assert_eq!(r.status, 401);
    }

    #[tokio::test]
    async fn serves_keep_alive_connections_on_loopback_only() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let bad = ImdsServer::tcp(imds(), &["0.0.0.0:0".parse().unwrap()]).await;
        assert!(bad.is_err());
        let server = ImdsServer::tcp(imds(), &["127.0.0.1:0".parse().unwrap()])
            .await
            .unwrap();
        let mut c = tokio::net::TcpStream::connect(server.addrs()[0])
            .await
            .unwrap();
        c.write_all(
            b"PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 5\r\n\r\n",
        )
        .await
        .unwrap();
        let mut r = BufReader::new(&mut c);
        let resp = http::read_response(&mut r).await.unwrap();
        assert_eq!(resp.status, 200);
        let tok = String::from_utf8(resp.body).unwrap();
        let get = format!(
            "GET /latest/meta-data/instance-type HTTP/1.1\r\n{TOKEN_HEADER}: {tok}\r\nConnection: close\r\n\r\n"
        );
        r.get_mut().write_all(get.as_bytes()).await.unwrap();
        let resp = http::read_response(&mut r).await.unwrap();
        assert_eq!(resp.body, b"qemu-tcg");
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "closed after Connection: close");
        assert_eq!(server.imds().requests().len(), 2);
    }
}
