//! A strict, fast, in-memory EBS direct API endpoint (plus the few EC2 query calls that
//! concern snapshots), on 127.0.0.1.
//!
//! It follows the EBS direct API reference (restJson1) and rejects what AWS rejects:
//! wrong data length, wrong or missing SHA-256 checksums, block indexes past the volume
//! end, a `ChangedBlocksCount` or aggregate checksum that does not match what was
//! written, bad page or block tokens. Every rejection is recorded and can be read back
//! with [`StrictEbs::rejections`].
//!
//! Requests must carry a SigV4 `Authorization` header scoped to the right service (`ebs`
//! for the EBS direct paths, `ec2` for `POST /`); the signature itself is not checked.
//!
//! For a snapshot started with a `ParentSnapshotId`, the parent's blocks are inherited;
//! `ChangedBlocksCount` and the aggregate checksum cover only the blocks written to the
//! child itself.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;

use super::http_util::{self, BoxError, ConnCtx};

/// Size of every EBS snapshot block, in bytes.
pub const BLOCK_SIZE: u32 = 524_288;
/// The fake AWS account that owns every snapshot.
pub const OWNER_ID: &str = "123456789012";
const GIB: u64 = 1 << 30;
const MAX_VOLUME_GIB: u64 = 65_536;
const MAX_BODY: usize = 8 * 1024 * 1024;
const EC2_XMLNS: &str = "http://ec2.amazonaws.com/doc/2016-11-15/";

/// Configuration of a [`StrictEbs`] endpoint.
#[derive(Clone, Debug)]
pub struct StrictEbsConfig {
    /// Keep only block checksums, not data (for throughput benchmarks).
    pub discard_data: bool,
    /// Maximum number of blocks per ListSnapshotBlocks/ListChangedBlocks page.
    pub page_size: usize,
}

impl Default for StrictEbsConfig {
    fn default() -> Self {
        StrictEbsConfig {
            discard_data: false,
            page_size: 10_000,
        }
    }
}

/// A snapshot as the strict endpoint holds it, copied out for assertions.
#[derive(Clone, Debug)]
pub struct SnapshotView {
    /// Snapshot id (`snap-` + 17 hex digits).
    pub id: String,
    /// `pending`, `completed` or `error`.
    pub status: String,
    /// Volume size in GiB.
    pub volume_size_gib: u64,
    /// Block size in bytes (always 524288).
    pub block_size: u32,
    /// Description given to StartSnapshot.
    pub description: Option<String>,
    /// Tags given to StartSnapshot, in order.
    pub tags: Vec<(String, String)>,
    /// Whether StartSnapshot asked for encryption.
    pub encrypted: bool,
    /// Block data by index (inherited parent blocks included); empty when `discard_data`.
    pub blocks: BTreeMap<u64, Bytes>,
    /// Base64 SHA-256 of every block by index (inherited parent blocks included).
    pub block_checksums: BTreeMap<u64, String>,
    /// Number of accepted PutSnapshotBlock requests (rewrites of a block included).
    pub put_requests: u64,
}

/// A running strict EBS endpoint; dropping it stops the server.
pub struct StrictEbs {
    port: u16,
    inner: Arc<Inner>,
    task: JoinHandle<()>,
}

struct Inner {
    config: StrictEbsConfig,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    snapshots: HashMap<String, Snap>,
    client_tokens: HashMap<String, (String, Value)>,
    rejections: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Status {
    Pending,
    Completed,
    Error,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Completed => "completed",
            Status::Error => "error",
        }
    }
}

#[derive(Clone)]
struct Block {
    data: Option<Bytes>,
    digest: [u8; 32],
    token: String,
}

struct Snap {
    id: String,
    status: Status,
    volume_size: u64,
    description: Option<String>,
    tags: Vec<(String, String)>,
    encrypted: bool,
    kms_key_arn: Option<String>,
    parent: Option<String>,
    start_time: f64,
    blocks: BTreeMap<u64, Block>,
    written: BTreeSet<u64>,
    put_requests: u64,
}

impl Snap {
    fn max_blocks(&self) -> u64 {
        self.volume_size * GIB / u64::from(BLOCK_SIZE)
    }
}

/// An API error answer (EBS restJson1 or EC2 query XML, by route).
#[derive(Debug)]
struct ApiError {
    status: u16,
    code: &'static str,
    reason: Option<&'static str>,
    message: String,
}

impl ApiError {
    fn validation(reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status: 400,
            code: "ValidationException",
            reason: Some(reason),
            message: message.into(),
        }
    }
    fn invalid(message: impl Into<String>) -> Self {
        Self::validation("INVALID_PARAMETER_VALUE", message)
    }
    fn snapshot_not_found(id: &str) -> Self {
        ApiError {
            status: 404,
            code: "ResourceNotFoundException",
            reason: Some("SNAPSHOT_NOT_FOUND"),
            message: format!("The snapshot '{id}' was not found"),
        }
    }
    fn ec2(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            reason: None,
            message: message.into(),
        }
    }
}

type ApiResult = Result<Response<Full<Bytes>>, ApiError>;

