//! ListSnapshotBlocks, every page, read lazily: the one listing that `download` and the
//! block index built from a snapshot share. Pages are fetched one ahead of the blocks
//! being used (block tokens expire, and a 64 TiB snapshot's listing need not be held in
//! memory); the first page gives the geometry, checked before any block is read.

use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt, stream};

use super::check_block_size;
use crate::aws::paging::pages;
use crate::aws::{AwsError, Call, Clients, RetryPolicy};

/// Why a listing could not be used.
pub(crate) enum ListingError {
    /// The service's error (after retries).
    Aws(AwsError),
    /// An answer that breaks the API's contract.
    Protocol(String),
}

/// A snapshot's geometry and its listed blocks, in ascending order.
pub(crate) struct Listing<'a> {
    /// The block size the service answered (checked).
    pub block_size: u64,
    /// The volume size in GiB (positive).
    pub volume_gib: u64,
    /// `(block index, block token)` of every listed block; an entry without index or
    /// token, or past the end of the volume, is a protocol error.
    pub blocks: BoxStream<'a, Result<(u64, String), ListingError>>,
}

impl Listing<'_> {
    /// The volume size in bytes.
    pub fn volume_bytes(&self) -> u64 {
        self.volume_gib << 30
    }
}

/// List `snapshot_id`'s blocks; `call` names the ListSnapshotBlocks call for retries
/// and errors.
pub(crate) async fn list<'a>(
    clients: &'a Clients,
    call: &'a Call,
    snapshot_id: &'a str,
    retry: &'a RetryPolicy,
) -> Result<Listing<'a>, ListingError> {
    let mut listing = Box::pin(pages(
        retry,
        call,
        move |token| {
            clients
                .ebs
                .list_snapshot_blocks()
                .snapshot_id(snapshot_id)
                .max_results(10_000)
                .set_next_token(token)
                .send()
        },
        |page| page.next_token(),
    ));
    let protocol = |m: &str| ListingError::Protocol(format!("ListSnapshotBlocks {m}"));
    let first = listing
        .try_next()
        .await
        .map_err(ListingError::Aws)?
        .ok_or_else(|| protocol("answered nothing"))?;
    let block_size =
        check_block_size(first.block_size().map(i64::from)).map_err(ListingError::Protocol)?;
    let volume_gib = first
        .volume_size()
        .filter(|&g| g > 0)
        .ok_or_else(|| protocol("answered no volume size"))? as u64;
    let nblocks = (volume_gib << 30) / block_size;
    let blocks = stream::once(async { Ok(first) })
        .chain(listing)
        .map_err(ListingError::Aws)
        .map_ok(|page| stream::iter(page.blocks.unwrap_or_default().into_iter().map(Ok)))
        .try_flatten()
        .and_then(move |b| async move {
            let (Some(index), Some(token)) = (b.block_index(), b.block_token()) else {
                return Err(protocol("listed a block without index or token"));
            };
            let index = u64::try_from(index)
                .ok()
                .filter(|&i| i < nblocks)
                .ok_or_else(|| {
                    protocol(&format!("listed block {index}, past the end of the volume"))
                })?;
            Ok((index, token.to_string()))
        })
        .boxed();
    Ok(Listing {
        block_size,
        volume_gib,
        blocks,
    })
}
