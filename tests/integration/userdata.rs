//! `ec2ami userdata`: the command's output (read back with libarchive's bsdtar, the
//! extractor FreeBSD's configinit uses, and with PyYAML, cloud-init's parser), its
//! `--check` of good and bad files, bad input; and the generator page in headless
//! Chromium: for a table of cases and seeded random ones, the page's bytes equal the
//! command's, its problems are the command's; keyboard-only use, labels, announced
//! errors, download and copy; a screenshot kept under target/test-artifacts/.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::Engine as _;
use ec2ami_testkit::chromium::Browser;
use serde_json::{Value, json};

fn ec2ami(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ec2ami"))
        .args(args)
        .current_dir(dir)
        .env("XDG_STATE_HOME", dir.join("state"))
        .env("EC2AMI_LOG", "warn")
        .output()
        .expect("ec2ami runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn ok(o: &Output) {
    assert!(
        o.status.success(),
        "ec2ami failed: {}\n{}",
        stderr(o),
        stdout(o)
    );
}

fn failed_with(o: &Output, needle: &str) {
    assert_eq!(o.status.code(), Some(1), "{}\n{}", stderr(o), stdout(o));
    assert!(
        stderr(o).contains(needle),
        "stderr lacks `{needle}`: {}",
        stderr(o)
    );
    assert_eq!(stderr(o).lines().count(), 1, "one line: {}", stderr(o));
}

/// libarchive's tar (Debian: libarchive-tools), which configinit's `tar -xf` is.
fn bsdtar() -> &'static str {
    if Path::new("/usr/bin/bsdtar").exists() {
        return "/usr/bin/bsdtar";
    }
    panic!("bsdtar is not installed: apt-get install libarchive-tools (scripts/test does this)");
}

/// Extract `archive` with bsdtar as configinit does and list its regular files in
/// `find | sort` order, with their contents.
fn configinit_parts(archive: &Path, dir: &Path) -> Vec<(String, Vec<u8>)> {
    let out = dir.join("extracted");
    std::fs::create_dir_all(&out).unwrap();
    let x = Command::new(bsdtar())
        .arg("-xf")
        .arg(archive)
        .arg("-C")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        x.status.success(),
        "bsdtar: {}",
        String::from_utf8_lossy(&x.stderr)
    );
    let mut files: Vec<PathBuf> = Vec::new();
    let mut stack = vec![out.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                files.push(p);
            }
        }
    }
    files.sort_by(|a, b| {
        a.as_os_str()
            .as_encoded_bytes()
            .cmp(b.as_os_str().as_encoded_bytes())
    });
    files
        .iter()
        .map(|p| {
            (
                p.strip_prefix(&out).unwrap().display().to_string(),
                std::fs::read(p).unwrap(),
            )
        })
        .collect()
}

#[test]
fn base_flavour_output_is_what_configinit_extracts() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("setup.sh"), "#!/bin/sh\necho set up\n").unwrap();
    std::fs::write(d.join("nginx.conf"), "events {}\n").unwrap();
    // Settings only: one >>/etc/rc.conf part, printed as is.
    let one = ec2ami(
        &[
            "userdata",
            "--pkg",
            "nginx",
            "--enable",
            "nginx",
            "--rc",
            "foo=\"bar\"",
        ],
        d,
    );
    ok(&one);
    assert_eq!(
        stdout(&one),
        ">>/etc/rc.conf\nfirstboot_pkgs_list=\"nginx\"\nfoo=\"bar\"\nnginx_enable=\"YES\"\n"
    );
    // Everything: a tar of parts in the order chosen.
    let args = [
        "userdata",
        "--pkg",
        "nginx",
        "--pkg",
        "devel/py-awscli",
        "--enable",
        "nginx",
        "--disable",
        "sendmail",
        "--rc",
        "foo=\"bar baz\"",
        "--hostname",
        "web1.example.org",
        "--freebsd-update",
        "no",
        "--file",
        "/usr/local/etc/nginx/nginx.conf=@nginx.conf",
        "--file",
        ">>/etc/hosts=10.0.0.2 db\n",
        "--script",
        "setup.sh",
        "-o",
        "ud",
    ];
    let run = ec2ami(&args, d);
    ok(&run);
    assert_eq!(stdout(&run).trim(), "ud");
    let parts = configinit_parts(&d.join("ud"), d);
    let names: Vec<&str> = parts.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "01-rc.conf",
            "02-hostname",
            "03-file",
            "04-file",
            "05-script"
        ]
    );
    assert_eq!(
        String::from_utf8(parts[0].1.clone()).unwrap(),
        ">>/etc/rc.conf\nfirstboot_pkgs_list=\"nginx devel/py-awscli\"\n\
         firstboot_freebsd_update_enable=\"NO\"\nfirstboot_pkg_upgrade_enable=\"NO\"\n\
         hostname=\"web1.example.org\"\nfoo=\"bar baz\"\nnginx_enable=\"YES\"\nsendmail_enable=\"NO\"\n"
    );
    assert_eq!(parts[1].1, b"#!/bin/sh\n/bin/hostname web1.example.org\n");
    assert_eq!(parts[2].1, b">/usr/local/etc/nginx/nginx.conf\nevents {}\n");
    assert_eq!(parts[3].1, b">>/etc/hosts\n10.0.0.2 db\n");
    assert_eq!(parts[4].1, b"#!/bin/sh\necho set up\n");
    // Scripts are executable in the archive (configinit chmods them anyway).
    let list = Command::new(bsdtar())
        .arg("-tvf")
        .arg(d.join("ud"))
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&list.stdout).into_owned();
    assert!(
        list.lines()
            .any(|l| l.starts_with("-rwxr-xr-x") && l.ends_with("05-script")),
        "{list}"
    );
    // The same with --output json: the parts and the bytes.
    let mut json_args = vec!["--output", "json"];
    json_args.extend_from_slice(&args[..args.len() - 2]);
    let j = ec2ami(&json_args, d);
    ok(&j);
    let v: Value = serde_json::from_slice(&j.stdout).unwrap();
    assert_eq!(v["format"], "tar");
    assert_eq!(v["flavour"], "base");
    assert_eq!(v["limit"], 16384);
    assert_eq!(v["parts"].as_array().unwrap().len(), 5);
    assert_eq!(v["parts"][2]["path"], "/usr/local/etc/nginx/nginx.conf");
    assert_eq!(v["parts"][4]["kind"], "script");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(v["user_data_base64"].as_str().unwrap())
        .unwrap();
    assert_eq!(bytes, std::fs::read(d.join("ud")).unwrap());
    assert_eq!(v["bytes"], bytes.len());
    // Nothing but the output file is left in the directory.
    let mut left: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["extracted", "nginx.conf", "setup.sh", "ud"]);
    // The check reads it back as configinit would.
    let c = ec2ami(&["userdata", "--check", "ud"], d);
    ok(&c);
    let text = stdout(&c);
    assert!(text.starts_with("ud: a tar archive of 5 parts"), "{text}");
    assert!(
        text.contains("5. 05-script: runs a script (/bin/sh)"),
        "{text}"
    );
    assert!(
        text.contains("then firstboot_pkgs installs nginx, devel/py-awscli"),
        "{text}"
    );
}

