//! From choices ([`Spec`]) to user data, for FreeBSD's two EC2 image flavours.
//!
//! **base** (configinit, from the ec2-scripts port, `configinit.sh`): user data that
//! starts with `#!` is made executable and run; one that starts with `>/` has a path on
//! its first line and the rest of the file is written there (`>>/`: appended); anything
//! else is extracted with `tar -xf` (libarchive: tar, pax, cpio, zip..., compressed or
//! not) and every regular file in it is processed by the same rules, in `sort` order of
//! their paths, each run under `sh -e` (a failing part stops the ones after it). So:
//! one part is written as is; several become a ustar archive of parts named `01-...`,
//! `02-...` so that order is the order chosen. Settings go to /etc/rc.conf through one
//! `>>/etc/rc.conf` part: configinit runs before `firstboot_pkgs` and
//! `firstboot_freebsd_update` (its rc.d script says `BEFORE: ... firstboot_pkgs`) and
//! signals `/etc/rc` to re-read rc.conf, so `firstboot_pkgs_list` and `*_enable` set this
//! way take effect in the same boot; `firstboot_pkgs` asks for a reboot when packages
//! add rc.d scripts, which is when a package's service starts. rc.d/hostname runs
//! before the network, long before configinit, so a hostname also gets a small
//! `/bin/hostname` script part for this boot.
//!
//! **cloud-init** (FreeBSD's `-cloud-init` images, cloud-init's FreeBSD distro): a
//! `#cloud-config` document. `packages` go through `pkg install` in the final stage;
//! rc.conf settings are `sysrc` commands in `runcmd`, which runs after the packages (so
//! `service NAME start` finds the package's rc.d script and the service starts in this
//! boot, which writing rc.conf with `write_files` in the earlier init stage would not
//! do); files are `write_files` with `defer: true` (written after the packages, so a
//! package cannot overwrite them); the script is written as a file and run last.

use base64::Engine as _;
use serde::Serialize;

use super::rules::{self, LIMIT_BYTES, RC_CONF, RULES, fill};
use super::{tar, yaml};

/// Which images the user data is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Flavour {
    /// FreeBSD's base images: configinit (ec2-scripts), firstboot-pkgs.
    #[default]
    Base,
    /// FreeBSD's cloud-init images.
    CloudInit,
}

impl Flavour {
    /// The name on the command line and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Flavour::Base => "base",
            Flavour::CloudInit => "cloud-init",
        }
    }
}

/// A file to put on the instance.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FileSpec {
    /// Where, absolute.
    pub path: String,
    /// Append to it instead of replacing it.
    pub append: bool,
    /// What.
    pub content: Vec<u8>,
}

/// Everything chosen.
#[derive(Debug, Clone, Default)]
pub struct Spec {
    /// For which images.
    pub flavour: Flavour,
    /// Packages to install at first boot.
    pub packages: Vec<String>,
    /// Services to enable (`NAME_enable="YES"`).
    pub enable: Vec<String>,
    /// Services to disable (`NAME_enable="NO"`).
    pub disable: Vec<String>,
    /// rc.conf lines, `name="value"`.
    pub rc: Vec<String>,
    /// Files to write or append to.
    pub files: Vec<FileSpec>,
    /// A script to run (must start with `#!`).
    pub script: Option<Vec<u8>>,
    /// The hostname.
    pub hostname: Option<String>,
    /// Turn the first-boot FreeBSD update on or off (base flavour only).
    pub freebsd_update: Option<bool>,
}

/// Which choice a problem is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Field {
    /// A package (index into the packages).
    Packages,
    /// A service to enable.
    Enable,
    /// A service to disable.
    Disable,
    /// An rc.conf line.
    Rc,
    /// A file's path.
    File,
    /// The script.
    Script,
    /// The hostname.
    Hostname,
    /// The first-boot update setting.
    FreebsdUpdate,
    /// The whole result's size.
    Size,
    /// Nothing was chosen.
    Nothing,
}

