//! A stand-in for a booting instance's TCP port, on 127.0.0.1: it does not answer
//! SYNs (no network stack yet), then answers them with RST (network up, sshd not yet),
//! then accepts connections (sshd up), on a known schedule. The boot benchmark's tests
//! and its accuracy benchmark probe it with `--connect-to`.
//!
//! "No answer" uses a Linux behaviour: a listener whose accept queue is full drops
//! incoming SYNs (with `net.ipv4.tcp_abort_on_overflow` at its default 0). The fixture
//! listens with backlog 0 and fills the queue with one connection of its own that it
//! never accepts. "RST" is the port with nothing bound. "Accepting" is a new listener.
//!
//! The fixture runs on its own thread with blocking sockets and the OS's sleep, so its
//! timing does not depend on the async runtime whose probe it is measuring. A test that
//! needs to see a given state, rather than measure when it comes, moves the fixture on
//! itself with [`BootFixture::step`] (no sleep that guesses where the schedule is).

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};

/// What the port does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortState {
    /// SYNs are dropped.
    Silent,
    /// SYNs are answered by RST.
    Refusing,
    /// Connections are accepted.
    Accepting,
}

/// When the port changes state, from the fixture's start. `None`: never.
#[derive(Debug, Clone, Copy)]
pub struct BootSchedule {
    /// Start refusing after this long (silent until then).
    pub refuse_after: Option<Duration>,
    /// Start accepting after this long (from the start, not from refusing).
    pub accept_after: Option<Duration>,
}

impl BootSchedule {
    /// Silent for `silent`, refusing for `refusing`, then accepting.
    pub fn boot(silent: Duration, refusing: Duration) -> BootSchedule {
        BootSchedule {
            refuse_after: Some(silent),
            accept_after: Some(silent + refusing),
        }
    }

    /// Silent for ever (an image whose network never comes up).
    pub fn never() -> BootSchedule {
        BootSchedule {
            refuse_after: None,
            accept_after: None,
        }
    }

    /// Accepting from the start.
    pub fn up() -> BootSchedule {
        BootSchedule {
            refuse_after: Some(Duration::ZERO),
            accept_after: Some(Duration::ZERO),
        }
    }
}

/// The states the port has entered, each with when; the condvar wakes at each.
type Switches = (Mutex<Vec<(PortState, Instant)>>, Condvar);

/// A running fixture; dropping it stops its thread and closes the port.
pub struct BootFixture {
    addr: SocketAddr,
    started: Instant,
    stop: Arc<AtomicBool>,
    /// The furthest state [`BootFixture::step`] asked for (1: refusing, 2: accepting).
    steps: Arc<AtomicUsize>,
    switches: Arc<Switches>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for BootFixture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootFixture")
            .field("addr", &self.addr)
            .finish()
    }
}

/// A listener on `port` with an explicit backlog (SO_REUSEADDR, so the port can be
/// bound again right after the previous listener closed).
fn listener(port: u16, backlog: i32) -> io::Result<Socket> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.bind(&SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)).into())?;
    s.listen(backlog)?;
    Ok(s)
}

/// The low end of the kernel's ephemeral port range (default 32768).
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse().ok()))
        .unwrap_or(32768)
}