/// PyYAML, the parser cloud-init uses.
fn pyyaml(doc: &[u8], dir: &Path) -> Value {
    let f = dir.join("doc.yaml");
    std::fs::write(&f, doc).unwrap();
    let out = Command::new("python3")
        .args([
            "-c",
            "import sys, json, yaml\nprint(json.dumps(yaml.safe_load(open(sys.argv[1], 'rb'))))",
        ])
        .arg(&f)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "PyYAML could not read it (pip install pyyaml; moto brings it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn cloud_init_flavour_is_what_pyyaml_reads() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tricky = "line one\n  indented: [yes, no]\n\n# not a comment\n\ttab \"quotes\" 'single' \\ \u{e9}\u{2603}\nlast line no newline";
    std::fs::write(d.join("tricky"), tricky).unwrap();
    let binary: Vec<u8> = (0..=255u8).chain([0, 13, 10]).collect();
    std::fs::write(d.join("binary"), &binary).unwrap();
    std::fs::write(d.join("setup.sh"), "#!/bin/sh\necho 'set up'\n").unwrap();
    let run = ec2ami(
        &[
            "userdata",
            "--flavour",
            "cloud-init",
            "--pkg",
            "nginx",
            "--pkg",
            "yes",
            "--enable",
            "nginx",
            "--disable",
            "sshd",
            "--rc",
            "nginx_flags=\"-g 'daemon off;'\"",
            "--hostname",
            "web1",
            "--file",
            "/etc/tricky=@tricky",
            "--file",
            ">>/etc/binary=@binary",
            "--file",
            "/etc/empty=",
            "--file",
            "/etc/u2028=a\u{2028}b\n",
            "--script",
            "setup.sh",
        ],
        d,
    );
    ok(&run);
    assert!(run.stdout.starts_with(b"#cloud-config\n"));
    let v = pyyaml(&run.stdout, d);
    assert_eq!(v["hostname"], "web1");
    assert_eq!(v["packages"], json!(["nginx", "yes"]));
    let files = v["write_files"].as_array().unwrap();
    assert_eq!(files[0]["path"], "/etc/tricky");
    assert_eq!(files[0]["content"], tricky);
    assert_eq!(files[0]["defer"], true);
    assert_eq!(files[1]["append"], true);
    assert_eq!(files[1]["encoding"], "b64");
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(files[1]["content"].as_str().unwrap())
        .unwrap();
    assert_eq!(decoded, binary);
    assert_eq!(files[2]["content"], "");
    // U+2028 is a line break to YAML 1.1: the content goes as base64.
    assert_eq!(files[3]["encoding"], "b64");
    assert_eq!(files[4]["path"], "/root/ec2ami-user-script");
    assert_eq!(files[4]["permissions"], "0700");
    assert_eq!(files[4]["content"], "#!/bin/sh\necho 'set up'\n");
    assert_eq!(
        v["runcmd"],
        json!([
            ["sysrc", "nginx_flags=-g 'daemon off;'"],
            ["sysrc", "nginx_enable=YES"],
            ["sysrc", "sshd_enable=NO"],
            ["service", "nginx", "start"],
            ["service", "sshd", "onestop"],
            ["/root/ec2ami-user-script"]
        ])
    );
    std::fs::write(d.join("cc"), &run.stdout).unwrap();
    let c = ec2ami(&["--output", "json", "userdata", "--check", "cc"], d);
    ok(&c);
    let r: Value = serde_json::from_slice(&c.stdout).unwrap();
    assert_eq!(r["flavour"], "cloud-init");
    assert_eq!(r["errors"], json!([]));
    let steps: Vec<&str> = r["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["what"].as_str().unwrap())
        .collect();
    assert!(
        steps.contains(&"final stage: installs nginx, yes with pkg install"),
        "{steps:?}"
    );
}

#[test]
fn check_says_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cases: &[(&str, &[u8], &str)] = &[
        (
            "relative",
            b">etc/rc.conf\nfoo=\"bar\"\n",
            "not an absolute path",
        ),
        (
            "space",
            b">> /etc/rc.conf\nfoo=\"bar\"\n",
            "not an absolute path",
        ),
        (
            "unquoted",
            b">>/etc/rc.conf\nfoo=bar\n",
            "line 2: `foo=bar`: the value is not in double quotes",
        ),
        (
            "noequals",
            b">>/etc/rc.conf\nsshd_enable YES\n",
            "there is no =",
        ),
        ("crlf", b"#!/bin/sh\r\necho hi\r\n", "Windows line ends"),
        ("unknown", b"just some text\n", "not a configinit part"),
        (
            "cloud",
            b"#cloud-config\npackages: [nginx]\n",
            "--flavour cloud-init",
        ),
        ("empty", b"", "empty"),
    ];
    for (name, data, needle) in cases {
        std::fs::write(d.join(name), data).unwrap();
        let base = if *name == "cloud" {
            vec!["--flavour", "base"]
        } else {
            vec![]
        };
        let mut args = vec!["userdata", "--check", name];
        args.extend(base);
        let o = ec2ami(&args, d);
        assert_eq!(o.status.code(), Some(1), "{name}: {}", stdout(&o));
        assert!(
            stdout(&o).contains(needle),
            "{name}: `{needle}` not in {}",
            stdout(&o)
        );
        assert!(stderr(&o).contains("problem(s)"), "{name}: {}", stderr(&o));
    }
    // The size limit: 16384 bytes pass, 16385 do not.
    let mut at = b">/x\n".to_vec();
    at.resize(16384, b'a');
    std::fs::write(d.join("at"), &at).unwrap();
    ok(&ec2ami(&["userdata", "--check", "at"], d));
    at.push(b'a');
    std::fs::write(d.join("over"), &at).unwrap();
    let o = ec2ami(&["--output", "json", "userdata", "--check", "over"], d);
    assert_eq!(o.status.code(), Some(1));
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["bytes"], 16385);
    assert!(
        r["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("over EC2's limit of 16384 bytes")
    );
    // Warnings alone do not fail: a whole rc.conf replaced.
    std::fs::write(d.join("replace"), ">/etc/rc.conf\nsshd_enable=\"YES\"\n").unwrap();
    let o = ec2ami(&["userdata", "--check", "replace"], d);
    ok(&o);
    assert!(
        stdout(&o).contains("warning: line 1: replaces the image's /etc/rc.conf"),
        "{}",
        stdout(&o)
    );
    // stdin.
    let mut child = Command::new(env!("CARGO_BIN_EXE_ec2ami"))
        .args(["userdata", "--check", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"#!/bin/sh\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success());
    assert!(stdout(&o).starts_with("-: a script"));
}

#[test]
fn bad_input_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("noshebang.sh"), "echo hi\n").unwrap();
    failed_with(
        &ec2ami(&["userdata", "--file", "/etc/x=@missing"], d),
        "--file '/etc/x=@missing': cannot read missing",
    );
    failed_with(
        &ec2ami(&["userdata", "--file", "/etc/x"], d),
        "expected PATH=@LOCAL_FILE",
    );
    failed_with(
        &ec2ami(&["userdata", "--script", "nope.sh"], d),
        "--script nope.sh: cannot read it",
    );
    failed_with(
        &ec2ami(&["userdata", "--script", "noshebang.sh"], d),
        "--script noshebang.sh: does not start with #!",
    );
    failed_with(
        &ec2ami(&["userdata", "--rc", "foo=bar", "--pkg", "a b"], d),
        "--pkg 'a b': not a package name",
    );
    failed_with(
        &ec2ami(&["userdata", "--rc", "foo=bar"], d),
        "--rc 'foo=bar': the value is not in double quotes",
    );
    failed_with(
        &ec2ami(&["userdata", "--file", "etc/x=1"], d),
        "not an absolute path",
    );
    failed_with(
        &ec2ami(&["userdata", "--hostname", "web_1"], d),
        "not a hostname",
    );
    failed_with(&ec2ami(&["userdata", "--enable", "php-fpm"], d), "php_fpm");
    failed_with(
        &ec2ami(&["userdata", "--enable", "nginx", "--disable", "nginx"], d),
        "nginx_enable is set twice",
    );
    failed_with(
        &ec2ami(
            &[
                "userdata",
                "--flavour",
                "cloud-init",
                "--freebsd-update",
                "no",
            ],
            d,
        ),
        "only the base flavour",
    );
    failed_with(&ec2ami(&["userdata"], d), "nothing to put in the user data");
    std::fs::write(d.join("big"), vec![b'a'; 16384]).unwrap();
    failed_with(
        &ec2ami(&["userdata", "--file", "/x=@big", "-o", "out"], d),
        "the user data: 16388 bytes: over EC2's limit of 16384 bytes",
    );
    assert!(!d.join("out").exists(), "nothing written on failure");
    let o = ec2ami(&["userdata", "--check", "missing"], d);
    failed_with(&o, "missing: No such file");
    // Mixing modes is a usage error.
    let o = ec2ami(&["userdata", "--check", "x", "--pkg", "nginx"], d);
    assert_eq!(o.status.code(), Some(2));
}

