//! Waiting for many copies at once. A copy takes minutes to tens of minutes; polling each
//! on its own (a 48-image release to 30 regions holds over a thousand copies pending)
//! would make thousands of DescribeImages a minute against EC2's request limits. Here
//! every copy pending in one region is looked at by one DescribeImages (an `image-id`
//! filter, 200 ids a request). Each copy keeps its own schedule ([`COPY_BACKOFF`]: at
//! once, then 2 s later, doubling to one look every 30 s, counted from when its wait
//! began), and the region is looked at when the first of its copies is due: a copy that
//! joins a region whose older copies are already polled every 30 s is looked at on its
//! own schedule, not at the older copies' next look, and the older ones ride along (a
//! look counts for every copy due within half its pause).
//! One poller per region runs while something waits there.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use super::AmiError;
use crate::aws::lifecycle::images_by_id;
use crate::aws::poll::Backoff;
use crate::aws::{Clients, RetryPolicy};

/// Each copy's schedule: looked at when its wait begins, then 2 s later, the pause
/// doubling to one look every 30 s.
pub const COPY_BACKOFF: Backoff = Backoff {
    first: Duration::from_secs(2),
    max: Duration::from_secs(30),
};

/// How long a new copy may stay invisible to DescribeImages before it is taken as gone.
const NOT_VISIBLE_GRACE: Duration = Duration::from_secs(120);

type Outcome = Result<(), String>;

struct Waiting {
    senders: Vec<oneshot::Sender<Outcome>>,
    since: Instant,
    /// When this copy is next due to be looked at, and how many of its schedule's
    /// pauses are behind it.
    due: Instant,
    step: u32,
}

impl Waiting {
    /// A look at `at` saw this copy: it counts for every look of its schedule due by
    /// then, and for the next one too when that is due within half the pause before it
    /// (a look made for another copy of the region shortly before serves this one, so
    /// a region's copies share looks rather than each adding its own).
    fn looked_at(&mut self, at: Instant, backoff: &Backoff) {
        while self.due <= at {
            self.next(backoff);
        }
        if self.step > 0 && self.due <= at + backoff.pause(self.step - 1) / 2 {
            self.next(backoff);
        }
    }

    fn next(&mut self, backoff: &Backoff) {
        self.due += backoff.pause(self.step);
        self.step += 1;
    }
}

#[derive(Default)]
struct Region {
    pending: HashMap<String, Waiting>,
    polling: bool,
    /// Told when a wait joins, so a sleeping poller looks at once.
    joined: Arc<Notify>,
}

