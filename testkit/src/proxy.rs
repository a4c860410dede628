//! A fault-injecting, recording HTTP/1.1 proxy on 127.0.0.1 in front of a local AWS
//! endpoint (moto or [`StrictEbs`](super::StrictEbs)).
//!
//! Every request is classified (service and region from the SigV4 credential scope,
//! AWS operation name from the path, `Action` parameter or `X-Amz-Target` header),
//! possibly answered with an injected fault, otherwise forwarded unchanged to the
//! upstream, and recorded. With `moto_fixups`, moto's non-AWS EBS answers are corrected
//! on the way back. EC2 passes through unchanged: the AMI state AWS keeps and moto does
//! not is kept by the extension moto runs with (see [`super::moto`]), where it is state
//! rather than a rewrite of answers.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, HeaderValue};
use hyper::{Request, Response, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use super::http_util::{self, BoxError, ConnCtx};

/// Request bodies larger than this are refused (413).
const MAX_REQUEST_BODY: usize = 64 * 1024 * 1024;
/// Request bodies up to this size are kept in [`RecordedRequest::body`].
const KEEP_BODY: usize = 64 * 1024;
/// EBS block size AWS reports.
const AWS_BLOCK_SIZE: u64 = 524_288;
/// Headers that belong to one hop and are never forwarded.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "expect",
];
const EBS_OPERATIONS: &[&str] = &[
    "StartSnapshot",
    "PutSnapshotBlock",
    "CompleteSnapshot",
    "ListSnapshotBlocks",
    "GetSnapshotBlock",
    "ListChangedBlocks",
];

/// Configuration of a [`FaultProxy`].
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// Upstream base URL on the loopback interface, e.g. `http://127.0.0.1:5000`.
    pub upstream: String,
    /// Correct moto's non-AWS EBS answers (block size, index types and order, 500s).
    pub moto_fixups: bool,
    /// Fault rules, tried in order; at most one fault applies per request.
    pub rules: Vec<FaultRule>,
    /// Seed of the random draws for rate-based rules.
    pub seed: u64,
}

impl ProxyConfig {
    /// A config forwarding to `upstream` with no fixups, no rules and seed 0.
    pub fn new(upstream: impl Into<String>) -> Self {
        ProxyConfig {
            upstream: upstream.into(),
            moto_fixups: false,
            rules: Vec::new(),
            seed: 0,
        }
    }
}

/// A fault the proxy can inject instead of (or around) forwarding a request.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// A service-appropriate throttling answer (not forwarded).
    Throttle,
    /// A service-appropriate error answer with this HTTP status (not forwarded).
    Status(u16),
    /// Close the connection (TCP RST) without any response; the request is not forwarded.
    Reset,
    /// Forward the request, then close the connection without answering.
    DropResponse,
    /// Sleep this long, then forward normally.
    Delay(Duration),
    /// A service-appropriate 403/400 access-denied answer (not forwarded).
    AccessDenied,
}

impl Fault {
    /// Short label used in [`RecordedRequest::fault`].
    pub fn label(&self) -> String {
        match self {
            Fault::Throttle => "Throttle".into(),
            Fault::Status(s) => format!("Status({s})"),
            Fault::Reset => "Reset".into(),
            Fault::DropResponse => "DropResponse".into(),
            Fault::Delay(d) => format!("Delay({}ms)", d.as_millis()),
            Fault::AccessDenied => "AccessDenied".into(),
        }
    }
}

/// When to inject a fault.
#[derive(Clone, Debug)]
pub struct FaultRule {
    /// AWS operation name to match (`PutSnapshotBlock`, `DescribeSnapshots`, ...); `None` = any.
    pub operation: Option<String>,
    /// The fault to inject.
    pub fault: Fault,
    /// Probability (0.0..=1.0) that a matching request gets the fault (ignored with `first_n`).
    pub rate: f64,
    /// If set, the fault applies to exactly the first n matching requests.
    pub first_n: Option<u64>,
    /// Region (from the SigV4 credential scope) to match; `None` = any.
    pub region: Option<String>,
}

impl FaultRule {
    /// A rule applying `fault` to the first `n` requests of `operation` (`None` = any).
    pub fn first_n(operation: Option<&str>, fault: Fault, n: u64) -> Self {
        FaultRule {
            operation: operation.map(str::to_string),
            fault,
            rate: 0.0,
            first_n: Some(n),
            region: None,
        }
    }

    /// A rule applying `fault` to each request of `operation` with probability `rate`.
    pub fn with_rate(operation: Option<&str>, fault: Fault, rate: f64) -> Self {
        FaultRule {
            operation: operation.map(str::to_string),
            fault,
            rate,
            first_n: None,
            region: None,
        }
    }

    /// The same rule, for requests to `region` only.
    pub fn in_region(self, region: &str) -> Self {
        FaultRule {
            region: Some(region.to_string()),
            ..self
        }
    }
}