/// Something wrong (or worth a warning) with one choice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// Which choice.
    pub field: Field,
    /// Which one of a list (packages, files...), from 0.
    pub index: Option<usize>,
    /// What is wrong.
    pub message: String,
}

/// What a part does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PartKind {
    /// `#!`: run.
    Script,
    /// `>/path`: write.
    Write,
    /// `>>/path`: append.
    Append,
}

/// One configinit part.
#[derive(Debug, Clone, Serialize)]
pub struct Part {
    /// Its name (the archive member's when there are several).
    pub name: String,
    /// What it does.
    pub kind: PartKind,
    /// The file it writes or appends to.
    pub path: Option<String>,
    /// Its bytes.
    #[serde(skip)]
    pub data: Vec<u8>,
}

/// How the user data is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// One configinit part, as is.
    Part,
    /// A ustar archive of configinit parts.
    Tar,
    /// A `#cloud-config` document.
    CloudConfig,
}

/// The user data and how it was made.
#[derive(Debug, Clone, Serialize)]
pub struct Generated {
    /// For which images.
    pub flavour: Flavour,
    /// Its layout.
    pub format: Format,
    /// The configinit parts, in order (base flavour).
    pub parts: Vec<Part>,
    /// What deserves a look but does not stop it.
    pub warnings: Vec<Problem>,
    /// The user data.
    #[serde(skip)]
    pub data: Vec<u8>,
}

fn problem(field: Field, index: Option<usize>, message: impl Into<String>) -> Problem {
    Problem {
        field,
        index,
        message: message.into(),
    }
}