// ---- the page in Chromium -------------------------------------------------------

/// What one test case chooses on the page.
#[derive(Debug, Clone, Default)]
struct Case {
    cloud_init: bool,
    common_packages: Vec<usize>,
    more_packages: String,
    common_services: Vec<usize>,
    more_enable: String,
    disable: String,
    hostname: String,
    update: &'static str,
    rc: String,
    files: Vec<CaseFile>,
    script: Option<Content>,
}

#[derive(Debug, Clone)]
struct CaseFile {
    path: String,
    append: bool,
    content: Content,
}

#[derive(Debug, Clone)]
enum Content {
    /// Typed into the text area.
    Typed(String),
    /// Loaded with the file picker.
    Loaded(Vec<u8>),
}

impl Content {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Content::Typed(s) => s.as_bytes().to_vec(),
            Content::Loaded(b) => b.clone(),
        }
    }
}

/// The page splits lists on spaces, tabs and newlines.
fn words(s: &str) -> Vec<&str> {
    s.split([' ', '\t', '\n'])
        .filter(|w| !w.is_empty())
        .collect()
}

impl Case {
    /// The same choices as `ec2ami userdata` arguments; local files go to `dir`.
    fn args(&self, dir: &Path) -> Vec<String> {
        let mut a = vec!["userdata".to_string()];
        if self.cloud_init {
            a.extend(["--flavour".into(), "cloud-init".into()]);
        }
        let mut chosen = self.common_packages.clone();
        chosen.sort();
        for i in chosen {
            a.push(format!("--pkg={}", common("common_packages")[i]));
        }
        for w in words(&self.more_packages) {
            a.push(format!("--pkg={w}"));
        }
        let mut chosen = self.common_services.clone();
        chosen.sort();
        for i in chosen {
            a.push(format!("--enable={}", common("common_services")[i]));
        }
        for w in words(&self.more_enable) {
            a.push(format!("--enable={w}"));
        }
        for w in words(&self.disable) {
            a.push(format!("--disable={w}"));
        }
        if !self.hostname.is_empty() {
            a.push(format!("--hostname={}", self.hostname));
        }
        if !self.update.is_empty() {
            a.push(format!("--freebsd-update={}", self.update));
        }
        for line in self.rc.split('\n') {
            if !line.trim().is_empty() {
                a.push(format!("--rc={line}"));
            }
        }
        for (i, f) in self.files.iter().enumerate() {
            let local = dir.join(format!("file-{i}"));
            std::fs::write(&local, f.content.bytes()).unwrap();
            a.push(format!(
                "--file={}{}=@{}",
                if f.append { ">>" } else { "" },
                f.path,
                local.display()
            ));
        }
        if let Some(s) = &self.script {
            let local = dir.join("script");
            std::fs::write(&local, s.bytes()).unwrap();
            a.push(format!("--script={}", local.display()));
        }
        a.push("-o".into());
        a.push(dir.join("out").display().to_string());
        a
    }
}