/// One request seen by the proxy.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// Service from the SigV4 credential scope (`ebs`, `ec2`, ...) or `unknown`.
    pub service: String,
    /// Region from the SigV4 credential scope or `unknown`.
    pub region: String,
    /// AWS operation name or `Unknown`.
    pub operation: String,
    /// HTTP method.
    pub method: String,
    /// URL path.
    pub path: String,
    /// Raw query string (empty if none).
    pub query: String,
    /// Request headers as received.
    pub headers: Vec<(String, String)>,
    /// Request body length.
    pub body_len: usize,
    /// Request body, kept when at most 64 KiB.
    pub body: Option<Bytes>,
    /// HTTP status sent to the client, 0 if no response was sent.
    pub status: u16,
    /// Label of the injected fault, if any.
    pub fault: Option<String>,
}

impl RecordedRequest {
    /// First value of a request header (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A running proxy; dropping it stops the server and its connections.
pub struct FaultProxy {
    port: u16,
    inner: Arc<ProxyInner>,
    task: JoinHandle<()>,
}

struct RuleState {
    rule: FaultRule,
    used: u64,
}

struct ProxyInner {
    upstream: String,
    moto_fixups: bool,
    rules: Mutex<Vec<RuleState>>,
    rng: Mutex<fastrand::Rng>,
    requests: Mutex<Vec<RecordedRequest>>,
    client: Client<HttpConnector, Full<Bytes>>,
}

type ProxyBody = Either<Full<Bytes>, Incoming>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Check that `upstream` is an `http://` URL on a loopback address; return `http://host:port`.
fn loopback_base(upstream: &str) -> io::Result<String> {
    let bad = |why: &str| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("proxy upstream {upstream:?}: {why}"),
        )
    };
    let uri: Uri = upstream.parse().map_err(|_| bad("not a URL"))?;
    if uri.scheme_str() != Some("http") {
        return Err(bad("only http:// is supported"));
    }
    let host = uri.host().ok_or_else(|| bad("no host"))?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = bare == "localhost"
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        return Err(bad("only loopback upstreams are allowed"));
    }
    if !matches!(uri.path(), "" | "/") {
        return Err(bad("the upstream must not have a path"));
    }
    let authority = uri.authority().ok_or_else(|| bad("no authority"))?;
    Ok(format!("http://{authority}"))
}

fn rules_state(rules: Vec<FaultRule>) -> Vec<RuleState> {
    rules
        .into_iter()
        .map(|rule| RuleState { rule, used: 0 })
        .collect()
}

impl FaultProxy {
    /// Start the proxy on an ephemeral 127.0.0.1 port, on the current tokio runtime.
    pub async fn start(config: ProxyConfig) -> io::Result<FaultProxy> {
        let upstream = loopback_base(&config.upstream)?;
        let listener = http_util::bind_loopback(0).await?;
        let port = listener.local_addr()?.port();
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(256)
            .build(connector);
        let inner = Arc::new(ProxyInner {
            upstream,
            moto_fixups: config.moto_fixups,
            rules: Mutex::new(rules_state(config.rules)),
            rng: Mutex::new(fastrand::Rng::with_seed(config.seed)),
            requests: Mutex::new(Vec::new()),
            client,
        });
        let handler_inner = inner.clone();
        let handler = Arc::new(move |req: Request<Incoming>, ctx: ConnCtx| {
            let inner = handler_inner.clone();
            async move { inner.handle(req, ctx).await }
        });
        let task = http_util::serve(listener, handler);
        Ok(FaultProxy { port, inner, task })
    }

    /// Base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The listening port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A copy of every recorded request, in completion order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.inner.requests).clone()
    }

    /// Number of recorded requests of `operation` (faulted ones included).
    pub fn count(&self, operation: &str) -> usize {
        lock(&self.inner.requests)
            .iter()
            .filter(|r| r.operation == operation)
            .count()
    }

    /// Replace the fault rules (their first_n counters start again at 0).
    pub fn set_rules(&self, rules: Vec<FaultRule>) {
        *lock(&self.inner.rules) = rules_state(rules);
    }

    /// Forget every recorded request.
    pub fn clear_requests(&self) {
        lock(&self.inner.requests).clear();
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("port", &self.port)
            .field("upstream", &self.inner.upstream)
            .finish()
    }
}

/// Wire protocol of a request, which decides the shape of injected errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proto {
    RestJson,
    Ec2Query,
    AwsQuery,
    AwsJson,
}

/// The AWS operation name of a request.
fn classify(parts: &hyper::http::request::Parts, body: &Bytes) -> (String, bool) {
    if let Some(target) = parts
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
    {
        let op = target.rsplit('.').next().unwrap_or(target);
        return (op.to_string(), false);
    }
    let path = parts.uri.path();
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let m = parts.method.as_str();
    let ebs = match (m, segs.as_slice()) {
        ("POST", ["snapshots"]) => Some("StartSnapshot"),
        ("PUT", ["snapshots", _, "blocks", _]) => Some("PutSnapshotBlock"),
        ("POST", ["snapshots", "completion", _]) => Some("CompleteSnapshot"),
        ("GET", ["snapshots", _, "blocks"]) => Some("ListSnapshotBlocks"),
        ("GET", ["snapshots", _, "blocks", _]) => Some("GetSnapshotBlock"),
        ("GET", ["snapshots", _, "changedblocks"]) => Some("ListChangedBlocks"),
        _ => None,
    };
    if let Some(op) = ebs {
        return (op.to_string(), false);
    }
    if let Some(op) = super::rest_ops::rbin_operation(m, &segs) {
        return (op.to_string(), false);
    }
    let mut params = http_util::parse_form(parts.uri.query().unwrap_or(""));
    let is_form = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.contains("x-www-form-urlencoded"));
    if is_form && let Ok(text) = std::str::from_utf8(body) {
        params.extend(http_util::parse_form(text));
    }
    match params.into_iter().find(|(k, _)| k == "Action") {
        Some((_, action)) if !action.is_empty() => (action, true),
        _ => ("Unknown".to_string(), false),
    }
}

