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
//!
//! The parts: `classify` names a request's operation and protocol, `faults` decides and
//! shapes injected faults, `forward` talks to the upstream (loopback only),
//! `moto_fixups` corrects moto's EBS answers, `record` keeps what was seen.

mod classify;
mod faults;
mod forward;
mod hooks;
mod moto_fixups;
mod record;
#[cfg(test)]
mod test_support;
pub mod vocabulary;

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::task::JoinHandle;

use super::http_util::{self, BoxError, ConnCtx};
use classify::{classify, protocol};
use faults::{RuleState, error_response, rules_state};
use forward::loopback_base;
use record::recorded;

pub use faults::{Fault, FaultRule};
pub use hooks::Gate;
pub use record::RecordedRequest;
pub use vocabulary::DocumentedError;

/// Request bodies larger than this are refused (413).
const MAX_REQUEST_BODY: usize = 64 * 1024 * 1024;

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

/// A running proxy; dropping it stops the server and its connections.
pub struct FaultProxy {
    port: u16,
    inner: Arc<ProxyInner>,
    task: JoinHandle<()>,
}

/// The proxy's shared part: upstream, rules, random draws, the record, the client.
struct ProxyInner {
    upstream: String,
    moto_fixups: bool,
    rules: Mutex<Vec<RuleState>>,
    rng: Mutex<fastrand::Rng>,
    requests: Mutex<Vec<RecordedRequest>>,
    gates: Mutex<Vec<Arc<hooks::GateState>>>,
    /// Woken at each recorded request (see [`FaultProxy::answered`]).
    recorded: tokio::sync::Notify,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// An answer: made here, or the upstream's streamed through.
type ProxyBody = Either<Full<Bytes>, Incoming>;

/// Lock a mutex, still usable after a panic elsewhere (every update is one statement).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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
            gates: Mutex::new(Vec::new()),
            recorded: tokio::sync::Notify::new(),
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

impl ProxyInner {
    /// Classify, maybe fault, forward, record.
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
        self.pass_gates(&op).await;
        let proto = protocol(&service, &parts, &op, has_action);
        let fault = self.pick_fault(&op, &region);
        let mut rec = recorded(&parts, &body, service, region, &op, fault.as_ref());
        match &fault {
            Some(
                f @ (Fault::Throttle
                | Fault::Status(_)
                | Fault::AccessDenied
                | Fault::Code(_)
                | Fault::Untyped(_)),
            ) => {
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
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;

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
}
