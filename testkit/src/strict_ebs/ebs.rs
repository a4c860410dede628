//! The EBS direct operations: StartSnapshot, PutSnapshotBlock, CompleteSnapshot,
//! ListSnapshotBlocks, ListChangedBlocks, GetSnapshotBlock; each checks what AWS checks.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use bytes::Bytes;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::http_util;
use super::state::{Block, Snap, Status, new_block_token, new_snapshot_id};
use super::wire::{
    ApiError, ApiResult, B64, ebs_json, header, page_params, page_token, parse_index, query_params,
    start_output,
};
use super::{BLOCK_SIZE, Inner, MAX_VOLUME_GIB};

impl Inner {
    pub(super) fn start_snapshot(&self, body: &Bytes) -> ApiResult {
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

    pub(super) fn put_block(
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

    pub(super) fn check_writable(&self, id: &str, index: u64) -> Result<(), ApiError> {
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

    pub(super) fn complete_snapshot(
        &self,
        parts: &hyper::http::request::Parts,
        id: &str,
    ) -> ApiResult {
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

    pub(super) fn list_blocks(&self, parts: &hyper::http::request::Parts, id: &str) -> ApiResult {
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

    pub(super) fn list_changed_blocks(
        &self,
        parts: &hyper::http::request::Parts,
        id: &str,
    ) -> ApiResult {
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

    pub(super) fn get_block(
        &self,
        parts: &hyper::http::request::Parts,
        id: &str,
        index: &str,
    ) -> ApiResult {
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
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use serde_json::{Value, json};

    use super::super::test_support::*;
    use super::super::wire::page_token;
    use super::super::{OWNER_ID, StrictEbs, StrictEbsConfig};

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
        // The child lists and reads its parent's block 0 and its own 1 and 3000.
        let (st, listed) = get_json(&c, &format!("{base}/snapshots/{child}/blocks")).await;
        assert_eq!(st, 200, "{listed}");
        let listed: Vec<(u64, String)> = listed["Blocks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| {
                let token = b["BlockToken"].as_str().unwrap().to_string();
                (b["BlockIndex"].as_u64().unwrap(), token)
            })
            .collect();
        assert_eq!(
            listed.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            vec![0, 1, 3000]
        );
        for ((i, token), want) in listed.iter().zip([&a, &b, &b]) {
            let (st, _, data) = send(
                &c,
                "GET",
                &format!(
                    "{base}/snapshots/{child}/blocks/{i}?blockToken={}",
                    token
                        .replace('+', "%2B")
                        .replace('/', "%2F")
                        .replace('=', "%3D")
                ),
                &ebs_headers(),
                "",
            )
            .await
            .unwrap();
            assert_eq!(st, 200, "block {i}");
            assert!(data == **want, "block {i} of the child");
        }
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
