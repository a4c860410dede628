//! Wait for a snapshot to become `completed`, under a deadline, with backoff.

use std::time::Duration;

use aws_sdk_ec2::types::SnapshotState;
use tokio::time::Instant;

use super::local_error;
use crate::aws::{AwsError, Clients, ErrorClass, RetryPolicy};

/// Poll DescribeSnapshots until `snapshot_id` is `completed`. Fails if it goes to
/// `error` or the deadline passes.
pub async fn wait_for_completed(
    clients: &Clients,
    snapshot_id: &str,
    deadline: Duration,
    retry: &RetryPolicy,
) -> Result<(), AwsError> {
    let until = Instant::now() + deadline;
    let mut delay = Duration::from_millis(500);
    loop {
        let out = retry
            .run_with(
                &format!("DescribeSnapshots {snapshot_id}"),
                // Eventual consistency: a new snapshot may not be visible at once.
                |e| e.has_code("InvalidSnapshot.NotFound"),
                || async {
                    clients
                        .ec2
                        .describe_snapshots()
                        .snapshot_ids(snapshot_id)
                        .send()
                        .await
                        .map_err(|e| AwsError::from_sdk("DescribeSnapshots", e))
                },
            )
            .await?;
        let snap = out.snapshots().first();
        match snap.and_then(|s| s.state()) {
            Some(SnapshotState::Completed) => return Ok(()),
            Some(SnapshotState::Error) => {
                let why = snap
                    .and_then(|s| s.state_message())
                    .unwrap_or("no reason given");
                return Err(local_error(
                    "DescribeSnapshots",
                    ErrorClass::Permanent,
                    format!("snapshot {snapshot_id} is in state error: {why}"),
                ));
            }
            other => {
                let progress = snap.and_then(|s| s.progress()).unwrap_or("?");
                tracing::debug!(
                    "snapshot {snapshot_id} is {:?} ({progress}), waiting",
                    other.map(|s| s.as_str())
                );
            }
        }
        if Instant::now() + delay > until {
            return Err(local_error(
                "DescribeSnapshots",
                ErrorClass::Permanent,
                format!(
                    "snapshot {snapshot_id} was not completed within {}s",
                    deadline.as_secs()
                ),
            ));
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(15));
    }
}
