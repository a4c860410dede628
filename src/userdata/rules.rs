//! The rule tables: what a valid package, service, rc.conf line, hostname, path and
//! script is, with the message each broken rule gives, the size limit, and the
//! variables and services the generator knows. The command applies them here in Rust;
//! the generator page gets the same tables as JSON ([`Rules::json`]) and applies them
//! with the same loop, so the two cannot disagree on what is valid or on what they say.
//!
//! Patterns are written for both regex-lite and JavaScript's `RegExp` (the page uses
//! the `u` flag, so both count characters): explicit character classes only (no `\s`,
//! `\d`, `\w`, and no `.`, which in JavaScript also stops at CR and U+2028), anchored.

use std::sync::LazyLock;

use regex_lite::Regex;
use serde::Serialize;

/// EC2's limit on user data: 16 KB in raw form, before base64 (RunInstances answers
/// "User data is limited to 16384 bytes" past it).
pub const LIMIT_BYTES: usize = 16384;

/// Where configinit's `>>` part for rc.conf settings appends.
pub const RC_CONF: &str = "/etc/rc.conf";

/// One rule: the value must match `pattern`, or `message` is the problem.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Rule {
    /// A regular expression the value must match.
    pub pattern: &'static str,
    /// What is wrong when it does not.
    pub message: &'static str,
}

/// An rc.conf variable the generator and the checker explain.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct KnownVar {
    /// The variable.
    pub name: &'static str,
    /// What it does on FreeBSD's EC2 images.
    pub about: &'static str,
}

/// A package offered on the page.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct CommonPackage {
    /// The pkg name.
    pub name: &'static str,
    /// One line about it.
    pub about: &'static str,
}

/// A service offered on the page: its rc.d name and the package its script comes with
/// (none: in the base system).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct CommonService {
    /// The rc.d name (`NAME_enable`).
    pub name: &'static str,
    /// The package that installs its rc.d script, if not the base system.
    pub package: Option<&'static str>,
    /// One line about it.
    pub about: &'static str,
}

/// Every table, as the page receives it.
#[derive(Debug, Clone, Serialize)]
pub struct Rules {
    /// EC2's limit, bytes before base64.
    pub limit_bytes: usize,
    /// The rc.conf configinit appends settings to.
    pub rc_conf: &'static str,
    /// Rules for one rc.conf line, in order; the first broken one is reported.
    pub rc_line: &'static [Rule],
    /// Rules for a package name.
    pub package: &'static [Rule],
    /// Rules for a service (rc.d) name.
    pub service: &'static [Rule],
    /// Rules for a hostname.
    pub hostname: &'static [Rule],
    /// Rules for a file's absolute path.
    pub path: &'static [Rule],
    /// The first bytes a script must start with.
    pub script_prefix: &'static str,
    /// Messages of the checks that are not a pattern, with `{placeholders}`.
    pub messages: &'static Messages,
    /// Interpreters in FreeBSD's base system.
    pub base_interpreters: &'static [&'static str],
    /// Variables a first-boot update setting writes (14.x: firstboot-freebsd-update;
    /// 15.0 and later: firstboot-pkg-upgrade).
    pub update_vars: &'static [&'static str],
    /// The hostname part's script; `{hostname}` is replaced.
    pub hostname_script: &'static str,
    /// Where the cloud-init flavour writes the user's script before runcmd runs it.
    pub cloud_init_script_path: &'static str,
    /// Variables explained by `--check` and the page.
    pub known_vars: &'static [KnownVar],
    /// Packages the page offers as check boxes.
    pub common_packages: &'static [CommonPackage],
    /// Services the page offers as check boxes.
    pub common_services: &'static [CommonService],
}

