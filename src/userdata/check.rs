//! `ec2ami userdata --check`: read user data as the image will at first boot, say what
//! it will do, in order, and what is wrong.
//!
//! For the base flavour the rules are configinit's (ec2-scripts `configinit.sh`), which
//! looks at the first bytes only: `#!` runs the data as a script; `>/` takes the rest
//! of the first line as a path (`cut -c 2-`) and writes everything after that line
//! there (`tail +2`), `>>/` appends; anything else goes to `tar -xf` (libarchive, which
//! reads tar, pax, cpio, zip, 7-zip..., compressed with gzip, bzip2, xz, zstd... or not)
//! and each regular file extracted (`find -type f`) is processed by the same rules, in
//! `sort` order of the paths, under `sh -e`. A `>` not followed by `/`, a `#cloud-config`
//! document or text of any other kind therefore ends in tar's "Unrecognized archive
//! format". Archives ec2ami can open (tar, gzip-compressed tar) are checked part by
//! part; others are reported as not looked into. For the cloud-init flavour the
//! `#cloud-config` document is parsed as YAML and its usual keys are checked.

use std::io::Read as _;

use serde::Serialize;
use yaml_rust2::{Yaml, YamlLoader};

use super::generate::{Flavour, script_problems};
use super::rules::{self, LIMIT_BYTES, RULES, fill};
use super::tar;

/// Nested archives deeper than this are not opened.
const MAX_DEPTH: usize = 4;
/// Decompressed archives larger than this are not checked.
const MAX_INFLATED: u64 = 16 << 20;

/// One thing the user data does at first boot.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// The configinit part (archive member) it comes from.
    pub part: Option<String>,
    /// What it does.
    pub what: String,
    /// Details: each setting, each command.
    pub notes: Vec<String>,
}

/// A problem or a warning.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// The configinit part.
    pub part: Option<String>,
    /// The line, from 1.
    pub line: Option<usize>,
    /// What.
    pub message: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Findings quote the user data: control characters are shown escaped.
        let message = crate::image::escaped(&self.message);
        match (&self.part, self.line) {
            (Some(p), Some(l)) => write!(f, "{} line {l}: {message}", crate::image::escaped(p)),
            (Some(p), None) => write!(f, "{}: {message}", crate::image::escaped(p)),
            (None, Some(l)) => write!(f, "line {l}: {message}"),
            (None, None) => write!(f, "{message}"),
        }
    }
}

/// What `--check` found.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// Size in bytes.
    pub bytes: usize,
    /// EC2's limit.
    pub limit: usize,
    /// For which images it was read.
    pub flavour: Flavour,
    /// What it is (a script, a tar archive of 3 parts, a #cloud-config document...).
    pub format: String,
    /// What it does at first boot, in order.
    pub steps: Vec<Step>,
    /// What is wrong: the image would not do what was meant.
    pub errors: Vec<Finding>,
    /// What deserves a look.
    pub warnings: Vec<Finding>,
}

impl CheckReport {
    /// Whether nothing is wrong.
    pub fn ok(&self) -> bool {
        self.errors.is_empty()
    }

    /// The report as text: a summary line, the steps, the problems.
    pub fn text(&self, name: &str) -> String {
        let images = match self.flavour {
            Flavour::Base => "FreeBSD's base images (configinit)",
            Flavour::CloudInit => "FreeBSD's cloud-init images",
        };
        let mut out = format!(
            "{name}: {}, {} bytes of {}, for {images}\n",
            self.format, self.bytes, self.limit
        );
        if !self.steps.is_empty() {
            out.push_str("At first boot:\n");
            for (i, s) in self.steps.iter().enumerate() {
                match &s.part {
                    Some(p) => out.push_str(&format!("  {}. {p}: {}\n", i + 1, s.what)),
                    None => out.push_str(&format!("  {}. {}\n", i + 1, s.what)),
                }
                for n in &s.notes {
                    out.push_str(&format!("       {n}\n"));
                }
            }
        }
        for e in &self.errors {
            out.push_str(&format!("error: {e}\n"));
        }
        for w in &self.warnings {
            out.push_str(&format!("warning: {w}\n"));
        }
        if self.errors.is_empty() {
            out.push_str("no problems found\n");
        }
        out.pop();
        out
    }
}

/// Markers of cloud-init's own formats (besides `#!`).
const CLOUD_INIT_MARKERS: &[&str] = &[
    "#cloud-config",
    "#include",
    "#cloud-boothook",
    "#part-handler",
    "#cloud-config-archive",
    "#cloud-config-jsonp",
    "## template: jinja",
    "Content-Type:",
    "MIME-Version:",
];

