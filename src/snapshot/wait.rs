//! Wait for a snapshot to become `completed`, under a deadline, with backoff.

use std::time::Duration;

use tokio::time::Instant;

use crate::aws::poll::{Backoff, Poll, PollError, poll_until};
use crate::aws::{AwsError, Clients, ErrorClass, RetryPolicy, ec2};

/// How long a new snapshot may stay invisible to DescribeSnapshots (eventual
/// consistency) before it is taken as gone.
const NOT_VISIBLE_GRACE: Duration = Duration::from_secs(120);

/// Poll DescribeSnapshots until `snapshot_id` is `completed`. Fails if it goes to
/// `error`, stays invisible, or the deadline passes.
pub async fn wait_for_completed(
    clients: &Clients,
    snapshot_id: &str,
    deadline: Duration,
    retry: &RetryPolicy,
) -> Result<(), AwsError> {
    let failed = |detail: String| {
        AwsError::local("DescribeSnapshots", ErrorClass::Permanent, detail)
            .within(&clients.call("DescribeSnapshots").on(snapshot_id))
    };
    let started = Instant::now();
    let backoff = Backoff {
        first: Duration::from_millis(500),
        max: Duration::from_secs(15),
    };
    let r = poll_until(deadline, backoff, || async {
        let Some(snap) = ec2::snapshot(clients, snapshot_id, retry).await? else {
            if started.elapsed() > NOT_VISIBLE_GRACE {
                return Err(failed(format!(
                    "snapshot {snapshot_id} does not exist ({}s after it was expected)",
                    NOT_VISIBLE_GRACE.as_secs()
                )));
            }
            return Ok(Poll::Pending);
        };
        match snap.state.as_str() {
            "completed" => Ok(Poll::Ready(())),
            "error" => Err(failed(format!(
                "snapshot {snapshot_id} is in state error: {}",
                snap.state_message.as_deref().unwrap_or("no reason given")
            ))),
            other => {
                tracing::debug!(
                    "snapshot {snapshot_id} is {other} ({}), waiting",
                    snap.progress.as_deref().unwrap_or("?")
                );
                Ok(Poll::Pending)
            }
        }
    })
    .await;
    match r {
        Ok(()) => Ok(()),
        Err(PollError::Failed(e)) => Err(e),
        Err(PollError::TimedOut { .. }) => Err(failed(format!(
            "snapshot {snapshot_id} was not completed within {}s",
            deadline.as_secs()
        ))),
    }
}
