//! The TCP probe: non-blocking connects to the instance's port at a steady cadence,
//! each answered by nothing (the network stack is not up), RST (up, port closed) or
//! SYN/ACK (port open).
//!
//! ec2-boot-bench stamps a transition when the first answer of the new kind arrives,
//! which is late by half the cadence on average plus the round trip. We stamp it at
//! the middle of the interval in which it must have happened: between the send of the
//! last probe that did not see it and the send of the first that did, shifted by half
//! that probe's round trip (the SYN reaches the instance half a round trip after it
//! leaves). The expected error is zero and at most half the cadence; BENCHMARKS.md
//! has the figures.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::net::TcpSocket;
use tokio::time::{Instant, MissedTickBehavior};

use super::phases::Phase;

/// How to probe.
#[derive(Debug, Clone, Copy)]
pub struct ProbeOptions {
    /// Time between two connects (ec2-boot-bench: 10 ms).
    pub cadence: Duration,
    /// How long one connect waits for an answer before it counts as "no answer"
    /// (ec2-boot-bench: 1 s).
    pub connect_timeout: Duration,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        ProbeOptions {
            cadence: Duration::from_millis(10),
            connect_timeout: Duration::from_secs(1),
        }
    }
}

/// What one connect got back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Nothing within the connect timeout: the SYN was dropped.
    Silent,
    /// RST: something answers but nothing listens on the port.
    Refused,
    /// SYN/ACK: the port is open.
    Open,
    /// The connect failed locally or with another error (unreachable, EACCES...);
    /// counted as no answer, as ec2-boot-bench does.
    Error(String),
}

/// What watching the port saw.
#[derive(Debug, Clone, Default)]
pub struct PortWatch {
    /// When the port started answering RST (or SYN/ACK, if RST was never seen).
    pub closed: Option<Instant>,
    /// When the port started answering SYN/ACK.
    pub open: Option<Instant>,
    /// When the first RST (or SYN/ACK, if RST was never seen) arrived: the moment
    /// ec2-boot-bench would record, kept for comparison.
    pub closed_answered: Option<Instant>,
    /// When the first SYN/ACK arrived.
    pub open_answered: Option<Instant>,
    /// The phase that did not end within the per-phase timeout.
    pub timed_out: Option<Phase>,
    /// Connects made.
    pub probes: u64,
    /// Connects that failed locally or with an unexpected error.
    pub errors: u64,
}

/// Estimate when the probed state changed, in seconds on any common clock:
/// `prev_sent` is when the last probe that did not see the change was sent (if any),
/// `sent` and `answered` belong to the first probe that saw it; `floor` is the earliest
/// the change can be placed (the start of the phase).
pub fn estimate_transition(prev_sent: Option<f64>, sent: f64, answered: f64, floor: f64) -> f64 {
    let half_rtt = ((answered - sent) / 2.0).max(0.0);
    let at = match prev_sent {
        Some(prev) if prev <= sent => (prev + sent) / 2.0 + half_rtt,
        _ => sent,
    };
    at.clamp(floor.min(answered), answered)
}

/// [`estimate_transition`] on instants.
fn estimate(
    prev_sent: Option<Instant>,
    sent: Instant,
    answered: Instant,
    floor: Instant,
) -> Instant {
    let secs = |t: Instant| t.saturating_duration_since(floor).as_secs_f64();
    let at = estimate_transition(prev_sent.map(secs), secs(sent), secs(answered), 0.0);
    floor + Duration::from_secs_f64(at)
}

/// One non-blocking connect to `target`; returns when it was answered and how.
pub async fn probe_once(target: SocketAddr, connect_timeout: Duration) -> (Instant, Answer) {
    let socket = match target {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    };
    let answer = match socket {
        Err(e) => Answer::Error(e.to_string()),
        Ok(s) => match tokio::time::timeout(connect_timeout, s.connect(target)).await {
            // The connection is not wanted: dropping it closes it.
            Ok(Ok(_stream)) => Answer::Open,
            Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => Answer::Refused,
            Ok(Err(e)) if e.kind() == io::ErrorKind::TimedOut => Answer::Silent,
            Ok(Err(e)) => Answer::Error(e.to_string()),
            Err(_) => Answer::Silent,
        },
    };
    (Instant::now(), answer)
}

/// Probe `target` from `start` (the moment the instance was seen running) until it
/// answers SYN/ACK, or a phase lasts longer than `phase_timeout`: running -> closed
/// is timed from `start`, closed -> open from the first RST.
pub async fn watch_port(
    target: SocketAddr,
    start: Instant,
    opts: &ProbeOptions,
    phase_timeout: Duration,
) -> PortWatch {
    watch_port_with(target, start, opts, phase_timeout, probe_once).await
}