fn protocol(
    service: &str,
    parts: &hyper::http::request::Parts,
    op: &str,
    has_action: bool,
) -> Proto {
    if parts.headers.contains_key("x-amz-target") {
        return Proto::AwsJson;
    }
    if EBS_OPERATIONS.contains(&op) {
        return Proto::RestJson;
    }
    if has_action {
        return if service == "ec2" || service == "unknown" {
            Proto::Ec2Query
        } else {
            Proto::AwsQuery
        };
    }
    match service {
        "ec2" => Proto::Ec2Query,
        "ssm" => Proto::AwsJson,
        _ => Proto::RestJson,
    }
}

/// (status, code, message, reason) of an injected error for a protocol.
fn fault_error(
    proto: Proto,
    fault: &Fault,
) -> (u16, &'static str, &'static str, Option<&'static str>) {
    match (proto, fault) {
        (Proto::RestJson, Fault::Throttle) => (429, "ThrottlingException", "Rate exceeded", None),
        (Proto::RestJson, Fault::AccessDenied) => (
            403,
            "AccessDeniedException",
            "User is not authorized to perform this action",
            Some("UNAUTHORIZED_ACCOUNT"),
        ),
        (Proto::RestJson, Fault::Status(s)) => match *s {
            429 => (429, "ThrottlingException", "Rate exceeded", None),
            403 => (
                403,
                "AccessDeniedException",
                "Access denied",
                Some("UNAUTHORIZED_ACCOUNT"),
            ),
            404 => (
                404,
                "ResourceNotFoundException",
                "The snapshot was not found",
                Some("SNAPSHOT_NOT_FOUND"),
            ),
            409 => (409, "ConflictException", "Conflict", None),
            s if (400..500).contains(&s) => (
                s,
                "ValidationException",
                "Injected client error",
                Some("INVALID_PARAMETER_VALUE"),
            ),
            s => (
                s,
                "InternalServerException",
                "Internal server error (injected)",
                None,
            ),
        },
        (Proto::Ec2Query, Fault::Throttle) => {
            (503, "RequestLimitExceeded", "Request limit exceeded.", None)
        }
        (Proto::Ec2Query, Fault::AccessDenied) => (
            403,
            "UnauthorizedOperation",
            "You are not authorized to perform this operation.",
            None,
        ),
        (Proto::Ec2Query, Fault::Status(s)) => match *s {
            503 => (
                503,
                "Unavailable",
                "The server is overloaded and can't handle the request.",
                None,
            ),
            s if (400..500).contains(&s) => {
                (s, "InvalidParameterValue", "Injected client error", None)
            }
            s => (s, "InternalError", "An internal error has occurred.", None),
        },
        (Proto::AwsJson, Fault::Throttle) => (400, "ThrottlingException", "Rate exceeded", None),
        (Proto::AwsJson, Fault::AccessDenied) => (
            400,
            "AccessDeniedException",
            "User is not authorized to perform this action",
            None,
        ),
        (Proto::AwsJson, Fault::Status(s)) => match *s {
            s if (400..500).contains(&s) => {
                (s, "ValidationException", "Injected client error", None)
            }
            s => (
                s,
                "InternalServerError",
                "Internal server error (injected)",
                None,
            ),
        },
        (Proto::AwsQuery, Fault::Throttle) => (400, "Throttling", "Rate exceeded", None),
        (Proto::AwsQuery, Fault::AccessDenied) => (
            403,
            "AccessDenied",
            "User is not authorized to perform this action",
            None,
        ),
        (Proto::AwsQuery, Fault::Status(s)) => match *s {
            503 => (
                503,
                "ServiceUnavailable",
                "Service unavailable (injected)",
                None,
            ),
            s if (400..500).contains(&s) => {
                (s, "InvalidParameterValue", "Injected client error", None)
            }
            s => (s, "InternalFailure", "Internal failure (injected)", None),
        },
        // Reset, DropResponse and Delay never produce an answer of their own.
        (_, _) => (500, "InternalFailure", "unexpected fault", None),
    }
}

