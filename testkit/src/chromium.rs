//! Headless Chromium driven over the DevTools protocol, for tests of ec2ami's pages.
//!
//! The protocol runs over a pipe (`--remote-debugging-pipe`: Chromium reads commands
//! on fd 3 and writes answers on fd 4, each message a JSON text ended by NUL), so no
//! port is opened and nothing can reach the browser but this process. The browser
//! gets a fresh profile and every switch that stops it from calling home.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// How long one protocol command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Where Debian and Ubuntu install Chromium.
const CANDIDATES: &[&str] = &["/usr/bin/chromium", "/usr/bin/chromium-browser"];

/// The install hint a test fails with when there is no Chromium (it never skips).
pub const INSTALL_HINT: &str =
    "chromium is not installed: apt-get install chromium (scripts/test does this)";

/// The first of `candidates` that exists, else the install hint.
fn find_chromium(candidates: &[&str]) -> Result<PathBuf, &'static str> {
    candidates
        .iter()
        .map(Path::new)
        .find(|p| p.exists())
        .map(Path::to_path_buf)
        .ok_or(INSTALL_HINT)
}

/// Debian's chromium (`scripts/test` installs it); panics with the install hint.
pub fn chromium_path() -> PathBuf {
    find_chromium(CANDIDATES).unwrap_or_else(|hint| panic!("{hint}"))
}

/// The switches every test browser gets.
pub const SWITCHES: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--metrics-recording-only",
    "--mute-audio",
];

/// A running browser with one page attached.
pub struct Browser {
    child: Child,
    to_browser: File,
    from_browser: Receiver<Value>,
    next_id: u64,
    session: String,
    _profile: tempfile::TempDir,
    /// Events seen while waiting for answers, oldest first.
    pub events: Vec<Value>,
}

/// A protocol error or a dead browser.
#[derive(Debug)]
pub struct CdpError(pub String);

