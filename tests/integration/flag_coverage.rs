//! Every user-facing flag and release-file key is in the checked-in coverage table
//! `tests/flag-coverage.txt`, with the tests that exercise it end to end (or `UNTESTED`,
//! honestly). The flags are found by walking `ec2ami --help` through every command and
//! subcommand; the release keys by reading the release file's definition in
//! `src/publish/release.rs`. A flag or key missing from the table fails the test, so a
//! new one arrives with its line (and, one hopes, its test).
//!
//! `EC2AMI_WRITE_FLAG_COVERAGE=1 cargo nextest run -E 'test(flag_coverage)'` rewrites
//! the table: a flag is covered by the integration-test functions whose body contains
//! it and every word of its command as string literals (`"upload"`, `"--workers"`), a
//! release key by the test files that write `key =` in a release (the command's words
//! may be in a helper of the same file that the test calls). A heuristic: a
//! listed test names the flag, which does not prove it checks the flag's effect.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::common::*;

const TABLE: &str = "tests/flag-coverage.txt";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The subcommands a help page lists under `Commands:` (not `help`).
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter(|l| l.starts_with("  ") && !l.starts_with("    "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|c| c != "help")
        .collect()
}

/// The long flags a help page lists (`--help` and `--version` aside), with their short
/// form when they have one.
fn flags(help: &str) -> BTreeSet<String> {
    help.lines()
        .filter_map(|l| {
            let t = l.trim_start();
            let t = match t.strip_prefix('-') {
                Some(rest) if !rest.starts_with('-') && t.len() > 3 && &t[2..4] == ", " => {
                    format!("{}|{}", &t[4..], &t[..2])
                }
                _ => t.to_string(),
            };
            let long = t.strip_prefix("--")?;
            let name: String = long
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            let short = t.split_once('|').map(|(_, s)| s.to_string());
            Some(match short {
                Some(s) => format!("--{name} ({s})"),
                None => format!("--{name}"),
            })
        })
        .filter(|f| !f.starts_with("--help") && !f.starts_with("--version"))
        .collect()
}

/// Every (command path, flag) of the CLI: global flags under `ec2ami`.
async fn cli_flags(world: &World) -> Vec<(String, String)> {
    let top = world.run(&["--help"]).await;
    top.assert_ok();
    let global = flags(&top.stdout);
    let mut out: Vec<(String, String)> = global
        .iter()
        .map(|f| ("ec2ami".to_string(), f.clone()))
        .collect();
    let mut queue: Vec<Vec<String>> = subcommands(&top.stdout)
        .into_iter()
        .map(|c| vec![c])
        .collect();
    while let Some(path) = queue.pop() {
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        let run = world.run(&args).await;
        run.assert_ok();
        for f in flags(&run.stdout).difference(&global) {
            out.push((path.join(" "), f.clone()));
        }
        for sub in subcommands(&run.stdout) {
            let mut p = path.clone();
            p.push(sub);
            queue.push(p);
        }
    }
    out.sort();
    out
}

/// The release file's keys: the fields of `RawRelease` (serde names) and `IMAGE_KEYS`.
fn release_keys() -> Vec<String> {
    let src = std::fs::read_to_string(root().join("src/publish/release.rs")).unwrap();
    let mut keys = BTreeSet::new();
    let raw = src
        .split("struct RawRelease {")
        .nth(1)
        .expect("RawRelease in release.rs")
        .split("\n}")
        .next()
        .unwrap();
    let mut rename = None;
    for line in raw.lines().map(str::trim) {
        if let Some(r) = line.split("rename = \"").nth(1) {
            rename = r.split('"').next().map(str::to_string);
        } else if let Some((field, _)) = line.split_once(':')
            && !line.starts_with("//")
            && !line.starts_with('#')
        {
            keys.insert(rename.take().unwrap_or_else(|| field.to_string()));
        }
    }
    let list = src
        .split("const IMAGE_KEYS: &[&str] = &[")
        .nth(1)
        .expect("IMAGE_KEYS in release.rs")
        .split("];")
        .next()
        .unwrap();
    for k in list.split('"').skip(1).step_by(2) {
        keys.insert(format!("image.{k}"));
    }
    keys.into_iter().collect()
}

/// The functions of the integration tests: (file, name, body).
fn test_functions() -> Vec<(String, String, String)> {
    let dir = root().join("tests/integration");
    let mut out = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .filter(|p| !p.ends_with("flag_coverage.rs"))
        .collect();
    files.sort();
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        for chunk in text.split("\nfn ").chain(text.split("\nasync fn ")).skip(1) {
            let name: String = chunk
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            let body = chunk.split("\n}\n").next().unwrap_or(chunk).to_string();
            out.push((file.clone(), name, body));
        }
    }
    out
}

/// Every function and method of the integration tests, at any indentation: (file,
/// name, body up to the closing brace at its indentation).
fn helper_functions() -> Vec<(String, String, String)> {
    let dir = root().join("tests/integration");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap().filter_map(Result::ok) {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let t = line.trim_start();
            let indent = &line[..line.len() - t.len()];
            let Some(rest) = ["fn ", "async fn ", "pub fn ", "pub async fn "]
                .iter()
                .find_map(|p| t.strip_prefix(p))
            else {
                continue;
            };
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            let close = format!("{indent}}}");
            let body: Vec<&str> = lines[i..]
                .iter()
                .take_while(|l| **l != close)
                .copied()
                .collect();
            out.push((file.clone(), name, body.join("\n")));
        }
    }
    out
}

