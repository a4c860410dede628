//! The one paging loop: every list AWS answers in pages (DescribeImages,
//! DescribeSnapshots, DescribeInstances, GetParametersByPath, ListSnapshotBlocks...) is
//! read through [`pages`] (lazily, a page at a time) or [`all_pages`] (every page), each
//! page through the retry layer.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;

use aws_sdk_ebs::error::ProvideErrorMetadata;
use aws_smithy_runtime_api::client::result::SdkError;
use futures_util::{Stream, TryStreamExt, stream};

use super::{AwsError, Call, ErrorClass, HasStatus, RetryPolicy};

/// The pages of a listing, fetched lazily: the next page is asked for only when the
/// previous one has been taken (block tokens expire; a listing of a 64 TiB snapshot
/// need not be held in memory). `fetch(token)` sends the request for one page (the first
/// with `None`); `next_of` reads a page's next token. A service that answers the same
/// token twice would loop forever: that is an error.
pub fn pages<'a, P, E, R, F, Fut>(
    retry: &'a RetryPolicy,
    call: &'a Call,
    fetch: F,
    next_of: impl Fn(&P) -> Option<&str> + 'a,
) -> impl Stream<Item = Result<P, AwsError>> + 'a
where
    P: 'a,
    F: FnMut(Option<String>) -> Fut + 'a,
    Fut: Future<Output = Result<P, SdkError<E, R>>> + 'a,
    E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
    R: HasStatus + fmt::Debug + 'a,
{
    // State: the token of the page to fetch (`Some(None)` for the first), or `None`
    // once the last page was fetched.
    stream::try_unfold(
        (Some(None::<String>), fetch, next_of),
        move |(state, mut fetch, next_of)| async move {
            let Some(token) = state else {
                return Ok(None);
            };
            let page = retry.send(call, || fetch(token.clone())).await?;
            let next = next_of(&page).filter(|t| !t.is_empty()).map(str::to_string);
            if next.is_some() && next == token {
                return Err(AwsError::local(
                    call.operation,
                    ErrorClass::Permanent,
                    "the service answered the same page token twice".into(),
                )
                .within(call));
            }
            Ok(Some((page, (next.map(Some), fetch, next_of))))
        },
    )
}

/// Read every page of a listing (see [`pages`]), handing each to `on_page`.
pub async fn all_pages<P, E, R, F, Fut>(
    retry: &RetryPolicy,
    call: &Call,
    fetch: F,
    next_of: impl Fn(&P) -> Option<&str>,
    mut on_page: impl FnMut(P),
) -> Result<(), AwsError>
where
    F: FnMut(Option<String>) -> Fut,
    Fut: Future<Output = Result<P, SdkError<E, R>>>,
    E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
    R: HasStatus + fmt::Debug,
{
    let listing = pages(retry, call, fetch, next_of);
    futures_util::pin_mut!(listing);
    while let Some(page) = listing.try_next().await? {
        on_page(page);
    }
    Ok(())
}