fn js(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

fn page_url(dir: &Path) -> (PathBuf, String) {
    let o = ec2ami(&["userdata", "--page", dir.to_str().unwrap()], dir);
    ok(&o);
    let page = dir.join("userdata.html");
    let url = format!("file://{}", page.display());
    (page, url)
}

const READY: &str = "document.body && document.body.dataset.ready === 'true'";

/// Set a control's value and tell the page, as typing would.
fn set_value(b: &mut Browser, id: &str, value: &str) {
    b.eval(&format!(
        "(() => {{ const e = document.getElementById({}); e.value = {}; \
         e.dispatchEvent(new Event('input', {{bubbles: true}})); \
         e.dispatchEvent(new Event('change', {{bubbles: true}})); return true; }})()",
        js(id),
        js(value)
    ))
    .unwrap();
}

fn click(b: &mut Browser, id: &str) {
    b.eval(&format!(
        "document.getElementById({}).click(), true",
        js(id)
    ))
    .unwrap();
}

/// Load `bytes` through the file input `input_id` and wait for the page to read it.
fn load_file(b: &mut Browser, input_id: &str, note_id: &str, bytes: &[u8], dir: &Path) {
    let local = dir.join(format!("picked-{input_id}"));
    std::fs::write(&local, bytes).unwrap();
    let object = b
        .object(&format!("document.getElementById({})", js(input_id)))
        .unwrap();
    b.call(
        "DOM.setFileInputFiles",
        json!({"files": [local.display().to_string()], "objectId": object}),
    )
    .unwrap();
    b.wait_for(&format!(
        "document.getElementById({}).textContent.startsWith('Loaded') && document.body.dataset.pending === '0'",
        js(note_id)
    ))
    .unwrap();
}

/// Fill the page with `case` (the page freshly loaded).
fn fill(b: &mut Browser, case: &Case, dir: &Path) {
    if case.cloud_init {
        click(b, "flavour-cloud-init");
    }
    for &i in &case.common_packages {
        click(b, &format!("pkg-{i}"));
    }
    set_value(b, "more-packages", &case.more_packages);
    for &i in &case.common_services {
        click(b, &format!("svc-{i}"));
    }
    set_value(b, "more-enable", &case.more_enable);
    set_value(b, "disable", &case.disable);
    set_value(b, "hostname", &case.hostname);
    set_value(b, "freebsd-update", case.update);
    set_value(b, "rc", &case.rc);
    for (i, f) in case.files.iter().enumerate() {
        click(b, "add-file");
        // File ids count up from 0 on a fresh page.
        let pre = format!("file-{i}-");
        set_value(b, &format!("{pre}path"), &f.path);
        set_value(
            b,
            &format!("{pre}mode"),
            if f.append { "append" } else { "write" },
        );
        match &f.content {
            Content::Typed(t) => set_value(b, &format!("{pre}content"), t),
            Content::Loaded(bytes) => {
                load_file(b, &format!("{pre}load"), &format!("{pre}note"), bytes, dir)
            }
        }
    }
    match &case.script {
        Some(Content::Typed(t)) => set_value(b, "script", t),
        Some(Content::Loaded(bytes)) => load_file(b, "script-load", "script-note", bytes, dir),
        None => {}
    }
}

/// What the page shows: the bytes of its download link, or its problems.
#[derive(Debug)]
struct PageResult {
    data: Option<Vec<u8>>,
    problems: Vec<String>,
    warnings: Vec<String>,
}

fn page_result(b: &mut Browser) -> PageResult {
    let v = b
        .eval(
            "(() => ({ state: document.body.dataset.state, \
               href: document.getElementById('download').getAttribute('href'), \
               problems: [...document.querySelectorAll('#problems li.problem')].map(l => l.dataset.message), \
               warnings: [...document.querySelectorAll('#problems li.warning')].map(l => l.dataset.message) }))()",
        )
        .unwrap();
    let strings = |k: &str| -> Vec<String> {
        v[k].as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    };
    let data = match (v["state"].as_str(), v["href"].as_str()) {
        (Some("ok"), Some(href)) => {
            let b64 = href
                .strip_prefix("data:application/octet-stream;base64,")
                .expect("a data: link");
            Some(
                base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .unwrap(),
            )
        }
        (Some("error"), None) => None,
        other => panic!("page in an odd state: {other:?}"),
    };
    PageResult {
        data,
        problems: strings("problems"),
        warnings: strings("warnings"),
    }
}

/// The command's answer for `case` against the page's.
fn compare(case: &Case, page: &PageResult, dir: &Path) {
    let _ = std::fs::remove_file(dir.join("out"));
    let args = case.args(dir);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = ec2ami(&args, dir);
    let err = stderr(&o);
    match (&page.data, o.status.success()) {
        (Some(bytes), true) => {
            let cli = std::fs::read(dir.join("out")).unwrap();
            assert!(
                *bytes == cli,
                "{case:#?}\npage:\n{}\ncommand:\n{}",
                String::from_utf8_lossy(bytes),
                String::from_utf8_lossy(&cli)
            );
            for w in &page.warnings {
                assert!(
                    err.contains(w.as_str()),
                    "{case:#?}\nwarning `{w}` not in {err}"
                );
            }
            assert_eq!(
                err.lines().count(),
                page.warnings.len(),
                "{case:#?}\n{err}\n{:?}",
                page.warnings
            );
        }
        (None, false) => {
            assert!(!page.problems.is_empty());
            for p in &page.problems {
                assert!(
                    err.contains(p.as_str()),
                    "{case:#?}\nproblem `{p}` not in {err}"
                );
            }
            assert_eq!(
                err.matches("; ").count() + 1,
                page.problems.len(),
                "{case:#?}\n{err}\n{:?}",
                page.problems
            );
        }
        (page_data, _) => panic!(
            "{case:#?}\nthe page {} but the command {}: {err}\n{:?}",
            if page_data.is_some() {
                "made user data"
            } else {
                "refused"
            },
            if o.status.success() {
                "made it"
            } else {
                "refused"
            },
            page.problems
        ),
    }
}

/// The rule tables as the page embeds them (what `userdata --page` writes), read once:
/// the names of the page's common packages and services, by their checkbox index.
fn page_rules() -> &'static Value {
    static TABLES: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    TABLES.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let (page, _) = page_url(dir.path());
        let html = std::fs::read_to_string(page).unwrap();
        let start = html.find("id=\"rules\">").unwrap() + "id=\"rules\">".len();
        let end = start + html[start..].find("</script>").unwrap();
        serde_json::from_str(&html[start..end]).unwrap()
    })
}

