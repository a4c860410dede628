//! Waiting for many copies at once. A copy takes minutes to tens of minutes; polling each
//! on its own (a 48-image release to 30 regions holds over a thousand copies pending)
//! would make thousands of DescribeImages a minute against EC2's request limits. Here
//! every copy pending in one region is looked at by one DescribeImages (an `image-id`
//! filter, 200 ids a request), paced by the one poll loop with a backoff that settles
//! at [`COPY_BACKOFF`]'s ceiling. One poller per region runs while something waits there.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::AmiError;
use crate::aws::lifecycle::images_by_id;
use crate::aws::poll::{Backoff, Poll, PollError, poll_until};
use crate::aws::{Clients, RetryPolicy};

/// How often a region's pending copies are looked at: 2 s after the first look,
/// doubling to one look every 30 s.
pub const COPY_BACKOFF: Backoff = Backoff {
    first: Duration::from_secs(2),
    max: Duration::from_secs(30),
};

/// How long a new copy may stay invisible to DescribeImages before it is taken as gone.
const NOT_VISIBLE_GRACE: Duration = Duration::from_secs(120);
/// A poller runs while anything waits in its region; this only bounds the poll loop.
const POLLER_LIFETIME: Duration = Duration::from_secs(7 * 86_400);

type Outcome = Result<(), String>;

struct Waiting {
    senders: Vec<oneshot::Sender<Outcome>>,
    since: Instant,
}

#[derive(Default)]
struct Region {
    pending: HashMap<String, Waiting>,
    polling: bool,
}

/// Waits for images to become available, one poller per region for all of them. Clone
/// it to share it (a publish shares one across every image).
#[derive(Clone)]
pub struct CopyWaiter {
    regions: Arc<Mutex<HashMap<String, Region>>>,
    backoff: Backoff,
}

impl Default for CopyWaiter {
    fn default() -> Self {
        CopyWaiter::new(COPY_BACKOFF)
    }
}

impl std::fmt::Debug for CopyWaiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CopyWaiter")
            .field("backoff", &self.backoff)
            .finish()
    }
}

impl CopyWaiter {
    /// A waiter polling with `backoff`.
    pub fn new(backoff: Backoff) -> CopyWaiter {
        CopyWaiter {
            regions: Arc::default(),
            backoff,
        }
    }

    /// Wait until `image_id` (in `clients`' region) is available, for at most
    /// `deadline`; fails when it fails, is deregistered, or stays invisible.
    pub async fn wait(
        &self,
        clients: &Clients,
        image_id: &str,
        deadline: Duration,
        retry: &RetryPolicy,
    ) -> Result<(), AmiError> {
        let region = clients.region().to_string();
        let (tx, rx) = oneshot::channel();
        let start_poller = {
            let mut all = self.lock();
            let r = all.entry(region.clone()).or_default();
            r.pending
                .entry(image_id.to_string())
                .or_insert_with(|| Waiting {
                    senders: Vec::new(),
                    since: Instant::now(),
                })
                .senders
                .push(tx);
            !std::mem::replace(&mut r.polling, true)
        };
        if start_poller {
            tokio::spawn(self.clone().poll_region(clients.clone(), *retry));
        }
        let state_err = |message: String| AmiError::State {
            image_id: image_id.to_string(),
            region: region.clone(),
            message,
        };
        match tokio::time::timeout(deadline, rx).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(message))) => Err(state_err(message)),
            Ok(Err(_)) => Err(state_err("the wait for it ended unexpectedly".into())),
            Err(_) => Err(state_err(format!(
                "not available within {}s",
                deadline.as_secs()
            ))),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Region>> {
        self.regions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The ids still waited for in `region` (waits whose caller has gone are dropped);
    /// when none is left the poller stops, under the same lock a new wait takes.
    fn pending(&self, region: &str) -> Vec<String> {
        let mut all = self.lock();
        let r = all.entry(region.to_string()).or_default();
        r.pending.retain(|_, w| {
            w.senders.retain(|s| !s.is_closed());
            !w.senders.is_empty()
        });
        if r.pending.is_empty() {
            r.polling = false;
        }
        r.pending.keys().cloned().collect()
    }

    fn settle(&self, region: &str, image_id: &str, outcome: Outcome) {
        let mut all = self.lock();
        if let Some(w) = all.get_mut(region).and_then(|r| r.pending.remove(image_id)) {
            for s in w.senders {
                let _ = s.send(outcome.clone());
            }
        }
    }

    async fn poll_region(self, clients: Clients, retry: RetryPolicy) {
        let region = clients.region().to_string();
        let r = poll_until(POLLER_LIFETIME, self.backoff, || async {
            let ids = self.pending(&region);
            if ids.is_empty() {
                return Ok(Poll::Ready(()));
            }
            let found = images_by_id(&clients, &ids, &retry).await?;
            tracing::debug!(
                "{region}: {} of {} pending image(s) looked at in one poll",
                found.len(),
                ids.len()
            );
            for id in &ids {
                match found.iter().find(|i| &i.id == id) {
                    Some(img) => match img.state.as_str() {
                        "available" => self.settle(&region, id, Ok(())),
                        s @ ("failed" | "error" | "invalid" | "deregistered" | "disabled") => {
                            let why = img.state_reason.as_deref().unwrap_or("no reason given");
                            self.settle(&region, id, Err(format!("image is {s}: {why}")));
                        }
                        _ => {}
                    },
                    None => {
                        let gone = self
                            .lock()
                            .get(&region)
                            .and_then(|r| r.pending.get(id))
                            .is_some_and(|w| w.since.elapsed() > NOT_VISIBLE_GRACE);
                        if gone {
                            let why = format!(
                                "does not exist ({}s after it was expected)",
                                NOT_VISIBLE_GRACE.as_secs()
                            );
                            self.settle(&region, id, Err(why));
                        }
                    }
                }
            }
            Ok::<_, crate::aws::AwsError>(Poll::Pending)
        })
        .await;
        if let Err(e) = r {
            let message = match e {
                PollError::Failed(e) => format!("looking at it failed: {e}"),
                PollError::TimedOut { .. } => "the poll ended".to_string(),
            };
            // Every wait in the region learns it; the next wait starts a new poller.
            let mut all = self.lock();
            if let Some(r) = all.get_mut(&region) {
                for (_, w) in r.pending.drain() {
                    for s in w.senders {
                        let _ = s.send(Err(message.clone()));
                    }
                }
                r.polling = false;
            }
        }
    }
}
