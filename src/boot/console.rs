//! A boot's console, read as a timeline: raw bytes split into clean lines (terminal
//! escapes and control characters removed, `\r`, `\n` and `\r\n` all ending a line),
//! each stamped with the moment its first byte arrived; boot markers found in them
//! (boot loader, kernel, userland, with Linux and FreeBSD defaults, and the user's own);
//! failures recognised as soon as they are printed (a kernel panic, a firmware with
//! nothing to boot); the SSH host keys the guest printed.
//!
//! Nothing here knows where the console comes from: `ec2ami boot` feeds it QEMU's
//! serial port as it arrives, and the same code reads an EC2 instance's console output.

use std::collections::VecDeque;

use regex_lite::Regex;
use serde::Serialize;
use sha2::{Digest, Sha256};

/// Where a console line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// The serial console.
    Serial,
    /// The firmware's debug port (SeaBIOS prints there, not on the serial port).
    Firmware,
}

/// One console line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Line {
    /// Seconds from the start of the boot to the arrival of the line's first byte.
    pub at: f64,
    /// The text, without escapes or control characters.
    pub text: String,
    /// Where it came from.
    pub stream: Stream,
}

impl Line {
    /// The line as the console log file has it: `[   12.345] text`.
    pub fn logged(&self) -> String {
        match self.stream {
            Stream::Serial => format!("[{:9.3}] {}", self.at, self.text),
            Stream::Firmware => format!("[{:9.3}] firmware| {}", self.at, self.text),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Escape {
    #[default]
    None,
    /// After ESC.
    Esc,
    /// In a control sequence (ESC [ ... final byte).
    Csi,
    /// In an operating-system command (ESC ] ... BEL or ESC \).
    Osc,
    /// ESC followed by intermediate bytes (ESC ( B ...), until the final byte.
    Intermediate,
}

/// Splits a byte stream into lines as it arrives.
#[derive(Debug)]
pub struct LineSplitter {
    stream: Stream,
    current: Vec<u8>,
    started: Option<f64>,
    after_cr: bool,
    escape: Escape,
}

impl LineSplitter {
    /// A splitter for one stream.
    pub fn new(stream: Stream) -> LineSplitter {
        LineSplitter {
            stream,
            current: Vec::new(),
            started: None,
            after_cr: false,
            escape: Escape::None,
        }
    }

    fn end_line(&mut self, out: &mut Vec<Line>) {
        let text = String::from_utf8_lossy(&self.current)
            .trim_end()
            .to_string();
        if !text.is_empty() {
            out.push(Line {
                at: self.started.unwrap_or(0.0),
                text,
                stream: self.stream,
            });
        }
        self.current.clear();
        self.started = None;
    }

    /// Feed bytes that arrived at `at`; returns the lines they completed.
    pub fn push(&mut self, bytes: &[u8], at: f64) -> Vec<Line> {
        let mut out = Vec::new();
        for &b in bytes {
            match self.escape {
                Escape::Esc => {
                    self.escape = match b {
                        b'[' => Escape::Csi,
                        b']' => Escape::Osc,
                        0x20..=0x2f => Escape::Intermediate,
                        _ => Escape::None,
                    };
                    continue;
                }
                Escape::Csi => {
                    if (0x40..=0x7e).contains(&b) {
                        self.escape = Escape::None;
                    }
                    continue;
                }
                Escape::Intermediate => {
                    if !(0x20..=0x2f).contains(&b) {
                        self.escape = Escape::None;
                    }
                    continue;
                }
                Escape::Osc => {
                    if b == 0x07 {
                        self.escape = Escape::None;
                    } else if b == 0x1b {
                        self.escape = Escape::Esc;
                    }
                    continue;
                }
                Escape::None => {}
            }
            let after_cr = std::mem::take(&mut self.after_cr);
            match b {
                0x1b => self.escape = Escape::Esc,
                b'\n' if after_cr => {}
                b'\n' => self.end_line(&mut out),
                b'\r' => {
                    self.end_line(&mut out);
                    self.after_cr = true;
                }
                b'\t' => self.add(b, at),
                0..=0x1f | 0x7f => {}
                _ => self.add(b, at),
            }
        }
        out
    }

    fn add(&mut self, b: u8, at: f64) {
        if self.started.is_none() {
            self.started = Some(at);
        }
        self.current.push(b);
    }

    /// The line being received (a prompt has no newline), if any.
    pub fn partial(&self) -> Option<Line> {
        let text = String::from_utf8_lossy(&self.current)
            .trim_end()
            .to_string();
        (!text.is_empty()).then(|| Line {
            at: self.started.unwrap_or(0.0),
            text,
            stream: self.stream,
        })
    }

    /// The end of the stream: the unfinished line, if any.
    pub fn finish(&mut self) -> Option<Line> {
        let mut out = Vec::new();
        self.end_line(&mut out);
        out.pop()
    }
}

/// A boot marker: the first console line matching `pattern` marks `name`.
#[derive(Debug, Clone)]
pub struct Marker {
    /// Its name (`loader`, `kernel`, `userland`, or the user's).
    pub name: String,
    /// What it matches.
    pub pattern: Regex,
    /// One of the boot stages, with its default pattern.
    pub default: bool,
}

/// The boot stages, in order.
const STAGES: [&str; 3] = ["loader", "kernel", "userland"];

/// The default boot loader marker: the firmware starting the boot loader (SeaBIOS
/// `Booting from Hard Disk`, OVMF `BdsDxe: starting`), or a loader's first words
/// (GRUB; FreeBSD's BTX, boot1.efi and loader).
pub const LOADER: &str = r"Booting from Hard Disk|BdsDxe: starting Boot|Welcome to GRUB|GNU GRUB|Loading Linux|BTX loader|>> FreeBSD EFI boot block|FreeBSD/\S+ (EFI )?(bootstrap )?loader|^Consoles: ";
/// The default kernel marker: Linux's banner, FreeBSD's `---<<BOOT>>---` and copyright.
pub const KERNEL: &str =
    r"Linux version \d|---<<BOOT>>---|Copyright \(c\) 1992-\d+ The FreeBSD Project";
/// The default userland marker: the first process runs (Linux: `Run /init as init
/// process`, systemd's welcome, SysV init; FreeBSD: rc's first lines).
pub const USERLAND: &str = r"Run /\S*init as init process|^Welcome to .+!|^INIT: version|^Setting hostuuid: |^Setting hostid: |^Starting file system checks";

/// Console lines that end a boot at once, with what they mean.
const FAILURES: &[(&str, &str)] = &[
    (r"Kernel panic - not syncing", "the kernel panicked"),
    (r"^panic: ", "the kernel panicked"),
    (r"^Fatal trap \d+", "the kernel took a fatal trap"),
    (
        r"^mountroot> ",
        "the kernel could not mount its root file system",
    ),
    (r"^No bootable device", "the firmware found nothing to boot"),
    (
        r"No bootable option or device was found",
        "the firmware found nothing to boot",
    ),
    (
        r#"BdsDxe: starting Boot\S+ "EFI Internal Shell""#,
        "the firmware found nothing to boot (it started its shell)",
    ),
    (r"^grub rescue> ", "GRUB could not find its configuration"),
];

/// The markers and failure patterns a console is read with.
#[derive(Debug, Clone)]
pub struct Markers {
    markers: Vec<Marker>,
    failures: Vec<(Regex, &'static str)>,
}

impl Markers {
    /// The default markers plus `extra` (`NAME`, `REGEX`); an extra marker with a
    /// default name replaces the default.
    pub fn new(extra: &[(String, String)]) -> Result<Markers, String> {
        let mut markers = vec![
            ("loader".to_string(), LOADER.to_string(), true),
            ("kernel".to_string(), KERNEL.to_string(), true),
            ("userland".to_string(), USERLAND.to_string(), true),
        ];
        for (name, re) in extra {
            if !is_marker_name(name) {
                return Err(format!(
                    "marker name `{name}`: use letters, digits, `-` and `_` (not `qemu_started`, `firmware` or `ssh`)"
                ));
            }
            match markers.iter_mut().find(|(n, _, _)| n == name) {
                Some(m) => {
                    m.1 = re.clone();
                    m.2 = false;
                }
                None => markers.push((name.clone(), re.clone(), false)),
            }
        }
        let markers = markers
            .into_iter()
            .map(|(name, re, default)| {
                let pattern = Regex::new(&format!("(?m){re}"))
                    .map_err(|e| format!("marker `{name}`: bad pattern `{re}`: {e}"))?;
                Ok(Marker {
                    name,
                    pattern,
                    default,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let failures = FAILURES
            .iter()
            .map(|(re, why)| (Regex::new(re).expect("built-in patterns compile"), *why))
            .collect();
        Ok(Markers { markers, failures })
    }

    /// The marker names, in order.
    #[cfg(test)]
    pub fn names(&self) -> Vec<&str> {
        self.markers.iter().map(|m| m.name.as_str()).collect()
    }

    /// What a line says went wrong, if it is a failure.
    pub fn failure(&self, text: &str) -> Option<&'static str> {
        self.failures
            .iter()
            .find(|(re, _)| re.is_match(text))
            .map(|(_, why)| *why)
    }
}

impl Default for Markers {
    fn default() -> Self {
        Markers::new(&[]).expect("the default markers compile")
    }
}

fn is_marker_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 40
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && !["qemu_started", "firmware", "ssh"].contains(&name)
}

/// Parse `NAME=REGEX` (for `--marker`).
pub fn parse_marker(s: &str) -> Result<(String, String), String> {
    let (name, re) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=REGEX, got `{s}`"))?;
    if !is_marker_name(name) {
        return Err(format!(
            "marker name `{name}`: use letters, digits, `-` and `_` (not qemu_started, firmware or ssh)"
        ));
    }
    Regex::new(re).map_err(|e| format!("marker `{name}`: bad pattern `{re}`: {e}"))?;
    Ok((name.to_string(), re.to_string()))
}

/// A moment of the boot.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Mark {
    /// `qemu_started`, `firmware`, `loader`, `kernel`, `userland`, `ssh`, or a user's.
    pub name: String,
    /// Seconds from the start of the boot.
    pub seconds: f64,
    /// The console line that marked it (empty for marks that are not lines).
    pub line: String,
}

/// What a console said went wrong.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConsoleFailure {
    /// What it means.
    pub reason: String,
    /// The line.
    pub line: Line,
}

/// Reads a console as it arrives: first output, markers, failures, the last lines.
#[derive(Debug)]
pub struct Tracker {
    markers: Markers,
    found: Vec<Option<Mark>>,
    first_output: Option<f64>,
    failure: Option<ConsoleFailure>,
    tail: VecDeque<String>,
    lines: Vec<Line>,
}

/// Console lines kept for an error message.
pub const TAIL_LINES: usize = 15;

impl Tracker {
    /// A tracker with these markers.
    pub fn new(markers: Markers) -> Tracker {
        let n = markers.markers.len();
        Tracker {
            markers,
            found: vec![None; n],
            first_output: None,
            failure: None,
            tail: VecDeque::new(),
            lines: Vec::new(),
        }
    }

    /// Bytes arrived at `at` (the first one marks the firmware's first output).
    pub fn output_at(&mut self, at: f64) {
        if self.first_output.is_none() {
            self.first_output = Some(at);
        }
    }

    /// Read a complete line. Returns the failure it shows, the first time one shows.
    pub fn line(&mut self, line: Line) -> Option<ConsoleFailure> {
        self.output_at(line.at);
        let failed = self.check_failure(&line);
        if failed.is_none() {
            // A line marks at most one of the boot stages (loader, kernel, userland): the
            // first whose pattern it matches, found already or not, so GRUB's "Welcome
            // to GRUB!" is never systemd's "Welcome to Debian!". Other markers are free.
            let mut stage_taken = false;
            for (m, found) in self.markers.markers.iter().zip(self.found.iter_mut()) {
                let stage = STAGES.contains(&m.name.as_str()) && m.default;
                if stage && stage_taken {
                    continue;
                }
                if m.pattern.is_match(&line.text) {
                    if stage {
                        stage_taken = true;
                    }
                    if found.is_none() {
                        *found = Some(Mark {
                            name: m.name.clone(),
                            seconds: line.at,
                            line: line.text.clone(),
                        });
                    }
                }
            }
        }
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(line.logged());
        self.lines.push(line);
        failed
    }

    /// Look at an unfinished line (a prompt): only for failures.
    pub fn partial(&mut self, line: &Line) -> Option<ConsoleFailure> {
        self.check_failure(line)
    }

    fn check_failure(&mut self, line: &Line) -> Option<ConsoleFailure> {
        if self.failure.is_some() {
            return None;
        }
        let reason = self.markers.failure(&line.text)?;
        let f = ConsoleFailure {
            reason: reason.to_string(),
            line: line.clone(),
        };
        self.failure = Some(f.clone());
        Some(f)
    }

    /// The markers found, in marker order (firmware output first).
    pub fn marks(&self) -> Vec<Mark> {
        let mut out = Vec::new();
        if let Some(t) = self.first_output {
            out.push(Mark {
                name: "firmware".into(),
                seconds: t,
                line: String::new(),
            });
        }
        out.extend(self.found.iter().flatten().cloned());
        out
    }

    /// The last lines, as logged.
    pub fn tail(&self) -> Vec<String> {
        self.tail.iter().cloned().collect()
    }

    /// Every line read.
    pub fn lines(&self) -> &[Line] {
        &self.lines
    }
}

/// One SSH host key: its type and base64 blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostKey {
    /// `ssh-ed25519`, `ecdsa-sha2-nistp256`, `ssh-rsa`...
    pub kind: String,
    /// The base64 key blob.
    pub blob: String,
}

impl HostKey {
    /// Its SHA-256 fingerprint as `ssh-keygen -l` prints it (`SHA256:...`).
    pub fn fingerprint(&self) -> Option<String> {
        use base64::Engine;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(&self.blob)
            .ok()?;
        Some(format!(
            "SHA256:{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(Sha256::digest(raw))
        ))
    }
}

/// The host keys a console printed: whole keys (cloud-init's `BEGIN SSH HOST KEY
/// KEYS` block) and fingerprints (the `BEGIN SSH HOST KEY FINGERPRINTS` block of
/// cloud-init and FreeBSD's ec2_loghostkey), the last block of each kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ConsoleHostKeys {
    /// Whole keys.
    pub keys: Vec<HostKey>,
    /// `SHA256:...` fingerprints.
    pub fingerprints: Vec<String>,
}

/// Find the host keys in console text (lines may carry a prefix such as `ec2: ` or a
/// syslog stamp).
pub fn host_keys<'a>(lines: impl IntoIterator<Item = &'a str>) -> ConsoleHostKeys {
    let key_re = Regex::new(
        r"(ssh-ed25519|ssh-rsa|ssh-dss|ecdsa-sha2-nistp256|ecdsa-sha2-nistp384|ecdsa-sha2-nistp521) (AAAA[A-Za-z0-9+/]+=*)",
    )
    .expect("pattern compiles");
    let fp_re = Regex::new(r"SHA256:[A-Za-z0-9+/]{43}").expect("pattern compiles");
    #[derive(PartialEq)]
    enum In {
        Nothing,
        Keys,
        Fingerprints,
    }
    let mut state = In::Nothing;
    let mut out = ConsoleHostKeys::default();
    let (mut keys, mut fps) = (Vec::new(), Vec::new());
    for l in lines {
        if l.contains("-----BEGIN SSH HOST KEY KEYS-----") {
            state = In::Keys;
            keys.clear();
        } else if l.contains("-----END SSH HOST KEY KEYS-----") {
            if state == In::Keys {
                out.keys = std::mem::take(&mut keys);
            }
            state = In::Nothing;
        } else if l.contains("-----BEGIN SSH HOST KEY FINGERPRINTS-----") {
            state = In::Fingerprints;
            fps.clear();
        } else if l.contains("-----END SSH HOST KEY FINGERPRINTS-----") {
            if state == In::Fingerprints {
                out.fingerprints = std::mem::take(&mut fps);
            }
            state = In::Nothing;
        } else if state == In::Keys {
            if let Some(c) = key_re.captures(l) {
                keys.push(HostKey {
                    kind: c[1].to_string(),
                    blob: c[2].to_string(),
                });
            }
        } else if state == In::Fingerprints {
            fps.extend(fp_re.find_iter(l).map(|m| m.as_str().to_string()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(lines: &[Line]) -> Vec<&str> {
        lines.iter().map(|l| l.text.as_str()).collect()
    }

    #[test]
    fn lines_are_split_cleaned_and_stamped_on_first_byte() {
        let mut s = LineSplitter::new(Stream::Serial);
        let mut out = s.push(b"\x1b[2J\x1b[01;01HBdsDxe: loading Boot0001\r\n", 1.0);
        out.extend(s.push(b"\x1b[0m\x1b[30m\x1b[47mWelcome to ", 2.0));
        out.extend(s.push(
            b"GRUB!\r\r\n\x1b(B\x1b]0;title\x07Loading\tLinux ...\r",
            3.0,
        ));
        out.extend(s.push(b"\n[    0.000000] Linux version 6.1\r\n", 4.0));
        assert_eq!(
            texts(&out),
            [
                "BdsDxe: loading Boot0001",
                "Welcome to GRUB!",
                "Loading\tLinux ...",
                "[    0.000000] Linux version 6.1"
            ]
        );
        assert_eq!(out[1].at, 2.0, "stamped when its first byte arrived");
        assert_eq!(out[2].at, 3.0);
        assert_eq!(out[3].at, 4.0);
        let mut p = LineSplitter::new(Stream::Serial);
        p.push(b"ec2ami-test login: ", 5.0);
        assert_eq!(p.partial().unwrap().text, "ec2ami-test login:");
        assert_eq!(p.finish().unwrap().at, 5.0);
        assert!(p.finish().is_none());
    }

    fn line(at: f64, text: &str) -> Line {
        Line {
            at,
            text: text.into(),
            stream: Stream::Serial,
        }
    }

    #[test]
    fn linux_boot_markers() {
        let mut t = Tracker::new(Markers::default());
        t.output_at(0.4);
        for (at, text) in [
            (
                1.0,
                "BdsDxe: loading Boot0001 \"UEFI Misc Device\" from PciRoot(0x0)",
            ),
            (
                1.1,
                "BdsDxe: starting Boot0001 \"UEFI Misc Device\" from PciRoot(0x0)",
            ),
            (1.5, "Welcome to GRUB!"),
            (1.6, "Loading Linux 6.1.0-50-cloud-amd64 ..."),
            (
                2.0,
                "[    0.000000] Linux version 6.1.0-50-cloud-amd64 (debian-kernel@)",
            ),
            (6.0, "[    3.1] Run /init as init process"),
            (9.0, "Welcome to Debian GNU/Linux 12 (bookworm)!"),
        ] {
            assert!(t.line(line(at, text)).is_none());
        }
        let marks: Vec<(String, f64)> =
            t.marks().into_iter().map(|m| (m.name, m.seconds)).collect();
        assert_eq!(
            marks,
            [
                ("firmware".to_string(), 0.4),
                ("loader".into(), 1.1),
                ("kernel".into(), 2.0),
                ("userland".into(), 6.0)
            ]
        );
    }

    #[test]
    fn freebsd_boot_markers() {
        let mut t = Tracker::new(Markers::default());
        for (at, text) in [
            (0.2, "Booting from Hard Disk..."),
            (2.0, "Consoles: internal video/keyboard  serial port"),
            (3.0, "FreeBSD/x86 bootstrap loader, Revision 1.1"),
            (5.0, "---<<BOOT>>---"),
            (5.1, "Copyright (c) 1992-2024 The FreeBSD Project."),
            (9.0, "Trying to mount root from ufs:/dev/gpt/rootfs [rw]..."),
            (
                9.5,
                "Setting hostuuid: ec2d0c0e-0000-0000-0000-000000000000.",
            ),
        ] {
            t.line(line(at, text));
        }
        let m = t.marks();
        let at = |n: &str| m.iter().find(|x| x.name == n).map(|x| x.seconds);
        assert_eq!(at("loader"), Some(0.2));
        assert_eq!(at("kernel"), Some(5.0));
        assert_eq!(at("userland"), Some(9.5));
    }

    #[test]
    fn failures_are_seen_at_once_and_not_taken_as_markers() {
        let mut t = Tracker::new(Markers::default());
        t.line(line(
            1.0,
            "BdsDxe: failed to load Boot0001 \"UEFI Misc Device\": Not Found",
        ));
        let f = t
            .line(line(
                1.2,
                "BdsDxe: starting Boot0002 \"EFI Internal Shell\" from Fv(7CB8)",
            ))
            .unwrap();
        assert!(f.reason.contains("nothing to boot"), "{}", f.reason);
        assert!(t.marks().iter().all(|m| m.name != "loader"));
        assert_eq!(t.tail().len(), 2);
        let mut p = Tracker::new(Markers::default());
        let f = p
            .line(line(
                4.0,
                "[    1.2] Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)",
            ))
            .unwrap();
        assert_eq!(f.reason, "the kernel panicked");
        assert!(
            p.line(line(4.1, "---[ end Kernel panic - not syncing ]---"))
                .is_none()
        );
        let mut g = Tracker::new(Markers::default());
        assert!(g.partial(&line(2.0, "grub rescue> ")).is_some());
        assert!(Markers::default().failure("panic: page fault").is_some());
        assert!(Markers::default().failure("no panic: here").is_none());
    }

    #[test]
    fn user_markers_add_and_replace() {
        let extra = vec![
            (
                "sshd".to_string(),
                r"Started .*OpenBSD Secure Shell".to_string(),
            ),
            ("kernel".to_string(), r"^KERNEL GO".to_string()),
        ];
        let m = Markers::new(&extra).unwrap();
        assert_eq!(m.names(), ["loader", "kernel", "userland", "sshd"]);
        let mut t = Tracker::new(m);
        t.line(line(1.0, "Linux version 6.1"));
        t.line(line(2.0, "KERNEL GO"));
        t.line(line(
            3.0,
            "[  OK  ] Started ssh.service - OpenBSD Secure Shell server.",
        ));
        let m = t.marks();
        assert_eq!(m.iter().find(|x| x.name == "kernel").unwrap().seconds, 2.0);
        assert_eq!(m.iter().find(|x| x.name == "sshd").unwrap().seconds, 3.0);
        assert!(parse_marker("ssh=x").is_err());
        assert!(parse_marker("bad name=x").is_err());
        assert!(parse_marker("ok=(").is_err());
        assert_eq!(parse_marker("a=b=c").unwrap(), ("a".into(), "b=c".into()));
    }

    #[test]
    fn host_keys_and_fingerprints_from_the_console() {
        let console = [
            "ec2: #############################################################",
            "ec2: -----BEGIN SSH HOST KEY FINGERPRINTS-----",
            "ec2: 256 SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU root@host (ED25519)",
            "ec2: -----END SSH HOST KEY FINGERPRINTS-----",
            "-----BEGIN SSH HOST KEY KEYS-----",
            "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBA== root@h",
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA==",
            "-----END SSH HOST KEY KEYS-----",
            "ssh-ed25519 AAAAoutsideablock",
        ];
        let k = host_keys(console);
        assert_eq!(k.keys.len(), 2);
        assert_eq!(k.keys[1].kind, "ssh-ed25519");
        assert_eq!(k.keys[1].blob, "AAAAC3NzaC1lZDI1NTE5AAAAIA==");
        assert_eq!(
            k.fingerprints,
            ["SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU"]
        );
        // An unterminated block (console cut off) is not trusted.
        let cut = host_keys(["-----BEGIN SSH HOST KEY KEYS-----", "ssh-ed25519 AAAAC3Nz"]);
        assert!(cut.keys.is_empty() && cut.fingerprints.is_empty());
    }

    #[test]
    fn fingerprints_match_ssh_keygen() {
        // `ssh-keygen -lf` of this key prints SHA256:dG8j/vqOjJb3VONBoPPZIhFkqsEX4UBNdhjcQZOJUJY.
        let k = HostKey {
            kind: "ssh-ed25519".into(),
            blob: "AAAAC3NzaC1lZDI1NTE5AAAAIAwdvYTinTEbsEDtmMGu+smYD5/Pp/3Pst/gWPNBRTbA".into(),
        };
        assert_eq!(
            k.fingerprint().unwrap(),
            "SHA256:dG8j/vqOjJb3VONBoPPZIhFkqsEX4UBNdhjcQZOJUJY"
        );
    }
}
