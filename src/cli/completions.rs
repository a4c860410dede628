//! Shell completion scripts and man pages, generated from the same clap definitions as
//! the command line itself, so they never disagree with `--help`.

use std::path::{Path, PathBuf};

use clap::{Args, CommandFactory, ValueEnum};

use super::{Cli, Failure, GlobalArgs, emit};

/// `ec2ami completions SHELL`.
#[derive(Debug, Args)]
pub(crate) struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    shell: Shell,
}

/// Shells a completion script can be written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Shell {
    /// bash (bash-completion).
    Bash,
    /// zsh.
    Zsh,
    /// fish.
    Fish,
    /// elvish.
    Elvish,
}

impl Shell {
    fn generator(self) -> clap_complete::Shell {
        match self {
            Shell::Bash => clap_complete::Shell::Bash,
            Shell::Zsh => clap_complete::Shell::Zsh,
            Shell::Fish => clap_complete::Shell::Fish,
            Shell::Elvish => clap_complete::Shell::Elvish,
        }
    }
}

/// `ec2ami man --out DIR`.
#[derive(Debug, Args)]
pub(crate) struct ManArgs {
    /// Directory to write the pages into (made if missing), e.g. /usr/local/share/man/man1.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

/// The program's name as users type it.
const BIN: &str = "ec2ami";

/// The completion script for `shell`.
fn completion_script(shell: Shell) -> String {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell.generator(), &mut cmd, BIN, &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Print the completion script on stdout.
pub(crate) fn completions(a: &CompletionsArgs) -> Result<(), Failure> {
    emit(completion_script(a.shell).trim_end());
    Ok(())
}

/// One man page: its file name (`ec2ami-params-put.1`) and its roff source.
struct Page {
    file: String,
    roff: Vec<u8>,
}

/// Every man page: the program's, and one for each subcommand at every depth (hidden
/// ones excepted), named by the command path joined with `-`.
fn man_pages() -> std::io::Result<Vec<Page>> {
    fn walk(cmd: &clap::Command, out: &mut Vec<Page>) -> std::io::Result<()> {
        let man = clap_mangen::Man::new(cmd.clone()).manual("ec2ami manual");
        let mut roff = Vec::new();
        man.render(&mut roff)?;
        out.push(Page {
            file: man.get_filename(),
            roff,
        });
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            walk(sub, out)?;
        }
        Ok(())
    }
    // Built once, so every subcommand carries its full name (`ec2ami-params-put`) and
    // the global options; no page for `help`.
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut pages = Vec::new();
    walk(&cmd, &mut pages)?;
    Ok(pages)
}

/// Write every man page into `--out`; prints the files written.
pub(crate) fn man(g: &GlobalArgs, a: &ManArgs) -> Result<(), Failure> {
    let fail = |what: &str, path: &Path, e: std::io::Error| Failure {
        message: format!("{what} {}: {e}", path.display()),
        interrupted: false,
    };
    let pages = man_pages().map_err(|e| fail("rendering man pages for", &a.out, e))?;
    std::fs::create_dir_all(&a.out).map_err(|e| fail("man page directory", &a.out, e))?;
    let mut written = Vec::new();
    for page in pages {
        let path = a.out.join(&page.file);
        std::fs::write(&path, &page.roff).map_err(|e| fail("writing", &path, e))?;
        written.push(path);
    }
    g.print(&written, || {
        written
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join("\n")
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every command path in the tree, hidden ones included (`ec2ami params put`).
    fn command_paths(cmd: &clap::Command, prefix: &str, out: &mut Vec<String>) {
        for sub in cmd.get_subcommands() {
            let path = format!("{prefix} {}", sub.get_name());
            out.push(path.clone());
            command_paths(sub, &path, out);
        }
    }

    #[test]
    fn there_is_a_man_page_for_every_command_at_every_depth() {
        let pages = man_pages().unwrap();
        let files: Vec<&str> = pages.iter().map(|p| p.file.as_str()).collect();
        let mut cmd = Cli::command().disable_help_subcommand(true);
        cmd.build();
        let mut paths = Vec::new();
        command_paths(&cmd, BIN, &mut paths);
        let mut expected = vec![format!("{BIN}.1")];
        expected.extend(paths.iter().map(|p| format!("{}.1", p.replace(' ', "-"))));
        assert_eq!(files, expected);
        for nested in [
            "ec2ami-params-put.1",
            "ec2ami-history-import.1",
            "ec2ami-compat-bsdec2-image-upload.1",
            "ec2ami-publish.1",
            "ec2ami-completions.1",
        ] {
            assert!(files.contains(&nested), "{nested} not in {files:?}");
        }
        // A page is roff with its title and the command's own options.
        let put = pages
            .iter()
            .find(|p| p.file == "ec2ami-params-put.1")
            .unwrap();
        let text = String::from_utf8_lossy(&put.roff);
        assert!(text.contains(".TH ec2ami-params-put 1"), "{text}");
        assert!(text.contains("allow\\-clobber"), "{text}");
        // Global options are on every page.
        assert!(text.contains("operation\\-timeout"), "{text}");
    }

    /// Subcommands that are internal relays of the shipped tool (hidden, not for users)
    /// and may be exempt from the test-world check: none today.
    const INTERNAL_RELAYS: &[&str] = &[];

    /// Words only the test world (the ec2ami-testkit crate) uses.
    const TEST_WORLD: &[&str] = &[
        "testkit",
        "moto",
        "strict-ebs",
        "strict ebs",
        "strictebs",
        "boot-fixture",
        "boot fixture",
    ];

    /// Every word a command says about itself: names, aliases, help, and each argument's
    /// names, help, value names, possible values and environment variable.
    fn texts(cmd: &clap::Command, out: &mut Vec<String>) {
        out.push(cmd.get_name().to_string());
        out.extend(cmd.get_all_aliases().map(str::to_string));
        for s in [
            cmd.get_about(),
            cmd.get_long_about(),
            cmd.get_before_help(),
            cmd.get_after_help(),
            cmd.get_after_long_help(),
        ]
        .into_iter()
        .flatten()
        {
            out.push(s.to_string());
        }
        for arg in cmd.get_arguments() {
            out.push(arg.get_id().to_string());
            out.extend(arg.get_long().map(str::to_string));
            out.extend(
                arg.get_all_aliases()
                    .unwrap_or_default()
                    .into_iter()
                    .map(str::to_string),
            );
            for s in [arg.get_help(), arg.get_long_help()].into_iter().flatten() {
                out.push(s.to_string());
            }
            out.extend(
                arg.get_value_names()
                    .unwrap_or_default()
                    .iter()
                    .map(|v| v.to_string()),
            );
            for v in arg.get_possible_values() {
                out.push(v.get_name().to_string());
                out.extend(v.get_help().map(|h| h.to_string()));
            }
            out.extend(arg.get_env().map(|e| e.to_string_lossy().into_owned()));
        }
        for sub in cmd.get_subcommands() {
            if sub.is_hide_set() && INTERNAL_RELAYS.contains(&sub.get_name()) {
                continue;
            }
            texts(sub, out);
        }
    }

    #[test]
    fn the_command_tree_has_nothing_of_the_test_world() {
        let mut cmd = Cli::command();
        cmd.build();
        let mut all = Vec::new();
        texts(&cmd, &mut all);
        // The walk reaches nested commands and their options, hidden ones included.
        for reached in [
            "bsdec2-image-upload",
            "allow_clobber",
            "AWS_ENDPOINT_URL",
            "elvish",
        ] {
            assert!(all.iter().any(|t| t == reached), "walk missed {reached}");
        }
        for text in &all {
            let lower = text.to_lowercase();
            for word in TEST_WORLD {
                assert!(
                    !lower.contains(word),
                    "`{word}` in the shipped command line: {text}"
                );
            }
        }
    }

    #[test]
    fn each_shell_gets_a_script_naming_the_subcommands() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish, Shell::Elvish] {
            let script = completion_script(shell);
            for word in [
                "upload",
                "publish",
                "prune",
                "history",
                "bsdec2-image-upload",
            ] {
                assert!(script.contains(word), "{shell:?}: no {word}");
            }
        }
    }
}