fn error_response(proto: Proto, fault: &Fault) -> Response<Full<Bytes>> {
    let (status, code, message, reason) = fault_error(proto, fault);
    let rid = http_util::request_id();
    match proto {
        Proto::RestJson => {
            let mut body = json!({ "message": message, "Message": message });
            if let Some(r) = reason {
                body["reason"] = json!(r);
                body["Reason"] = json!(r);
            }
            http_util::full_response(
                status,
                &[
                    ("content-type", "application/json".into()),
                    ("x-amzn-errortype", code.into()),
                    ("x-amzn-requestid", rid),
                ],
                body.to_string(),
            )
        }
        Proto::AwsJson => http_util::full_response(
            status,
            &[
                ("content-type", "application/x-amz-json-1.1".into()),
                ("x-amzn-errortype", code.into()),
                ("x-amzn-requestid", rid),
            ],
            json!({ "__type": code, "message": message }).to_string(),
        ),
        Proto::Ec2Query => http_util::full_response(
            status,
            &[("content-type", "text/xml;charset=UTF-8".into())],
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}</Code><Message>{}</Message></Error></Errors><RequestID>{rid}</RequestID></Response>",
                http_util::xml_escape(message)
            ),
        ),
        Proto::AwsQuery => {
            let kind = if status >= 500 { "Receiver" } else { "Sender" };
            http_util::full_response(
                status,
                &[
                    ("content-type", "text/xml".into()),
                    ("x-amzn-requestid", rid.clone()),
                ],
                format!(
                    "<ErrorResponse><Error><Type>{kind}</Type><Code>{code}</Code><Message>{}</Message></Error><RequestId>{rid}</RequestId></ErrorResponse>",
                    http_util::xml_escape(message)
                ),
            )
        }
    }
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Also drop headers named by `Connection`.
    let named: Vec<String> = headers
        .get_all(hyper::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_ascii_lowercase()))
        .filter(|s| !s.is_empty())
        .collect();
    for h in HOP_BY_HOP
        .iter()
        .copied()
        .chain(named.iter().map(String::as_str))
    {
        headers.remove(h);
    }
}

/// Rewrite moto's EBS answer into what AWS answers: the new (status, body), if any.
fn moto_fixup(op: &str, status: u16, body: &Bytes) -> Option<(u16, Bytes)> {
    if status == 500 {
        let body = json!({
            "message": "The snapshot was not found",
            "Message": "The snapshot was not found",
            "reason": "SNAPSHOT_NOT_FOUND",
            "Reason": "SNAPSHOT_NOT_FOUND",
        });
        return Some((404, Bytes::from(body.to_string())));
    }
    if !(200..300).contains(&status) {
        return None;
    }
    let mut v: Value = serde_json::from_slice(body).ok()?;
    let list_key = match op {
        "ListSnapshotBlocks" => Some("Blocks"),
        "ListChangedBlocks" => Some("ChangedBlocks"),
        _ => None,
    };
    if let Some(obj) = v.as_object_mut() {
        if obj.contains_key("BlockSize") {
            obj.insert("BlockSize".into(), json!(AWS_BLOCK_SIZE));
        }
        if let Some(key) = list_key
            && let Some(Value::Array(items)) = obj.get_mut(key)
        {
            for item in items.iter_mut() {
                if let Some(idx) = item.get("BlockIndex").and_then(Value::as_str)
                    && let Ok(n) = idx.parse::<u64>()
                {
                    item["BlockIndex"] = json!(n);
                }
            }
            items.sort_by_key(|i| {
                i.get("BlockIndex")
                    .and_then(Value::as_u64)
                    .unwrap_or(u64::MAX)
            });
        }
    }
    let status = if op == "StartSnapshot" { 201 } else { status };
    Some((status, Bytes::from(v.to_string())))
}

impl ProxyInner {
    fn pick_fault(&self, op: &str, region: &str) -> Option<Fault> {
        let mut rules = lock(&self.rules);
        for rs in rules.iter_mut() {
            if rs.rule.operation.as_deref().is_some_and(|o| o != op)
                || rs.rule.region.as_deref().is_some_and(|r| r != region)
            {
                continue;
            }
            match rs.rule.first_n {
                Some(n) => {
                    if rs.used < n {
                        rs.used += 1;
                        return Some(rs.rule.fault.clone());
                    }
                }
                None => {
                    if rs.rule.rate > 0.0 && lock(&self.rng).f64() < rs.rule.rate {
                        return Some(rs.rule.fault.clone());
                    }
                }
            }
        }
        None
    }

    fn record(&self, rec: RecordedRequest) {
        lock(&self.requests).push(rec);
    }

