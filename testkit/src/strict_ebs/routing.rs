//! Routing: which operation a request is (by method and path, or the EC2 `Action`),
//! whether it is signed for the right service, and the recorded rejection when not.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response};

use super::http_util;
use super::wire::{ApiError, ebs_error_response, ec2_error_response};
use super::{Inner, MAX_BODY};

impl Inner {
    pub(super) async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
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

    pub(super) fn reject(&self, op: &str, is_ec2: bool, e: ApiError) -> Response<Full<Bytes>> {
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
}