fn cloud_init_marker(data: &[u8]) -> Option<&'static str> {
    CLOUD_INIT_MARKERS
        .iter()
        .copied()
        .find(|m| data.starts_with(m.as_bytes()))
}

/// Archive formats libarchive reads that ec2ami does not open, by magic.
const OTHER_ARCHIVES: &[(&[u8], &str)] = &[
    (b"BZh", "bzip2-compressed"),
    (b"\xfd7zXZ\0", "xz-compressed"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed"),
    (b"\x04\x22\x4d\x18", "lz4-compressed"),
    (b"PK\x03\x04", "zip"),
    (b"7z\xbc\xaf\x27\x1c", "7-zip"),
    (b"070707", "cpio"),
    (b"070701", "cpio"),
    (b"070702", "cpio"),
];

const GZIP: &[u8] = b"\x1f\x8b";

/// Check `data` for `flavour` (None: guess from its first bytes).
pub fn check(data: &[u8], flavour: Option<Flavour>) -> CheckReport {
    let flavour = flavour.unwrap_or_else(|| guess_flavour(data));
    let mut c = Checker {
        steps: Vec::new(),
        errors: Vec::new(),
        warnings: Vec::new(),
        rc: Vec::new(),
    };
    let format = if data.is_empty() {
        c.error(
            None,
            None,
            "empty: there is no user data, so nothing happens",
        );
        "empty".to_string()
    } else {
        match flavour {
            Flavour::Base => {
                let f = c.part(None, data, 0);
                c.after_configinit();
                f
            }
            Flavour::CloudInit => c.cloud_init(data, 0),
        }
    };
    if data.len() > LIMIT_BYTES {
        c.errors.insert(
            0,
            Finding {
                part: None,
                line: None,
                message: fill(
                    RULES.messages.too_big,
                    &[
                        ("bytes", &data.len().to_string()),
                        ("limit", &LIMIT_BYTES.to_string()),
                    ],
                ),
            },
        );
    }
    CheckReport {
        bytes: data.len(),
        limit: LIMIT_BYTES,
        flavour,
        format,
        steps: c.steps,
        errors: c.errors,
        warnings: c.warnings,
    }
}

/// cloud-init's formats say cloud-init; everything else is read as configinit's.
fn guess_flavour(data: &[u8]) -> Flavour {
    if cloud_init_marker(data).is_some() {
        return Flavour::CloudInit;
    }
    if data.starts_with(GZIP)
        && let Some(inner) = gunzip(data)
        && !tar::looks_like_tar(&inner)
    {
        return guess_flavour(&inner);
    }
    Flavour::Base
}

fn gunzip(data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(data)
        .take(MAX_INFLATED)
        .read_to_end(&mut out)
        .ok()?;
    Some(out)
}

/// An rc.conf setting seen, for the summary and for settings made twice.
struct Setting {
    name: String,
    value: String,
    part: Option<String>,
    line: usize,
}

struct Checker {
    steps: Vec<Step>,
    errors: Vec<Finding>,
    warnings: Vec<Finding>,
    rc: Vec<Setting>,
}

fn first_line(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

impl Checker {
    fn error(&mut self, part: Option<&str>, line: Option<usize>, message: impl Into<String>) {
        self.errors.push(Finding {
            part: part.map(str::to_string),
            line,
            message: message.into(),
        });
    }

    fn warn(&mut self, part: Option<&str>, line: Option<usize>, message: impl Into<String>) {
        self.warnings.push(Finding {
            part: part.map(str::to_string),
            line,
            message: message.into(),
        });
    }

    fn step(&mut self, part: Option<&str>, what: impl Into<String>, notes: Vec<String>) {
        self.steps.push(Step {
            part: part.map(str::to_string),
            what: what.into(),
            notes,
        });
    }

    /// One configinit part (the whole user data, or an archive member); returns what
    /// it is.
    fn part(&mut self, name: Option<&str>, data: &[u8], depth: usize) -> String {
        if data.starts_with(b"#!") {
            let (line, _) = first_line(data);
            let interp = rules::interpreter(line);
            let (errs, warns) = script_problems(data, Flavour::Base);
            for e in errs {
                self.error(name, Some(1), e);
            }
            for w in warns {
                self.warn(name, Some(1), w);
            }
            self.step(name, format!("runs a script ({interp})"), Vec::new());
            return "a script".into();
        }
        if data.starts_with(b">>/") || data.starts_with(b">/") {
            let append = data.starts_with(b">>");
            let (line, rest) = first_line(data);
            let path = String::from_utf8_lossy(&line[if append { 2 } else { 1 }..]).into_owned();
            self.target(name, &path, append, rest, data.contains(&b'\n'));
            return if append {
                format!("an append to {}", path.trim_end())
            } else {
                format!("a file for {}", path.trim_end())
            };
        }
        if data.starts_with(b">") {
            let (line, _) = first_line(data);
            let shown = String::from_utf8_lossy(line);
            self.error(
                name,
                Some(1),
                format!(
                    "`{shown}`: {}; configinit would take this for an archive and fail",
                    RULES.path[0].message
                ),
            );
            return "a broken file part".into();
        }
        if data.starts_with(GZIP) {
            return match gunzip(data) {
                Some(inner) if tar::looks_like_tar(&inner) => {
                    let n = self.archive(name, &inner, depth);
                    format!("a gzip-compressed tar archive of {n} parts")
                }
                Some(_) => {
                    self.error(
                        name,
                        None,
                        "gzip data that is not a tar archive: configinit's tar cannot extract it",
                    );
                    "gzip data".into()
                }
                None => {
                    self.error(name, None, "gzip data that does not decompress");
                    "broken gzip data".into()
                }
            };
        }
        if tar::looks_like_tar(data) {
            let n = self.archive(name, data, depth);
            return format!("a tar archive of {n} parts");
        }
        if let Some((_, kind)) = OTHER_ARCHIVES.iter().find(|(m, _)| data.starts_with(m)) {
            self.warn(
                name,
                None,
                format!(
                    "a {kind} archive: configinit's tar extracts it, but ec2ami does not look \
                     inside (an uncompressed or gzip-compressed tar is checked part by part)"
                ),
            );
            self.step(
                name,
                format!("extracts a {kind} archive and processes each file in it"),
                Vec::new(),
            );
            return format!("a {kind} archive");
        }
        if let Some(m) = cloud_init_marker(data) {
            self.error(
                name,
                Some(1),
                format!(
                    "{m}: a cloud-init format, which configinit (base images) takes for an \
                     archive and fails on; it is for cloud-init images (--flavour cloud-init)"
                ),
            );
            return "cloud-init user data".into();
        }
        self.error(
            name,
            Some(1),
            "not a configinit part: it starts with neither #!, >/path nor >>/path and is no \
             archive, so configinit's tar -xf fails on it",
        );
        "unknown data".into()
    }

    /// A `>/path` or `>>/path` part.
    fn target(
        &mut self,
        part: Option<&str>,
        path: &str,
        append: bool,
        content: &[u8],
        newline: bool,
    ) {
        if path.ends_with('\r') {
            self.error(
                part,
                Some(1),
                "the path line ends in CR (Windows line ends): configinit would write to a \
                 name ending in CR",
            );
        } else if let Some(m) = rules::path_problem(path) {
            self.error(part, Some(1), format!("{path}: {m}"));
        }
        let verb = if append { "appends" } else { "writes" };
        if !newline {
            self.warn(
                part,
                Some(1),
                format!("nothing after the path line: configinit {verb} nothing"),
            );
        }
        let is_rc = path == "/etc/rc.conf"
            || path == "/etc/rc.conf.local"
            || path.starts_with("/etc/rc.conf.d/")
            || path.starts_with("/usr/local/etc/rc.conf.d/");
        if !is_rc {
            self.step(
                part,
                format!("{verb} {} bytes to {path}", content.len()),
                Vec::new(),
            );
            return;
        }
        if !append && path == "/etc/rc.conf" {
            self.warn(
                part,
                Some(1),
                "replaces the image's /etc/rc.conf, and ec2_configinit_enable, \
                 ifconfig_DEFAULT, sshd_enable, firstboot_pkgs_enable with it: use \
                 >>/etc/rc.conf to add settings",
            );
        }
        let text = String::from_utf8_lossy(content);
        let mut notes = Vec::new();
        let mut count = 0;
        for (i, line) in text.split('\n').enumerate() {
            let n = i + 2;
            let trimmed = line.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let Some((name, value)) = rules::split_rc_line(line) else {
                let m = rules::rc_line_problem(line).unwrap_or("not name=\"value\"");
                self.error(part, Some(n), format!("`{line}`: {m}"));
                continue;
            };
            count += 1;
            notes.push(format!("{name}=\"{value}\": {}", describe(name, value)));
            if name.ends_with("_enable")
                && !["yes", "true", "on", "1", "no", "false", "off", "0"]
                    .contains(&value.to_ascii_lowercase().as_str())
            {
                self.warn(
                    part,
                    Some(n),
                    format!("{name}=\"{value}\": rc.subr's checkyesno takes YES or NO"),
                );
            }
            if name == "firstboot_pkgs_list" {
                for p in value.split_whitespace() {
                    if let Some(m) = rules::package_problem(p) {
                        self.warn(part, Some(n), format!("package `{p}`: {m}"));
                    }
                }
            }
            if let Some(prev) = self.rc.iter().rev().find(|s| s.name == name) {
                let at = match &prev.part {
                    Some(p) => format!("{p} line {}", prev.line),
                    None => format!("line {}", prev.line),
                };
                let message = format!(
                    "{name} was already set ({at}): rc.conf keeps the last value, \"{value}\""
                );
                self.warn(part, Some(n), message);
            }
            self.rc.push(Setting {
                name: name.into(),
                value: value.into(),
                part: part.map(str::to_string),
                line: n,
            });
        }
        self.step(part, format!("{verb} {count} setting(s) to {path}"), notes);
    }

    /// An archive: each regular file, in configinit's order. Returns the number of parts.
    fn archive(&mut self, name: Option<&str>, data: &[u8], depth: usize) -> usize {
        if depth >= MAX_DEPTH {
            self.error(name, None, "archives nested too deep to check");
            return 0;
        }
        let members = match tar::read(data) {
            Ok(m) => m,
            Err(e) => {
                self.error(name, None, e.to_string());
                return 0;
            }
        };
        // bsdtar strips a leading / and ./; a later member of the same name replaces
        // an earlier one; `find | sort` orders the paths byte by byte (rc runs in the C
        // locale).
        let mut files: Vec<(String, Vec<u8>)> = Vec::new();
        for m in members {
            let mut n = m.name.as_str();
            while let Some(s) = n.strip_prefix("./").or_else(|| n.strip_prefix('/')) {
                n = s;
            }
            match m.kind {
                tar::Kind::File => {
                    files.retain(|(f, _)| f != n);
                    files.push((n.to_string(), m.data));
                }
                tar::Kind::Directory => {}
                tar::Kind::Other => self.warn(
                    name,
                    None,
                    format!(
                        "{n} is a link or special file: configinit processes regular files only"
                    ),
                ),
            }
        }
        files.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        if files.is_empty() {
            self.warn(
                name,
                None,
                "the archive holds no files: configinit does nothing",
            );
        }
        let count = files.len();
        for (n, body) in files {
            let shown = match name {
                Some(outer) => format!("{outer}/{n}"),
                None => n.clone(),
            };
            if n.chars().any(|c| c.is_whitespace() || c == '\\') {
                self.error(
                    Some(&shown),
                    None,
                    "the name has white space or \\: configinit reads the list of parts \
                     with `read` and passes each name to sh unquoted",
                );
                continue;
            }
            self.part(Some(&shown), &body, depth + 1);
        }
        count
    }

    /// What the first-boot scripts after configinit do with the settings seen.
    fn after_configinit(&mut self) {
        let last = |name: &str| {
            self.rc
                .iter()
                .rev()
                .find(|s| s.name == name)
                .map(|s| s.value.clone())
        };
        let no = |v: &Option<String>| {
            v.as_deref().is_some_and(|v| {
                ["no", "false", "off", "0"].contains(&v.to_ascii_lowercase().as_str())
            })
        };
        let updates_off = RULES.update_vars.iter().all(|v| no(&last(v)));
        let updates = if updates_off {
            "then no first-boot FreeBSD update (turned off)".to_string()
        } else {
            "then firstboot_freebsd_update (14.x) or firstboot_pkg_upgrade (15.0 and later) \
             installs updates and reboots if there were any, unless the image turns it off"
                .to_string()
        };
        let pkgs = match last("firstboot_pkgs_list") {
            Some(l) if l.split_whitespace().next().is_none() => {
                "then firstboot_pkgs installs no packages".to_string()
            }
            Some(l) => format!(
                "then firstboot_pkgs installs {} (one pkg install each; a reboot follows if \
                 they add rc.d scripts)",
                l.split_whitespace().collect::<Vec<_>>().join(", ")
            ),
            None => {
                "then firstboot_pkgs installs the image's own list (devel/py-awscli)".to_string()
            }
        };
        let mut enabled: Vec<String> = Vec::new();
        for s in &self.rc {
            if let Some(svc) = s.name.strip_suffix("_enable") {
                enabled.retain(|e| e != svc);
                if ["yes", "true", "on", "1"].contains(&s.value.to_ascii_lowercase().as_str()) {
                    enabled.push(svc.to_string());
                }
            }
        }
        self.step(None, updates, Vec::new());
        self.step(None, pkgs, Vec::new());
        if !enabled.is_empty() {
            self.step(
                None,
                format!(
                    "services enabled start in rc order: {} (those from packages after the \
                     reboot)",
                    enabled.join(", ")
                ),
                Vec::new(),
            );
        }
    }

    /// cloud-init's view of the whole user data.
    fn cloud_init(&mut self, data: &[u8], depth: usize) -> String {
        if data.starts_with(b"#cloud-config") {
            return self.cloud_config(data);
        }
        if data.starts_with(b"#!") {
            let (errs, warns) = script_problems(data, Flavour::CloudInit);
            for e in errs {
                self.error(None, Some(1), e);
            }
            for w in warns {
                self.warn(None, Some(1), w);
            }
            let interp = rules::interpreter(first_line(data).0);
            self.step(
                None,
                format!("runs a script ({interp}) in the final stage, after packages"),
                Vec::new(),
            );
            return "a script".into();
        }
        if let Some(m) = cloud_init_marker(data) {
            self.warn(
                None,
                Some(1),
                format!("{m}: cloud-init reads it, but ec2ami does not check inside"),
            );
            return format!("{m} user data");
        }
        if data.starts_with(GZIP) && depth == 0 {
            return match gunzip(data) {
                Some(inner) => {
                    let f = self.cloud_init(&inner, depth + 1);
                    format!("gzip-compressed {f}")
                }
                None => {
                    self.error(None, None, "gzip data that does not decompress");
                    "broken gzip data".into()
                }
            };
        }
        if data.starts_with(b">") || tar::looks_like_tar(data) {
            self.error(
                None,
                Some(1),
                "configinit's format (>/path, >>/path or a tar archive): cloud-init images \
                 do not read it (use write_files, or --flavour base for base images)",
            );
            return "configinit user data".into();
        }
        self.error(
            None,
            Some(1),
            "cloud-init does not recognise it (no #cloud-config, #! or MIME header) and \
             ignores it",
        );
        "unknown data".into()
    }

    fn cloud_config(&mut self, data: &[u8]) -> String {
        let format = "a #cloud-config document".to_string();
        let Ok(text) = std::str::from_utf8(data) else {
            self.error(
                None,
                None,
                "not UTF-8 text: cloud-init cannot parse it as YAML",
            );
            return format;
        };
        let docs = match YamlLoader::load_from_str(text) {
            Ok(d) => d,
            Err(e) => {
                self.error(
                    None,
                    Some(e.marker().line()),
                    format!("not valid YAML: {}", e.info()),
                );
                return format;
            }
        };
        let Some(doc) = docs.into_iter().next() else {
            self.warn(
                None,
                None,
                "an empty #cloud-config document: cloud-init does nothing",
            );
            return format;
        };
        let Yaml::Hash(map) = doc else {
            self.error(
                None,
                None,
                "a #cloud-config document is a mapping of keys (hostname:, packages:, ...)",
            );
            return format;
        };
        let mut init = Vec::new();
        let mut fin = Vec::new();
        let mut deferred = Vec::new();
        let mut runcmd = None;
        for (k, v) in &map {
            let Some(key) = k.as_str() else {
                self.error(None, None, "a key that is not a string");
                continue;
            };
            match key {
                "hostname" | "fqdn" => match v.as_str() {
                    Some(h) => {
                        if let Some(m) = rules::hostname_problem(h) {
                            self.error(None, None, format!("{key} `{h}`: {m}"));
                        }
                        init.push(format!(
                            "sets the hostname to {h} (and hostname= in rc.conf)"
                        ));
                    }
                    None => self.error(None, None, format!("{key}: not a string")),
                },
                "packages" => {
                    let mut names = Vec::new();
                    for p in v.as_vec().map(Vec::as_slice).unwrap_or_default() {
                        let name = match p {
                            Yaml::String(s) => Some(s.clone()),
                            Yaml::Array(a) => a.first().and_then(Yaml::as_str).map(str::to_string),
                            _ => None,
                        };
                        match name {
                            Some(n) => {
                                if let Some(m) = rules::package_problem(&n) {
                                    self.error(None, None, format!("package `{n}`: {m}"));
                                }
                                names.push(n);
                            }
                            None => self.error(None, None, "packages: an entry that is not a name"),
                        }
                    }
                    if v.as_vec().is_none() {
                        self.error(None, None, "packages: not a list");
                    }
                    fin.push(format!("installs {} with pkg install", names.join(", ")));
                }
                "write_files" => {
                    let Some(list) = v.as_vec() else {
                        self.error(None, None, "write_files: not a list");
                        continue;
                    };
                    for (i, f) in list.iter().enumerate() {
                        let (what, defer) = self.write_file_entry(i, f);
                        if defer {
                            deferred.push(what);
                        } else {
                            init.push(what);
                        }
                    }
                }
                "runcmd" => {
                    let Some(list) = v.as_vec() else {
                        self.error(None, None, "runcmd: not a list");
                        continue;
                    };
                    let mut notes = Vec::new();
                    for c in list {
                        match c {
                            Yaml::String(s) => notes.push(s.clone()),
                            Yaml::Array(a) => notes.push(
                                a.iter()
                                    .map(|x| match x {
                                        Yaml::String(s) => s.clone(),
                                        Yaml::Integer(n) => n.to_string(),
                                        _ => "?".into(),
                                    })
                                    .collect::<Vec<_>>()
                                    .join(" "),
                            ),
                            _ => self.error(None, None, "runcmd: an entry that is not a command"),
                        }
                    }
                    runcmd = Some(notes);
                }
                "package_update" | "package_upgrade" | "package_reboot_if_required" => {
                    if v.as_bool().is_none() {
                        self.warn(None, None, format!("{key}: not true or false"));
                    } else if v.as_bool() == Some(true) {
                        fin.push(format!(
                            "{key}: pkg {}",
                            if key == "package_update" {
                                "update"
                            } else {
                                "upgrade"
                            }
                        ));
                    }
                }
                "bootcmd"
                | "users"
                | "groups"
                | "ssh_authorized_keys"
                | "ssh_pwauth"
                | "chpasswd"
                | "timezone"
                | "ntp"
                | "final_message"
                | "power_state"
                | "ca_certs"
                | "mounts"
                | "growpart"
                | "resize_rootfs"
                | "disable_root"
                | "ssh_keys"
                | "ssh_deletekeys"
                | "manage_etc_hosts"
                | "preserve_hostname"
                | "locale"
                | "phone_home"
                | "random_seed"
                | "ssh"
                | "merge_how"
                | "output"
                | "system_info"
                | "prefer_fqdn_over_hostname"
                | "create_hostname_file"
                | "disable_ec2_metadata"
                | "keyboard"
                | "rsyslog"
                | "seed_random"
                | "ansible"
                | "chef"
                | "puppet"
                | "salt_minion"
                | "vendor_data" => {
                    init.push(format!("{key}: not checked by ec2ami"));
                }
                other => self.warn(
                    None,
                    None,
                    format!("{other}: not a cloud-init key ec2ami knows (a typo?)"),
                ),
            }
        }
        for w in init {
            self.step(None, format!("init stage: {w}"), Vec::new());
        }
        for w in fin {
            self.step(None, format!("final stage: {w}"), Vec::new());
        }
        for w in deferred {
            self.step(
                None,
                format!("final stage, after packages: {w}"),
                Vec::new(),
            );
        }
        if let Some(notes) = runcmd {
            self.step(
                None,
                format!(
                    "final stage, last: runs {} command(s) (runcmd)",
                    notes.len()
                ),
                notes,
            );
        }
        format
    }

    /// One `write_files` entry: what it does and whether it is deferred.
    fn write_file_entry(&mut self, i: usize, f: &Yaml) -> (String, bool) {
        let at = format!("write_files[{i}]");
        if f.as_hash().is_none() {
            self.error(None, None, format!("{at}: not a mapping"));
            return (format!("{at}: broken"), false);
        }
        let path = f["path"].as_str().unwrap_or("");
        if path.is_empty() {
            self.error(None, None, format!("{at}: no path"));
        } else if !path.starts_with('/') {
            self.error(
                None,
                None,
                format!("{at}: `{path}` is not an absolute path"),
            );
        }
        let content = match &f["content"] {
            Yaml::String(s) => s.clone(),
            Yaml::BadValue | Yaml::Null => String::new(),
            _ => {
                self.error(None, None, format!("{at}: content is not a string"));
                String::new()
            }
        };
        let encoding = f["encoding"].as_str().unwrap_or("text/plain");
        let bytes = match encoding {
            "b64" | "base64" => {
                use base64::Engine as _;
                let clean: String = content.chars().filter(|c| !c.is_whitespace()).collect();
                match base64::engine::general_purpose::STANDARD.decode(clean) {
                    Ok(b) => b.len(),
                    Err(_) => {
                        self.error(None, None, format!("{at}: content is not valid base64"));
                        0
                    }
                }
            }
            "text/plain" => content.len(),
            "gz" | "gzip" | "gz+b64" | "gz+base64" | "gzip+b64" | "gzip+base64" => content.len(),
            other => {
                self.error(None, None, format!("{at}: unknown encoding `{other}`"));
                content.len()
            }
        };
        let flag = |name: &str| f[name].as_bool().unwrap_or(false);
        let verb = if flag("append") { "appends" } else { "writes" };
        (format!("{verb} {bytes} bytes to {path}"), flag("defer"))
    }
}

/// What setting `name` to `value` does.
fn describe(name: &str, value: &str) -> String {
    if let Some(about) = RULES.about(name) {
        return about.to_string();
    }
    if let Some(svc) = name.strip_suffix("_enable") {
        let on = ["yes", "true", "on", "1"].contains(&value.to_ascii_lowercase().as_str());
        return if on {
            format!("enables {svc}")
        } else {
            format!("disables {svc}")
        };
    }
    format!("sets {name}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::userdata::generate::{FileSpec, Spec, generate};

    fn errors(r: &CheckReport) -> Vec<String> {
        r.errors.iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn what_generate_makes_checks_clean_and_is_explained() {
        let spec = Spec {
            packages: vec!["nginx".into()],
            enable: vec!["nginx".into()],
            hostname: Some("web1".into()),
            files: vec![FileSpec {
                path: "/usr/local/etc/nginx/nginx.conf".into(),
                append: false,
                content: b"events {}\n".to_vec(),
            }],
            script: Some(b"#!/bin/sh\necho hi\n".to_vec()),
            freebsd_update: Some(false),
            ..Spec::default()
        };
        let g = generate(&spec).unwrap();
        let r = check(&g.data, None);
        assert!(r.ok(), "{}", r.text("x"));
        assert_eq!(r.flavour, Flavour::Base);
        assert_eq!(r.format, "a tar archive of 4 parts");
        let text = r.text("x");
        assert!(
            text.contains("1. 01-rc.conf: appends 5 setting(s) to /etc/rc.conf"),
            "{text}"
        );
        assert!(
            text.contains("2. 02-hostname: runs a script (/bin/sh)"),
            "{text}"
        );
        assert!(
            text.contains("writes 10 bytes to /usr/local/etc/nginx/nginx.conf"),
            "{text}"
        );
        assert!(text.contains("then no first-boot FreeBSD update"), "{text}");
        assert!(
            text.contains("then firstboot_pkgs installs nginx"),
            "{text}"
        );
        assert!(
            text.contains("services enabled start in rc order: nginx"),
            "{text}"
        );

        let cloud = Spec {
            flavour: Flavour::CloudInit,
            freebsd_update: None,
            ..spec
        };
        let g = generate(&cloud).unwrap();
        let r = check(&g.data, None);
        assert!(r.ok(), "{}", r.text("x"));
        assert_eq!(r.flavour, Flavour::CloudInit);
        let text = r.text("x");
        assert!(
            text.contains("init stage: sets the hostname to web1"),
            "{text}"
        );
        assert!(
            text.contains("final stage: installs nginx with pkg install"),
            "{text}"
        );
        assert!(
            text.contains("after packages: writes 10 bytes to /usr/local/etc/nginx"),
            "{text}"
        );
        assert!(text.contains("sysrc nginx_enable=YES"), "{text}");
    }

    #[test]
    fn configinit_mistakes() {
        let r = check(b">etc/rc.conf\nfoo=\"bar\"\n", None);
        assert_eq!(r.errors.len(), 1);
        assert!(
            errors(&r)[0].contains("not an absolute path"),
            "{:?}",
            errors(&r)
        );
        let r = check(b">> /etc/rc.conf\nfoo=\"bar\"\n", None);
        assert!(!r.ok());
        let r = check(
            b">>/etc/rc.conf\nfoo=bar\nok=\"1\"\n# comment\n\nsshd_enable=\"maybe\"\n",
            None,
        );
        assert_eq!(
            errors(&r),
            ["line 2: `foo=bar`: the value is not in double quotes: write name=\"value\""]
        );
        assert_eq!(r.warnings.len(), 1);
        assert!(r.warnings[0].message.contains("checkyesno"));
        let r = check(b">/etc/rc.conf\nsshd_enable=\"YES\"\n", None);
        assert!(r.ok());
        assert!(
            r.warnings[0]
                .message
                .contains("replaces the image's /etc/rc.conf")
        );
        let r = check(b">>/etc/rc.conf\r\nfoo=\"bar\"\r\n", None);
        assert!(errors(&r)[0].contains("ends in CR"), "{:?}", errors(&r));
        let r = check(b"#cloud-config\npackages: [nginx]\n", Some(Flavour::Base));
        assert!(errors(&r)[0].contains("cloud-init format"));
        let r = check(b"hello\n", None);
        assert!(errors(&r)[0].contains("not a configinit part"));
        let r = check(b"", None);
        assert!(!r.ok());
        let r = check(b"#!/bin/sh\r\necho\r\n", None);
        assert!(errors(&r)[0].contains("CR"));
    }

    #[test]
    fn archives_are_read_in_sort_order_recursively() {
        let inner = tar::write(&[tar::Entry {
            name: "x",
            mode: 0o644,
            data: b">/etc/inner\nhi\n",
        }]);
        let outer = tar::write(&[
            tar::Entry {
                name: "b-script",
                mode: 0o755,
                data: b"#!/bin/sh\n",
            },
            tar::Entry {
                name: "a-settings",
                mode: 0o644,
                data: b">>/etc/rc.conf\nfirstboot_pkgs_list=\"\"\n",
            },
            tar::Entry {
                name: "c nested",
                mode: 0o644,
                data: &inner,
            },
            tar::Entry {
                name: "c-nested",
                mode: 0o644,
                data: &inner,
            },
        ]);
        let r = check(&outer, None);
        let parts: Vec<Option<String>> = r.steps.iter().map(|s| s.part.clone()).collect();
        assert_eq!(
            parts[..3],
            [
                Some("a-settings".to_string()),
                Some("b-script".to_string()),
                Some("c-nested/x".to_string())
            ]
        );
        assert_eq!(
            errors(&r),
            [
                "c nested: the name has white space or \\: configinit reads the list of parts with `read` and passes each name to sh unquoted"
            ]
        );
        assert!(r.text("x").contains("installs no packages"));
        // gzip-compressed.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut gz, &inner).unwrap();
        let r = check(&gz.finish().unwrap(), None);
        assert_eq!(r.format, "a gzip-compressed tar archive of 1 parts");
        assert!(r.ok());
        let r = check(b"BZh91AY&SY...", None);
        assert!(r.ok());
        assert!(r.warnings[0].message.contains("bzip2"));
    }

    #[test]
    fn size_limit() {
        let mut data = b">/x\n".to_vec();
        data.resize(LIMIT_BYTES, b'a');
        assert!(check(&data, None).ok());
        data.push(b'a');
        let r = check(&data, None);
        assert_eq!(r.errors.len(), 1);
        assert!(
            r.errors[0]
                .message
                .starts_with("16385 bytes: over EC2's limit")
        );
    }

    #[test]
    fn cloud_config_mistakes() {
        let r = check(b"#cloud-config\npackages: [\"a b\"]\nwrite_files:\n  - path: etc/x\n    content: hi\n  - path: /y\n    encoding: b64\n    content: '!!'\nhostnme: x\n", None);
        let e = errors(&r);
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(e[0].contains("package `a b`"));
        assert!(e[1].contains("not an absolute path"));
        assert!(e[2].contains("not valid base64"));
        assert!(r.warnings[0].message.contains("hostnme"));
        let r = check(b"#cloud-config\nfoo: [\n", None);
        assert!(errors(&r)[0].contains("not valid YAML"));
        let r = check(b">>/etc/rc.conf\nx=\"1\"\n", Some(Flavour::CloudInit));
        assert!(errors(&r)[0].contains("cloud-init images do not read it"));
        let r = check(b"Content-Type: multipart/mixed; boundary=x\n", None);
        assert_eq!(r.flavour, Flavour::CloudInit);
        assert!(r.ok());
    }
}
