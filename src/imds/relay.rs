//! The per-connection relay QEMU runs for the guest's metadata connections
//! (`guestfwd=tcp:169.254.169.254:80-cmd:WRAPPER`): the connection is the relay's
//! stdin and stdout; it joins them to the Unix socket on which the `ec2ami boot`
//! process serves the metadata service, so session tokens live in that one process.
//!
//! Blocking I/O on two threads: nothing here needs an async runtime, and the process
//! ends as soon as the service's side is done.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::Path;

/// Copy stdin to the socket and the socket to stdout until the service closes its side
/// (or the guest closes and the service has answered).
pub fn relay(socket: &Path) -> io::Result<()> {
    let sock = UnixStream::connect(socket)?;
    let mut to_service = sock.try_clone()?;
    std::thread::spawn(move || {
        let mut stdin = io::stdin().lock();
        let mut buf = [0u8; 16 * 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to_service.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        // The guest closed its side: let the service finish its answer.
        let _ = to_service.shutdown(Shutdown::Write);
    });
    let mut from_service = sock;
    let mut stdout = io::stdout().lock();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from_service.read(&mut buf)? {
            0 => return Ok(()),
            n => {
                stdout.write_all(&buf[..n])?;
                stdout.flush()?;
            }
        }
    }
}