/// The user data for `spec`, or every problem with it.
pub fn generate(spec: &Spec) -> Result<Generated, Vec<Problem>> {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let base = spec.flavour == Flavour::Base;
    for (i, p) in spec.packages.iter().enumerate() {
        if let Some(m) = rules::package_problem(p) {
            errors.push(problem(Field::Packages, Some(i), m));
        }
    }
    for (field, list) in [
        (Field::Enable, &spec.enable),
        (Field::Disable, &spec.disable),
    ] {
        for (i, s) in list.iter().enumerate() {
            if let Some(m) = rules::service_problem(s) {
                errors.push(problem(field, Some(i), m));
            }
        }
    }
    for (i, s) in spec.enable.iter().enumerate() {
        if let Some(pkg) = RULES.service(s).and_then(|c| c.package)
            && !spec.packages.iter().any(|p| p == pkg)
        {
            warnings.push(problem(
                Field::Enable,
                Some(i),
                fill(
                    RULES.messages.service_package,
                    &[("service", s), ("package", pkg)],
                ),
            ));
        }
    }
    if let Some(h) = &spec.hostname
        && let Some(m) = rules::hostname_problem(h)
    {
        errors.push(problem(Field::Hostname, None, m));
    }
    if spec.freebsd_update.is_some() && !base {
        errors.push(problem(
            Field::FreebsdUpdate,
            None,
            RULES.messages.update_cloud_init,
        ));
    }
    for (i, line) in spec.rc.iter().enumerate() {
        if let Some(m) = rules::rc_line_problem(line) {
            errors.push(problem(Field::Rc, Some(i), m));
        }
    }
    // Every variable set, in the order written, to catch one set twice.
    let mut vars: Vec<(String, String, Field, Option<usize>)> = Vec::new();
    if base && !spec.packages.is_empty() {
        vars.push((
            "firstboot_pkgs_list".into(),
            spec.packages.join(" "),
            Field::Packages,
            None,
        ));
    }
    if base && let Some(u) = spec.freebsd_update {
        for v in RULES.update_vars {
            vars.push(((*v).into(), yes_no(u).into(), Field::FreebsdUpdate, None));
        }
    }
    if let Some(h) = &spec.hostname {
        vars.push(("hostname".into(), h.clone(), Field::Hostname, None));
    }
    for (i, line) in spec.rc.iter().enumerate() {
        if let Some((n, v)) = rules::split_rc_line(line) {
            vars.push((n.into(), v.into(), Field::Rc, Some(i)));
        }
    }
    for (field, list, value) in [
        (Field::Enable, &spec.enable, "YES"),
        (Field::Disable, &spec.disable, "NO"),
    ] {
        for (i, s) in list.iter().enumerate() {
            vars.push((format!("{s}_enable"), value.into(), field, Some(i)));
        }
    }
    for (k, (name, _, field, index)) in vars.iter().enumerate() {
        if vars[..k].iter().any(|(n, ..)| n == name) {
            errors.push(problem(
                *field,
                *index,
                fill(RULES.messages.duplicate, &[("name", name)]),
            ));
        }
    }
    for (i, f) in spec.files.iter().enumerate() {
        if let Some(m) = rules::path_problem(&f.path) {
            errors.push(problem(Field::File, Some(i), m));
        }
    }
    if let Some(s) = &spec.script {
        let (errs, warns) = script_problems(s, spec.flavour);
        errors.extend(errs.into_iter().map(|m| problem(Field::Script, None, m)));
        warnings.extend(warns.into_iter().map(|m| problem(Field::Script, None, m)));
    }
    let nothing = spec.packages.is_empty()
        && spec.enable.is_empty()
        && spec.disable.is_empty()
        && spec.rc.is_empty()
        && spec.files.is_empty()
        && spec.script.is_none()
        && spec.hostname.is_none()
        && spec.freebsd_update.is_none();
    if nothing {
        errors.push(problem(Field::Nothing, None, RULES.messages.nothing));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let generated = if base {
        base_flavour(spec, &vars, warnings)
    } else {
        cloud_init(spec, warnings)
    };
    if generated.data.len() > LIMIT_BYTES {
        return Err(vec![problem(
            Field::Size,
            None,
            fill(
                RULES.messages.too_big,
                &[
                    ("bytes", &generated.data.len().to_string()),
                    ("limit", &LIMIT_BYTES.to_string()),
                ],
            ),
        )]);
    }
    Ok(generated)
}

fn yes_no(b: bool) -> &'static str {
    if b { "YES" } else { "NO" }
}

/// The errors and warnings about a script, for `flavour`.
pub fn script_problems(script: &[u8], flavour: Flavour) -> (Vec<String>, Vec<String>) {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    if !script.starts_with(RULES.script_prefix.as_bytes()) {
        errors.push(RULES.messages.script_prefix.to_string());
        return (errors, warnings);
    }
    let first_line = script.split(|&b| b == b'\n').next().unwrap_or(b"");
    if first_line.ends_with(b"\r") {
        errors.push(RULES.messages.script_crlf.to_string());
    }
    let interp = rules::interpreter(first_line);
    if !RULES.base_interpreters.contains(&interp.as_str()) {
        if interp.starts_with("/usr/local/") {
            if flavour == Flavour::Base {
                warnings.push(fill(
                    RULES.messages.interpreter_package,
                    &[("interpreter", &interp)],
                ));
            }
        } else {
            warnings.push(fill(
                RULES.messages.interpreter_unknown,
                &[("interpreter", &interp)],
            ));
        }
    }
    (errors, warnings)
}

