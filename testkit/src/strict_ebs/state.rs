//! What the endpoint holds: snapshots with their blocks, client tokens, rejections.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use base64::Engine as _;
use bytes::Bytes;
use serde_json::Value;

use super::wire::B64;
use super::{BLOCK_SIZE, GIB};

/// Everything the endpoint holds, behind the server's one lock.
#[derive(Default)]
pub(super) struct State {
    pub(super) snapshots: HashMap<String, Snap>,
    pub(super) client_tokens: HashMap<String, (String, Value)>,
    pub(super) rejections: Vec<String>,
}

/// A snapshot's status, as DescribeSnapshots and StartSnapshot say it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Status {
    Pending,
    Completed,
    Error,
}

impl Status {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Completed => "completed",
            Status::Error => "error",
        }
    }
}

/// One written block: its data (unless discarded), SHA-256 and GetSnapshotBlock token.
#[derive(Clone)]
pub(super) struct Block {
    pub(super) data: Option<Bytes>,
    pub(super) digest: [u8; 32],
    pub(super) token: String,
}

/// One snapshot and its blocks (inherited parent blocks included).
pub(super) struct Snap {
    pub(super) id: String,
    pub(super) status: Status,
    pub(super) volume_size: u64,
    pub(super) description: Option<String>,
    pub(super) tags: Vec<(String, String)>,
    pub(super) encrypted: bool,
    pub(super) kms_key_arn: Option<String>,
    pub(super) parent: Option<String>,
    pub(super) start_time: f64,
    pub(super) blocks: BTreeMap<u64, Block>,
    pub(super) written: BTreeSet<u64>,
    pub(super) put_requests: u64,
}

impl Snap {
    pub(super) fn max_blocks(&self) -> u64 {
        self.volume_size * GIB / u64::from(BLOCK_SIZE)
    }
}

/// A new snapshot id, `snap-` and 17 hex digits.
pub(super) fn new_snapshot_id() -> String {
    let n = fastrand::u128(..) % (1u128 << 68);
    format!("snap-{n:017x}")
}

/// A new opaque block token, as GetSnapshotBlock wants it back.
pub(super) fn new_block_token() -> String {
    let mut raw = [0u8; 48];
    for chunk in raw.chunks_mut(8) {
        chunk.copy_from_slice(&fastrand::u64(..).to_le_bytes());
    }
    B64.encode(raw)
}