/// The table as the tests stand: `command<TAB>flag<TAB>covering tests or UNTESTED`.
fn generate(flags: &[(String, String)], keys: &[String]) -> String {
    let fns = test_functions();
    // The command words may come from a helper (function or method) of the same file
    // the test calls (one level: `get(&["--timeout", "1s"])` where `get` runs `imds
    // get`); the flag itself must be in the test's own body.
    let helpers = helper_functions();
    let reach: Vec<String> = fns
        .iter()
        .map(|(file, name, body)| {
            let mut text = body.clone();
            for (f, helper, hbody) in &helpers {
                if f == file && helper != name && body.contains(&format!("{helper}(")) {
                    text.push_str(hbody);
                }
            }
            text
        })
        .collect();
    let mut files: BTreeMap<String, String> = BTreeMap::new();
    for (file, _, body) in &fns {
        files.entry(file.clone()).or_default().push_str(body);
    }
    let mut out = String::from(
        "# Every user-facing flag and release-file key, with the integration tests that use\n\
         # it (generated by tests/integration/flag_coverage.rs; see there to regenerate).\n\
         # command\tflag or key\tcovered by\n",
    );
    for (cmd, flag) in flags {
        let long = flag.split_whitespace().next().unwrap();
        let short = flag
            .split_once('(')
            .map(|(_, s)| s.trim_end_matches(')').to_string());
        // A test covers a command's flag when it names both the flag and (for a
        // subcommand) every word of the command as string literals.
        let words: Vec<String> = if cmd == "ec2ami" {
            Vec::new()
        } else {
            cmd.split(' ').map(|w| format!("\"{w}\"")).collect()
        };
        let mut by: Vec<String> = fns
            .iter()
            .zip(&reach)
            .filter(|((_, _, body), reached)| {
                (body.contains(&format!("\"{long}\""))
                    || short
                        .as_ref()
                        .is_some_and(|s| body.contains(&format!("\"{s}\""))))
                    && words.iter().all(|w| reached.contains(w.as_str()))
            })
            .map(|(f, _)| f)
            .map(|(f, n, _)| format!("{}::{n}", f.trim_end_matches(".rs")))
            .collect();
        by.sort();
        by.dedup();
        let by = if by.is_empty() {
            "UNTESTED".to_string()
        } else {
            by.join(", ")
        };
        out.push_str(&format!("{cmd}\t{flag}\t{by}\n"));
    }
    for key in keys {
        let bare = key.trim_start_matches("image.");
        let mut by: Vec<String> = files
            .iter()
            .filter(|(_, text)| {
                text.lines()
                    .any(|l| l.trim_start().starts_with(&format!("{bare} =")))
                    || text.contains(&format!("\\n{bare} ="))
                    || text.contains(&format!("\"{bare} ="))
                    || (bare == "image" && text.contains("[[image]]"))
                    || (bare == "defaults" && text.contains("[defaults]"))
            })
            .map(|(f, _)| f.clone())
            .collect();
        by.sort();
        let by = if by.is_empty() {
            "UNTESTED".to_string()
        } else {
            by.join(", ")
        };
        out.push_str(&format!("release.toml\t{key}\t{by}\n"));
    }
    out
}

/// (command, flag or key) of each line of the table.
fn table_entries(text: &str) -> BTreeSet<(String, String)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let mut parts = l.split('\t');
            Some((parts.next()?.to_string(), parts.next()?.to_string()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_flag_and_release_key_is_in_the_coverage_table() {
    let world = World::offline().await;
    let flags = cli_flags(&world).await;
    let keys = release_keys();
    // The walk found the CLI (a parser that finds nothing would pass vacuously).
    assert!(flags.len() > 60, "{flags:?}");
    for expected in [
        ("ec2ami", "--output"),
        ("upload", "--workers"),
        ("params put", "--var"),
        ("prune", "--max-age"),
    ] {
        assert!(
            flags
                .iter()
                .any(|(c, f)| c == expected.0 && f.starts_with(expected.1)),
            "{expected:?} not found"
        );
    }
    assert!(keys.contains(&"best_effort".to_string()), "{keys:?}");
    assert!(keys.contains(&"image.deprecate_in".to_string()), "{keys:?}");
    let generated = generate(&flags, &keys);
    let path = root().join(TABLE);
    if std::env::var_os("EC2AMI_WRITE_FLAG_COVERAGE").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let table = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (regenerate it: see this test)", path.display()));
    let have = table_entries(&table);
    let want = table_entries(&generated);
    let missing: Vec<_> = want.difference(&have).collect();
    assert!(
        missing.is_empty(),
        "flags or release keys missing from {TABLE} (add a test, then regenerate: \
         EC2AMI_WRITE_FLAG_COVERAGE=1): {missing:?}"
    );
    for stale in have.difference(&want) {
        eprintln!("{TABLE}: {stale:?} is no longer a flag or key");
    }
    assert!(Path::new(&path).exists());
}
