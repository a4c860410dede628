//! Requests through a proxy in front of a strict EBS endpoint, for the tests of each part.

use bytes::Bytes;
use hyper::header::HeaderMap;
use serde_json::Value;

pub(super) use crate::http_util::test_client::{TestClient, auth, client, send};
use crate::{StrictEbs, StrictEbsConfig};
use base64::Engine as _;
use sha2::Digest as _;

use super::{FaultProxy, FaultRule, ProxyConfig};

pub(super) fn ebs_h() -> Vec<(&'static str, String)> {
    vec![("authorization", auth("ebs"))]
}

pub(super) async fn start_snapshot(c: &TestClient, base: &str) -> (u16, HeaderMap, Value) {
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

pub(super) async fn put_block(c: &TestClient, base: &str, id: &str, idx: u64, fill: u8) -> u16 {
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

pub(super) async fn strict_and_proxy(rules: Vec<FaultRule>) -> (StrictEbs, FaultProxy) {
    let ebs = StrictEbs::start(StrictEbsConfig::default()).await.unwrap();
    let mut cfg = ProxyConfig::new(ebs.url());
    cfg.rules = rules;
    cfg.seed = 42;
    let proxy = FaultProxy::start(cfg).await.unwrap();
    (ebs, proxy)
}