fn base_flavour(
    spec: &Spec,
    vars: &[(String, String, Field, Option<usize>)],
    warnings: Vec<Problem>,
) -> Generated {
    let mut parts: Vec<(&str, PartKind, Option<String>, Vec<u8>)> = Vec::new();
    if !vars.is_empty() {
        let mut text = format!(">>{RC_CONF}\n");
        for (name, value, ..) in vars {
            text.push_str(&format!("{name}=\"{value}\"\n"));
        }
        parts.push((
            "rc.conf",
            PartKind::Append,
            Some(RC_CONF.into()),
            text.into_bytes(),
        ));
    }
    if let Some(h) = &spec.hostname {
        let script = fill(RULES.hostname_script, &[("hostname", h)]);
        parts.push(("hostname", PartKind::Script, None, script.into_bytes()));
    }
    for f in &spec.files {
        let (kind, marker) = if f.append {
            (PartKind::Append, ">>")
        } else {
            (PartKind::Write, ">")
        };
        let mut data = format!("{marker}{}\n", f.path).into_bytes();
        data.extend_from_slice(&f.content);
        parts.push(("file", kind, Some(f.path.clone()), data));
    }
    if let Some(s) = &spec.script {
        parts.push(("script", PartKind::Script, None, s.clone()));
    }
    let parts: Vec<Part> = parts
        .into_iter()
        .enumerate()
        .map(|(i, (name, kind, path, data))| Part {
            name: format!("{:02}-{name}", i + 1),
            kind,
            path,
            data,
        })
        .collect();
    let (format, data) = if let [only] = parts.as_slice() {
        (Format::Part, only.data.clone())
    } else {
        let entries: Vec<tar::Entry<'_>> = parts
            .iter()
            .map(|p| tar::Entry {
                name: &p.name,
                mode: if p.kind == PartKind::Script {
                    0o755
                } else {
                    0o644
                },
                data: &p.data,
            })
            .collect();
        (Format::Tar, tar::write(&entries))
    };
    Generated {
        flavour: Flavour::Base,
        format,
        parts,
        warnings,
        data,
    }
}

/// One `write_files` entry.
fn write_file(
    out: &mut String,
    path: &str,
    append: bool,
    permissions: Option<&str>,
    content: &[u8],
) {
    out.push_str(&format!("  - path: {}\n", yaml::quote(path)));
    if append {
        out.push_str("    append: true\n");
    }
    if let Some(p) = permissions {
        out.push_str(&format!("    permissions: {}\n", yaml::quote(p)));
    }
    out.push_str("    defer: true\n");
    if content.is_empty() {
        out.push_str("    content: \"\"\n");
    } else if let Some(text) = yaml::block_text(content) {
        out.push_str(&format!("    content: {}", yaml::block(text, 6)));
    } else {
        out.push_str("    encoding: b64\n");
        out.push_str(&format!(
            "    content: {}\n",
            yaml::quote(&base64::engine::general_purpose::STANDARD.encode(content))
        ));
    }
}

/// One `runcmd` entry: a command and its arguments, run without a shell.
fn command(out: &mut String, args: &[&str]) {
    let quoted: Vec<String> = args.iter().map(|a| yaml::quote(a)).collect();
    out.push_str(&format!("  - [{}]\n", quoted.join(", ")));
}