/// A silent listener on a free port below the ephemeral range. A port from that
/// range could be handed to one of the probe's own connects as its source port while
/// nothing listens on it, and a connect from a port to itself "succeeds" (TCP
/// simultaneous open): the probe would see an open port that is not there.
fn silent_listener() -> io::Result<(Socket, TcpStream, SocketAddr)> {
    let low = ephemeral_low().max(2048);
    let mut last = None;
    for _ in 0..200 {
        let port = fastrand::u16(1024..low);
        match listener(port, 0) {
            Ok(s) => {
                let addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port));
                // This connection fills the accept queue: later SYNs are dropped.
                let filler = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
                return Ok((s, filler, addr));
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no free port")))
}

impl BootFixture {
    /// Start silent now and follow `schedule`.
    pub fn start(schedule: BootSchedule) -> io::Result<BootFixture> {
        let (silent, filler, addr) = silent_listener()?;
        let started = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let steps = Arc::new(AtomicUsize::new(0));
        let switches = Arc::new((
            Mutex::new(vec![(PortState::Silent, started)]),
            Condvar::new(),
        ));
        let thread = {
            let wake = Wake {
                stop: stop.clone(),
                steps: steps.clone(),
            };
            let switches = switches.clone();
            std::thread::Builder::new()
                .name("boot-fixture".into())
                .spawn(move || {
                    follow(schedule, addr, started, silent, filler, &wake, &switches);
                })?
        };
        Ok(BootFixture {
            addr,
            started,
            stop,
            steps,
            switches,
            thread: Some(thread),
        })
    }

    /// The port's address (127.0.0.1:PORT).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// When the fixture started (silent from then).
    pub fn started(&self) -> Instant {
        self.started
    }

    /// When the port actually entered `state` (after the OS's sleep and the socket
    /// calls), if it has.
    pub fn entered(&self, state: PortState) -> Option<Instant> {
        find(
            &self.switches.0.lock().unwrap_or_else(|p| p.into_inner()),
            state,
        )
    }

    /// Wait until the port has entered `state` (at most `timeout`), and say when it
    /// did; `None` when the timeout passed first.
    pub fn wait_entered(&self, state: PortState, timeout: Duration) -> Option<Instant> {
        let (lock, woken) = &*self.switches;
        let guard = lock.lock().unwrap_or_else(|p| p.into_inner());
        let (guard, _) = woken
            .wait_timeout_while(guard, timeout, |v| find(v, state).is_none())
            .unwrap_or_else(|p| p.into_inner());
        find(&guard, state)
    }

    /// Move the port to its next state now (silent to refusing to accepting), whatever
    /// its schedule, and return once it is in it (false: it did not get there within
    /// 10 seconds, or it is accepting already). For a test that must see each state.
    pub fn step(&self) -> bool {
        let (next, k) = match self
            .switches
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last()
        {
            Some((PortState::Silent, _)) => (PortState::Refusing, 1),
            Some((PortState::Refusing, _)) => (PortState::Accepting, 2),
            _ => return false,
        };
        self.steps.fetch_max(k, Ordering::SeqCst);
        self.wait_entered(next, Duration::from_secs(10)).is_some()
    }
}

fn find(switches: &[(PortState, Instant)], state: PortState) -> Option<Instant> {
    switches.iter().find(|(s, _)| *s == state).map(|(_, t)| *t)
}

/// What ends a wait of the fixture's thread early: the fixture dropped, or stepped.
struct Wake {
    stop: Arc<AtomicBool>,
    steps: Arc<AtomicUsize>,
}

impl Drop for BootFixture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sleep until `deadline`, or until stepped to state `step` (1: refusing, 2:
/// accepting); false when stopped.
fn sleep_until(deadline: Instant, wake: &Wake, step: usize) -> bool {
    loop {
        if wake.stop.load(Ordering::SeqCst) {
            return false;
        }
        let now = Instant::now();
        if now >= deadline || wake.steps.load(Ordering::SeqCst) >= step {
            return true;
        }
        // sleep-ok: the schedule itself (the fixture's timing is what is measured).
        std::thread::sleep((deadline - now).min(Duration::from_millis(20)));
    }
}

fn follow(
    schedule: BootSchedule,
    addr: SocketAddr,
    started: Instant,
    silent: Socket,
    filler: TcpStream,
    wake: &Wake,
    switches: &Switches,
) {
    let stop = &*wake.stop;
    let record = |state| {
        switches
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((state, Instant::now()));
        switches.1.notify_all();
    };
    let forever = started + Duration::from_secs(365 * 86400);
    let refuse_at = schedule.refuse_after.map_or(forever, |d| started + d);
    if !sleep_until(refuse_at, wake, 1) {
        return;
    }
    // Take the filler connection out of the queue and reset both ends (linger 0), so
    // no socket is left on the port (a FIN would leave one closing there for a while,
    // and the port could not be listened on again), then close the listener.
    if let Ok((child, _)) = silent.accept() {
        let _ = child.set_linger(Some(Duration::ZERO));
        drop(child);
    }
    let _ = socket2::SockRef::from(&filler).set_linger(Some(Duration::ZERO));
    drop(filler);
    drop(silent);
    record(PortState::Refusing);
    let accept_at = schedule.accept_after.map_or(forever, |d| started + d);
    if !sleep_until(accept_at, wake, 2) {
        return;
    }
    // The port was left with no socket at all; should the kernel still hold one, try
    // again for a moment rather than stay refusing for ever.
    let give_up = Instant::now() + Duration::from_secs(1);
    let l: TcpListener = loop {
        match listener(addr.port(), 128) {
            Ok(s) => break s.into(),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && Instant::now() < give_up => {
                // sleep-ok: the pace of a retry (bounded by give_up), not synchronisation.
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => {
                eprintln!("boot fixture: cannot listen on {addr} again: {e}");
                return;
            }
        }
    };
    record(PortState::Accepting);
    if l.set_nonblocking(true).is_err() {
        return;
    }
    // The kernel completes handshakes by itself; accepting only keeps the queue short.
    // sleep-ok (below): the pace of a non-blocking accept loop, not synchronisation.
    while !stop.load(Ordering::SeqCst) {
        match l.accept() {
            Ok((conn, _)) => drop(conn),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Connect with a timeout: what a SYN gets back.
    fn knock(addr: SocketAddr) -> PortState {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(150)) {
            Ok(_) => PortState::Accepting,
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => PortState::Refusing,
            Err(_) => PortState::Silent,
        }
    }

    #[test]
    fn goes_through_the_three_states_in_order() {
        // Moved on by the test, so each state is seen whatever the machine's speed.
        let f = BootFixture::start(BootSchedule::never()).unwrap();
        assert!(f.addr().port() < ephemeral_low());
        assert_eq!(knock(f.addr()), PortState::Silent);
        assert!(f.step());
        assert_eq!(knock(f.addr()), PortState::Refusing);
        assert!(f.step());
        assert_eq!(knock(f.addr()), PortState::Accepting);
        assert_eq!(knock(f.addr()), PortState::Accepting);
        assert!(!f.step(), "nothing after accepting");
        let refused = f.entered(PortState::Refusing).unwrap();
        let accepted = f.entered(PortState::Accepting).unwrap();
        assert!(f.started() <= refused && refused <= accepted);
    }

    #[test]
    fn follows_its_schedule_and_is_never_early() {
        // An ordering, not a duration: each switch comes at or after its moment in the
        // schedule (however late a loaded machine makes it), refusing before accepting.
        let f = BootFixture::start(BootSchedule::boot(
            Duration::from_millis(200),
            Duration::from_millis(200),
        ))
        .unwrap();
        let accepted = f
            .wait_entered(PortState::Accepting, Duration::from_secs(60))
            .expect("accepts in the end");
        let refused = f.entered(PortState::Refusing).unwrap();
        assert!(refused >= f.started() + Duration::from_millis(200));
        assert!(accepted >= f.started() + Duration::from_millis(400));
        assert!(refused <= accepted);
        assert_eq!(knock(f.addr()), PortState::Accepting);
    }

    #[test]
    fn up_accepts_at_once_and_never_stays_silent() {
        // Many times: the port must be free to listen on again at once, every time.
        for _ in 0..20 {
            let f = BootFixture::start(BootSchedule::up()).unwrap();
            assert!(
                f.wait_entered(PortState::Accepting, Duration::from_secs(10))
                    .is_some(),
                "{f:?} never accepted"
            );
            assert_eq!(knock(f.addr()), PortState::Accepting);
        }
        let g = BootFixture::start(BootSchedule::never()).unwrap();
        assert_eq!(knock(g.addr()), PortState::Silent);
        assert_eq!(g.entered(PortState::Refusing), None);
    }
}