/// The names of the page's common packages (`pkg-N`) or services (`svc-N`).
fn common(table: &str) -> Vec<&'static str> {
    page_rules()[table]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect()
}

fn index_of_package(name: &str) -> usize {
    common("common_packages")
        .iter()
        .position(|p| *p == name)
        .unwrap()
}

fn index_of_service(name: &str) -> usize {
    common("common_services")
        .iter()
        .position(|s| *s == name)
        .unwrap()
}

fn table() -> Vec<Case> {
    let typed = |s: &str| Content::Typed(s.to_string());
    let file = |path: &str, append: bool, content: Content| CaseFile {
        path: path.into(),
        append,
        content,
    };
    vec![
        Case {
            common_packages: vec![index_of_package("nginx")],
            common_services: vec![index_of_service("nginx")],
            rc: "foo=\"bar\"\n".into(),
            ..Case::default()
        },
        Case {
            more_packages: "nginx  git\tpy311-foo@py311".into(),
            more_enable: "nginx php_fpm".into(),
            disable: "sshd".into(),
            hostname: "web1.example.org".into(),
            update: "no",
            rc: "\nnginx_flags=\"-g 'daemon off;'\"\n\n   \nkeymap=\"uk\"".into(),
            files: vec![
                file(
                    "/usr/local/etc/nginx/nginx.conf",
                    false,
                    typed("events {}\n"),
                ),
                file("/etc/hosts", true, typed("10.0.0.2 db\n")),
            ],
            script: Some(typed("#!/bin/sh\necho done\n")),
            ..Case::default()
        },
        Case {
            cloud_init: true,
            common_packages: vec![index_of_package("sudo"), index_of_package("redis")],
            common_services: vec![index_of_service("redis")],
            disable: "sshd".into(),
            hostname: "db-1".into(),
            rc: "redis_profiles=\"a b\"".into(),
            files: vec![
                file("/etc/tricky", false, typed("  leading\n\ttab\n\nx: [y]\n")),
                file(
                    "/etc/plain",
                    true,
                    typed("a\tb \"c\" \u{e9}\u{1f600}\nno newline"),
                ),
                file(
                    "/etc/bin",
                    false,
                    Content::Loaded(vec![0, 255, 10, 13, 0xef, 0xbb, 0xbf]),
                ),
                file("/etc/empty", false, typed("")),
            ],
            script: Some(Content::Loaded(b"#!/usr/local/bin/bash\nset -e\n".to_vec())),
            ..Case::default()
        },
        // Only a script; only a file; only a hostname.
        Case {
            script: Some(typed("#!/bin/sh\nsysrc foo=bar\n")),
            ..Case::default()
        },
        Case {
            files: vec![file(
                "/etc/motd.template",
                false,
                Content::Loaded(b"\r\nbinary\xff".to_vec()),
            )],
            ..Case::default()
        },
        Case {
            hostname: "only".into(),
            ..Case::default()
        },
        // Problems: every kind, and the page must list what the command says.
        Case::default(),
        Case {
            more_packages: "ok \"bad\" -x".into(),
            more_enable: "php-fpm nginx".into(),
            disable: "nginx 9lives".into(),
            hostname: "-bad_host".into(),
            rc: "foo=bar\nok=\"1\"\nok=\"2\"\nbad-name=\"x\"\n$x=\"1\"\nv=\"$HOME\"\nnoequals"
                .into(),
            files: vec![
                file("etc/relative", false, typed("x")),
                file("/etc/a b", false, typed("x")),
                file("/etc/*", true, typed("x")),
                file("/etc/", false, typed("x")),
            ],
            script: Some(typed("echo no shebang\n")),
            ..Case::default()
        },
        Case {
            cloud_init: true,
            update: "yes",
            script: Some(Content::Loaded(b"#!/bin/sh\r\necho\r\n".to_vec())),
            ..Case::default()
        },
        Case {
            common_packages: vec![index_of_package("nginx")],
            rc: "firstboot_pkgs_list=\"other\"".into(),
            ..Case::default()
        },
        // Over the limit, and exactly at it.
        Case {
            files: vec![file("/big", false, Content::Loaded(vec![b'a'; 16381]))],
            ..Case::default()
        },
        Case {
            files: vec![file("/big", false, Content::Loaded(vec![b'a'; 16380]))],
            ..Case::default()
        },
        // Warnings: a service without its package, an interpreter from a package.
        Case {
            common_services: vec![index_of_service("caddy")],
            script: Some(typed("#!/usr/local/bin/python3\nprint(1)\n")),
            ..Case::default()
        },
    ]
}