fn cloud_init(spec: &Spec, warnings: Vec<Problem>) -> Generated {
    let mut out = String::from("#cloud-config\n");
    if let Some(h) = &spec.hostname {
        out.push_str(&format!("hostname: {}\n", yaml::quote(h)));
    }
    if !spec.packages.is_empty() {
        out.push_str("packages:\n");
        for p in &spec.packages {
            out.push_str(&format!("  - {}\n", yaml::quote(p)));
        }
    }
    if !spec.files.is_empty() || spec.script.is_some() {
        out.push_str("write_files:\n");
        for f in &spec.files {
            write_file(&mut out, &f.path, f.append, None, &f.content);
        }
        if let Some(s) = &spec.script {
            write_file(
                &mut out,
                RULES.cloud_init_script_path,
                false,
                Some("0700"),
                s,
            );
        }
    }
    let has_commands = !spec.rc.is_empty()
        || !spec.enable.is_empty()
        || !spec.disable.is_empty()
        || spec.script.is_some();
    if has_commands {
        out.push_str("runcmd:\n");
        for line in &spec.rc {
            if let Some((n, v)) = rules::split_rc_line(line) {
                command(&mut out, &["sysrc", &format!("{n}={v}")]);
            }
        }
        for s in &spec.enable {
            command(&mut out, &["sysrc", &format!("{s}_enable=YES")]);
        }
        for s in &spec.disable {
            command(&mut out, &["sysrc", &format!("{s}_enable=NO")]);
        }
        for s in &spec.enable {
            command(&mut out, &["service", s, "start"]);
        }
        for s in &spec.disable {
            command(&mut out, &["service", s, "onestop"]);
        }
        if spec.script.is_some() {
            command(&mut out, &[RULES.cloud_init_script_path]);
        }
    }
    Generated {
        flavour: Flavour::CloudInit,
        format: Format::CloudConfig,
        parts: Vec::new(),
        warnings,
        data: out.into_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Spec {
        Spec {
            packages: vec!["nginx".into(), "git".into()],
            enable: vec!["nginx".into()],
            rc: vec!["foo=\"bar\"".into()],
            ..Spec::default()
        }
    }

    #[test]
    fn settings_only_are_one_append_part() {
        let g = generate(&spec()).unwrap();
        assert_eq!(g.format, Format::Part);
        assert_eq!(
            String::from_utf8(g.data).unwrap(),
            ">>/etc/rc.conf\nfirstboot_pkgs_list=\"nginx git\"\nfoo=\"bar\"\nnginx_enable=\"YES\"\n"
        );
        assert!(g.warnings.is_empty());
    }

    #[test]
    fn several_parts_are_a_tar_in_order() {
        let mut s = spec();
        s.hostname = Some("web1".into());
        s.freebsd_update = Some(false);
        s.files.push(FileSpec {
            path: "/etc/motd.template".into(),
            append: false,
            content: b"hello\n".to_vec(),
        });
        s.files.push(FileSpec {
            path: "/etc/hosts".into(),
            append: true,
            content: b"10.0.0.1 db\n".to_vec(),
        });
        s.script = Some(b"#!/bin/sh\necho done\n".to_vec());
        let g = generate(&s).unwrap();
        assert_eq!(g.format, Format::Tar);
        let names: Vec<&str> = g.parts.iter().map(|p| p.name.as_str()).collect();
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
        let members = tar::read(&g.data).unwrap();
        assert_eq!(members.len(), 5);
        let rc = String::from_utf8(members[0].data.clone()).unwrap();
        assert_eq!(
            rc,
            ">>/etc/rc.conf\nfirstboot_pkgs_list=\"nginx git\"\n\
             firstboot_freebsd_update_enable=\"NO\"\nfirstboot_pkg_upgrade_enable=\"NO\"\n\
             hostname=\"web1\"\nfoo=\"bar\"\nnginx_enable=\"YES\"\n"
        );
        assert_eq!(members[1].data, b"#!/bin/sh\n/bin/hostname web1\n");
        assert_eq!(members[2].data, b">/etc/motd.template\nhello\n");
        assert_eq!(members[3].data, b">>/etc/hosts\n10.0.0.1 db\n");
        assert_eq!(members[4].data, b"#!/bin/sh\necho done\n");
    }

    #[test]
    fn cloud_config() {
        let mut s = spec();
        s.flavour = Flavour::CloudInit;
        s.hostname = Some("web1".into());
        s.disable.push("sshd".into());
        s.files.push(FileSpec {
            path: "/usr/local/etc/x".into(),
            append: true,
            content: vec![0, 1, 2],
        });
        s.script = Some(b"#!/bin/sh\necho done\n".to_vec());
        let g = generate(&s).unwrap();
        assert_eq!(
            String::from_utf8(g.data).unwrap(),
            "#cloud-config\nhostname: \"web1\"\npackages:\n  - \"nginx\"\n  - \"git\"\n\
             write_files:\n  - path: \"/usr/local/etc/x\"\n    append: true\n    defer: true\n\
             \x20   encoding: b64\n    content: \"AAEC\"\n\
             \x20 - path: \"/root/ec2ami-user-script\"\n    permissions: \"0700\"\n    defer: true\n\
             \x20   content: |\n      #!/bin/sh\n      echo done\n\
             runcmd:\n  - [\"sysrc\", \"foo=bar\"]\n  - [\"sysrc\", \"nginx_enable=YES\"]\n\
             \x20 - [\"sysrc\", \"sshd_enable=NO\"]\n  - [\"service\", \"nginx\", \"start\"]\n\
             \x20 - [\"service\", \"sshd\", \"onestop\"]\n  - [\"/root/ec2ami-user-script\"]\n"
        );
    }

    #[test]
    fn every_problem_is_reported_against_its_field() {
        let s = Spec {
            packages: vec!["ok".into(), "bad name".into()],
            enable: vec!["php-fpm".into(), "nginx".into()],
            disable: vec!["nginx".into()],
            rc: vec!["foo=bar".into(), "nginx_enable=\"YES\"".into()],
            files: vec![FileSpec {
                path: "etc/x".into(),
                ..FileSpec::default()
            }],
            script: Some(b"echo no shebang\n".to_vec()),
            hostname: Some("-bad".into()),
            ..Spec::default()
        };
        let errs = generate(&s).unwrap_err();
        let got: Vec<(Field, Option<usize>)> = errs.iter().map(|p| (p.field, p.index)).collect();
        assert_eq!(
            got,
            [
                (Field::Packages, Some(1)),
                (Field::Enable, Some(0)),
                (Field::Hostname, None),
                (Field::Rc, Some(0)),
                (Field::Enable, Some(1)),
                (Field::Disable, Some(0)),
                (Field::File, Some(0)),
                (Field::Script, None),
            ]
        );
        assert!(
            errs[4].message.contains("nginx_enable is set twice"),
            "{errs:?}"
        );
        let none = generate(&Spec::default()).unwrap_err();
        assert_eq!(none[0].field, Field::Nothing);
        let cloud = Spec {
            flavour: Flavour::CloudInit,
            freebsd_update: Some(true),
            ..Spec::default()
        };
        assert_eq!(generate(&cloud).unwrap_err()[0].field, Field::FreebsdUpdate);
    }

    #[test]
    fn size_limit_is_exact() {
        // One write part: ">/x\n" plus the content.
        let at = |n: usize| Spec {
            files: vec![FileSpec {
                path: "/x".into(),
                append: false,
                content: vec![b'a'; n - 4],
            }],
            ..Spec::default()
        };
        assert_eq!(generate(&at(LIMIT_BYTES)).unwrap().data.len(), 16384);
        let e = generate(&at(LIMIT_BYTES + 1)).unwrap_err();
        assert_eq!(e[0].field, Field::Size);
        assert!(
            e[0].message
                .starts_with("16385 bytes: over EC2's limit of 16384")
        );
    }

    #[test]
    fn warnings() {
        let s = Spec {
            enable: vec!["nginx".into()],
            script: Some(b"#!/usr/local/bin/bash\n".to_vec()),
            ..Spec::default()
        };
        let g = generate(&s).unwrap();
        assert_eq!(g.warnings.len(), 2, "{:?}", g.warnings);
        assert!(g.warnings[0].message.contains("package nginx"));
        assert!(g.warnings[1].message.contains("firstboot_pkgs"));
        let (e, w) = script_problems(b"#!/bin/sh\r\n", Flavour::Base);
        assert_eq!((e.len(), w.len()), (1, 0));
        let (_, w) = script_problems(b"#!/usr/local/bin/bash\n", Flavour::CloudInit);
        assert!(w.is_empty());
        let (_, w) = script_problems(b"#!/opt/x\n", Flavour::CloudInit);
        assert_eq!(w.len(), 1);
    }
}