/// Messages of checks that are not patterns. `{name}` and the like are replaced.
#[derive(Debug, Clone, Serialize)]
pub struct Messages {
    /// No choice was made at all.
    pub nothing: &'static str,
    /// An rc.conf variable is set twice.
    pub duplicate: &'static str,
    /// The result is over EC2's limit.
    pub too_big: &'static str,
    /// `--freebsd-update` with the cloud-init flavour.
    pub update_cloud_init: &'static str,
    /// A script that does not start with `#!`.
    pub script_prefix: &'static str,
    /// A script whose first line ends in CR.
    pub script_crlf: &'static str,
    /// A script whose interpreter comes from a package (base flavour).
    pub interpreter_package: &'static str,
    /// A script whose interpreter is not in the base system.
    pub interpreter_unknown: &'static str,
    /// A known service enabled without the package its rc.d script comes with.
    pub service_package: &'static str,
}

/// The tables.
pub static RULES: Rules = Rules {
    limit_bytes: LIMIT_BYTES,
    rc_conf: RC_CONF,
    rc_line: &[
        Rule {
            pattern: "=",
            message: "not name=\"value\": there is no =",
        },
        Rule {
            pattern: "^[A-Za-z_][A-Za-z0-9_]*=",
            message: "the name before = is not a shell variable name (letters, digits and _, \
                      not starting with a digit)",
        },
        Rule {
            pattern: "^[A-Za-z_][A-Za-z0-9_]*=\"[^\\n]*\"$",
            message: "the value is not in double quotes: write name=\"value\"",
        },
        Rule {
            pattern: "^[A-Za-z_][A-Za-z0-9_]*=\"[^\"\\\\$`\\x00-\\x1f\\x7f]*\"$",
            message: "the value holds \", \\, $, ` or a control character, which sh \
                      interprets when it reads rc.conf",
        },
    ],
    package: &[Rule {
        pattern: "^[A-Za-z0-9][A-Za-z0-9._+@/-]*$",
        message: "not a package name or origin (letters, digits and . _ + @ / -, \
                  e.g. nginx or www/nginx)",
    }],
    service: &[
        Rule {
            pattern: "^[A-Za-z0-9_-]+$",
            message: "not an rc.d service name (letters, digits and _)",
        },
        Rule {
            pattern: "^[A-Za-z_][A-Za-z0-9_]*$",
            message: "rc.d service names use _ where package names use - (php-fpm's is \
                      php_fpm) and do not start with a digit",
        },
    ],
    hostname: &[
        Rule {
            pattern: "^[^\\n]{1,253}$",
            message: "a hostname is 1 to 253 characters",
        },
        Rule {
            pattern: "^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\
                      ([.][A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$",
            message: "not a hostname (labels of letters, digits and -, at most 63 \
                      characters each, joined by dots)",
        },
    ],
    path: &[
        Rule {
            pattern: "^/",
            message: "not an absolute path: configinit writes only >/path and >>/path",
        },
        Rule {
            pattern: "^[^\\x00-\\x20\\x7f]*$",
            message: "has a space or a control character: configinit passes the path to \
                      the shell unquoted",
        },
        Rule {
            pattern: "^[^*?\\[]*$",
            message: "has *, ? or [: configinit passes the path to dirname unquoted, so \
                      the shell would expand it",
        },
        Rule {
            pattern: "[^/]$",
            message: "ends with /: name a file, not a directory",
        },
    ],
    script_prefix: "#!",
    messages: &Messages {
        nothing: "nothing to put in the user data: choose packages, services, rc.conf \
                  settings, files or a script",
        duplicate: "{name} is set twice: set it once (rc.conf keeps the last value)",
        too_big: "{bytes} bytes: over EC2's limit of {limit} bytes (16 KiB, counted \
                  before base64)",
        update_cloud_init: "the cloud-init flavour has no first-boot FreeBSD update to \
                            turn on or off (only the base flavour has)",
        script_prefix: "does not start with #!: only user data that starts with #! is \
                        run as a script",
        script_crlf: "its first line ends in CR (Windows line ends): the kernel would look \
                      for an interpreter whose name ends in CR",
        interpreter_package: "{interpreter} comes from a package, and firstboot_pkgs \
                              installs packages only after configinit has run the script",
        interpreter_unknown: "{interpreter} is not in FreeBSD's base system",
        service_package: "{service}'s rc.d script comes with the package {package}, which \
                          is not in the packages",
    },
    base_interpreters: &[
        "/bin/sh",
        "/bin/csh",
        "/bin/tcsh",
        "/usr/bin/env",
        "/usr/libexec/flua",
    ],
    update_vars: &[
        "firstboot_freebsd_update_enable",
        "firstboot_pkg_upgrade_enable",
    ],
    hostname_script: "#!/bin/sh\n/bin/hostname {hostname}\n",
    cloud_init_script_path: "/root/ec2ami-user-script",
    known_vars: &[
        KnownVar {
            name: "firstboot_pkgs_list",
            about: "packages firstboot_pkgs installs at first boot, after configinit (the \
                    image's own list is devel/py-awscli: this replaces it)",
        },
        KnownVar {
            name: "firstboot_pkgs_enable",
            about: "whether firstboot_pkgs installs packages at first boot (YES on \
                    FreeBSD's base images)",
        },
        KnownVar {
            name: "firstboot_freebsd_update_enable",
            about: "whether freebsd-update installs security updates at first boot and \
                    reboots (FreeBSD 14 and earlier)",
        },
        KnownVar {
            name: "firstboot_pkg_upgrade_enable",
            about: "whether pkg upgrades the base system at first boot and reboots \
                    (FreeBSD 15 and later)",
        },
        KnownVar {
            name: "hostname",
            about: "the hostname; rc.d/hostname runs before configinit, so from the next \
                    boot on",
        },
        KnownVar {
            name: "sshd_enable",
            about: "whether sshd starts (YES on FreeBSD's images)",
        },
        KnownVar {
            name: "ec2_configinit_enable",
            about: "whether configinit reads the user data at first boot",
        },
        KnownVar {
            name: "ec2_fetchkey_enable",
            about: "whether the launch's SSH key is installed for ec2-user",
        },
        KnownVar {
            name: "ec2_fetchkey_user",
            about: "the user who gets the launch's SSH key (ec2-user)",
        },
        KnownVar {
            name: "growfs_enable",
            about: "whether the root file system grows to fill the disk",
        },
        KnownVar {
            name: "ifconfig_DEFAULT",
            about: "how every interface is configured (SYNCDHCP accept_rtadv on EC2)",
        },
        KnownVar {
            name: "ntpd_enable",
            about: "whether ntpd keeps the clock (Amazon's time service)",
        },
    ],
    common_packages: &[
        CommonPackage {
            name: "sudo",
            about: "run commands as root",
        },
        CommonPackage {
            name: "doas",
            about: "run commands as root (smaller than sudo)",
        },
        CommonPackage {
            name: "bash",
            about: "the Bourne-again shell",
        },
        CommonPackage {
            name: "git",
            about: "version control",
        },
        CommonPackage {
            name: "tmux",
            about: "terminal multiplexer",
        },
        CommonPackage {
            name: "vim",
            about: "text editor",
        },
        CommonPackage {
            name: "curl",
            about: "transfer URLs",
        },
        CommonPackage {
            name: "rsync",
            about: "copy files over SSH",
        },
        CommonPackage {
            name: "python3",
            about: "Python 3",
        },
        CommonPackage {
            name: "devel/py-awscli",
            about: "the AWS command line (the image's default list)",
        },
        CommonPackage {
            name: "nginx",
            about: "web server",
        },
        CommonPackage {
            name: "caddy",
            about: "web server with automatic TLS",
        },
        CommonPackage {
            name: "haproxy",
            about: "TCP and HTTP load balancer",
        },
        CommonPackage {
            name: "redis",
            about: "key-value store",
        },
        CommonPackage {
            name: "memcached",
            about: "memory cache",
        },
    ],
    common_services: &[
        CommonService {
            name: "nginx",
            package: Some("nginx"),
            about: "web server",
        },
        CommonService {
            name: "caddy",
            package: Some("caddy"),
            about: "web server",
        },
        CommonService {
            name: "haproxy",
            package: Some("haproxy"),
            about: "load balancer",
        },
        CommonService {
            name: "redis",
            package: Some("redis"),
            about: "key-value store",
        },
        CommonService {
            name: "memcached",
            package: Some("memcached"),
            about: "memory cache",
        },
        CommonService {
            name: "ntpd",
            package: None,
            about: "network time (base system)",
        },
        CommonService {
            name: "sshd",
            package: None,
            about: "SSH server (base system; on by default)",
        },
    ],
};