/// A random case from `rng`: half of them drawn from valid choices only, the other half
/// from pools that also hold broken ones (so both the output and the problems are
/// compared).
fn random_case(rng: &mut fastrand::Rng) -> Case {
    let valid = rng.bool();
    // The valid entries of each pool come first; `valid` keeps to them.
    let pool = |rng: &mut fastrand::Rng, all: &[&'static str], good: usize| -> &'static str {
        all[rng.usize(..if valid { good } else { all.len() })]
    };
    let some = |rng: &mut fastrand::Rng, all: &[&'static str], good: usize, max: usize| {
        let mut picked: Vec<&str> = Vec::new();
        for _ in 0..rng.usize(..=max) {
            let w = pool(rng, all, good);
            if !(valid && picked.contains(&w)) {
                picked.push(w);
            }
        }
        picked
    };
    let pkgs = [
        "git",
        "vim",
        "www/nginx",
        "py311-x@py311",
        "lang/rust",
        "tmux",
        "a+b",
        "bad\"q",
        "ünï",
    ];
    let svcs = [
        "nginx",
        "php_fpm",
        "postgresql",
        "pf",
        "sshd",
        "unbound",
        "ntpd",
        "php-fpm",
        "9x",
    ];
    let hosts = [
        "",
        "",
        "web1",
        "a.b.c",
        "node-7.internal",
        "ok",
        "-bad",
        "x_y",
    ];
    let rc = [
        "keymap=\"uk.kbd\"",
        "ifconfig_DEFAULT=\"SYNCDHCP accept_rtadv\"",
        "motd=\"caf\u{e9} \u{2603}\"",
        "growfs_enable=\"NO\"",
        "x=\"with\ttab\"",
        "q=\"$PATH\"",
        "unquoted=yes",
        "foo=\"bar\"\nfoo=\"again\"",
    ];
    let paths = [
        "/etc/a",
        "/usr/local/etc/b.conf",
        "/etc/rc.conf.local",
        "/root/.ssh/c",
        "/tmp/ü",
        "rel/x",
        "/sp ace",
    ];
    let texts = [
        "plain\n",
        "no newline",
        "  leading spaces\n",
        "two\n\n",
        "a\n   \nb\n",
        "tabs\there\n\tand\n",
        "yaml: [x, {y: z}] # c\n- item\n",
        "|\n>\n",
        "sep\u{2028}line\n",
        "emoji \u{1f680} \"q\" \\ '\n",
        "",
        "#!/bin/sh\nnot a script here\n",
    ];
    let enable = some(rng, &svcs, 7, 2);
    // A service both enabled and disabled is a problem: valid cases keep them apart.
    let disable: Vec<&str> = some(rng, &svcs, 7, 1)
        .into_iter()
        .filter(|s| !(valid && enable.contains(s)))
        .collect();
    let mut case = Case {
        cloud_init: rng.bool(),
        more_packages: some(rng, &pkgs, 6, 3).join(" "),
        more_enable: enable.join(" "),
        disable: disable.join(" "),
        hostname: pool(rng, &hosts, 6).to_string(),
        rc: some(rng, &rc, 4, 3).join("\n"),
        ..Case::default()
    };
    // FreeBSD update is a base-flavour setting.
    case.update = match rng.usize(..4) {
        2 if !(valid && case.cloud_init) => "yes",
        3 if !(valid && case.cloud_init) => "no",
        _ => "",
    };
    for i in 0..common("common_packages").len() {
        if rng.u8(..) < 30 {
            case.common_packages.push(i);
        }
    }
    for (i, name) in common("common_services").into_iter().enumerate() {
        if rng.u8(..) < 25 && !(valid && (enable.contains(&name) || disable.contains(&name))) {
            case.common_services.push(i);
        }
    }
    for _ in 0..rng.usize(..3) {
        let content = match rng.usize(..4) {
            0 => {
                let n = rng.usize(..3000);
                Content::Loaded((0..n).map(|_| rng.u8(..)).collect())
            }
            1 => Content::Loaded(
                texts[rng.usize(..texts.len())]
                    .replace('\n', "\r\n")
                    .into_bytes(),
            ),
            _ => Content::Typed(texts[rng.usize(..texts.len())].to_string()),
        };
        case.files.push(CaseFile {
            path: pool(rng, &paths, 5).to_string(),
            append: rng.bool(),
            content,
        });
    }
    case.script = match rng.usize(..5) {
        0 => Some(Content::Typed("#!/bin/sh\necho hi\n".into())),
        1 => Some(Content::Typed("#!/usr/local/bin/bash\nset -e\n".into())),
        2 => Some(Content::Loaded(
            b"#!/bin/sh -e\nfor x in 1 2; do echo $x; done\n".to_vec(),
        )),
        3 if !valid => Some(Content::Typed("echo no interpreter\n".into())),
        _ => None,
    };
    case
}

#[test]
fn the_page_makes_the_same_bytes_as_the_command() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_, url) = page_url(d);
    let mut b = Browser::start(&["--window-size=1200,900"]).expect("chromium starts");
    let mut rng = fastrand::Rng::with_seed(14);
    let mut cases = table();
    cases.extend((0..60).map(|_| random_case(&mut rng)));
    let (mut made, mut refused) = (0, 0);
    for case in &cases {
        b.open(&url, READY).unwrap();
        fill(&mut b, case, d);
        let page = page_result(&mut b);
        if page.data.is_some() {
            made += 1;
        } else {
            refused += 1;
        }
        compare(case, &page, d);
    }
    // Both sides of the rules were exercised.
    assert!(
        made >= 15 && refused >= 15,
        "made {made}, refused {refused}"
    );
    // The page's own generator is the one the form uses: a direct call agrees.
    let direct = b
        .eval("window.ec2amiUserdata.generate({flavour: 'base', packages: ['nginx'], enable: [], disable: [], rc: [], files: [], script: null, hostname: null, freebsd_update: null}).data.length")
        .unwrap();
    assert_eq!(
        direct,
        json!(">>/etc/rc.conf\nfirstboot_pkgs_list=\"nginx\"\n".len())
    );
}

fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Press Tab until `id` has the focus; the ids passed on the way.
fn tab_to(b: &mut Browser, id: &str) -> Vec<String> {
    let mut seen = Vec::new();
    for _ in 0..300 {
        b.press("Tab", false).unwrap();
        let active = b.eval("document.activeElement.id").unwrap();
        let active = active.as_str().unwrap_or("").to_string();
        seen.push(active.clone());
        if active == id {
            return seen;
        }
    }
    panic!("{id} never got the focus by Tab: {seen:?}");
}

