//! What ships: the `ec2ami` binary has no test-only command and contains nothing of the
//! test world, its normal dependency tree does not reach `ec2ami-testkit`, and its shell
//! completions and man pages come from its own command line.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::common::*;

/// Words only the test world uses.
const TEST_WORLD: &[&str] = &[
    "testkit",
    "moto",
    "strict-ebs",
    "strict ebs",
    "boot-fixture",
    "boot fixture",
];

/// The top-level subcommands a `--help` lists.
fn listed_commands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        // A command's line; a wrapped description goes on further indented.
        .filter(|l| !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn help_lists_nothing_of_the_test_world() {
    let world = World::offline().await;
    let top = world.run(&["--help"]).await;
    top.assert_ok();
    let commands = listed_commands(&top.stdout);
    for expected in [
        "upload",
        "publish",
        "prune",
        "history",
        "completions",
        "man",
    ] {
        assert!(
            commands.iter().any(|c| c == expected),
            "{expected} not in {commands:?}"
        );
    }
    let mut pages = vec![top.stdout.clone()];
    for c in commands.iter().filter(|c| *c != "help") {
        let run = world.run(&[c, "--help"]).await;
        run.assert_ok();
        for sub in listed_commands(&run.stdout).iter().filter(|s| *s != "help") {
            let nested = world.run(&[c, sub, "--help"]).await;
            nested.assert_ok();
            pages.push(nested.stdout);
        }
        pages.push(run.stdout);
    }
    assert!(
        pages.iter().any(|p| p.contains("bsdec2-image-upload")),
        "nested commands were read"
    );
    for page in &pages {
        let lower = page.to_lowercase();
        for word in TEST_WORLD {
            assert!(!lower.contains(word), "`{word}` in the help:\n{page}");
        }
    }
    assert!(world.proxy.requests().is_empty());
}

/// Whether `needle` occurs in `haystack`.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    let first = needle[0];
    let mut at = 0;
    while let Some(i) = haystack[at..].iter().position(|b| *b == first) {
        let start = at + i;
        if haystack[start..].starts_with(needle) {
            return true;
        }
        at = start + 1;
    }
    false
}

/// Strings only the test world's code holds: lines of the moto extension it embeds, and
/// the names its symbols carry.
fn simulator_needles() -> Vec<String> {
    let mut needles: Vec<String> = ec2ami_testkit::moto::MOTO_EXT
        .lines()
        .map(str::trim)
        .filter(|l| l.len() > 50)
        .take(3)
        .map(str::to_string)
        .collect();
    assert_eq!(needles.len(), 3, "the moto extension has long lines");
    needles.extend(
        ["ec2ami_testkit", "StrictEbs", "FaultProxy", "BootFixture"]
            .iter()
            .map(|s| s.to_string()),
    );
    needles
}

#[test]
fn the_binary_does_not_contain_the_simulator() {
    let needles = simulator_needles();
    // This test's own executable links the test world: every needle is found there, so
    // the scan and the needles are sound (also in a debug build, where symbols are kept).
    let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    for n in &needles {
        assert!(contains(&me, n.as_bytes()), "the test binary lacks `{n}`");
    }
    let shipped = std::fs::read(env!("CARGO_BIN_EXE_ec2ami")).unwrap();
    assert!(
        contains(&shipped, b"bsdec2-image-upload"),
        "the binary is read"
    );
    for n in &needles {
        assert!(
            !contains(&shipped, n.as_bytes()),
            "the shipped binary contains `{n}` of the test world"
        );
    }
}

/// Packages reachable from `root` in `cargo metadata`'s resolve graph, following only
/// edges whose kind is one of `kinds` (`None` is a normal dependency).
fn reachable(meta: &Value, root: &str, kinds: &[Option<&str>]) -> BTreeSet<String> {
    let nodes: HashMap<&str, &Value> = meta["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["id"].as_str().unwrap(), n))
        .collect();
    let names: HashMap<&str, &str> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap()))
        .collect();
    let mut seen = BTreeSet::new();
    let mut queue = VecDeque::from([root.to_string()]);
    while let Some(id) = queue.pop_front() {
        if !seen.insert(id.clone()) {
            continue;
        }
        for dep in nodes[id.as_str()]["deps"].as_array().unwrap() {
            let follows = dep["dep_kinds"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| kinds.contains(&k["kind"].as_str()));
            if follows {
                queue.push_back(dep["pkg"].as_str().unwrap().to_string());
            }
        }
    }
    seen.iter()
        .map(|id| names[id.as_str()].to_string())
        .collect()
}