impl Rules {
    /// The tables as one JSON document, safe to embed in a `<script>` element.
    pub fn json(&self) -> String {
        serde_json::to_string(self)
            .expect("the rules serialise")
            .replace("</", "<\\/")
    }

    /// What the known variable `name` does, if the tables know it.
    pub fn about(&self, name: &str) -> Option<&'static str> {
        self.known_vars
            .iter()
            .find(|v| v.name == name)
            .map(|v| v.about)
    }

    /// The common service called `name`, if any.
    pub fn service(&self, name: &str) -> Option<&'static CommonService> {
        self.common_services.iter().find(|s| s.name == name)
    }
}

/// The compiled patterns, in the order of the tables.
struct Compiled {
    rc_line: Vec<Regex>,
    package: Vec<Regex>,
    service: Vec<Regex>,
    hostname: Vec<Regex>,
    path: Vec<Regex>,
}

static COMPILED: LazyLock<Compiled> = LazyLock::new(|| {
    let compile = |rules: &[Rule]| -> Vec<Regex> {
        rules
            .iter()
            .map(|r| Regex::new(r.pattern).expect("the rule patterns compile"))
            .collect()
    };
    Compiled {
        rc_line: compile(RULES.rc_line),
        package: compile(RULES.package),
        service: compile(RULES.service),
        hostname: compile(RULES.hostname),
        path: compile(RULES.path),
    }
});

