//! moto's EBS direct answers corrected into AWS's: the block size AWS reports, block
//! indexes as numbers and in order, 201 for StartSnapshot, a 404 for moto's KeyError 500.

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full};
use hyper::Response;
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use serde_json::{Value, json};

use super::ProxyBody;
use super::classify::EBS_OPERATIONS;
use crate::http_util::BoxError;

/// EBS block size AWS reports.
const AWS_BLOCK_SIZE: u64 = 524_288;

/// Whether moto's answer to `op` with `status` is one to rewrite.
pub(super) fn fixable(op: &str, status: u16) -> bool {
    EBS_OPERATIONS.contains(&op)
        && (status == 500
            || matches!(
                op,
                "StartSnapshot" | "ListSnapshotBlocks" | "ListChangedBlocks" | "CompleteSnapshot"
            ))
}

/// Read moto's answer and give back AWS's (status, body and the headers that follow).
pub(super) async fn rewrite(
    mut rparts: hyper::http::response::Parts,
    rbody: Incoming,
    op: &str,
    status: u16,
) -> Result<Response<ProxyBody>, BoxError> {
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

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::super::{FaultProxy, ProxyConfig};
    use crate::MotoServer;
    use serde_json::{Value, json};

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