/// What one look found of an image: its state and, when it failed, why.
struct Seen {
    id: String,
    state: String,
    reason: Option<String>,
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
        let (c, retry) = (clients.clone(), *retry);
        let look = move |ids: Vec<String>| {
            let c = c.clone();
            async move {
                let found = images_by_id(&c, &ids, &retry)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(found
                    .into_iter()
                    .map(|a| Seen {
                        id: a.id,
                        state: a.state,
                        reason: a.state_reason,
                    })
                    .collect())
            }
        };
        self.wait_with(clients.region(), image_id, deadline, look)
            .await
    }

    /// [`CopyWaiter::wait`] with `look` telling what DescribeImages shows of some ids
    /// (the poller a wait starts uses its `look` for every wait of the region).
    async fn wait_with<L, F>(
        &self,
        region: &str,
        image_id: &str,
        deadline: Duration,
        look: L,
    ) -> Result<(), AmiError>
    where
        L: Fn(Vec<String>) -> F + Send + Sync + 'static,
        F: Future<Output = Result<Vec<Seen>, String>> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let start_poller = {
            let mut all = self.lock();
            let r = all.entry(region.to_string()).or_default();
            let now = Instant::now();
            let w = r
                .pending
                .entry(image_id.to_string())
                .or_insert_with(|| Waiting {
                    senders: Vec::new(),
                    since: now,
                    due: now,
                    step: 0,
                });
            w.senders.push(tx);
            let start = !std::mem::replace(&mut r.polling, true);
            if !start {
                r.joined.notify_one();
            }
            start
        };
        if start_poller {
            tokio::spawn(self.clone().poll_region(region.to_string(), look));
        }
        let state_err = |message: String| AmiError::State {
            image_id: image_id.to_string(),
            region: region.to_string(),
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

    /// The ids still waited for in `region` (waits whose caller has gone are dropped)
    /// and when the first of them is due; `None` when none is left, and then the poller
    /// stops, under the same lock a new wait takes.
    fn due(&self, region: &str) -> Option<(Vec<String>, Instant)> {
        let mut all = self.lock();
        let r = all.entry(region.to_string()).or_default();
        r.pending.retain(|_, w| {
            w.senders.retain(|s| !s.is_closed());
            !w.senders.is_empty()
        });
        let due = r.pending.values().map(|w| w.due).min();
        if due.is_none() {
            r.polling = false;
        }
        Some((r.pending.keys().cloned().collect(), due?))
    }

    fn settle(&self, region: &str, image_id: &str, outcome: Outcome) {
        let mut all = self.lock();
        if let Some(w) = all.get_mut(region).and_then(|r| r.pending.remove(image_id)) {
            for s in w.senders {
                let _ = s.send(outcome.clone());
            }
        }
    }

    /// Look at every wait of `region` in one request whenever the first of them is
    /// due (or one joins), until none is left.
    async fn poll_region<L, F>(self, region: String, look: L)
    where
        L: Fn(Vec<String>) -> F,
        F: Future<Output = Result<Vec<Seen>, String>>,
    {
        let joined = self
            .lock()
            .entry(region.clone())
            .or_default()
            .joined
            .clone();
        while let Some((ids, due)) = self.due(&region) {
            if due > Instant::now() {
                tokio::select! {
                    _ = tokio::time::sleep_until(due) => {}
                    _ = joined.notified() => {}
                }
                continue;
            }
            let at = Instant::now();
            let found = match look(ids.clone()).await {
                Ok(found) => found,
                Err(e) => {
                    // Every wait in the region learns it; the next wait starts a new
                    // poller.
                    let message = format!("looking at it failed: {e}");
                    let mut all = self.lock();
                    if let Some(r) = all.get_mut(&region) {
                        for (_, w) in r.pending.drain() {
                            for s in w.senders {
                                let _ = s.send(Err(message.clone()));
                            }
                        }
                        r.polling = false;
                    }
                    return;
                }
            };
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
                            let why = img.reason.as_deref().unwrap_or("no reason given");
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
            // Those looked at and still waited for move on in their own schedules.
            let mut all = self.lock();
            if let Some(r) = all.get_mut(&region) {
                for id in &ids {
                    if let Some(w) = r.pending.get_mut(id) {
                        w.looked_at(at, &self.backoff);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// The looks made: (seconds since the test began, ids looked at).
    type Looks = Vec<(u64, Vec<String>)>;

    /// A world of image states by id, and the looks made at it: (seconds since the
    /// test began, ids looked at).
    #[derive(Clone, Default)]
    struct World {
        states: Arc<Mutex<BTreeMap<String, &'static str>>>,
        looks: Arc<Mutex<Looks>>,
    }

    impl World {
        fn set(&self, id: &str, state: &'static str) {
            self.states.lock().unwrap().insert(id.into(), state);
        }

        fn look(
            &self,
            t0: Instant,
        ) -> impl Fn(Vec<String>) -> std::future::Ready<Result<Vec<Seen>, String>> + Send + Sync + 'static
        {
            let w = self.clone();
            move |mut ids: Vec<String>| {
                ids.sort();
                let states = w.states.lock().unwrap();
                let found = ids
                    .iter()
                    .filter_map(|id| {
                        states.get(id).map(|s| Seen {
                            id: id.clone(),
                            state: s.to_string(),
                            reason: (*s == "failed").then(|| "Copy failed".to_string()),
                        })
                    })
                    .collect();
                w.looks.lock().unwrap().push((t0.elapsed().as_secs(), ids));
                std::future::ready(Ok(found))
            }
        }

        fn looks(&self) -> Looks {
            self.looks.lock().unwrap().clone()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_copy_that_joins_late_is_looked_at_on_its_own_schedule() {
        let waiter = CopyWaiter::default();
        let world = World::default();
        let t0 = Instant::now();
        world.set("ami-a", "pending");
        let a = {
            let (waiter, look) = (waiter.clone(), world.look(t0));
            tokio::spawn(async move {
                waiter
                    .wait_with("r", "ami-a", Duration::from_secs(600), look)
                    .await
            })
        };
        // A alone: at once, then 2, 4, 8 and 16 s apart (0, 2, 6, 14, 30), then every
        // 30 s: its next look is due at 60.
        tokio::time::sleep(Duration::from_secs(40)).await;
        world.set("ami-b", "pending");
        let b = {
            let (waiter, look) = (waiter.clone(), world.look(t0));
            tokio::spawn(async move {
                waiter
                    .wait_with("r", "ami-b", Duration::from_secs(600), look)
                    .await
            })
        };
        tokio::time::sleep(Duration::from_secs(3)).await;
        world.set("ami-b", "available");
        b.await.unwrap().unwrap();
        world.set("ami-a", "failed");
        let e = a.await.unwrap().unwrap_err().to_string();
        assert!(e.contains("image is failed: Copy failed"), "{e}");
        let both = vec!["ami-a".to_string(), "ami-b".to_string()];
        let only_a = vec!["ami-a".to_string()];
        // B is looked at when it joins (40) and on its own schedule (42, 46), with A
        // riding along, not at A's next look (60); the look at 46 serves as A's look
        // due at 60 (within half its 30 s pause), so A's next is at 90.
        assert_eq!(
            world.looks(),
            vec![
                (0, only_a.clone()),
                (2, only_a.clone()),
                (6, only_a.clone()),
                (14, only_a.clone()),
                (30, only_a.clone()),
                (40, both.clone()),
                (42, both.clone()),
                (46, both),
                (90, only_a),
            ]
        );
        // Nothing is left waiting: the poller has stopped.
        assert!(!waiter.lock()["r"].polling);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_look_fails_every_wait_of_the_region_and_the_next_starts_afresh() {
        let waiter = CopyWaiter::default();
        let look = |_ids: Vec<String>| std::future::ready(Err("AccessDenied".to_string()));
        let e = waiter
            .wait_with("r", "ami-a", Duration::from_secs(60), look)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("looking at it failed: AccessDenied"), "{e}");
        let world = World::default();
        world.set("ami-b", "available");
        waiter
            .wait_with(
                "r",
                "ami-b",
                Duration::from_secs(60),
                world.look(Instant::now()),
            )
            .await
            .unwrap();
        assert_eq!(world.looks(), vec![(0, vec!["ami-b".to_string()])]);
    }
}