/// [`watch_port`] with `probe` making each connect (the tests give one that answers on
/// tokio's paused clock).
async fn watch_port_with<F, Fut>(
    target: SocketAddr,
    start: Instant,
    opts: &ProbeOptions,
    phase_timeout: Duration,
    probe: F,
) -> PortWatch
where
    F: Fn(SocketAddr, Duration) -> Fut,
    Fut: std::future::Future<Output = (Instant, Answer)>,
{
    let mut ticker = tokio::time::interval_at(start, opts.cadence);
    // A late tick (a busy runtime) sends one connect, not a burst to catch up.
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut in_flight = FuturesUnordered::new();
    let mut sent: Vec<Instant> = Vec::new();
    let mut watch = PortWatch::default();
    let mut deadline = start + phase_timeout;
    loop {
        tokio::select! {
            // Answers first, so a transition is stamped before another connect goes out.
            biased;
            Some((seq, (answered, answer))) = in_flight.next(), if !in_flight.is_empty() => {
                let seq: usize = seq;
                let prev = seq.checked_sub(1).map(|i| sent[i]);
                match answer {
                    Answer::Refused if watch.closed.is_none() => {
                        let at = estimate(prev, sent[seq], answered, start);
                        watch.closed = Some(at);
                        watch.closed_answered = Some(answered);
                        deadline = answered + phase_timeout;
                    }
                    Answer::Open => {
                        let floor = watch.closed.unwrap_or(start);
                        let at = estimate(prev, sent[seq], answered, floor);
                        watch.open = Some(at);
                        watch.open_answered = Some(answered);
                        watch.closed.get_or_insert(at);
                        watch.closed_answered.get_or_insert(answered);
                        return watch;
                    }
                    Answer::Error(e) => {
                        watch.errors += 1;
                        tracing::debug!("connect to {target}: {e} (counted as no answer)");
                    }
                    Answer::Refused | Answer::Silent => {}
                }
            }
            _ = ticker.tick() => {
                let seq = sent.len();
                sent.push(Instant::now());
                watch.probes += 1;
                let answer = probe(target, opts.connect_timeout);
                in_flight.push(async move { (seq, answer.await) });
            }
            _ = tokio::time::sleep_until(deadline) => {
                watch.timed_out = Some(if watch.closed.is_none() {
                    Phase::RunningToClosed
                } else {
                    Phase::ClosedToOpen
                });
                return watch;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_is_placed_mid_interval_plus_half_rtt() {
        // Probes at 0.100 (no answer) and 0.110 (RST back at 0.1102).
        let t = estimate_transition(Some(0.100), 0.110, 0.1102, 0.0);
        assert!((t - 0.1051).abs() < 1e-9, "{t}");
    }

    #[test]
    fn first_probe_seeing_it_gives_its_send_time() {
        assert_eq!(estimate_transition(None, 2.0, 2.001, 1.5), 2.0);
    }

    #[test]
    fn estimate_stays_between_floor_and_answer() {
        // The previous probe was sent before the phase began: never before the floor.
        assert_eq!(estimate_transition(Some(0.0), 0.010, 0.011, 0.009), 0.009);
        // A huge round trip cannot place it after the answer arrived.
        let t = estimate_transition(Some(1.0), 1.01, 1.5, 0.0);
        assert!(t <= 1.5);
    }

    async fn listener_port() -> (tokio::net::TcpListener, SocketAddr) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        (l, a)
    }

    #[tokio::test]
    async fn answers_are_told_apart() {
        let (l, addr) = listener_port().await;
        assert_eq!(
            probe_once(addr, Duration::from_secs(1)).await.1,
            Answer::Open
        );
        drop(l);
        assert_eq!(
            probe_once(addr, Duration::from_secs(1)).await.1,
            Answer::Refused
        );
    }

    // On tokio's paused clock with a probe that answers RST 1 ms after each connect:
    // the cadence, the deadline and the count of probes are exact, whatever the load
    // of the machine (a real socket's answer time is not).
    #[tokio::test(start_paused = true)]
    async fn refused_port_is_closed_then_times_out_open() {
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let start = Instant::now();
        let refused = |_, _| async {
            tokio::time::sleep(Duration::from_millis(1)).await;
            (Instant::now(), Answer::Refused)
        };
        let w = watch_port_with(
            addr,
            start,
            &ProbeOptions::default(),
            Duration::from_millis(200),
            refused,
        )
        .await;
        // The first connect goes out at `start` and is answered 1 ms later: closed from
        // `start` (the first probe, nothing before it).
        assert_eq!(w.closed, Some(start));
        assert_eq!(w.closed_answered, Some(start + Duration::from_millis(1)));
        assert_eq!(w.open, None);
        assert_eq!(w.timed_out, Some(Phase::ClosedToOpen));
        // The deadline is 200 ms after that answer: probes at 0, 10, ..., 200 ms.
        assert_eq!(w.probes, 21, "{} probes", w.probes);
        assert_eq!(
            Instant::now(),
            start + Duration::from_millis(201),
            "gave up at the deadline"
        );
    }

    #[tokio::test]
    async fn a_refused_real_port_answers_refused() {
        let (l, addr) = listener_port().await;
        drop(l);
        let (_, answer) = probe_once(addr, Duration::from_secs(5)).await;
        assert_eq!(answer, Answer::Refused);
    }

    #[tokio::test]
    async fn open_port_counts_as_closed_and_open_at_once() {
        let (_l, addr) = listener_port().await;
        let w = watch_port(
            addr,
            Instant::now(),
            &ProbeOptions::default(),
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(w.closed, w.open);
        assert!(w.open.is_some());
        assert_eq!(w.timed_out, None);
    }
}