    async fn handle(
        &self,
        req: Request<Incoming>,
        ctx: ConnCtx,
    ) -> Result<Response<ProxyBody>, BoxError> {
        let (parts, body) = req.into_parts();
        let (service, region) = http_util::credential_scope(&parts.headers)
            .unwrap_or_else(|| ("unknown".to_string(), "unknown".to_string()));
        let body = match http_util::read_body(body, &parts.headers, MAX_REQUEST_BODY).await {
            Ok(b) => b,
            Err(http_util::BodyError::TooLarge(n)) => {
                let resp = http_util::full_response(
                    413,
                    &[("content-type", "text/plain".into())],
                    format!("request body larger than {n} bytes"),
                );
                return Ok(resp.map(Either::Left));
            }
            Err(e) => return Err(Box::new(e)),
        };
        let (op, has_action) = classify(&parts, &body);
        let proto = protocol(&service, &parts, &op, has_action);
        let fault = self.pick_fault(&op, &region);
        let mut rec = RecordedRequest {
            service,
            region,
            operation: op.clone(),
            method: parts.method.to_string(),
            path: parts.uri.path().to_string(),
            query: parts.uri.query().unwrap_or("").to_string(),
            headers: parts
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body_len: body.len(),
            body: (body.len() <= KEEP_BODY).then(|| body.clone()),
            status: 0,
            fault: fault.as_ref().map(Fault::label),
        };
        match &fault {
            Some(f @ (Fault::Throttle | Fault::Status(_) | Fault::AccessDenied)) => {
                let resp = error_response(proto, f);
                rec.status = resp.status().as_u16();
                self.record(rec);
                return Ok(resp.map(Either::Left));
            }
            Some(Fault::Reset) => {
                self.record(rec);
                ctx.arm_reset();
                return Err("injected fault: connection reset".into());
            }
            Some(Fault::Delay(d)) => tokio::time::sleep(*d).await,
            Some(Fault::DropResponse) | None => {}
        }
        let resp = self.forward(&parts, body, &op).await;
        if fault == Some(Fault::DropResponse) {
            // Let the upstream finish its answer (so its connection can be reused), then
            // close ours without answering.
            if let Ok(resp) = resp {
                let _ = resp.into_body().collect().await;
            }
            self.record(rec);
            return Err("injected fault: response dropped".into());
        }
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                let r = http_util::full_response(
                    502,
                    &[("content-type", "text/plain".into())],
                    format!("proxy: upstream {} failed: {e}", self.upstream),
                )
                .map(Either::Left);
                rec.status = 502;
                self.record(rec);
                return Ok(r);
            }
        };
        rec.status = resp.status().as_u16();
        self.record(rec);
        Ok(resp)
    }

    async fn forward(
        &self,
        parts: &hyper::http::request::Parts,
        body: Bytes,
        op: &str,
    ) -> Result<Response<ProxyBody>, BoxError> {
        let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let uri: Uri = format!("{}{}", self.upstream, path_and_query).parse()?;
        let mut headers = parts.headers.clone();
        strip_hop_by_hop(&mut headers);
        if !body.is_empty() || headers.contains_key(CONTENT_LENGTH) {
            headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        }
        let mut req = Request::builder()
            .method(parts.method.clone())
            .uri(uri)
            .body(Full::new(body))?;
        *req.headers_mut() = headers;
        let resp = self.client.request(req).await?;
        let (mut rparts, rbody) = resp.into_parts();
        strip_hop_by_hop(&mut rparts.headers);
        let status = rparts.status.as_u16();
        let fixable = self.moto_fixups
            && EBS_OPERATIONS.contains(&op)
            && (status == 500
                || matches!(
                    op,
                    "StartSnapshot"
                        | "ListSnapshotBlocks"
                        | "ListChangedBlocks"
                        | "CompleteSnapshot"
                ));
        if !fixable {
            return Ok(Response::from_parts(rparts, Either::Right(rbody)));
        }
        let data = rbody.collect().await?.to_bytes();
        let (new_status, new_body) = match moto_fixup(op, status, &data) {
            Some(x) => x,
            None => (status, data),
        };
        if new_status == 404 && status == 500 {
            rparts.headers.insert(
                "x-amzn-errortype",
                HeaderValue::from_static("ResourceNotFoundException"),
            );
        }
        rparts.status = hyper::StatusCode::from_u16(new_status).unwrap_or(rparts.status);
        if serde_json::from_slice::<serde::de::IgnoredAny>(&new_body).is_ok() {
            rparts
                .headers
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        rparts
            .headers
            .insert(CONTENT_LENGTH, HeaderValue::from(new_body.len()));
        Ok(Response::from_parts(
            rparts,
            Either::Left(Full::new(new_body)),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http_util::test_client::{TestClient, auth, client, send};
    use crate::{MotoServer, StrictEbs, StrictEbsConfig};
    use base64::Engine as _;
    use sha2::Digest as _;

    fn ebs_h() -> Vec<(&'static str, String)> {
        vec![("authorization", auth("ebs"))]
    }

    async fn start_snapshot(c: &TestClient, base: &str) -> (u16, HeaderMap, Value) {
        let (st, h, b) = send(
            c,
            "POST",
            &format!("{base}/snapshots"),
            &ebs_h(),
            r#"{"VolumeSize":1}"#,
        )
        .await
        .unwrap();
        (st, h, serde_json::from_slice(&b).unwrap_or(Value::Null))
    }

    async fn put_block(c: &TestClient, base: &str, id: &str, idx: u64, fill: u8) -> u16 {
        let data = Bytes::from(vec![fill; 524_288]);
        let cs = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(&data));
        let mut h = ebs_h();
        h.push(("x-amz-data-length", data.len().to_string()));
        h.push(("x-amz-checksum", cs));
        h.push(("x-amz-checksum-algorithm", "SHA256".into()));
        let (st, _, _) = send(
            c,
            "PUT",
            &format!("{base}/snapshots/{id}/blocks/{idx}"),
            &h,
            data,
        )
        .await
        .unwrap();
        st
    }

    async fn strict_and_proxy(rules: Vec<FaultRule>) -> (StrictEbs, FaultProxy) {
        let ebs = StrictEbs::start(StrictEbsConfig::default()).await.unwrap();
        let mut cfg = ProxyConfig::new(ebs.url());
        cfg.rules = rules;
        cfg.seed = 42;
        let proxy = FaultProxy::start(cfg).await.unwrap();
        (ebs, proxy)
    }

    #[tokio::test]
    async fn forwards_and_records() {
        let (ebs, proxy) = strict_and_proxy(vec![]).await;
        let c = client();
        let (st, _, out) = start_snapshot(&c, &proxy.url()).await;
        assert_eq!(st, 201, "{out}");
        let id = out["SnapshotId"].as_str().unwrap().to_string();
        assert_eq!(put_block(&c, &proxy.url(), &id, 4, 1).await, 201);
        assert_eq!(ebs.snapshot(&id).unwrap().put_requests, 1);
        let reqs = proxy.requests();
        assert_eq!(reqs.len(), 2);
        let r = &reqs[0];
        assert_eq!(
            (r.service.as_str(), r.region.as_str(), r.operation.as_str()),
            ("ebs", "us-east-1", "StartSnapshot")
        );
        assert_eq!(
            (r.method.as_str(), r.path.as_str(), r.status),
            ("POST", "/snapshots", 201)
        );
        assert_eq!(r.body.as_deref(), Some(&br#"{"VolumeSize":1}"#[..]));
        assert!(r.header("Authorization").is_some());
        let p = &reqs[1];
        assert_eq!(
            (p.operation.as_str(), p.body_len, p.body.is_none()),
            ("PutSnapshotBlock", 524_288, true)
        );
        assert_eq!(proxy.count("PutSnapshotBlock"), 1);
        // Operation names of the other protocols.
        let h = vec![
            ("authorization", auth("ec2")),
            (
                "content-type",
                "application/x-www-form-urlencoded".to_string(),
            ),
        ];
        let (st, _, _) = send(
            &c,
            "POST",
            &format!("{}/", proxy.url()),
            &h,
            format!("Action=DescribeSnapshots&SnapshotId.1={id}"),
        )
        .await
        .unwrap();
        assert_eq!(st, 200);
        let h = vec![
            ("authorization", auth("ssm")),
            ("x-amz-target", "AmazonSSM.PutParameter".to_string()),
        ];
        send(&c, "POST", &format!("{}/", proxy.url()), &h, "{}")
            .await
            .unwrap();
        let reqs = proxy.requests();
        assert_eq!(reqs[2].operation, "DescribeSnapshots");
        assert_eq!(reqs[3].operation, "PutParameter");
        assert_eq!(reqs[3].service, "ssm");
        proxy.clear_requests();
        assert!(proxy.requests().is_empty());
        // No upstream connection to non-loopback addresses.
        let err = FaultProxy::start(ProxyConfig::new("http://10.1.2.3:80"))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(
            FaultProxy::start(ProxyConfig::new("https://127.0.0.1:80"))
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn injects_service_shaped_errors() {
        let (ebs, proxy) = strict_and_proxy(vec![
            FaultRule::first_n(Some("StartSnapshot"), Fault::Throttle, 2),
            FaultRule::first_n(Some("StartSnapshot"), Fault::Status(503), 1),
            FaultRule::first_n(Some("StartSnapshot"), Fault::AccessDenied, 1),
            FaultRule::first_n(Some("DescribeSnapshots"), Fault::Throttle, 1),
            FaultRule::first_n(Some("DescribeSnapshots"), Fault::Status(500), 1),
            FaultRule::first_n(Some("DescribeSnapshots"), Fault::AccessDenied, 1),
            FaultRule::first_n(Some("PutParameter"), Fault::Throttle, 1),
            FaultRule::first_n(Some("PutParameter"), Fault::Status(500), 1),
        ])
        .await;
        let c = client();
        let base = proxy.url();
        // EBS (restJson1).
        let (st, h, b) = start_snapshot(&c, &base).await;
        assert_eq!(
            (st, &h["x-amzn-errortype"]),
            (429, &"ThrottlingException".parse::<HeaderValue>().unwrap())
        );
        assert_eq!(b["message"], json!("Rate exceeded"));
        start_snapshot(&c, &base).await;
        let (st, h, _) = start_snapshot(&c, &base).await;
        assert_eq!(
            (st, h["x-amzn-errortype"].to_str().unwrap()),
            (503, "InternalServerException")
        );
        let (st, h, b) = start_snapshot(&c, &base).await;
        assert_eq!(
            (st, h["x-amzn-errortype"].to_str().unwrap()),
            (403, "AccessDeniedException")
        );
        assert_eq!(b["Reason"], json!("UNAUTHORIZED_ACCOUNT"));
        assert_eq!(b["reason"], json!("UNAUTHORIZED_ACCOUNT"));
        assert!(
            ebs.snapshot_ids().is_empty(),
            "faulted requests must not be forwarded"
        );
        let (st, _, _) = start_snapshot(&c, &base).await;
        assert_eq!(st, 201);
        assert_eq!(ebs.snapshot_ids().len(), 1);
        // EC2 (query, XML).
        let h = vec![
            ("authorization", auth("ec2")),
            (
                "content-type",
                "application/x-www-form-urlencoded".to_string(),
            ),
        ];
        let url = format!("{base}/");
        let (st, _, b) = send(&c, "POST", &url, &h, "Action=DescribeSnapshots")
            .await
            .unwrap();
        let xml = String::from_utf8_lossy(&b).into_owned();
        assert_eq!(st, 503);
        assert!(xml.contains("<Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>Request limit exceeded.</Message></Error></Errors><RequestID>"), "{xml}");
        let (st, _, b) = send(&c, "POST", &url, &h, "Action=DescribeSnapshots")
            .await
            .unwrap();
        assert_eq!(st, 500);
        assert!(String::from_utf8_lossy(&b).contains("<Code>InternalError</Code>"));
        let (st, _, b) = send(&c, "POST", &url, &h, "Action=DescribeSnapshots")
            .await
            .unwrap();
        assert_eq!(st, 403);
        assert!(String::from_utf8_lossy(&b).contains("<Code>UnauthorizedOperation</Code>"));
        // SSM (awsJson1.1).
        let h = vec![
            ("authorization", auth("ssm")),
            ("x-amz-target", "AmazonSSM.PutParameter".to_string()),
        ];
        let (st, hd, b) = send(&c, "POST", &url, &h, "{}").await.unwrap();
        assert_eq!(
            (st, hd["x-amzn-errortype"].to_str().unwrap()),
            (400, "ThrottlingException")
        );
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(
            v,
            json!({"__type": "ThrottlingException", "message": "Rate exceeded"})
        );
        let (st, _, b) = send(&c, "POST", &url, &h, "{}").await.unwrap();
        assert_eq!(st, 500);
        assert!(String::from_utf8_lossy(&b).contains("InternalServerError"));
        // Recorded with their faults and statuses.
        let faults: Vec<(String, u16, Option<String>)> = proxy
            .requests()
            .into_iter()
            .map(|r| (r.operation, r.status, r.fault))
            .collect();
        assert_eq!(
            faults[0],
            ("StartSnapshot".into(), 429, Some("Throttle".into()))
        );
        assert_eq!(
            faults[2],
            ("StartSnapshot".into(), 503, Some("Status(503)".into()))
        );
        assert_eq!(faults[4], ("StartSnapshot".into(), 201, None));
        assert_eq!(proxy.count("StartSnapshot"), 5);
    }

    #[tokio::test]
    async fn reset_drop_and_delay() {
        let (ebs, proxy) = strict_and_proxy(vec![FaultRule::first_n(
            Some("StartSnapshot"),
            Fault::Reset,
            1,
        )])
        .await;
        let c = client();
        let base = proxy.url();
        let err = send(
            &c,
            "POST",
            &format!("{base}/snapshots"),
            &ebs_h(),
            r#"{"VolumeSize":1}"#,
        )
        .await
        .unwrap_err();
        assert!(
            format!("{err:?}").contains("ConnectionReset"),
            "expected a TCP reset: {err:?}"
        );
        assert!(
            ebs.snapshot_ids().is_empty(),
            "a reset request is not forwarded"
        );
        assert_eq!(proxy.requests()[0].status, 0);
        assert_eq!(proxy.requests()[0].fault.as_deref(), Some("Reset"));

        proxy.set_rules(vec![FaultRule::first_n(None, Fault::DropResponse, 1)]);
        assert!(
            send(
                &c,
                "POST",
                &format!("{base}/snapshots"),
                &ebs_h(),
                r#"{"VolumeSize":1}"#
            )
            .await
            .is_err()
        );
        assert_eq!(
            ebs.snapshot_ids().len(),
            1,
            "a dropped response was processed upstream"
        );
        assert_eq!(proxy.requests()[1].status, 0);

        proxy.set_rules(vec![FaultRule::with_rate(
            Some("StartSnapshot"),
            Fault::Delay(Duration::from_millis(300)),
            1.0,
        )]);
        let t0 = std::time::Instant::now();
        let (st, _, _) = start_snapshot(&c, &base).await;
        assert_eq!(st, 201);
        assert!(t0.elapsed() >= Duration::from_millis(300));
        assert_eq!(proxy.requests()[2].fault.as_deref(), Some("Delay(300ms)"));
        // After the faults, a fresh connection works normally.
        proxy.set_rules(vec![]);
        let (st, _, _) = start_snapshot(&c, &base).await;
        assert_eq!(st, 201);
    }

    #[tokio::test]
    async fn rate_rules_are_seeded() {
        let run = |seed: u64| async move {
            let ebs = StrictEbs::start(StrictEbsConfig::default()).await.unwrap();
            let mut cfg = ProxyConfig::new(ebs.url());
            cfg.seed = seed;
            cfg.rules = vec![FaultRule::with_rate(
                Some("ListSnapshotBlocks"),
                Fault::Status(500),
                0.3,
            )];
            let proxy = FaultProxy::start(cfg).await.unwrap();
            let c = client();
            let mut statuses = Vec::new();
            for _ in 0..100 {
                let (st, _, _) = send(
                    &c,
                    "GET",
                    &format!("{}/snapshots/snap-x/blocks", proxy.url()),
                    &ebs_h(),
                    "",
                )
                .await
                .unwrap();
                statuses.push(st);
            }
            statuses
        };
        let a = run(7).await;
        let faulted = a.iter().filter(|s| **s == 500).count();
        assert!((15..=45).contains(&faulted), "{faulted} of 100 at rate 0.3");
        assert!(a.iter().all(|s| *s == 500 || *s == 404));
        assert_eq!(a, run(7).await, "same seed, same faults");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sustains_concurrent_keepalive_load() {
        let (_ebs, proxy) = strict_and_proxy(vec![]).await;
        let c = client();
        let base = proxy.url();
        let (_, _, out) = start_snapshot(&c, &base).await;
        let id = out["SnapshotId"].as_str().unwrap().to_string();
        let per_task = 20;
        let t0 = std::time::Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for w in 0..64u64 {
            let (c, base, id) = (c.clone(), base.clone(), id.clone());
            tasks.spawn(async move {
                for i in 0..per_task {
                    let st = if i % 4 == 0 {
                        put_block(&c, &base, &id, w * 30 + i, w as u8).await
                    } else {
                        send(
                            &c,
                            "GET",
                            &format!("{base}/snapshots/{id}/blocks"),
                            &ebs_h(),
                            "",
                        )
                        .await
                        .unwrap()
                        .0
                    };
                    assert!(st == 201 || st == 400, "{st}");
                }
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
        let n = 64 * per_task as usize;
        let secs = t0.elapsed().as_secs_f64();
        eprintln!(
            "proxy: {n} requests over 64 connections in {secs:.2}s = {:.0} req/s",
            n as f64 / secs
        );
        assert_eq!(proxy.requests().len(), n + 1);
    }

    #[test]
    fn moto_fixups_make_moto_answer_like_aws() {
        let moto = match MotoServer::start() {
            Ok(m) => m,
            Err(e) if e.to_string().contains("moto is not installed") => {
                eprintln!("skipping: {e}");
                return;
            }
            Err(e) => panic!("{e}"),
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut cfg = ProxyConfig::new(moto.url());
            cfg.moto_fixups = true;
            let proxy = FaultProxy::start(cfg).await.unwrap();
            let c = client();
            let base = proxy.url();
            let (st, h, out) = start_snapshot(&c, &base).await;
            assert_eq!(st, 201, "{out}");
            assert_eq!(h["content-type"], "application/json");
            assert_eq!(out["BlockSize"], json!(524_288));
            let id = out["SnapshotId"].as_str().unwrap().to_string();
            for idx in [11u64, 3, 7] {
                assert_eq!(put_block(&c, &base, &id, idx, idx as u8).await, 201);
            }
            let mut h = ebs_h();
            h.push(("x-amz-changedblockscount", "3".into()));
            let (st, _, b) = send(
                &c,
                "POST",
                &format!("{base}/snapshots/completion/{id}"),
                &h,
                "",
            )
            .await
            .unwrap();
            assert_eq!(st, 202, "{}", String::from_utf8_lossy(&b));
            let (st, _, b) = send(
                &c,
                "GET",
                &format!("{base}/snapshots/{id}/blocks"),
                &ebs_h(),
                "",
            )
            .await
            .unwrap();
            assert_eq!(st, 200);
            let v: Value = serde_json::from_slice(&b).unwrap();
            assert_eq!(v["BlockSize"], json!(524_288));
            let idx: Vec<Value> = v["Blocks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b["BlockIndex"].clone())
                .collect();
            assert_eq!(idx, vec![json!(3), json!(7), json!(11)]);
            // moto's KeyError 500 becomes AWS's 404.
            let (st, h, b) = send(
                &c,
                "GET",
                &format!("{base}/snapshots/snap-00000000000000000/blocks"),
                &ebs_h(),
                "",
            )
            .await
            .unwrap();
            assert_eq!(
                (st, h["x-amzn-errortype"].to_str().unwrap()),
                (404, "ResourceNotFoundException")
            );
            let v: Value = serde_json::from_slice(&b).unwrap();
            assert_eq!(v["reason"], json!("SNAPSHOT_NOT_FOUND"));
            assert_eq!(h["content-length"].to_str().unwrap(), b.len().to_string());
            // EC2 calls pass through; reset works.
            let h = vec![
                ("authorization", auth("ec2")),
                (
                    "content-type",
                    "application/x-www-form-urlencoded".to_string(),
                ),
            ];
            let (st, _, b) = send(
                &c,
                "POST",
                &format!("{base}/"),
                &h,
                format!("Action=DescribeSnapshots&Version=2016-11-15&SnapshotId.1={id}"),
            )
            .await
            .unwrap();
            assert_eq!(st, 200, "{}", String::from_utf8_lossy(&b));
            assert!(String::from_utf8_lossy(&b).contains(&id));
            moto.reset().unwrap();
            let (st, _, _) = send(
                &c,
                "GET",
                &format!("{base}/snapshots/{id}/blocks"),
                &ebs_h(),
                "",
            )
            .await
            .unwrap();
            assert_eq!(st, 404);
        });
    }
}
