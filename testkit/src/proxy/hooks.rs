//! Hooks that synchronise a test with the requests of the program under test, instead
//! of sleeps and rates: a [`Gate`] holds the requests it matches (before they are
//! forwarded) until the test opens it, and tells the test when they arrive;
//! [`FaultProxy::answered`](super::FaultProxy::answered) wakes the test when a request
//! has been answered (recorded).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, watch};

use super::lock;

/// Which requests a gate holds: those of `operation` (`None`: any) after the first
/// `after` of them, which pass.
pub(super) struct GateState {
    operation: Option<String>,
    after: usize,
    seen: AtomicUsize,
    held: AtomicUsize,
    arrival: Notify,
    open: watch::Sender<bool>,
}

/// A gate in a [`FaultProxy`](super::FaultProxy), made by
/// [`FaultProxy::hold`](super::FaultProxy::hold): matching requests wait (the program
/// sees a slow answer) until [`Gate::open`]; dropping the gate opens it too.
pub struct Gate {
    state: Arc<GateState>,
}

impl Gate {
    /// Wait until `n` requests have been held (at most `timeout`; false when it passed).
    pub async fn arrived(&self, n: usize, timeout: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.state.arrival.notified();
                if self.state.held.load(Ordering::SeqCst) >= n {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }

    /// How many requests have been held so far.
    pub fn held(&self) -> usize {
        self.state.held.load(Ordering::SeqCst)
    }

    /// Let every held request, and every later one, through.
    pub fn open(&self) {
        self.state.open.send_replace(true);
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.open();
    }
}

impl super::FaultProxy {
    /// Hold every request of `operation` (`None`: any request) after the first `after`
    /// of them, until the returned gate is opened. Held requests are recorded when they
    /// complete, as any other.
    pub fn hold(&self, operation: Option<&str>, after: usize) -> Gate {
        let (open, _) = watch::channel(false);
        let state = Arc::new(GateState {
            operation: operation.map(str::to_string),
            after,
            seen: AtomicUsize::new(0),
            held: AtomicUsize::new(0),
            arrival: Notify::new(),
            open,
        });
        lock(&self.inner.gates).push(state.clone());
        Gate { state }
    }
}

impl super::FaultProxy {
    /// Wait until `n` requests of `operation` have been recorded (answered, faulted
    /// ones included; [`clear_requests`](super::FaultProxy::clear_requests) starts the
    /// count again), at most `timeout`: false when it passed. A hook, not a poll: the
    /// proxy wakes the waiter at each request it records.
    pub async fn answered(&self, operation: &str, n: usize, timeout: Duration) -> bool {
        let wait = async {
            loop {
                // Woken by a notify_waiters from its creation on, polled or not.
                let notified = self.inner.recorded.notified();
                if self.count(operation) >= n {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }
}

impl super::ProxyInner {
    /// Wait at every closed gate that holds a request of `op`.
    pub(super) async fn pass_gates(&self, op: &str) {
        let gates: Vec<Arc<GateState>> = {
            let mut gates = lock(&self.gates);
            gates.retain(|g| Arc::strong_count(g) > 1 && !*g.open.borrow());
            gates
                .iter()
                .filter(|g| g.operation.as_deref().is_none_or(|o| o == op))
                .cloned()
                .collect()
        };
        for g in gates {
            if g.seen.fetch_add(1, Ordering::SeqCst) < g.after {
                continue;
            }
            let mut open = g.open.subscribe();
            g.held.fetch_add(1, Ordering::SeqCst);
            g.arrival.notify_waiters();
            let _ = open.wait_for(|o| *o).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;

    #[tokio::test]
    async fn a_gate_holds_after_n_until_opened() {
        let (ebs, proxy) = strict_and_proxy(vec![]).await;
        let gate = proxy.hold(Some("StartSnapshot"), 1);
        let c = client();
        let base = proxy.url();
        // The first passes.
        let (st, _, _) = start_snapshot(&c, &base).await;
        assert_eq!(st, 201);
        // The second is held until the gate opens.
        let task = {
            let (c, base) = (c.clone(), base.clone());
            tokio::spawn(async move { start_snapshot(&c, &base).await.0 })
        };
        assert!(gate.arrived(1, Duration::from_secs(10)).await);
        assert_eq!(ebs.snapshot_ids().len(), 1, "held, not forwarded");
        assert!(!task.is_finished());
        // Other operations pass.
        assert_eq!(
            send(
                &c,
                "GET",
                &format!("{base}/snapshots/snap-x/blocks"),
                &ebs_h(),
                ""
            )
            .await
            .unwrap()
            .0,
            404
        );
        gate.open();
        assert_eq!(task.await.unwrap(), 201);
        assert_eq!(ebs.snapshot_ids().len(), 2);
        assert_eq!(gate.held(), 1);
        // An opened gate holds nothing more.
        assert_eq!(start_snapshot(&c, &base).await.0, 201);
        assert!(!gate.arrived(2, Duration::from_millis(50)).await);
    }

    #[tokio::test]
    async fn answered_wakes_when_the_nth_request_is_recorded() {
        let (_ebs, proxy) = strict_and_proxy(vec![]).await;
        let gate = proxy.hold(Some("StartSnapshot"), 1);
        let c = client();
        let base = proxy.url();
        assert_eq!(start_snapshot(&c, &base).await.0, 201);
        assert!(
            proxy
                .answered("StartSnapshot", 1, Duration::from_secs(10))
                .await
        );
        // The second is held, so not answered: the wait gives up.
        let task = {
            let (c, base) = (c.clone(), base.clone());
            tokio::spawn(async move { start_snapshot(&c, &base).await.0 })
        };
        assert!(gate.arrived(1, Duration::from_secs(10)).await);
        assert!(
            !proxy
                .answered("StartSnapshot", 2, Duration::from_millis(50))
                .await
        );
        // Waiting, then released: the waiter wakes once it is recorded.
        let waiter = {
            let proxy = std::sync::Arc::new(proxy);
            let p = proxy.clone();
            (
                tokio::spawn(async move {
                    p.answered("StartSnapshot", 2, Duration::from_secs(10))
                        .await
                }),
                proxy,
            )
        };
        gate.open();
        assert_eq!(task.await.unwrap(), 201);
        assert!(waiter.0.await.unwrap());
        assert_eq!(waiter.1.count("StartSnapshot"), 2);
    }
}