/// The message of the first rule `value` breaks.
fn first_broken(rules: &[Rule], compiled: &[Regex], value: &str) -> Option<&'static str> {
    rules
        .iter()
        .zip(compiled)
        .find(|(_, re)| !re.is_match(value))
        .map(|(r, _)| r.message)
}

/// What is wrong with an rc.conf line, if anything.
pub fn rc_line_problem(line: &str) -> Option<&'static str> {
    first_broken(RULES.rc_line, &COMPILED.rc_line, line)
}

/// What is wrong with a package name, if anything.
pub fn package_problem(name: &str) -> Option<&'static str> {
    first_broken(RULES.package, &COMPILED.package, name)
}

/// What is wrong with a service name, if anything.
pub fn service_problem(name: &str) -> Option<&'static str> {
    first_broken(RULES.service, &COMPILED.service, name)
}

/// What is wrong with a hostname, if anything.
pub fn hostname_problem(name: &str) -> Option<&'static str> {
    first_broken(RULES.hostname, &COMPILED.hostname, name)
}

/// What is wrong with a file's path, if anything.
pub fn path_problem(path: &str) -> Option<&'static str> {
    first_broken(RULES.path, &COMPILED.path, path)
}

/// The name and value of a valid rc.conf line (`name="value"`).
pub fn split_rc_line(line: &str) -> Option<(&str, &str)> {
    if rc_line_problem(line).is_some() {
        return None;
    }
    let (name, rest) = line.split_once('=')?;
    Some((name, &rest[1..rest.len() - 1]))
}

/// Replace `{key}` by its value in `template`.
pub fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = template.to_string();
    for (k, v) in values {
        out = out.replace(&format!("{{{k}}}"), v);
    }
    out
}