/// This machine's target triple, from the rustc beside the cargo that built the tests.
fn host_triple() -> String {
    let rustc = Path::new(env!("CARGO")).with_file_name("rustc");
    let rustc = if rustc.exists() {
        rustc
    } else {
        "rustc".into()
    };
    let out = Command::new(rustc).arg("-vV").output().expect("rustc runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("rustc -vV names the host")
        .to_string()
}

#[test]
fn the_normal_dependency_tree_has_no_test_world() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    // Offline (the tests run with loopback only): only this platform's packages are
    // on disk, so the graph is this platform's.
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--offline", "--locked"])
        .arg("--filter-platform")
        .arg(host_triple())
        .arg("--manifest-path")
        .arg(&manifest)
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).unwrap();
    let root = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "ec2ami")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let shipped = reachable(&meta, &root, &[None, Some("build")]);
    assert!(shipped.contains("aws-sdk-ebs") && shipped.contains("clap_mangen"));
    assert!(
        !shipped.contains("ec2ami-testkit"),
        "ec2ami's normal dependencies reach the test world"
    );
    // With dev-dependencies the walk does reach it: the check can fail.
    let with_dev = reachable(&meta, &root, &[None, Some("build"), Some("dev")]);
    assert!(with_dev.contains("ec2ami-testkit"));
}

#[tokio::test]
async fn completion_scripts_for_each_shell_name_the_commands() {
    let world = World::offline().await;
    for shell in ["bash", "zsh", "fish", "elvish"] {
        let run = world.run(&["completions", shell]).await;
        run.assert_ok();
        for word in [
            "upload",
            "publish",
            "validate",
            "prune",
            "history",
            "bsdec2-image-upload",
            "promote",
            "allow-clobber",
        ] {
            assert!(run.stdout.contains(word), "{shell}: no `{word}`");
        }
    }
    // The bash script completes as bash runs it.
    let script = world.path("ec2ami.bash");
    let run = world.run(&["completions", "bash"]).await;
    std::fs::write(&script, &run.stdout).unwrap();
    let complete = |words: &str| -> Vec<String> {
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "source {}; COMP_WORDS=({words}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); \
                 COMP_LINE='{words}'; COMP_POINT=${{#COMP_LINE}}; \
                 _ec2ami ec2ami \"${{COMP_WORDS[-1]}}\" \"${{COMP_WORDS[-2]}}\" 2>/dev/null; \
                 printf '%s\\n' \"${{COMPREPLY[@]}}\"",
                script.display()
            ))
            .output()
            .expect("bash runs");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    };
    assert_eq!(complete("ec2ami pub"), vec!["publish"]);
    let params = complete("ec2ami params p");
    assert!(
        params.contains(&"put".to_string()) && params.contains(&"promote".to_string()),
        "{params:?}"
    );
    assert!(complete("ec2ami prune --inc").contains(&"--include-public".to_string()));
    // An unknown shell is a usage error.
    let run = world.run(&["completions", "tcsh"]).await;
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("possible values"), "{}", run.stderr);
    assert!(world.proxy.requests().is_empty());
}

/// Render a man page with groff as `man` does, all warnings on, as plain ASCII:
/// (text, warnings).
fn render_man(page: &Path) -> (String, String) {
    let out = Command::new("groff")
        .args(["-man", "-Tascii", "-ww", "-P-cbou"])
        .arg(page)
        .output()
        .expect("groff renders man pages (apt-get install groff-base)");
    assert!(out.status.success(), "groff failed on {}", page.display());
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn every_command_has_a_man_page_that_renders() {
    let world = World::offline().await;
    let dir = world.path("man/man1");
    let run = world.run(&["man", "--out", dir.to_str().unwrap()]).await;
    run.assert_ok();
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    for name in [
        "ec2ami",
        "ec2ami-upload",
        "ec2ami-download",
        "ec2ami-register",
        "ec2ami-copy",
        "ec2ami-share",
        "ec2ami-params",
        "ec2ami-params-put",
        "ec2ami-params-promote",
        "ec2ami-publish",
        "ec2ami-validate",
        "ec2ami-prune",
        "ec2ami-deprecate",
        "ec2ami-compat",
        "ec2ami-compat-bsdec2-image-upload",
        "ec2ami-bench",
        "ec2ami-history",
        "ec2ami-history-import",
        "ec2ami-history-list",
        "ec2ami-history-show",
        "ec2ami-history-check",
        "ec2ami-report",
        "ec2ami-completions",
        "ec2ami-man",
    ] {
        let file = format!("{name}.1");
        assert!(files.contains(&file), "no {file} in {files:?}");
        assert!(
            run.stdout.lines().any(|l| l.ends_with(&format!("/{file}"))),
            "{file} not reported:\n{}",
            run.stdout
        );
    }
    for file in &files {
        let (text, warnings) = render_man(&dir.join(file));
        assert!(warnings.is_empty(), "{file}: {warnings}");
        let name = file.trim_end_matches(".1");
        assert!(
            text.contains("NAME") && text.contains("SYNOPSIS"),
            "{file}:\n{text}"
        );
        assert!(text.contains(name), "{file} does not name {name}:\n{text}");
    }
    let (put, _) = render_man(&dir.join("ec2ami-params-put.1"));
    assert!(put.contains("--allow-clobber"), "{put}");
    // A directory that cannot be made is named, and nothing is written.
    let file = world.path("plain-file");
    write_file(&file, b"x");
    let target = file.join("man1");
    let run = world.run(&["man", "--out", target.to_str().unwrap()]).await;
    run.assert_failed_with("plain-file");
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    assert!(world.proxy.requests().is_empty());
}
