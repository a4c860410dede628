//! Faults: the rules saying which requests get one, the seeded draws of rate rules, and
//! the service-shaped error answers injected instead of forwarding.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use serde_json::json;

use super::classify::Proto;
use super::vocabulary;
use super::{ProxyInner, lock};
use crate::http_util;

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
    /// This error code of the request's service, with the status, message and reason
    /// the service documents for it (see [`vocabulary`](super::vocabulary)); not
    /// forwarded.
    Code(&'static str),
    /// An error answer with this HTTP status that names no error type (no
    /// `x-amzn-errortype` header, no `__type` or `<Code>`), only `{"message":
    /// "Forbidden"}`: what a gateway or proxy in front of AWS may send; not forwarded.
    Untyped(u16),
}

impl Fault {
    /// Short label used in [`RecordedRequest::fault`](super::RecordedRequest::fault).
    pub fn label(&self) -> String {
        match self {
            Fault::Throttle => "Throttle".into(),
            Fault::Status(s) => format!("Status({s})"),
            Fault::Reset => "Reset".into(),
            Fault::DropResponse => "DropResponse".into(),
            Fault::Delay(d) => format!("Delay({}ms)", d.as_millis()),
            Fault::AccessDenied => "AccessDenied".into(),
            Fault::Code(c) => format!("Code({c})"),
            Fault::Untyped(s) => format!("Untyped({s})"),
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

/// A rule and how many requests it has faulted.
pub(super) struct RuleState {
    pub(super) rule: FaultRule,
    pub(super) used: u64,
}

/// Rules with their counters at 0.
pub(super) fn rules_state(rules: Vec<FaultRule>) -> Vec<RuleState> {
    rules
        .into_iter()
        .map(|rule| RuleState { rule, used: 0 })
        .collect()
}

impl ProxyInner {
    /// The fault for this request, if a rule applies (the first that does).
    pub(super) fn pick_fault(&self, op: &str, region: &str) -> Option<Fault> {
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
}

/// The service a protocol's requests go to, for the vocabulary.
fn service_of(proto: Proto) -> &'static str {
    match proto {
        Proto::RestJson => "ebs",
        Proto::Ec2Query => "ec2",
        Proto::AwsJson => "ssm",
        Proto::AwsQuery => "sts",
    }
}

/// (status, code, message, reason) of a documented error of the protocol's service (a
/// code the vocabulary lacks is sent as a 400 with a message saying so).
fn documented_error(
    proto: Proto,
    code: &'static str,
) -> (u16, &'static str, &'static str, Option<&'static str>) {
    match vocabulary::documented(service_of(proto), code) {
        Some(d) => (d.status, d.code, d.message, d.reason),
        None => (
            400,
            code,
            "Injected error (not in the world's vocabulary)",
            None,
        ),
    }
}

/// (status, code, message, reason) of an injected error for a protocol.
fn fault_error(
    proto: Proto,
    fault: &Fault,
) -> (u16, &'static str, &'static str, Option<&'static str>) {
    match (proto, fault) {
        (_, Fault::Code(code)) => documented_error(proto, code),
        (_, Fault::Throttle) => {
            documented_error(proto, vocabulary::throttling_code(service_of(proto)))
        }
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

/// The injected error answer of `fault` in protocol `proto`.
pub(super) fn error_response(proto: Proto, fault: &Fault) -> Response<Full<Bytes>> {
    if let Fault::Untyped(status) = fault {
        return http_util::full_response(
            *status,
            &[("content-type", "application/json".into())],
            json!({ "message": "Forbidden" }).to_string(),
        );
    }
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use hyper::header::HeaderValue;
    use serde_json::Value;

    use super::super::test_support::*;
    use super::super::{FaultProxy, ProxyConfig};
    use super::*;
    use crate::{StrictEbs, StrictEbsConfig};

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
        // The EBS direct APIs throttle with HTTP 400, as documented (not 429).
        assert_eq!(
            (st, &h["x-amzn-errortype"]),
            (
                400,
                &"RequestThrottledException".parse::<HeaderValue>().unwrap()
            )
        );
        assert_eq!(b["reason"], json!("RESOURCE_LEVEL_THROTTLE"));
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
            ("StartSnapshot".into(), 400, Some("Throttle".into()))
        );
        assert_eq!(
            faults[2],
            ("StartSnapshot".into(), 503, Some("Status(503)".into()))
        );
        assert_eq!(faults[4], ("StartSnapshot".into(), 201, None));
        assert_eq!(proxy.count("StartSnapshot"), 5);
    }

    #[tokio::test]
    async fn documented_codes_are_sent_as_each_service_sends_them() {
        let (_ebs, proxy) = strict_and_proxy(vec![
            FaultRule::first_n(
                Some("StartSnapshot"),
                Fault::Code("ConcurrentLimitExceededException"),
                1,
            ),
            FaultRule::first_n(
                Some("DescribeSnapshots"),
                Fault::Code("ConcurrentTagAccess"),
                1,
            ),
            FaultRule::first_n(Some("PutParameter"), Fault::Code("TooManyUpdates"), 1),
        ])
        .await;
        let c = client();
        let base = proxy.url();
        let (st, h, _) = start_snapshot(&c, &base).await;
        assert_eq!(
            (st, h["x-amzn-errortype"].to_str().unwrap()),
            (400, "ConcurrentLimitExceededException")
        );
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
        assert_eq!(st, 400);
        assert!(String::from_utf8_lossy(&b).contains("<Code>ConcurrentTagAccess</Code>"));
        let h = vec![
            ("authorization", auth("ssm")),
            ("x-amz-target", "AmazonSSM.PutParameter".to_string()),
        ];
        let (st, _, b) = send(&c, "POST", &url, &h, "{}").await.unwrap();
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!((st, &v["__type"]), (400, &json!("TooManyUpdates")));
        assert_eq!(
            proxy.requests()[0].fault.as_deref(),
            Some("Code(ConcurrentLimitExceededException)")
        );
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
}