/// The interpreter a `#!` line names (the first word after `#!`).
pub fn interpreter(first_line: &[u8]) -> String {
    let rest = first_line.strip_prefix(b"#!").unwrap_or(first_line);
    let rest: Vec<u8> = rest
        .iter()
        .copied()
        .skip_while(|b| *b == b' ' || *b == b'\t')
        .take_while(|b| *b != b' ' && *b != b'\t' && *b != b'\r' && *b != b'\n')
        .collect();
    String::from_utf8_lossy(&rest).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rc_lines_are_name_equals_quoted_value() {
        assert_eq!(rc_line_problem("foo=\"bar\""), None);
        assert_eq!(rc_line_problem("foo_bar2=\"\""), None);
        assert_eq!(
            rc_line_problem("ifconfig_DEFAULT=\"SYNCDHCP accept_rtadv\""),
            None
        );
        assert_eq!(rc_line_problem("foo"), Some(RULES.rc_line[0].message));
        assert_eq!(
            rc_line_problem("2foo=\"x\""),
            Some(RULES.rc_line[1].message)
        );
        assert_eq!(
            rc_line_problem("foo-bar=\"x\""),
            Some(RULES.rc_line[1].message)
        );
        assert_eq!(
            rc_line_problem(" foo=\"x\""),
            Some(RULES.rc_line[1].message)
        );
        assert_eq!(rc_line_problem("foo=bar"), Some(RULES.rc_line[2].message));
        assert_eq!(rc_line_problem("foo='bar'"), Some(RULES.rc_line[2].message));
        assert_eq!(
            rc_line_problem("foo=\"bar\" "),
            Some(RULES.rc_line[2].message)
        );
        assert_eq!(
            rc_line_problem("foo=\"a\"b\""),
            Some(RULES.rc_line[3].message)
        );
        assert_eq!(
            rc_line_problem("foo=\"$HOME\""),
            Some(RULES.rc_line[3].message)
        );
        assert_eq!(
            rc_line_problem("foo=\"`id`\""),
            Some(RULES.rc_line[3].message)
        );
        assert_eq!(
            rc_line_problem("foo=\"a\\b\""),
            Some(RULES.rc_line[3].message)
        );
        assert_eq!(
            rc_line_problem("foo=\"a\rb\""),
            Some(RULES.rc_line[3].message)
        );
        assert_eq!(split_rc_line("a=\"b c\""), Some(("a", "b c")));
        assert_eq!(split_rc_line("a=b"), None);
    }

    #[test]
    fn names_paths_and_hostnames() {
        assert_eq!(package_problem("nginx"), None);
        assert_eq!(package_problem("devel/py-awscli"), None);
        assert_eq!(package_problem("www/py-foo@py311"), None);
        assert!(package_problem("a b").is_some());
        assert!(package_problem("").is_some());
        assert!(package_problem("-rf").is_some());
        assert!(package_problem("a\"b").is_some());
        assert_eq!(service_problem("php_fpm"), None);
        assert_eq!(service_problem("php-fpm"), Some(RULES.service[1].message));
        assert_eq!(service_problem("1abc"), Some(RULES.service[1].message));
        assert_eq!(service_problem("a b"), Some(RULES.service[0].message));
        assert_eq!(hostname_problem("web-1.example.org"), None);
        assert!(hostname_problem("-web").is_some());
        assert!(hostname_problem("web_1").is_some());
        assert!(hostname_problem(&"a".repeat(64)).is_some());
        assert_eq!(hostname_problem(&"a".repeat(63)), None);
        assert_eq!(
            hostname_problem(&["a"; 128].join(".")),
            Some(RULES.hostname[0].message)
        );
        assert_eq!(path_problem("/etc/x"), None);
        assert_eq!(path_problem("etc/x"), Some(RULES.path[0].message));
        assert_eq!(path_problem("/etc/a b"), Some(RULES.path[1].message));
        assert_eq!(path_problem("/etc/*"), Some(RULES.path[2].message));
        assert_eq!(path_problem("/etc/"), Some(RULES.path[3].message));
        assert_eq!(path_problem("/"), Some(RULES.path[3].message));
    }

    #[test]
    fn interpreters_and_templates() {
        assert_eq!(interpreter(b"#!/bin/sh -e"), "/bin/sh");
        assert_eq!(
            interpreter(b"#! /usr/local/bin/bash\r"),
            "/usr/local/bin/bash"
        );
        assert_eq!(fill("{a} and {b}", &[("a", "1"), ("b", "2")]), "1 and 2");
        let json = RULES.json();
        let back: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(back["limit_bytes"], 16384);
        assert!(!json.contains("</"));
    }
}