#[test]
fn the_page_works_by_keyboard_alone_and_is_labelled() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (page, url) = page_url(d);
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(
        !html.contains("http:") && !html.contains("https:"),
        "no network in the page"
    );
    let downloads = d.join("downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    let mut b = Browser::start(&["--window-size=1200,900"]).expect("chromium starts");
    // Every request the page makes is reported, to show it makes none of the network.
    b.call("Network.enable", json!({})).unwrap();
    b.open(&url, READY).unwrap();

    // Every control has a label and an accessible name.
    let unlabelled = b
        .eval(
            "[...document.querySelectorAll('input, select, textarea')].filter(e => e.labels.length === 0).map(e => e.id)",
        )
        .unwrap();
    assert_eq!(unlabelled, json!([]));
    let tree = b.call("Accessibility.getFullAXTree", json!({})).unwrap();
    let mut controls = 0;
    for n in tree["nodes"].as_array().unwrap() {
        let role = n["role"]["value"].as_str().unwrap_or("");
        if n["ignored"] == true {
            continue;
        }
        if ["textbox", "checkbox", "radio", "combobox", "button", "link"].contains(&role) {
            controls += 1;
            let name = n["name"]["value"].as_str().unwrap_or("");
            assert!(!name.trim().is_empty(), "a {role} without a name: {n}");
        }
    }
    assert!(
        controls > 25,
        "{controls} controls in the accessibility tree"
    );

    // Tab visits every control in document order, each once (the radio group once).
    let expected = b
        .eval(
            "[...document.querySelectorAll('input, select, textarea, button, a[href]')]\
             .filter(e => !e.disabled && !(e.type === 'radio' && !e.checked)).map(e => e.id)",
        )
        .unwrap();
    let expected: Vec<String> = expected
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let first = expected[0].clone();
    let last = expected.last().unwrap().clone();
    let seen = tab_to(&mut b, &last);
    let visited: Vec<&String> = seen.iter().filter(|s| !s.is_empty()).collect();
    let start = visited.iter().position(|s| **s == first).unwrap();
    assert_eq!(
        visited[start..]
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>(),
        expected
    );

    // Fill a case with the keyboard only: Tab, Space, arrows, Enter and typing.
    b.open(&url, READY).unwrap();
    tab_to(&mut b, "flavour-base");
    b.press("ArrowDown", false).unwrap();
    b.press("ArrowUp", false).unwrap();
    let nginx = index_of_package("nginx");
    tab_to(&mut b, &format!("pkg-{nginx}"));
    b.press(" ", false).unwrap();
    tab_to(&mut b, "more-packages");
    b.type_text("git tmux").unwrap();
    tab_to(&mut b, &format!("svc-{}", index_of_service("nginx")));
    b.press(" ", false).unwrap();
    tab_to(&mut b, "hostname");
    b.type_text("kb1").unwrap();
    tab_to(&mut b, "freebsd-update");
    b.press("ArrowDown", false).unwrap();
    b.press("ArrowDown", false).unwrap();
    tab_to(&mut b, "rc");
    // A bad line first: the error is shown next to the field and announced.
    b.type_text("foo=bar").unwrap();
    let shown = b
        .eval(
            "(() => { const rc = document.getElementById('rc'); const err = document.getElementById('rc-error'); \
             return { invalid: rc.getAttribute('aria-invalid'), described: rc.getAttribute('aria-describedby'), \
             live: err.getAttribute('aria-live'), text: err.textContent, \
             alert: document.getElementById('problems').getAttribute('aria-live'), \
             listed: document.querySelectorAll('#problems li.problem').length, \
             download: document.getElementById('download').hasAttribute('href') }; })()",
        )
        .unwrap();
    assert_eq!(shown["invalid"], "true", "{shown}");
    assert!(shown["described"].as_str().unwrap().contains("rc-error"));
    assert_eq!(shown["live"], "polite");
    assert_eq!(shown["alert"], "assertive");
    assert_eq!(shown["listed"], 1);
    assert_eq!(
        shown["download"], false,
        "no download while there are problems"
    );
    assert_eq!(
        shown["text"], "line 1: the value is not in double quotes: write name=\"value\"",
        "{shown}"
    );
    for _ in 0.."bar".len() {
        b.press("Backspace", false).unwrap();
    }
    b.type_text("\"bar\"").unwrap();
    tab_to(&mut b, "add-file");
    b.press("Enter", false).unwrap();
    let focused = b.eval("document.activeElement.id").unwrap();
    assert_eq!(
        focused, "file-0-path",
        "Add a file moves the focus to its path"
    );
    b.type_text("/etc/motd.template").unwrap();
    tab_to(&mut b, "file-0-mode");
    b.press("ArrowDown", false).unwrap();
    tab_to(&mut b, "file-0-content");
    b.type_text("Welcome\nto kb1\n").unwrap();
    tab_to(&mut b, "script");
    b.type_text("#!/bin/sh\necho typed\n").unwrap();

    let case = Case {
        common_packages: vec![nginx],
        more_packages: "git tmux".into(),
        common_services: vec![index_of_service("nginx")],
        hostname: "kb1".into(),
        update: "no",
        rc: "foo=\"bar\"".into(),
        files: vec![CaseFile {
            path: "/etc/motd.template".into(),
            append: true,
            content: Content::Typed("Welcome\nto kb1\n".into()),
        }],
        script: Some(Content::Typed("#!/bin/sh\necho typed\n".into())),
        ..Case::default()
    };
    let result = page_result(&mut b);
    assert!(result.data.is_some(), "{:?}", result.problems);
    compare(&case, &result, d);
    let cli = std::fs::read(d.join("out")).unwrap();

    // Download with Enter on the link: the file is the command's output.
    b.browser_call(
        "Browser.setDownloadBehavior",
        json!({"behavior": "allow", "downloadPath": downloads.display().to_string()}),
    )
    .unwrap();
    tab_to(&mut b, "download");
    b.press("Enter", false).unwrap();
    let got = downloads.join("user-data.tar");
    let mut pause = std::time::Duration::from_millis(10);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !(got.exists() && std::fs::read(&got).map(|d| d.len()).unwrap_or(0) == cli.len()) {
        assert!(
            std::time::Instant::now() < deadline,
            "no download in {}",
            downloads.display()
        );
        std::thread::sleep(pause);
        pause = (pause * 2).min(std::time::Duration::from_millis(200));
    }
    assert_eq!(std::fs::read(&got).unwrap(), cli);

    // Copy as base64 with Space on the button: the clipboard holds the base64.
    b.browser_call(
        "Browser.grantPermissions",
        json!({"permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]}),
    )
    .unwrap();
    tab_to(&mut b, "copy-base64");
    b.press(" ", false).unwrap();
    b.wait_for("document.getElementById('status').textContent.startsWith('Copied')")
        .unwrap();
    let clip = b.eval("navigator.clipboard.readText()").unwrap();
    assert_eq!(
        clip.as_str().unwrap(),
        base64::engine::general_purpose::STANDARD.encode(&cli)
    );
    // Copy (text) is off for an archive, which is binary.
    assert_eq!(
        b.eval("document.getElementById('copy').disabled").unwrap(),
        true
    );

    // A screenshot of the filled page, kept.
    let png = b.screenshot().unwrap();
    let decoder = png::Decoder::new(std::io::Cursor::new(&png));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    // The window's width, less a scrollbar's in some builds.
    assert!((1100..=1200).contains(&info.width), "width {}", info.width);
    assert!(info.height > 900, "the whole page: {}", info.height);
    let pixels = &buf[..info.buffer_size()];
    assert!(pixels.iter().any(|&p| p < 100), "the screenshot is blank");
    // Nothing but the page itself (file:) and its own download (data:) was fetched.
    let urls: Vec<String> = b
        .events
        .iter()
        .filter(|e| e["method"] == "Network.requestWillBeSent")
        .filter_map(|e| e["params"]["request"]["url"].as_str().map(str::to_string))
        .collect();
    assert!(urls.contains(&url), "the page's own load is seen: {urls:?}");
    for u in &urls {
        assert!(
            u.starts_with("file:") || u.starts_with("data:"),
            "the page fetched {u}"
        );
    }
    let shot = artifacts().join("userdata-page.png");
    std::fs::write(&shot, &png).unwrap();
    eprintln!("screenshot of the generator page: {}", shot.display());
}

// ---- where the user data goes: bench, and the report's link ----------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_launches_with_the_generated_user_data() {
    use crate::common::{World, params_of};
    use aws_sdk_ec2::types::ArchitectureValues;
    use ec2ami_testkit::{BootFixture, BootSchedule};

    let world = World::moto().await;
    let ami = world
        .clients()
        .await
        .ec2
        .register_image()
        .name("FreeBSD 14.1-STABLE-amd64-20241003 UEFI-PREFERRED base UFS")
        .architecture(ArchitectureValues::X8664)
        .root_device_name("/dev/sda1")
        .send()
        .await
        .unwrap()
        .image_id()
        .unwrap()
        .to_string();
    let setup = world.path("setup.sh");
    std::fs::write(&setup, "#!/bin/sh\necho ready > /var/run/ready\n").unwrap();
    let ud = world.path("user-data");
    world
        .run(&[
            "userdata",
            "--pkg",
            "nginx",
            "--enable",
            "nginx",
            "--freebsd-update",
            "no",
            "--script",
            setup.to_str().unwrap(),
            "-o",
            ud.to_str().unwrap(),
        ])
        .await
        .assert_ok();
    let generated = std::fs::read(&ud).unwrap();

    // Over EC2's limit: refused before anything is sent.
    let big = world.path("big");
    std::fs::write(&big, vec![b'#'; 16385]).unwrap();
    world.proxy.clear_requests();
    let run = world
        .run(&[
            "bench",
            &ami,
            "--instance-type",
            "c5.xlarge",
            "--user-data",
            big.to_str().unwrap(),
            "--connect-to",
            "127.0.0.1:9",
        ])
        .await;
    run.assert_failed_with("16385 bytes: over EC2's limit of 16384 bytes");
    assert!(world.proxy.requests().is_empty(), "nothing sent");

    // The generated archive: sent as it is, no warning about it.
    let fixture = BootFixture::start(BootSchedule::up()).unwrap();
    let run = world
        .run(&[
            "bench",
            &ami,
            "--instance-type",
            "c5.xlarge",
            "--runs",
            "1",
            "--user-data",
            ud.to_str().unwrap(),
            "--connect-to",
            &fixture.addr().to_string(),
        ])
        .await;
    run.assert_ok();
    assert!(!run.stderr.contains("user data"), "{}", run.stderr);
    let sent = params_of(&world, "RunInstances");
    assert_eq!(sent.len(), 1);
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(&sent[0]["UserData"])
        .unwrap();
    assert_eq!(decoded, generated);
    let parts = configinit_parts(&ud, &world.path("x"));
    assert_eq!(parts.len(), 2, "{parts:?}");

    // A file the image would misread: launched anyway, with the problem named.
    let bad = world.path("bad");
    std::fs::write(&bad, ">>/etc/rc.conf\nsshd_enable=YES\n").unwrap();
    let run = world
        .run(&[
            "bench",
            &ami,
            "--instance-type",
            "c5.xlarge",
            "--runs",
            "1",
            "--user-data",
            bad.to_str().unwrap(),
            "--connect-to",
            &fixture.addr().to_string(),
        ])
        .await;
    run.assert_ok();
    assert!(
        run.stderr.contains("user data ")
            && run.stderr.contains("the value is not in double quotes"),
        "{}",
        run.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_links_the_page() {
    use crate::common::World;

    let world = World::offline().await;
    let runs = world.path("c5.xlarge-20241003.txt");
    std::fs::write(
        &runs,
        "RunInstances API call took: 1.5 s\nMoving from pending to running took: 6.9 s\n\
         Moving from running to port closed took: 12.1 s\n\
         Moving from port closed to port open took: 11.6 s\n",
    )
    .unwrap();
    world
        .run(&[
            "history",
            "import",
            runs.to_str().unwrap(),
            "--ami",
            "ami-0a1b2c3d4e5f60718",
            "--instance-type",
            "c5.xlarge",
            "--image-name",
            "FreeBSD 14.1-STABLE-amd64-20241003 UEFI-PREFERRED base UFS",
        ])
        .await
        .assert_ok();
    let out = world.path("report");
    let run = world
        .run(&["--output", "json", "report", "--out", out.to_str().unwrap()])
        .await;
    run.assert_ok();
    let summary: Value = serde_json::from_str(&run.stdout).unwrap();
    let page = out.join("userdata.html");
    assert_eq!(summary["userdata_page"], json!(page));
    // The page beside the report is the one `userdata --page` writes.
    let alone = world.path("alone");
    world
        .run(&["userdata", "--page", alone.to_str().unwrap()])
        .await
        .assert_ok();
    assert_eq!(
        std::fs::read(&page).unwrap(),
        std::fs::read(alone.join("userdata.html")).unwrap()
    );
    // Follow the link from the report by keyboard: Tab to it, Enter.
    let index = format!("file://{}", out.join("index.html").display());
    let target = format!("file://{}", page.display());
    tokio::task::spawn_blocking(move || {
        let mut b = Browser::start(&["--window-size=1200,900"]).expect("chromium starts");
        b.open(&index, "document.readyState === 'complete'")
            .unwrap();
        tab_to(&mut b, "userdata-link");
        b.press("Enter", false).unwrap();
        b.wait_for(&format!(
            "location.href === {} && {READY}",
            serde_json::to_string(&target).unwrap()
        ))
        .unwrap();
        let title = b.eval("document.title").unwrap();
        assert!(title.as_str().unwrap().contains("user data"), "{title}");
    })
    .await
    .unwrap();
}
