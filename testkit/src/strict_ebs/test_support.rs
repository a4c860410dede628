//! Requests to a running endpoint, for the tests of each part.

use bytes::Bytes;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::BLOCK_SIZE;
use super::wire::B64;
pub(super) use crate::http_util::test_client::{TestClient, auth, client, send};
use base64::Engine as _;

pub(super) fn block(fill: u8) -> Bytes {
    Bytes::from(vec![fill; BLOCK_SIZE as usize])
}

pub(super) fn sha_b64(data: &[u8]) -> String {
    B64.encode(Sha256::digest(data))
}

pub(super) fn ebs_headers() -> Vec<(&'static str, String)> {
    vec![("authorization", auth("ebs"))]
}

pub(super) async fn start(c: &TestClient, base: &str, body: Value) -> (u16, Value) {
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

pub(super) async fn put(
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

pub(super) type HeaderMapLite = Vec<(String, String)>;

pub(super) async fn complete(
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

pub(super) async fn get_json(c: &TestClient, url: &str) -> (u16, Value) {
    let (st, _, b) = send(c, "GET", url, &ebs_headers(), "").await.unwrap();
    (st, serde_json::from_slice(&b).unwrap_or(Value::Null))
}

pub(super) fn aggregate(blocks: &[&Bytes]) -> String {
    let mut h = Sha256::new();
    for b in blocks {
        h.update(Sha256::digest(b));
    }
    B64.encode(h.finalize())
}