impl std::fmt::Display for CdpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CdpError {}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid two-element array for pipe2 to fill.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(r, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: pipe2 returned two new descriptors that nothing else owns.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

impl Browser {
    /// Start Chromium with `extra` switches and attach to its first page.
    pub fn start(extra: &[&str]) -> Result<Browser, CdpError> {
        let profile = tempfile::tempdir().map_err(|e| CdpError(e.to_string()))?;
        let (cmd_read, cmd_write) = pipe();
        let (out_read, out_write) = pipe();
        let (child_in, child_out) = (cmd_read.as_raw_fd(), out_write.as_raw_fd());
        let mut cmd = Command::new(chromium_path());
        cmd.args(SWITCHES)
            .arg("--remote-debugging-pipe")
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(extra)
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: only async-signal-safe calls (dup2) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // Copies above 4 first, so neither end is overwritten by the other's dup2.
                let a = libc::fcntl(child_in, libc::F_DUPFD, 10);
                let b = libc::fcntl(child_out, libc::F_DUPFD, 10);
                if a < 0 || b < 0 || libc::dup2(a, 3) < 0 || libc::dup2(b, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| CdpError(format!("starting chromium: {e}")))?;
        drop(cmd_read);
        drop(out_write);
        let (tx, rx) = channel();
        let mut reader = File::from(out_read);
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 65536];
            loop {
                match reader.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
                while let Some(i) = buf.iter().position(|&b| b == 0) {
                    let msg: Vec<u8> = buf.drain(..=i).collect();
                    if let Ok(v) = serde_json::from_slice::<Value>(&msg[..msg.len() - 1])
                        && tx.send(v).is_err()
                    {
                        return;
                    }
                }
            }
        });
        let mut b = Browser {
            child,
            to_browser: File::from(cmd_write),
            from_browser: rx,
            next_id: 0,
            session: String::new(),
            _profile: profile,
            events: Vec::new(),
        };
        let targets = b.browser_call("Target.getTargets", json!({}))?;
        let page = targets["targetInfos"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["type"] == "page"))
            .and_then(|t| t["targetId"].as_str())
            .ok_or_else(|| CdpError(format!("no page target: {targets}")))?
            .to_string();
        let attached = b.browser_call(
            "Target.attachToTarget",
            json!({"targetId": page, "flatten": true}),
        )?;
        b.session = attached["sessionId"]
            .as_str()
            .ok_or_else(|| CdpError("no session".into()))?
            .to_string();
        Ok(b)
    }

    fn send(
        &mut self,
        method: &str,
        params: Value,
        session: Option<&str>,
    ) -> Result<Value, CdpError> {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&msg).expect("JSON");
        bytes.push(0);
        self.to_browser
            .write_all(&bytes)
            .map_err(|e| CdpError(format!("{method}: the browser is gone: {e}")))?;
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.from_browser.recv_timeout(left) {
                Ok(v) if v["id"] == id => {
                    if let Some(e) = v.get("error") {
                        return Err(CdpError(format!("{method}: {e}")));
                    }
                    return Ok(v["result"].clone());
                }
                Ok(v) => self.events.push(v),
                Err(RecvTimeoutError::Timeout) => {
                    return Err(CdpError(format!(
                        "{method}: no answer in {COMMAND_TIMEOUT:?}"
                    )));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(CdpError(format!("{method}: the browser closed the pipe")));
                }
            }
        }
    }

    /// A command to the browser itself (`Browser.*`, `Target.*`).
    pub fn browser_call(&mut self, method: &str, params: Value) -> Result<Value, CdpError> {
        self.send(method, params, None)
    }

    /// A command to the page.
    pub fn call(&mut self, method: &str, params: Value) -> Result<Value, CdpError> {
        let s = self.session.clone();
        self.send(method, params, Some(&s))
    }

    /// Evaluate `expression` in the page (promises awaited) and return its value.
    pub fn eval(&mut self, expression: &str) -> Result<Value, CdpError> {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
        )?;
        if let Some(e) = r.get("exceptionDetails") {
            return Err(CdpError(format!("{expression}: {e}")));
        }
        Ok(r["result"]["value"].clone())
    }

    /// The remote object id of what `expression` evaluates to (an element).
    pub fn object(&mut self, expression: &str) -> Result<String, CdpError> {
        let r = self.call("Runtime.evaluate", json!({"expression": expression}))?;
        r["result"]["objectId"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| CdpError(format!("{expression}: not an object: {r}")))
    }

    /// Go to `url` and wait until `ready` (a JS expression) is true.
    pub fn open(&mut self, url: &str, ready: &str) -> Result<(), CdpError> {
        self.call("Page.navigate", json!({"url": url}))?;
        self.wait_for(ready)
    }

    /// Poll `condition` (a JS expression) until true, with backoff, for up to 30 s.
    pub fn wait_for(&mut self, condition: &str) -> Result<(), CdpError> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut pause = Duration::from_millis(5);
        loop {
            if self.eval(condition).ok() == Some(Value::Bool(true)) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(CdpError(format!("still not true after 30 s: {condition}")));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    /// Press one key (keyDown, then keyUp), as a keyboard would: `key` is the DOM key
    /// name (`Tab`, `Enter`, ` `, `a`), with shift if `shift`.
    pub fn press(&mut self, key: &str, shift: bool) -> Result<(), CdpError> {
        let (code, vk, text) = match key {
            "Tab" => ("Tab", 9, ""),
            "Enter" => ("Enter", 13, "\r"),
            " " => ("Space", 32, " "),
            "ArrowDown" => ("ArrowDown", 40, ""),
            "ArrowUp" => ("ArrowUp", 38, ""),
            "Backspace" => ("Backspace", 8, ""),
            _ => ("", 0, key),
        };
        let modifiers = if shift { 8 } else { 0 };
        let mut down = json!({"type": if text.is_empty() { "rawKeyDown" } else { "keyDown" },
            "key": key, "code": code, "windowsVirtualKeyCode": vk, "nativeVirtualKeyCode": vk,
            "modifiers": modifiers});
        if !text.is_empty() {
            down["text"] = json!(text);
            down["unmodifiedText"] = json!(text);
        }
        self.call("Input.dispatchKeyEvent", down)?;
        self.call(
            "Input.dispatchKeyEvent",
            json!({"type": "keyUp", "key": key, "code": code, "windowsVirtualKeyCode": vk,
                "nativeVirtualKeyCode": vk, "modifiers": modifiers}),
        )?;
        Ok(())
    }

    /// Type `text` one key at a time.
    pub fn type_text(&mut self, text: &str) -> Result<(), CdpError> {
        for c in text.chars() {
            match c {
                '\n' => self.press("Enter", false)?,
                ' ' => self.press(" ", false)?,
                c => self.press(&c.to_string(), false)?,
            }
        }
        Ok(())
    }

    /// A PNG of the whole page.
    pub fn screenshot(&mut self) -> Result<Vec<u8>, CdpError> {
        use base64::Engine as _;
        let r = self.call(
            "Page.captureScreenshot",
            json!({"format": "png", "captureBeyondViewport": true}),
        )?;
        base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap_or(""))
            .map_err(|e| CdpError(format!("screenshot: {e}")))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.browser_call("Browser.close", json!({}));
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_chromium_is_an_error_with_the_install_hint() {
        let none = find_chromium(&["/nonexistent/chromium", "/nonexistent/chromium-browser"]);
        assert_eq!(none, Err(INSTALL_HINT));
        assert!(INSTALL_HINT.contains("apt-get install chromium"));
        let sh = find_chromium(&["/nonexistent/chromium", "/bin/sh"]);
        assert_eq!(sh, Ok(PathBuf::from("/bin/sh")));
    }

    #[test]
    fn starting_without_chromium_panics_with_the_hint() {
        // Browser::start goes through chromium_path: on a machine without Chromium the
        // page tests fail with the hint rather than pass or skip.
        if find_chromium(CANDIDATES).is_err() {
            let e = std::panic::catch_unwind(|| Browser::start(&[]).map(|_| ())).unwrap_err();
            let msg = e.downcast_ref::<String>().cloned().unwrap_or_default();
            assert!(msg.contains("apt-get install chromium"), "{msg}");
        } else {
            let mut b = Browser::start(&[]).expect("chromium starts");
            assert_eq!(b.eval("1 + 1").unwrap(), serde_json::json!(2));
        }
    }
}
