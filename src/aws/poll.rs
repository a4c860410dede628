//! The one poll loop: wait for something AWS does asynchronously (a snapshot to complete,
//! an image to become available, a parameter value to be accepted) by asking again with
//! growing pauses, until it is done, fails, or a deadline passes. Never a fixed count of
//! fixed waits.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// How often to ask: the first pause, doubled after each poll up to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Pause after the first poll.
    pub first: Duration,
    /// Longest pause.
    pub max: Duration,
}

impl Backoff {
    /// The pause before poll `n + 1` (n counts from 0).
    pub fn pause(&self, n: u32) -> Duration {
        self.first.saturating_mul(1u32 << n.min(20)).min(self.max)
    }
}

/// What one poll found.
#[derive(Debug)]
pub enum Poll<T> {
    /// Finished, with its result.
    Ready(T),
    /// Not yet.
    Pending,
}

/// Why [`poll_until`] ended without a result.
#[derive(Debug)]
pub enum PollError<E> {
    /// A poll failed (the thing went wrong, or asking failed for good).
    Failed(E),
    /// Still pending when the deadline came.
    TimedOut {
        /// How long it waited.
        waited: Duration,
    },
}

/// Call `check` until it answers [`Poll::Ready`] or fails, pausing per `backoff`
/// between polls, for at most `deadline` (the last pause is cut short by the deadline,
/// and one last poll is made at it).
pub async fn poll_until<T, E, F, Fut>(
    deadline: Duration,
    backoff: Backoff,
    mut check: F,
) -> Result<T, PollError<E>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Poll<T>, E>>,
{
    let start = Instant::now();
    let until = start + deadline;
    let mut n = 0;
    loop {
        match check().await.map_err(PollError::Failed)? {
            Poll::Ready(v) => return Ok(v),
            Poll::Pending => {}
        }
        let now = Instant::now();
        if now >= until {
            return Err(PollError::TimedOut {
                waited: now - start,
            });
        }
        tokio::time::sleep(backoff.pause(n).min(until - now)).await;
        n += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn pauses_double_up_to_the_ceiling() {
        let b = Backoff {
            first: Duration::from_millis(500),
            max: Duration::from_secs(15),
        };
        let p: Vec<u64> = (0..8).map(|n| b.pause(n).as_millis() as u64).collect();
        assert_eq!(p, [500, 1000, 2000, 4000, 8000, 15000, 15000, 15000]);
        assert_eq!(b.pause(1000), Duration::from_secs(15));
    }

    #[tokio::test(start_paused = true)]
    async fn polls_until_ready() {
        let polls = AtomicU32::new(0);
        let b = Backoff {
            first: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        let t0 = Instant::now();
        let r: Result<u32, PollError<()>> = poll_until(Duration::from_secs(60), b, || async {
            let n = polls.fetch_add(1, Ordering::SeqCst);
            Ok(if n == 4 {
                Poll::Ready(n)
            } else {
                Poll::Pending
            })
        })
        .await;
        assert_eq!(r.unwrap(), 4);
        // Paused clock: exactly the pauses 100 + 200 + 400 + 800 ms were slept.
        assert_eq!(t0.elapsed(), Duration::from_millis(1500));
    }

    #[tokio::test(start_paused = true)]
    async fn times_out_with_a_last_poll_at_the_deadline() {
        let polls = AtomicU32::new(0);
        let b = Backoff {
            first: Duration::from_secs(1),
            max: Duration::from_secs(4),
        };
        let r: Result<(), PollError<()>> = poll_until(Duration::from_secs(10), b, || async {
            polls.fetch_add(1, Ordering::SeqCst);
            Ok(Poll::Pending)
        })
        .await;
        match r {
            Err(PollError::TimedOut { waited }) => assert_eq!(waited, Duration::from_secs(10)),
            other => panic!("{other:?}"),
        }
        // Polls at 0, 1, 3, 7 and the deadline, 10.
        assert_eq!(polls.load(Ordering::SeqCst), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_poll_ends_at_once() {
        let r: Result<(), PollError<&str>> = poll_until(
            Duration::from_secs(10),
            Backoff {
                first: Duration::from_secs(1),
                max: Duration::from_secs(1),
            },
            || async { Err("image is failed") },
        )
        .await;
        assert!(matches!(r, Err(PollError::Failed("image is failed"))));
    }
}