impl StrictEbs {
    /// Start on an ephemeral 127.0.0.1 port, on the current tokio runtime.
    pub async fn start(config: StrictEbsConfig) -> io::Result<StrictEbs> {
        Self::start_on(config, 0).await
    }

    /// Start on a fixed 127.0.0.1 port (0 = any), on the current tokio runtime.
    pub async fn start_on(config: StrictEbsConfig, port: u16) -> io::Result<StrictEbs> {
        let listener = http_util::bind_loopback(port).await?;
        let port = listener.local_addr()?.port();
        let inner = Arc::new(Inner {
            config,
            state: Mutex::new(State::default()),
        });
        let handler_inner = inner.clone();
        let handler = Arc::new(move |req: Request<Incoming>, _ctx: ConnCtx| {
            let inner = handler_inner.clone();
            async move { Ok::<_, BoxError>(inner.handle(req).await) }
        });
        let task = http_util::serve(listener, handler);
        Ok(StrictEbs { port, inner, task })
    }

    /// Base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The listening port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A copy of one snapshot's state, if it exists.
    pub fn snapshot(&self, id: &str) -> Option<SnapshotView> {
        let st = self.inner.lock();
        let s = st.snapshots.get(id)?;
        Some(SnapshotView {
            id: s.id.clone(),
            status: s.status.as_str().to_string(),
            volume_size_gib: s.volume_size,
            block_size: BLOCK_SIZE,
            description: s.description.clone(),
            tags: s.tags.clone(),
            encrypted: s.encrypted,
            blocks: s
                .blocks
                .iter()
                .filter_map(|(i, b)| b.data.clone().map(|d| (*i, d)))
                .collect(),
            block_checksums: s
                .blocks
                .iter()
                .map(|(i, b)| (*i, B64.encode(b.digest)))
                .collect(),
            put_requests: s.put_requests,
        })
    }

    /// Ids of every snapshot, sorted.
    pub fn snapshot_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.inner.lock().snapshots.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// One line per rejected request: operation and reason.
    pub fn rejections(&self) -> Vec<String> {
        self.inner.lock().rejections.clone()
    }
}

impl Drop for StrictEbs {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for StrictEbs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StrictEbs").field("port", &self.port).finish()
    }
}

fn header<'a>(req: &'a hyper::http::request::Parts, name: &str) -> Option<&'a str> {
    req.headers.get(name).and_then(|v| v.to_str().ok())
}

fn query_params(parts: &hyper::http::request::Parts) -> HashMap<String, String> {
    http_util::parse_form(parts.uri.query().unwrap_or(""))
        .into_iter()
        .collect()
}

fn new_snapshot_id() -> String {
    let n = fastrand::u128(..) % (1u128 << 68);
    format!("snap-{n:017x}")
}

fn new_block_token() -> String {
    let mut raw = [0u8; 48];
    for chunk in raw.chunks_mut(8) {
        chunk.copy_from_slice(&fastrand::u64(..).to_le_bytes());
    }
    B64.encode(raw)
}

fn ebs_json(status: u16, body: &Value) -> Response<Full<Bytes>> {
    http_util::full_response(
        status,
        &[
            ("content-type", "application/json".to_string()),
            ("x-amzn-requestid", http_util::request_id()),
        ],
        body.to_string(),
    )
}

fn ebs_error_response(e: &ApiError) -> Response<Full<Bytes>> {
    let mut body = json!({ "message": e.message, "Message": e.message });
    if let Some(r) = e.reason {
        body["Reason"] = json!(r);
        body["reason"] = json!(r);
    }
    http_util::full_response(
        e.status,
        &[
            ("content-type", "application/json".to_string()),
            ("x-amzn-errortype", e.code.to_string()),
            ("x-amzn-requestid", http_util::request_id()),
        ],
        body.to_string(),
    )
}

fn ec2_error_response(e: &ApiError) -> Response<Full<Bytes>> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{}</Code><Message>{}</Message></Error></Errors><RequestID>{}</RequestID></Response>",
        http_util::xml_escape(e.code),
        http_util::xml_escape(&e.message),
        http_util::request_id()
    );
    http_util::full_response(
        e.status,
        &[("content-type", "text/xml;charset=UTF-8".to_string())],
        body,
    )
}

fn ec2_xml(body: String) -> Response<Full<Bytes>> {
    http_util::full_response(
        200,
        &[("content-type", "text/xml;charset=UTF-8".to_string())],
        body,
    )
}

/// Encode a pagination token.
fn page_token(kind: &str, id: &str, next: u64) -> String {
    B64URL.encode(format!("{kind}:{id}:{next}"))
}

/// Decode a pagination token, checking it belongs to this listing.
fn parse_page_token(kind: &str, id: &str, token: &str) -> Result<u64, ApiError> {
    let bad = || ApiError::validation("INVALID_PAGE_TOKEN", "The pagination token is invalid");
    let raw = B64URL.decode(token.as_bytes()).map_err(|_| bad())?;
    let raw = String::from_utf8(raw).map_err(|_| bad())?;
    let mut it = raw.splitn(3, ':');
    match (it.next(), it.next(), it.next()) {
        (Some(k), Some(i), Some(n)) if k == kind && i == id => n.parse().map_err(|_| bad()),
        _ => Err(bad()),
    }
}

