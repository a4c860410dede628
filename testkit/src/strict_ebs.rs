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
        f.debug_struct("StrictEbs")
            .field("port", &self.port)
            .finish()
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
                    ApiError::ec2(
                        401,
                        "AuthFailure",
                        format!(
                            "Credential should be scoped to correct service: 'ec2', not '{service}'"
                        ),
                    )
                } else {
                    ApiError {
                        status: 403,
                        code: "InvalidSignatureException",
                        reason: None,
                        message: format!(
                            "Credential should be scoped to correct service: 'ebs', not '{service}'"
                        ),
                    }
                };
                return self.reject(op, is_ec2, err);
            }
            None => {
                let err = if is_ec2 {
                    ApiError::ec2(
                        401,
                        "AuthFailure",
                        "AWS was not able to validate the provided access credentials (no SigV4 Authorization header)",
                    )
                } else {
                    ApiError {
                        status: 403,
                        code: "MissingAuthenticationTokenException",
                        reason: None,
                        message: "Missing Authentication Token (no SigV4 Authorization header)"
                            .into(),
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
                "" => Err(ApiError::ec2(
                    400,
                    "MissingAction",
                    "The request must contain the parameter Action",
                )),
                other => Err(ApiError::ec2(
                    400,
                    "InvalidAction",
                    format!("The action {other} is not valid for this web service."),
                )),
            };
            let name = if action.is_empty() {
                "Ec2Query".to_string()
            } else {
                action
            };
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
                Some(v) => Err(ApiError::invalid(format!(
                    "{name} must be a string, got {v}"
                ))),
            }
        };
        let description = opt_str("Description")?;
        if description
            .as_ref()
            .is_some_and(|d| d.chars().count() > 255)
        {
            return Err(ApiError::invalid(
                "Description is longer than 255 characters",
            ));
        }
        let client_token = opt_str("ClientToken")?;
        if client_token
            .as_ref()
            .is_some_and(|t| t.is_empty() || t.len() > 255)
        {
            return Err(ApiError::invalid("ClientToken must be 1 to 255 characters"));
        }
        let kms_key_arn = opt_str("KmsKeyArn")?;
        if kms_key_arn
            .as_ref()
            .is_some_and(|k| k.is_empty() || k.len() > 2048)
        {
            return Err(ApiError::invalid("KmsKeyArn must be 1 to 2048 characters"));
        }
        let parent = opt_str("ParentSnapshotId")?;
        let encrypted = match obj.get("Encrypted") {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(v) => {
                return Err(ApiError::invalid(format!(
                    "Encrypted must be a boolean, got {v}"
                )));
            }
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
                _ => {
                    return Err(ApiError::invalid(format!(
                        "Timeout must be 10 to 4320 minutes, got {v}"
                    )));
                }
            },
        }
        let mut tags = Vec::new();
        match obj.get("Tags") {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                if items.len() > 50 {
                    return Err(ApiError::validation(
                        "INVALID_TAG",
                        "at most 50 tags are allowed",
                    ));
                }
                for t in items {
                    let key = t.get("Key").and_then(Value::as_str);
                    let value = t.get("Value").and_then(Value::as_str).unwrap_or("");
                    let Some(key) = key else {
                        return Err(ApiError::validation(
                            "INVALID_TAG",
                            format!("tag without a Key: {t}"),
                        ));
                    };
                    if key.is_empty() || key.chars().count() > 127 || key.starts_with("aws:") {
                        return Err(ApiError::validation(
                            "INVALID_TAG",
                            format!("invalid tag key '{key}'"),
                        ));
                    }
                    if value.chars().count() > 255 {
                        return Err(ApiError::validation(
                            "INVALID_TAG",
                            format!("tag value for '{key}' is longer than 255 characters"),
                        ));
                    }
                    tags.push((key.to_string(), value.to_string()));
                }
            }
            Some(v) => {
                return Err(ApiError::validation(
                    "INVALID_TAG",
                    format!("Tags must be a list, got {v}"),
                ));
            }
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
            let p = st
                .snapshots
                .get(pid)
                .ok_or_else(|| ApiError::snapshot_not_found(pid))?;
            if p.status != Status::Completed {
                return Err(ApiError::invalid(format!(
                    "parent snapshot {pid} is not completed"
                )));
            }
            if p.volume_size > volume_size {
                return Err(ApiError::validation(
                    "INVALID_VOLUME_SIZE",
                    format!(
                        "VolumeSize {volume_size} is smaller than the parent snapshot's {}",
                        p.volume_size
                    ),
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
            Some(a) => {
                return Err(ApiError::invalid(format!(
                    "unsupported x-amz-Checksum-Algorithm '{a}'"
                )));
            }
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
            s.blocks.insert(
                index,
                Block {
                    data,
                    digest,
                    token,
                },
            );
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
        let count: u64 = count.trim().parse().map_err(|_| {
            ApiError::invalid(format!("invalid x-amz-ChangedBlocksCount '{count}'"))
        })?;
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
                    return Err(ApiError::invalid(format!(
                        "snapshot {id} is in the error state"
                    )));
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
                    return Err(ApiError::invalid(format!(
                        "snapshot {fid} is not completed"
                    )));
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
            let token = q
                .get("blockToken")
                .ok_or_else(|| ApiError::validation("INVALID_BLOCK_TOKEN", "missing blockToken"))?;
            let b = s
                .blocks
                .get(&index)
                .filter(|b| &b.token == token)
                .ok_or_else(|| {
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
                "snapshot-id"
                    | "status"
                    | "description"
                    | "volume-size"
                    | "owner-id"
                    | "encrypted"
                    | "tag-key"
                    | "volume-id"
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
            let progress = if s.status == Status::Completed {
                "100%"
            } else {
                "0%"
            };
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
            ApiError::ec2(
                400,
                "MissingParameter",
                "The request must contain the parameter SnapshotId",
            )
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
        "SseType": match (s.encrypted, s.kms_key_arn.is_some()) {
            (true, true) => "sse-kms",
            (true, false) => "sse-ebs",
            (false, _) => "none",
        },
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http_util::test_client::{TestClient, auth, client, send};

    fn block(fill: u8) -> Bytes {
        Bytes::from(vec![fill; BLOCK_SIZE as usize])
    }

    fn sha_b64(data: &[u8]) -> String {
        B64.encode(Sha256::digest(data))
    }

    fn ebs_headers() -> Vec<(&'static str, String)> {
        vec![("authorization", auth("ebs"))]
    }

    async fn start(c: &TestClient, base: &str, body: Value) -> (u16, Value) {
        let (st, _, b) = send(
            c,
            "POST",
            &format!("{base}/snapshots"),
            &ebs_headers(),
            body.to_string(),
        )
        .await
        .unwrap();
        (st, serde_json::from_slice(&b).unwrap_or(Value::Null))
    }

    async fn put(
        c: &TestClient,
        base: &str,
        id: &str,
        idx: u64,
        data: Bytes,
        checksum: &str,
    ) -> (u16, HeaderMapLite, Value) {
        let mut h = ebs_headers();
        h.push(("x-amz-Data-Length", data.len().to_string()));
        h.push(("x-amz-Checksum", checksum.to_string()));
        h.push(("x-amz-Checksum-Algorithm", "SHA256".to_string()));
        h.push(("content-type", "application/octet-stream".to_string()));
        let (st, hd, b) = send(
            c,
            "PUT",
            &format!("{base}/snapshots/{id}/blocks/{idx}"),
            &h,
            data,
        )
        .await
        .unwrap();
        let hd = hd
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        (st, hd, serde_json::from_slice(&b).unwrap_or(Value::Null))
    }

    type HeaderMapLite = Vec<(String, String)>;

    async fn complete(
        c: &TestClient,
        base: &str,
        id: &str,
        count: u64,
        checksum: Option<&str>,
    ) -> (u16, Value) {
        let mut h = ebs_headers();
        h.push(("x-amz-ChangedBlocksCount", count.to_string()));
        if let Some(cs) = checksum {
            h.push(("x-amz-Checksum", cs.to_string()));
            h.push(("x-amz-Checksum-Algorithm", "SHA256".to_string()));
            h.push(("x-amz-Checksum-Aggregation-Method", "LINEAR".to_string()));
        }
        let (st, _, b) = send(
            c,
            "POST",
            &format!("{base}/snapshots/completion/{id}"),
            &h,
            "",
        )
        .await
        .unwrap();
        (st, serde_json::from_slice(&b).unwrap_or(Value::Null))
    }

    async fn get_json(c: &TestClient, url: &str) -> (u16, Value) {
        let (st, _, b) = send(c, "GET", url, &ebs_headers(), "").await.unwrap();
        (st, serde_json::from_slice(&b).unwrap_or(Value::Null))
    }

    fn aggregate(blocks: &[&Bytes]) -> String {
        let mut h = Sha256::new();
        for b in blocks {
            h.update(Sha256::digest(b));
        }
        B64.encode(h.finalize())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn full_upload_roundtrip_and_rejections() {
        let ebs = StrictEbs::start(StrictEbsConfig::default()).await.unwrap();
        let base = ebs.url();
        let c = client();

        let req = json!({"VolumeSize": 1, "Description": "a <test>", "ClientToken": "tok-1",
                         "Tags": [{"Key": "Name", "Value": "x&y"}]});
        let (st, out) = start(&c, &base, req.clone()).await;
        assert_eq!(st, 201, "{out}");
        let id = out["SnapshotId"].as_str().unwrap().to_string();
        assert!(id.starts_with("snap-") && id.len() == 22, "{id}");
        assert_eq!(out["BlockSize"], json!(524288));
        assert_eq!(out["Status"], json!("pending"));
        assert_eq!(out["OwnerId"], json!(OWNER_ID));
        // Idempotent retry, then a conflicting reuse of the token.
        let (st, again) = start(&c, &base, req).await;
        assert_eq!((st, again["SnapshotId"].as_str()), (201, Some(id.as_str())));
        let (st, _) = start(&c, &base, json!({"VolumeSize": 2, "ClientToken": "tok-1"})).await;
        assert_eq!(st, 409);
        assert_eq!(ebs.snapshot_ids(), vec![id.clone()]);
        // StartSnapshot validation.
        let (st, e) = start(&c, &base, json!({"VolumeSize": 0})).await;
        assert_eq!(
            (st, e["Reason"].as_str()),
            (400, Some("INVALID_VOLUME_SIZE"))
        );
        let (st, _) = start(&c, &base, json!({"VolumeSize": 65537})).await;
        assert_eq!(st, 400);
        let (st, _) = start(
            &c,
            &base,
            json!({"VolumeSize": 1, "Encrypted": true, "ParentSnapshotId": id}),
        )
        .await;
        assert_eq!(st, 400);

        let (b3, b1, b0) = (block(3), block(1), block(0));
        let (st, h, body) = put(&c, &base, &id, 3, b3.clone(), &sha_b64(&b3)).await;
        assert_eq!((st, body), (201, json!({})));
        assert!(
            h.iter()
                .any(|(k, v)| k == "x-amz-checksum" && *v == sha_b64(&b3))
        );
        // Wrong checksum: rejected.
        let (st, _, e) = put(&c, &base, &id, 1, b1.clone(), &sha_b64(&b0)).await;
        assert_eq!(st, 400);
        assert_eq!(e["Reason"], json!("INVALID_PARAMETER_VALUE"));
        assert!(
            ebs.rejections().last().unwrap().contains("checksum"),
            "{:?}",
            ebs.rejections()
        );
        // Rewrite of block 1 (first with junk, then real data).
        let (st, _, _) = put(&c, &base, &id, 1, b0.clone(), &sha_b64(&b0)).await;
        assert_eq!(st, 201);
        let (st, _, _) = put(&c, &base, &id, 1, b1.clone(), &sha_b64(&b1)).await;
        assert_eq!(st, 201);
        // Index past the end of a 1 GiB volume (2048 blocks).
        let (st, _, e) = put(&c, &base, &id, 2048, b0.clone(), &sha_b64(&b0)).await;
        assert_eq!((st, e["Reason"].as_str()), (400, Some("INVALID_BLOCK")));
        // Short block.
        let short = Bytes::from(vec![0u8; 4096]);
        let (st, _, _) = put(&c, &base, &id, 5, short.clone(), &sha_b64(&short)).await;
        assert_eq!(st, 400);
        // Unknown snapshot.
        let (st, _, e) = put(
            &c,
            &base,
            "snap-00000000000000000",
            0,
            b0.clone(),
            &sha_b64(&b0),
        )
        .await;
        assert_eq!(
            (st, e["Reason"].as_str()),
            (404, Some("SNAPSHOT_NOT_FOUND"))
        );
        // Missing Authorization.
        let (st, h, _) = send(&c, "GET", &format!("{base}/snapshots/{id}/blocks"), &[], "")
            .await
            .unwrap();
        assert_eq!(st, 403);
        assert_eq!(h["x-amzn-errortype"], "MissingAuthenticationTokenException");

        // Listing a pending snapshot is refused.
        let (st, _) = get_json(&c, &format!("{base}/snapshots/{id}/blocks")).await;
        assert_eq!(st, 400);

        // Complete with the aggregate checksum over blocks 1 and 3 in index order.
        let (st, out) = complete(&c, &base, &id, 2, Some(&aggregate(&[&b1, &b3]))).await;
        assert_eq!((st, out), (202, json!({"Status": "completed"})));
        let view = ebs.snapshot(&id).unwrap();
        assert_eq!(view.status, "completed");
        assert_eq!(view.put_requests, 3);
        assert_eq!(view.description.as_deref(), Some("a <test>"));
        assert_eq!(view.tags, vec![("Name".to_string(), "x&y".to_string())]);
        assert_eq!(view.blocks.keys().copied().collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(view.blocks[&1], b1);
        assert_eq!(view.block_checksums[&3], sha_b64(&b3));
        // Writing after completion is refused.
        let (st, _, _) = put(&c, &base, &id, 4, b0.clone(), &sha_b64(&b0)).await;
        assert_eq!(st, 400);

        let (st, list) = get_json(&c, &format!("{base}/snapshots/{id}/blocks")).await;
        assert_eq!(st, 200);
        let blocks = list["Blocks"].as_array().unwrap();
        assert_eq!(
            blocks
                .iter()
                .map(|b| b["BlockIndex"].as_u64().unwrap())
                .collect::<Vec<_>>(),
            vec![1, 3]
        );
        assert!(list.get("NextToken").is_none());
        assert_eq!(list["BlockSize"], json!(524288));
        assert_eq!(list["VolumeSize"], json!(1));
        let token = blocks[1]["BlockToken"].as_str().unwrap();
        let enc = |t: &str| {
            t.replace('+', "%2B")
                .replace('/', "%2F")
                .replace('=', "%3D")
        };
        let (st, h, data) = send(
            &c,
            "GET",
            &format!("{base}/snapshots/{id}/blocks/3?blockToken={}", enc(token)),
            &ebs_headers(),
            "",
        )
        .await
        .unwrap();
        assert_eq!(st, 200);
        assert_eq!(data, b3);
        assert_eq!(h["x-amz-data-length"], "524288");
        assert_eq!(h["x-amz-checksum"], sha_b64(&b3).as_str());
        assert_eq!(h["x-amz-checksum-algorithm"], "SHA256");
        // A token of another block does not open block 1.
        let (st, body) = get_json(
            &c,
            &format!("{base}/snapshots/{id}/blocks/1?blockToken={}", enc(token)),
        )
        .await;
        assert_eq!(
            (st, body["Reason"].as_str()),
            (400, Some("INVALID_BLOCK_TOKEN"))
        );
        assert!(
            ebs.rejections()
                .iter()
                .any(|r| r.starts_with("GetSnapshotBlock"))
        );
        assert!(
            ebs.rejections()
                .iter()
                .all(|r| !r.contains("StartSnapshot: 201"))
        );
    }

    #[tokio::test]
    async fn complete_rejects_wrong_aggregate_and_count() {
        let ebs = StrictEbs::start(StrictEbsConfig::default()).await.unwrap();
        let base = ebs.url();
        let c = client();
        let mut ids = Vec::new();
        for _ in 0..3 {
            let (_, out) = start(&c, &base, json!({"VolumeSize": 1})).await;
            ids.push(out["SnapshotId"].as_str().unwrap().to_string());
        }
        let (a, b) = (block(7), block(9));
        for id in &ids {
            put(&c, &base, id, 0, a.clone(), &sha_b64(&a)).await;
            put(&c, &base, id, 9, b.clone(), &sha_b64(&b)).await;
        }
        // Wrong order of digests -> mismatch -> error state.
        let (st, e) = complete(&c, &base, &ids[0], 2, Some(&aggregate(&[&b, &a]))).await;
        assert_eq!(
            (st, e["Reason"].as_str()),
            (400, Some("INVALID_PARAMETER_VALUE"))
        );
        assert_eq!(ebs.snapshot(&ids[0]).unwrap().status, "error");
        assert!(
            ebs.rejections()
                .iter()
                .any(|r| r.starts_with("CompleteSnapshot") && r.contains("aggregate"))
        );
        // Wrong count.
        let (st, _) = complete(&c, &base, &ids[1], 3, None).await;
        assert_eq!(st, 400);
        assert_eq!(ebs.snapshot(&ids[1]).unwrap().status, "error");
        // Right count and checksum; a retry of the completion is idempotent.
        let (st, _) = complete(&c, &base, &ids[2], 2, Some(&aggregate(&[&a, &b]))).await;
        assert_eq!(st, 202);
        let (st, _) = complete(&c, &base, &ids[2], 2, Some(&aggregate(&[&a, &b]))).await;
        assert_eq!(st, 202);
        // Unknown snapshot.
        let (st, e) = complete(&c, &base, "snap-0123456789abcdef0", 0, None).await;
        assert_eq!(
            (st, e["Reason"].as_str()),
            (404, Some("SNAPSHOT_NOT_FOUND"))
        );
    }

    #[tokio::test]
    async fn list_pagination_and_tokens() {
        let ebs = StrictEbs::start(StrictEbsConfig {
            discard_data: true,
            page_size: 3,
        })
        .await
        .unwrap();
        let base = ebs.url();
        let c = client();
        let (_, out) = start(&c, &base, json!({"VolumeSize": 1})).await;
        let id = out["SnapshotId"].as_str().unwrap().to_string();
        let data = block(0x5a);
        let cs = sha_b64(&data);
        let indexes = [100u64, 2, 7, 55, 0, 1000, 31];
        for i in indexes {
            let (st, _, _) = put(&c, &base, &id, i, data.clone(), &cs).await;
            assert_eq!(st, 201);
        }
        let (st, _) = complete(&c, &base, &id, indexes.len() as u64, None).await;
        assert_eq!(st, 202);
        let view = ebs.snapshot(&id).unwrap();
        assert!(view.blocks.is_empty(), "discard_data keeps no data");
        assert_eq!(view.block_checksums.len(), 7);

        let mut seen = Vec::new();
        let mut url = format!("{base}/snapshots/{id}/blocks");
        let mut pages = 0;
        loop {
            let (st, page) = get_json(&c, &url).await;
            assert_eq!(st, 200, "{page}");
            pages += 1;
            let blocks = page["Blocks"].as_array().unwrap();
            assert!(blocks.len() <= 3);
            seen.extend(blocks.iter().map(|b| b["BlockIndex"].as_u64().unwrap()));
            match page.get("NextToken").and_then(Value::as_str) {
                Some(t) => url = format!("{base}/snapshots/{id}/blocks?pageToken={t}"),
                None => break,
            }
        }
        assert_eq!(pages, 3);
        assert_eq!(seen, vec![0, 2, 7, 31, 55, 100, 1000]);
        // startingBlockIndex.
        let (_, page) = get_json(
            &c,
            &format!("{base}/snapshots/{id}/blocks?startingBlockIndex=50"),
        )
        .await;
        let got: Vec<u64> = page["Blocks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["BlockIndex"].as_u64().unwrap())
            .collect();
        assert_eq!(got, vec![55, 100, 1000]);
        // Bad maxResults and page tokens.
        let (st, e) = get_json(&c, &format!("{base}/snapshots/{id}/blocks?maxResults=5")).await;
        assert_eq!(
            (st, e["Reason"].as_str()),
            (400, Some("INVALID_PARAMETER_VALUE"))
        );
        let (st, e) = get_json(
            &c,
            &format!("{base}/snapshots/{id}/blocks?pageToken=garbage"),
        )
        .await;
        assert_eq!(
            (st, e["Reason"].as_str()),
            (400, Some("INVALID_PAGE_TOKEN"))
        );
        let other = page_token("list", "snap-other", 3);
        let (st, _) = get_json(
            &c,
            &format!("{base}/snapshots/{id}/blocks?pageToken={other}"),
        )
        .await;
        assert_eq!(st, 400);
        // Data was discarded: reading a block is refused with a clear reason.
        let token = page["Blocks"][0]["BlockToken"]
            .as_str()
            .unwrap()
            .replace('+', "%2B")
            .replace('/', "%2F")
            .replace('=', "%3D");
        let (st, _) = get_json(
            &c,
            &format!("{base}/snapshots/{id}/blocks/55?blockToken={token}"),
        )
        .await;
        assert_eq!(st, 400);
        assert!(ebs.rejections().last().unwrap().contains("discard"));
    }

    #[tokio::test]
    async fn parent_snapshots_and_changed_blocks() {
        let ebs = StrictEbs::start(StrictEbsConfig::default()).await.unwrap();
        let base = ebs.url();
        let c = client();
        let (_, out) = start(&c, &base, json!({"VolumeSize": 1})).await;
        let parent = out["SnapshotId"].as_str().unwrap().to_string();
        let (a, b) = (block(1), block(2));
        put(&c, &base, &parent, 0, a.clone(), &sha_b64(&a)).await;
        put(&c, &base, &parent, 1, a.clone(), &sha_b64(&a)).await;
        // Child of a pending parent is refused.
        let (st, _) = start(
            &c,
            &base,
            json!({"VolumeSize": 1, "ParentSnapshotId": parent}),
        )
        .await;
        assert_eq!(st, 400);
        complete(&c, &base, &parent, 2, None).await;
        let (st, out) = start(
            &c,
            &base,
            json!({"VolumeSize": 2, "ParentSnapshotId": parent}),
        )
        .await;
        assert_eq!(st, 201, "{out}");
        assert_eq!(out["ParentSnapshotId"].as_str(), Some(parent.as_str()));
        let child = out["SnapshotId"].as_str().unwrap().to_string();
        put(&c, &base, &child, 1, b.clone(), &sha_b64(&b)).await;
        put(&c, &base, &child, 3000, b.clone(), &sha_b64(&b)).await;
        // Only blocks written to the child count.
        let (st, _) = complete(&c, &base, &child, 2, Some(&aggregate(&[&b, &b]))).await;
        assert_eq!(st, 202);
        assert_eq!(ebs.snapshot(&child).unwrap().blocks.len(), 3);
        let (st, out) = get_json(
            &c,
            &format!("{base}/snapshots/{child}/changedblocks?firstSnapshotId={parent}"),
        )
        .await;
        assert_eq!(st, 200, "{out}");
        let changed: Vec<u64> = out["ChangedBlocks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["BlockIndex"].as_u64().unwrap())
            .collect();
        assert_eq!(changed, vec![1, 3000]);
        assert!(out["ChangedBlocks"][1].get("FirstBlockToken").is_none());
        let (st, e) = get_json(
            &c,
            &format!("{base}/snapshots/{parent}/changedblocks?firstSnapshotId={child}"),
        )
        .await;
        assert_eq!(
            (st, e["Reason"].as_str()),
            (400, Some("UNRELATED_SNAPSHOTS"))
        );
    }

    async fn ec2(c: &TestClient, base: &str, form: &str) -> (u16, String) {
        let h = vec![
            ("authorization", auth("ec2")),
            (
                "content-type",
                "application/x-www-form-urlencoded".to_string(),
            ),
        ];
        let (st, _, b) = send(c, "POST", &format!("{base}/"), &h, form.to_string())
            .await
            .unwrap();
        (st, String::from_utf8_lossy(&b).into_owned())
    }

    #[tokio::test]
    async fn ec2_describe_and_delete_snapshots() {
        let ebs = StrictEbs::start(StrictEbsConfig::default()).await.unwrap();
        let base = ebs.url();
        let c = client();
        let (_, out) = start(&c, &base, json!({"VolumeSize": 8, "Description": "d<&>", "Tags": [{"Key": "k", "Value": "v\"1"}]})).await;
        let id = out["SnapshotId"].as_str().unwrap().to_string();
        let (_, out) = start(&c, &base, json!({"VolumeSize": 2})).await;
        let id2 = out["SnapshotId"].as_str().unwrap().to_string();

        let (st, xml) = ec2(
            &c,
            &base,
            &format!("Action=DescribeSnapshots&Version=2016-11-15&SnapshotId.1={id}"),
        )
        .await;
        assert_eq!(st, 200, "{xml}");
        assert!(xml.contains(
            "<DescribeSnapshotsResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\">"
        ));
        assert!(xml.contains(&format!("<snapshotId>{id}</snapshotId>")));
        assert!(!xml.contains(&id2));
        assert!(xml.contains("<status>pending</status>"));
        assert!(xml.contains("<volumeSize>8</volumeSize>"));
        assert!(xml.contains("<description>d&lt;&amp;&gt;</description>"));
        assert!(xml.contains("<item><key>k</key><value>v&quot;1</value></item>"));
        assert!(xml.contains("<volumeId>vol-ffffffff</volumeId>"));
        // Filters.
        let (_, xml) = ec2(
            &c,
            &base,
            "Action=DescribeSnapshots&Filter.1.Name=tag%3Ak&Filter.1.Value.1=v%221",
        )
        .await;
        assert!(xml.contains(&id) && !xml.contains(&id2), "{xml}");
        let (st, xml) = ec2(
            &c,
            &base,
            "Action=DescribeSnapshots&Filter.1.Name=bogus&Filter.1.Value.1=x",
        )
        .await;
        assert_eq!(st, 400, "{xml}");
        // Unknown id.
        let (st, xml) = ec2(
            &c,
            &base,
            "Action=DescribeSnapshots&SnapshotId.1=snap-0000000000000000f",
        )
        .await;
        assert_eq!(st, 400);
        assert!(
            xml.contains("<Code>InvalidSnapshot.NotFound</Code>"),
            "{xml}"
        );
        // Delete.
        let (st, xml) = ec2(&c, &base, &format!("Action=DeleteSnapshot&SnapshotId={id}")).await;
        assert_eq!(st, 200);
        assert!(xml.contains("<return>true</return>"));
        assert_eq!(ebs.snapshot_ids(), vec![id2.clone()]);
        let (st, _) = ec2(&c, &base, &format!("Action=DeleteSnapshot&SnapshotId={id}")).await;
        assert_eq!(st, 400);
        let (st, xml) = ec2(&c, &base, "Action=RunInstances").await;
        assert_eq!(st, 400);
        assert!(xml.contains("InvalidAction"));
        // EC2 request signed for the wrong service.
        let h = vec![("authorization", auth("ebs"))];
        let (st, _, _) = send(
            &c,
            "POST",
            &format!("{base}/"),
            &h,
            "Action=DescribeSnapshots",
        )
        .await
        .unwrap();
        assert_eq!(st, 401);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_puts_are_fast_and_correct() {
        let ebs = Arc::new(
            StrictEbs::start(StrictEbsConfig {
                discard_data: true,
                ..Default::default()
            })
            .await
            .unwrap(),
        );
        let base = ebs.url();
        let c = client();
        let (_, out) = start(&c, &base, json!({"VolumeSize": 1})).await;
        let id = out["SnapshotId"].as_str().unwrap().to_string();
        let data = block(0xab);
        let cs = sha_b64(&data);
        let n: u64 = 256;
        let t0 = std::time::Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for w in 0..32u64 {
            let (c, base, id, data, cs) = (
                c.clone(),
                base.clone(),
                id.clone(),
                data.clone(),
                cs.clone(),
            );
            tasks.spawn(async move {
                let mut i = w;
                while i < n {
                    let (st, _, _) = put(&c, &base, &id, i, data.clone(), &cs).await;
                    assert_eq!(st, 201);
                    i += 32;
                }
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
        let secs = t0.elapsed().as_secs_f64();
        eprintln!(
            "strict EBS: {n} puts of 512 KiB in {secs:.2}s = {:.0} MiB/s",
            n as f64 * 0.5 / secs
        );
        let (st, _) = complete(&c, &base, &id, n, None).await;
        assert_eq!(st, 202);
        assert_eq!(ebs.snapshot(&id).unwrap().put_requests, n);
        assert!(ebs.rejections().is_empty());
    }
}