/// Parse `maxResults`, `pageToken` and `startingBlockIndex`: (start index, page limit).
fn page_params(
    q: &HashMap<String, String>,
    kind: &str,
    id: &str,
    page_size: usize,
) -> Result<(u64, usize), ApiError> {
    let max = match q.get("maxResults") {
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (100..=10_000).contains(&n) => n,
            _ => {
                return Err(ApiError::invalid(format!(
                    "maxResults must be between 100 and 10000, got '{v}'"
                )));
            }
        },
        None => 10_000,
    };
    let mut start = match q.get("startingBlockIndex") {
        Some(v) => v
            .parse::<u64>()
            .map_err(|_| ApiError::invalid(format!("invalid startingBlockIndex '{v}'")))?,
        None => 0,
    };
    if let Some(t) = q.get("pageToken") {
        start = parse_page_token(kind, id, t)?;
    }
    Ok((start, max.min(page_size.max(1))))
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let (parts, body) = req.into_parts();
        let path = parts.uri.path().to_string();
        let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let method = parts.method.clone();
        let (op, is_ec2) = match (&method, segs.as_slice()) {
            (&Method::POST, ["snapshots"]) => ("StartSnapshot", false),
            (&Method::POST, ["snapshots", "completion", _]) => ("CompleteSnapshot", false),
            (&Method::PUT, ["snapshots", _, "blocks", _]) => ("PutSnapshotBlock", false),
            (&Method::GET, ["snapshots", _, "blocks", _]) => ("GetSnapshotBlock", false),
            (&Method::GET, ["snapshots", _, "blocks"]) => ("ListSnapshotBlocks", false),
            (&Method::GET, ["snapshots", _, "changedblocks"]) => ("ListChangedBlocks", false),
            (&Method::POST | &Method::GET, [""]) => ("Ec2Query", true),
            _ => ("Unknown", false),
        };
        let body = match http_util::read_body(body, &parts.headers, MAX_BODY).await {
            Ok(b) => b,
            Err(e) => {
                let err = ApiError::invalid(format!("cannot read request body: {e}"));
                return self.reject(op, is_ec2, err);
            }
        };
        if op == "Unknown" {
            let err = ApiError {
                status: 404,
                code: "UnknownOperationException",
                reason: None,
                message: format!("No operation matches {method} {path}"),
            };
            return self.reject(op, false, err);
        }
        let expected_service = if is_ec2 { "ec2" } else { "ebs" };
        match http_util::credential_scope(&parts.headers) {
            Some((service, _)) if service == expected_service => {}
            Some((service, _)) => {
                let err = if is_ec2 {
                    ApiError::ec2(401, "AuthFailure", format!("Credential should be scoped to correct service: 'ec2', not '{service}'"))
                } else {
                    ApiError {
                        status: 403,
                        code: "InvalidSignatureException",
                        reason: None,
                        message: format!("Credential should be scoped to correct service: 'ebs', not '{service}'"),
                    }
                };
                return self.reject(op, is_ec2, err);
            }
            None => {
                let err = if is_ec2 {
                    ApiError::ec2(401, "AuthFailure", "AWS was not able to validate the provided access credentials (no SigV4 Authorization header)")
                } else {
                    ApiError {
                        status: 403,
                        code: "MissingAuthenticationTokenException",
                        reason: None,
                        message: "Missing Authentication Token (no SigV4 Authorization header)".into(),
                    }
                };
                return self.reject(op, is_ec2, err);
            }
        }
        if is_ec2 {
            let mut params = http_util::parse_form(parts.uri.query().unwrap_or(""));
            params.extend(http_util::parse_form(&String::from_utf8_lossy(&body)));
            let action = params
                .iter()
                .find(|(k, _)| k == "Action")
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            let result = match action.as_str() {
                "DescribeSnapshots" => self.describe_snapshots(&params),
                "DeleteSnapshot" => self.delete_snapshot(&params),
                "" => Err(ApiError::ec2(400, "MissingAction", "The request must contain the parameter Action")),
                other => Err(ApiError::ec2(
                    400,
                    "InvalidAction",
                    format!("The action {other} is not valid for this web service."),
                )),
            };
            let name = if action.is_empty() { "Ec2Query".to_string() } else { action };
            return match result {
                Ok(r) => r,
                Err(e) => self.reject(&name, true, e),
            };
        }
        let result = match op {
            "StartSnapshot" => self.start_snapshot(&body),
            "CompleteSnapshot" => self.complete_snapshot(&parts, segs[2]),
            "PutSnapshotBlock" => self.put_block(&parts, segs[1], segs[3], body),
            "GetSnapshotBlock" => self.get_block(&parts, segs[1], segs[3]),
            "ListSnapshotBlocks" => self.list_blocks(&parts, segs[1]),
            _ => self.list_changed_blocks(&parts, segs[1]),
        };
        match result {
            Ok(r) => r,
            Err(e) => self.reject(op, false, e),
        }
    }

    fn reject(&self, op: &str, is_ec2: bool, e: ApiError) -> Response<Full<Bytes>> {
        let line = match e.reason {
            Some(r) => format!("{op}: {} {} {r}: {}", e.status, e.code, e.message),
            None => format!("{op}: {} {}: {}", e.status, e.code, e.message),
        };
        tracing::debug!("strict EBS rejected: {line}");
        self.lock().rejections.push(line);
        if is_ec2 {
            ec2_error_response(&e)
        } else {
            ebs_error_response(&e)
        }
    }

    fn start_snapshot(&self, body: &Bytes) -> ApiResult {
        let req: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::invalid(format!("request body is not valid JSON: {e}")))?;
        let Value::Object(obj) = &req else {
            return Err(ApiError::invalid("request body is not a JSON object"));
        };
        let volume_size = match obj.get("VolumeSize") {
            None | Some(Value::Null) => return Err(ApiError::invalid("VolumeSize is required")),
            Some(v) => v.as_u64().ok_or_else(|| {
                ApiError::validation("INVALID_VOLUME_SIZE", format!("invalid VolumeSize {v}"))
            })?,
        };
        if !(1..=MAX_VOLUME_GIB).contains(&volume_size) {
            return Err(ApiError::validation(
                "INVALID_VOLUME_SIZE",
                format!("VolumeSize must be between 1 and {MAX_VOLUME_GIB} GiB, got {volume_size}"),
            ));
        }
        let opt_str = |name: &str| -> Result<Option<String>, ApiError> {
            match obj.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(v) => Err(ApiError::invalid(format!("{name} must be a string, got {v}"))),
            }
        };
        let description = opt_str("Description")?;
        if description.as_ref().is_some_and(|d| d.chars().count() > 255) {
            return Err(ApiError::invalid("Description is longer than 255 characters"));
        }
        let client_token = opt_str("ClientToken")?;
        if client_token.as_ref().is_some_and(|t| t.is_empty() || t.len() > 255) {
            return Err(ApiError::invalid("ClientToken must be 1 to 255 characters"));
        }
        let kms_key_arn = opt_str("KmsKeyArn")?;
        if kms_key_arn.as_ref().is_some_and(|k| k.is_empty() || k.len() > 2048) {
            return Err(ApiError::invalid("KmsKeyArn must be 1 to 2048 characters"));
        }
        let parent = opt_str("ParentSnapshotId")?;
        let encrypted = match obj.get("Encrypted") {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(v) => return Err(ApiError::invalid(format!("Encrypted must be a boolean, got {v}"))),
        };
        if parent.is_some() && encrypted.is_some() {
            return Err(ApiError::invalid(
                "You can't specify ParentSnapshotId and Encrypted in the same request",
            ));
        }
        match obj.get("Timeout") {
            None | Some(Value::Null) => {}
            Some(v) => match v.as_u64() {
                Some(t) if (10..=4320).contains(&t) => {}
                _ => return Err(ApiError::invalid(format!("Timeout must be 10 to 4320 minutes, got {v}"))),
            },
        }
        let mut tags = Vec::new();
        match obj.get("Tags") {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                if items.len() > 50 {
                    return Err(ApiError::validation("INVALID_TAG", "at most 50 tags are allowed"));
                }
                for t in items {
                    let key = t.get("Key").and_then(Value::as_str);
                    let value = t.get("Value").and_then(Value::as_str).unwrap_or("");
                    let Some(key) = key else {
                        return Err(ApiError::validation("INVALID_TAG", format!("tag without a Key: {t}")));
                    };
                    if key.is_empty() || key.chars().count() > 127 || key.starts_with("aws:") {
                        return Err(ApiError::validation("INVALID_TAG", format!("invalid tag key '{key}'")));
                    }
                    if value.chars().count() > 255 {
                        return Err(ApiError::validation("INVALID_TAG", format!("tag value for '{key}' is longer than 255 characters")));
                    }
                    tags.push((key.to_string(), value.to_string()));
                }
            }
            Some(v) => return Err(ApiError::validation("INVALID_TAG", format!("Tags must be a list, got {v}"))),
        }

        let mut st = self.lock();
        if let Some(token) = &client_token
            && let Some((id, previous)) = st.client_tokens.get(token)
        {
            if previous != &req {
                return Err(ApiError {
                    status: 409,
                    code: "ConflictException",
                    reason: None,
                    message: "Request uses the same client token as a previous, but non-identical request".into(),
                });
            }
            if let Some(s) = st.snapshots.get(id) {
                return Ok(ebs_json(201, &start_output(s)));
            }
        }
        let mut blocks = BTreeMap::new();
        let mut parent_encrypted = false;
        if let Some(pid) = &parent {
            let p = st.snapshots.get(pid).ok_or_else(|| ApiError::snapshot_not_found(pid))?;
            if p.status != Status::Completed {
                return Err(ApiError::invalid(format!("parent snapshot {pid} is not completed")));
            }
            if p.volume_size > volume_size {
                return Err(ApiError::validation(
                    "INVALID_VOLUME_SIZE",
                    format!("VolumeSize {volume_size} is smaller than the parent snapshot's {}", p.volume_size),
                ));
            }
            blocks = p.blocks.clone();
            parent_encrypted = p.encrypted;
        }
        let mut id = new_snapshot_id();
        while st.snapshots.contains_key(&id) {
            id = new_snapshot_id();
        }
        let snap = Snap {
            id: id.clone(),
            status: Status::Pending,
            volume_size,
            description,
            tags,
            encrypted: encrypted.unwrap_or(false) || parent_encrypted,
            kms_key_arn,
            parent,
            start_time: http_util::now_epoch(),
            blocks,
            written: BTreeSet::new(),
            put_requests: 0,
        };
        let out = start_output(&snap);
        st.snapshots.insert(id.clone(), snap);
        if let Some(token) = client_token {
            st.client_tokens.insert(token, (id, req.clone()));
        }
        Ok(ebs_json(201, &out))
    }

    fn put_block(
        &self,
        parts: &hyper::http::request::Parts,
        id: &str,
        index: &str,
        body: Bytes,
    ) -> ApiResult {
        let index = parse_index(index)?;
        // Cheap checks first, then hash without the lock.
        self.check_writable(id, index)?;
        let length = header(parts, "x-amz-data-length")
            .ok_or_else(|| ApiError::invalid("missing x-amz-Data-Length header"))?;
        let length: u64 = length
            .trim()
            .parse()
            .map_err(|_| ApiError::invalid(format!("invalid x-amz-Data-Length '{length}'")))?;
        if length != u64::from(BLOCK_SIZE) {
            return Err(ApiError::invalid(format!(
                "x-amz-Data-Length must be {BLOCK_SIZE}, got {length}"
            )));
        }
        if body.len() as u64 != length {
            return Err(ApiError::invalid(format!(
                "x-amz-Data-Length is {length} but the body has {} bytes",
                body.len()
            )));
        }
        if let Some(p) = header(parts, "x-amz-progress") {
            match p.trim().parse::<u64>() {
                Ok(n) if n <= 100 => {}
                _ => return Err(ApiError::invalid(format!("invalid x-amz-Progress '{p}'"))),
            }
        }
        match header(parts, "x-amz-checksum-algorithm") {
            Some("SHA256") => {}
            Some(a) => return Err(ApiError::invalid(format!("unsupported x-amz-Checksum-Algorithm '{a}'"))),
            None => return Err(ApiError::invalid("missing x-amz-Checksum-Algorithm header")),
        }
        let checksum = header(parts, "x-amz-checksum")
            .ok_or_else(|| ApiError::invalid("missing x-amz-Checksum header"))?
            .to_string();
        let digest: [u8; 32] = Sha256::digest(&body).into();
        let actual = B64.encode(digest);
        if checksum != actual {
            return Err(ApiError::invalid(format!(
                "The checksum '{checksum}' does not match the data of block {index} (expected '{actual}')"
            )));
        }
        let data = if self.config.discard_data {
            None
        } else {
            Some(body)
        };
        let token = new_block_token();
        {
            let mut st = self.lock();
            let s = st
                .snapshots
                .get_mut(id)
                .ok_or_else(|| ApiError::snapshot_not_found(id))?;
            if s.status != Status::Pending {
                return Err(ApiError::invalid(format!(
                    "snapshot {id} is {}, not pending",
                    s.status.as_str()
                )));
            }
            s.blocks.insert(index, Block { data, digest, token });
            s.written.insert(index);
            s.put_requests += 1;
        }
        Ok(http_util::full_response(
            201,
            &[
                ("content-type", "application/json".to_string()),
                ("x-amz-checksum", actual),
                ("x-amz-checksum-algorithm", "SHA256".to_string()),
                ("x-amzn-requestid", http_util::request_id()),
            ],
            "{}",
        ))
    }

    fn check_writable(&self, id: &str, index: u64) -> Result<(), ApiError> {
        let st = self.lock();
        let s = st
            .snapshots
            .get(id)
            .ok_or_else(|| ApiError::snapshot_not_found(id))?;
        if s.status != Status::Pending {
            return Err(ApiError::invalid(format!(
                "snapshot {id} is {}, not pending",
                s.status.as_str()
            )));
        }
        if index >= s.max_blocks() {
            return Err(ApiError::validation(
                "INVALID_BLOCK",
                format!(
                    "block index {index} is past the end of a {} GiB volume ({} blocks)",
                    s.volume_size,
                    s.max_blocks()
                ),
            ));
        }
        Ok(())
    }

    fn complete_snapshot(&self, parts: &hyper::http::request::Parts, id: &str) -> ApiResult {
        let count = header(parts, "x-amz-changedblockscount")
            .ok_or_else(|| ApiError::invalid("missing x-amz-ChangedBlocksCount header"))?;
        let count: u64 = count
            .trim()
            .parse()
            .map_err(|_| ApiError::invalid(format!("invalid x-amz-ChangedBlocksCount '{count}'")))?;
        let checksum = header(parts, "x-amz-checksum").map(str::to_string);
        if checksum.is_some() {
            match header(parts, "x-amz-checksum-algorithm") {
                Some("SHA256") => {}
                other => {
                    return Err(ApiError::invalid(format!(
                        "x-amz-Checksum-Algorithm must be SHA256 with a checksum, got {other:?}"
                    )));
                }
            }
            match header(parts, "x-amz-checksum-aggregation-method") {
                Some("LINEAR") => {}
                other => {
                    return Err(ApiError::invalid(format!(
                        "x-amz-Checksum-Aggregation-Method must be LINEAR with a checksum, got {other:?}"
                    )));
                }
            }
        }
        // Copy the digests out, hash without the lock.
        let digests: Vec<[u8; 32]> = {
            let mut st = self.lock();
            let s = st
                .snapshots
                .get_mut(id)
                .ok_or_else(|| ApiError::snapshot_not_found(id))?;
            let written = s.written.len() as u64;
            match s.status {
                Status::Completed if count == written => {
                    return Ok(ebs_json(202, &json!({ "Status": "completed" })));
                }
                Status::Completed => {
                    return Err(ApiError::invalid(format!(
                        "snapshot {id} is already completed with {written} changed blocks, not {count}"
                    )));
                }
                Status::Error => {
                    return Err(ApiError::invalid(format!("snapshot {id} is in the error state")));
                }
                Status::Pending => {}
            }
            if count != written {
                s.status = Status::Error;
                return Err(ApiError::invalid(format!(
                    "x-amz-ChangedBlocksCount is {count} but {written} distinct blocks were written; snapshot {id} is now in error"
                )));
            }
            if checksum.is_none() {
                s.status = Status::Completed;
                return Ok(ebs_json(202, &json!({ "Status": "completed" })));
            }
            s.written
                .iter()
                .filter_map(|i| s.blocks.get(i).map(|b| b.digest))
                .collect()
        };
        let mut h = Sha256::new();
        for d in &digests {
            h.update(d);
        }
        let expected = B64.encode(h.finalize());
        let mut st = self.lock();
        let s = st
            .snapshots
            .get_mut(id)
            .ok_or_else(|| ApiError::snapshot_not_found(id))?;
        if s.status != Status::Pending || s.written.len() != digests.len() {
            return Err(ApiError::invalid(format!(
                "snapshot {id} changed while it was being completed"
            )));
        }
        let given = checksum.unwrap_or_default();
        if given != expected {
            s.status = Status::Error;
            return Err(ApiError::invalid(format!(
                "The aggregate checksum '{given}' does not match the written blocks (expected '{expected}'); snapshot {id} is now in error"
            )));
        }
        s.status = Status::Completed;
        Ok(ebs_json(202, &json!({ "Status": "completed" })))
    }

    fn list_blocks(&self, parts: &hyper::http::request::Parts, id: &str) -> ApiResult {
        let q = query_params(parts);
        let st = self.lock();
        let s = st
            .snapshots
            .get(id)
            .ok_or_else(|| ApiError::snapshot_not_found(id))?;
        if s.status != Status::Completed {
            return Err(ApiError::invalid(format!(
                "snapshot {id} is {}, not completed",
                s.status.as_str()
            )));
        }
        let (start, limit) = page_params(&q, "list", id, self.config.page_size)?;
        let mut blocks = Vec::new();
        let mut next = None;
        for (i, b) in s.blocks.range(start..) {
            if blocks.len() == limit {
                next = Some(page_token("list", id, *i));
                break;
            }
            blocks.push(json!({ "BlockIndex": i, "BlockToken": b.token }));
        }
        let mut out = json!({
            "Blocks": blocks,
            "ExpiryTime": http_util::now_epoch() + 3600.0,
            "VolumeSize": s.volume_size,
            "BlockSize": BLOCK_SIZE,
        });
        if let Some(n) = next {
            out["NextToken"] = json!(n);
        }
        Ok(ebs_json(200, &out))
    }

    fn list_changed_blocks(&self, parts: &hyper::http::request::Parts, id: &str) -> ApiResult {
        let q = query_params(parts);
        let st = self.lock();
        let second = st
            .snapshots
            .get(id)
            .ok_or_else(|| ApiError::snapshot_not_found(id))?;
        if second.status != Status::Completed {
            return Err(ApiError::invalid(format!("snapshot {id} is not completed")));
        }
        let first = match q.get("firstSnapshotId") {
            None => None,
            Some(fid) => {
                let f = st
                    .snapshots
                    .get(fid)
                    .ok_or_else(|| ApiError::snapshot_not_found(fid))?;
                if f.status != Status::Completed {
                    return Err(ApiError::invalid(format!("snapshot {fid} is not completed")));
                }
                let mut cur = second.parent.clone();
                let mut related = false;
                while let Some(p) = cur {
                    if &p == fid {
                        related = true;
                        break;
                    }
                    cur = st.snapshots.get(&p).and_then(|s| s.parent.clone());
                }
                if !related {
                    return Err(ApiError::validation(
                        "UNRELATED_SNAPSHOTS",
                        format!("{fid} is not an ancestor of {id}"),
                    ));
                }
                Some(f)
            }
        };
        let (start, limit) = page_params(&q, "changed", id, self.config.page_size)?;
        let empty = BTreeMap::new();
        let fblocks = first.map_or(&empty, |f| &f.blocks);
        let indexes: BTreeSet<u64> = fblocks
            .range(start..)
            .map(|(i, _)| *i)
            .chain(second.blocks.range(start..).map(|(i, _)| *i))
            .collect();
        let mut out_blocks = Vec::new();
        let mut next = None;
        for i in indexes {
            let a = fblocks.get(&i).map(|b| b.token.as_str());
            let b = second.blocks.get(&i).map(|b| b.token.as_str());
            if a == b {
                continue;
            }
            if out_blocks.len() == limit {
                next = Some(page_token("changed", id, i));
                break;
            }
            let mut item = json!({ "BlockIndex": i });
            if let Some(a) = a {
                item["FirstBlockToken"] = json!(a);
            }
            if let Some(b) = b {
                item["SecondBlockToken"] = json!(b);
            }
            out_blocks.push(item);
        }
        let mut out = json!({
            "ChangedBlocks": out_blocks,
            "ExpiryTime": http_util::now_epoch() + 3600.0,
            "VolumeSize": second.volume_size,
            "BlockSize": BLOCK_SIZE,
        });
        if let Some(n) = next {
            out["NextToken"] = json!(n);
        }
        Ok(ebs_json(200, &out))
    }

    fn get_block(&self, parts: &hyper::http::request::Parts, id: &str, index: &str) -> ApiResult {
        let q = query_params(parts);
        let index = parse_index(index)?;
        let (data, digest) = {
            let st = self.lock();
            let s = st
                .snapshots
                .get(id)
                .ok_or_else(|| ApiError::snapshot_not_found(id))?;
            if s.status != Status::Completed {
                return Err(ApiError::invalid(format!("snapshot {id} is not completed")));
            }
            if index >= s.max_blocks() {
                return Err(ApiError::validation(
                    "INVALID_BLOCK",
                    format!("block index {index} is past the end of the volume"),
                ));
            }
            let token = q.get("blockToken").ok_or_else(|| {
                ApiError::validation("INVALID_BLOCK_TOKEN", "missing blockToken")
            })?;
            let b = s.blocks.get(&index).filter(|b| &b.token == token).ok_or_else(|| {
                ApiError::validation(
                    "INVALID_BLOCK_TOKEN",
                    format!("the block token does not match block {index} of {id}"),
                )
            })?;
            (b.data.clone(), b.digest)
        };
        let data = data.ok_or_else(|| {
            ApiError::invalid("block data was discarded (StrictEbsConfig::discard_data)")
        })?;
        Ok(http_util::full_response(
            200,
            &[
                ("content-type", "application/octet-stream".to_string()),
                ("x-amz-data-length", data.len().to_string()),
                ("x-amz-checksum", B64.encode(digest)),
                ("x-amz-checksum-algorithm", "SHA256".to_string()),
                ("x-amzn-requestid", http_util::request_id()),
            ],
            data,
        ))
    }

    fn describe_snapshots(&self, params: &[(String, String)]) -> ApiResult {
        let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        if get("DryRun") == Some("true") {
            return Err(ApiError::ec2(
                412,
                "DryRunOperation",
                "Request would have succeeded, but DryRun flag is set.",
            ));
        }
        let ids: Vec<&str> = numbered(params, "SnapshotId");
        let owners: Vec<&str> = numbered(params, "Owner");
        // Filters: Filter.N.Name / Filter.N.Value.M
        let mut filters: BTreeMap<u32, (String, Vec<String>)> = BTreeMap::new();
        for (k, v) in params {
            let Some(rest) = k.strip_prefix("Filter.") else {
                continue;
            };
            let mut it = rest.splitn(3, '.');
            let (Some(n), Some(field)) = (it.next(), it.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u32>() else { continue };
            let e = filters.entry(n).or_default();
            match field {
                "Name" => e.0 = v.clone(),
                "Value" => e.1.push(v.clone()),
                _ => {}
            }
        }
        for (name, _) in filters.values() {
            let known = matches!(
                name.as_str(),
                "snapshot-id" | "status" | "description" | "volume-size" | "owner-id" | "encrypted" | "tag-key" | "volume-id"
            ) || name.starts_with("tag:");
            if !known {
                return Err(ApiError::ec2(
                    400,
                    "InvalidParameterValue",
                    format!("The filter '{name}' is invalid"),
                ));
            }
        }
        let st = self.lock();
        let mut selected: Vec<&Snap> = Vec::new();
        if ids.is_empty() {
            let mut all: Vec<&Snap> = st.snapshots.values().collect();
            all.sort_by(|a, b| a.id.cmp(&b.id));
            selected = all;
        } else {
            for id in &ids {
                if !id.starts_with("snap-") {
                    return Err(ApiError::ec2(
                        400,
                        "InvalidSnapshotID.Malformed",
                        format!("Invalid id: \"{id}\" (expecting \"snap-...\")"),
                    ));
                }
                match st.snapshots.get(*id) {
                    Some(s) => selected.push(s),
                    None => {
                        return Err(ApiError::ec2(
                            400,
                            "InvalidSnapshot.NotFound",
                            format!("The snapshot '{id}' does not exist."),
                        ));
                    }
                }
            }
        }
        let matches = |s: &Snap| -> bool {
            if !owners.is_empty() && !owners.iter().any(|o| *o == "self" || *o == OWNER_ID) {
                return false;
            }
            filters.values().all(|(name, values)| {
                let one = |v: &String| -> bool {
                    match name.as_str() {
                        "snapshot-id" => v == &s.id,
                        "status" => v == s.status.as_str(),
                        "description" => s.description.as_deref() == Some(v.as_str()),
                        "volume-size" => v == &s.volume_size.to_string(),
                        "owner-id" => v == OWNER_ID,
                        "encrypted" => v == if s.encrypted { "true" } else { "false" },
                        "volume-id" => v == "vol-ffffffff",
                        "tag-key" => s.tags.iter().any(|(k, _)| k == v),
                        n => {
                            let key = n.trim_start_matches("tag:");
                            s.tags.iter().any(|(k, tv)| k == key && tv == v)
                        }
                    }
                };
                values.iter().any(one)
            })
        };
        let mut xml = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<DescribeSnapshotsResponse xmlns=\"{EC2_XMLNS}\"><requestId>{}</requestId><snapshotSet>",
            http_util::request_id()
        );
        for s in selected.into_iter().filter(|s| matches(s)) {
            let x = http_util::xml_escape;
            xml.push_str("<item>");
            xml.push_str(&format!("<snapshotId>{}</snapshotId>", x(&s.id)));
            xml.push_str("<volumeId>vol-ffffffff</volumeId>");
            xml.push_str(&format!("<status>{}</status>", s.status.as_str()));
            xml.push_str(&format!(
                "<startTime>{}</startTime>",
                http_util::iso8601(s.start_time)
            ));
            let progress = if s.status == Status::Completed { "100%" } else { "0%" };
            xml.push_str(&format!("<progress>{progress}</progress>"));
            xml.push_str(&format!("<ownerId>{OWNER_ID}</ownerId>"));
            xml.push_str(&format!("<volumeSize>{}</volumeSize>", s.volume_size));
            if let Some(d) = &s.description {
                xml.push_str(&format!("<description>{}</description>", x(d)));
            } else {
                xml.push_str("<description/>");
            }
            xml.push_str(&format!("<encrypted>{}</encrypted>", s.encrypted));
            if let Some(k) = &s.kms_key_arn {
                xml.push_str(&format!("<kmsKeyId>{}</kmsKeyId>", x(k)));
            }
            xml.push_str("<storageTier>standard</storageTier>");
            if !s.tags.is_empty() {
                xml.push_str("<tagSet>");
                for (k, v) in &s.tags {
                    xml.push_str(&format!(
                        "<item><key>{}</key><value>{}</value></item>",
                        x(k),
                        x(v)
                    ));
                }
                xml.push_str("</tagSet>");
            }
            xml.push_str("</item>");
        }
        xml.push_str("</snapshotSet></DescribeSnapshotsResponse>");
        Ok(ec2_xml(xml))
    }

    fn delete_snapshot(&self, params: &[(String, String)]) -> ApiResult {
        let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let id = get("SnapshotId").ok_or_else(|| {
            ApiError::ec2(400, "MissingParameter", "The request must contain the parameter SnapshotId")
        })?;
        if get("DryRun") == Some("true") {
            return Err(ApiError::ec2(
                412,
                "DryRunOperation",
                "Request would have succeeded, but DryRun flag is set.",
            ));
        }
        let mut st = self.lock();
        if st.snapshots.remove(id).is_none() {
            return Err(ApiError::ec2(
                400,
                "InvalidSnapshot.NotFound",
                format!("The snapshot '{id}' does not exist."),
            ));
        }
        st.client_tokens.retain(|_, (sid, _)| sid != id);
        Ok(ec2_xml(format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<DeleteSnapshotResponse xmlns=\"{EC2_XMLNS}\"><requestId>{}</requestId><return>true</return></DeleteSnapshotResponse>",
            http_util::request_id()
        )))
    }
}

/// Values of `Prefix.1`, `Prefix.2`, ... in numeric order.
fn numbered<'a>(params: &'a [(String, String)], prefix: &str) -> Vec<&'a str> {
    let mut out: Vec<(u32, &str)> = params
        .iter()
        .filter_map(|(k, v)| {
            let n = k.strip_prefix(prefix)?.strip_prefix('.')?.parse().ok()?;
            Some((n, v.as_str()))
        })
        .collect();
    out.sort_by_key(|(n, _)| *n);
    out.into_iter().map(|(_, v)| v).collect()
}

fn parse_index(s: &str) -> Result<u64, ApiError> {
    s.parse::<u64>()
        .map_err(|_| ApiError::validation("INVALID_BLOCK", format!("invalid block index '{s}'")))
}

fn start_output(s: &Snap) -> Value {
    let mut out = json!({
        "SnapshotId": s.id,
        "OwnerId": OWNER_ID,
        "Status": s.status.as_str(),
        "StartTime": s.start_time,
        "VolumeSize": s.volume_size,
        "BlockSize": BLOCK_SIZE,
        "Tags": s.tags.iter().map(|(k, v)| json!({"Key": k, "Value": v})).collect::<Vec<_>>(),
        "SseType": if s.encrypted { "sse-ebs" } else { "none" },
    });
    if let Some(d) = &s.description {
        out["Description"] = json!(d);
    }
    if let Some(k) = &s.kms_key_arn {
        out["KmsKeyArn"] = json!(k);
    }
    if let Some(p) = &s.parent {
        out["ParentSnapshotId"] = json!(p);
    }
    out
}
