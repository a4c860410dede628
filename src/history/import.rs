//! Reading ec2-boot-bench's output: four lines per run, as many runs as a file holds
//! (backfill scripts append run after run to one file). Other lines (warnings when
//! stderr was captured too) are skipped.
//!
//! ec2-boot-bench prints a made-up 120 s for a phase that never ended (it sets the
//! missing moment to the previous one plus 120 s); such a figure is read as "timed out",
//! never as a measurement.

use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{Benchmark, BuildInfo, Source};
use crate::bench::{Phase, Phases, RunResult, RunStatus};
use crate::state::{StateDb, StateError, now_epoch};

/// The figure ec2-boot-bench invents for a phase that never ended, as it prints it.
const INVENTED: &str = "120.000000";

/// One run read from a file.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportedRun {
    /// The phase durations (`None` where the phase never ended).
    pub phases: Phases,
    /// Ok, or the phase that timed out.
    pub status: RunStatus,
}

/// A line that does not fit the format, with its number (1-based), or a file in which
/// no line does (no number then).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", line.map(|l| format!("line {l}: ")).unwrap_or_default())]
pub struct ParseError {
    /// 1-based line number; `None` when the error is about the whole file.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

/// What `history import` files, and under which build.
#[derive(Debug, Clone)]
pub struct ImportRequest<'a> {
    /// The AMI the runs measured.
    pub image_id: &'a str,
    /// The build it is (normalised by the caller).
    pub build: &'a BuildInfo,
    /// Where the measurements were made.
    pub region: &'a str,
    /// The instance type measured.
    pub instance_type: &'a str,
    /// The day measured (`YYYY-MM-DD`/`YYYYMMDD`); else each file's mtime.
    pub measured_on: Option<&'a str>,
    /// Mark every file's first run as discarded (a cold first boot).
    pub discard_first: bool,
    /// The ec2-boot-bench output files, each one measurement.
    pub files: &'a [PathBuf],
}

/// One file's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Imported {
    /// The file.
    pub file: PathBuf,
    /// Its history row (the earlier one when already imported).
    pub history_id: i64,
    /// Runs it holds.
    pub runs: usize,
    /// The same content was imported before for this AMI: nothing new stored.
    pub already_imported: bool,
}

/// Why an import stored nothing.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// A file is unreadable, not a bounded regular file, or not ec2-boot-bench output.
    #[error("{0}")]
    File(String),
    /// The history database.
    #[error(transparent)]
    State(#[from] StateError),
}

/// Import ec2-boot-bench output files into the history. Every file is read (regular
/// files only, bounded) and parsed before any is stored, so a bad file leaves the
/// history untouched; a file whose content was imported before for this AMI is not
/// stored twice.
pub fn import_files(db: &StateDb, req: &ImportRequest<'_>) -> Result<Vec<Imported>, ImportError> {
    let mut parsed = Vec::new();
    for file in req.files {
        let text =
            crate::validate_input::read_text_file(file, crate::validate_input::MAX_TEXT_FILE)
                .map_err(ImportError::File)?;
        let runs =
            parse(&text).map_err(|e| ImportError::File(format!("{}: {e}", file.display())))?;
        let measured_at = match req.measured_on {
            Some(d) => super::day_number(d).unwrap_or(0) * 86_400,
            None => modified_epoch(file).unwrap_or_else(now_epoch),
        };
        let hash = format!("{:x}", Sha256::digest(text.as_bytes()));
        parsed.push((file, runs, measured_at, hash));
    }
    let mut done = Vec::new();
    for (file, runs, measured_at, hash) in parsed {
        if let Some(id) = super::already_imported(db, req.image_id, &hash)? {
            done.push(Imported {
                file: file.clone(),
                history_id: id,
                runs: runs.len(),
                already_imported: true,
            });
            continue;
        }
        let b = Benchmark {
            id: 0,
            image_id: req.image_id.to_string(),
            build: req.build.clone(),
            region: req.region.to_string(),
            instance_type: req.instance_type.to_string(),
            firmware: None,
            measured_at,
            source: Source::Import,
            source_file: Some(file.display().to_string()),
            source_hash: Some(hash),
            tool_version: "ec2-boot-bench".into(),
            runs: runs
                .into_iter()
                .enumerate()
                .map(|(i, r)| RunResult {
                    run: i + 1,
                    instance_id: None,
                    discarded: req.discard_first && i == 0,
                    status: r.status,
                    phases: r.phases,
                    probes: 0,
                })
                .collect(),
        };
        let id = super::record(db, &b)?;
        done.push(Imported {
            file: file.clone(),
            history_id: id,
            runs: b.runs.len(),
            already_imported: false,
        });
    }
    Ok(done)
}

fn modified_epoch(file: &Path) -> Option<i64> {
    let t = std::fs::metadata(file).and_then(|m| m.modified()).ok()?;
    Some(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs() as i64)
}

/// Parse ec2-boot-bench output: every run of four lines, in order.
pub fn parse(text: &str) -> Result<Vec<ImportedRun>, ParseError> {
    let mut runs = Vec::new();
    let mut current: Vec<(Phase, &str)> = Vec::new();
    let mut started_at = 0;
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let Some((phase, value)) = phase_line(line) else {
            continue;
        };
        let expected = Phase::ALL[current.len()];
        if phase != expected {
            let message = if current.is_empty() {
                format!(
                    "`{}` before `{}`",
                    phase.ec2_boot_bench_label(),
                    expected.ec2_boot_bench_label()
                )
            } else {
                format!(
                    "`{}` where `{}` was expected (the run starting on line {started_at} is incomplete)",
                    phase.ec2_boot_bench_label(),
                    expected.ec2_boot_bench_label()
                )
            };
            return Err(ParseError {
                line: Some(line_no),
                message,
            });
        }
        if current.is_empty() {
            started_at = line_no;
        }
        current.push((phase, value));
        if current.len() == 4 {
            runs.push(to_run(&current).map_err(|message| ParseError {
                line: Some(started_at),
                message,
            })?);
            current.clear();
        }
    }
    if !current.is_empty() {
        return Err(ParseError {
            line: Some(started_at),
            message: format!("incomplete run: {} of 4 lines", current.len()),
        });
    }
    if runs.is_empty() {
        return Err(ParseError {
            line: None,
            message: format!(
                "no ec2-boot-bench output found in {} line(s) (expected `RunInstances API call took: ... s`)",
                text.lines().count()
            ),
        });
    }
    Ok(runs)
}

/// `Label: 1.234567 s` -> the phase and the number as written.
fn phase_line(line: &str) -> Option<(Phase, &str)> {
    let line = line.trim();
    Phase::ALL.into_iter().find_map(|p| {
        let rest = line
            .strip_prefix(p.ec2_boot_bench_label())?
            .strip_prefix(':')?;
        let value = rest.trim().strip_suffix('s')?.trim_end();
        Some((p, value))
    })
}

fn to_run(lines: &[(Phase, &str)]) -> Result<ImportedRun, String> {
    let mut values = [None; 4];
    let mut status = RunStatus::Ok;
    for (phase, text) in lines {
        let v: f64 = text.parse().map_err(|_| {
            format!(
                "`{}` is not a number of seconds ({phase})",
                crate::image::escaped(text)
            )
        })?;
        if !v.is_finite() {
            return Err(format!(
                "`{}` is not a number of seconds ({phase})",
                crate::image::escaped(text)
            ));
        }
        if status != RunStatus::Ok {
            // After a phase that never ended, the rest is invented too.
            continue;
        }
        let invented =
            *text == INVENTED && matches!(phase, Phase::RunningToClosed | Phase::ClosedToOpen);
        // A negative figure: ec2-boot-bench gave up before seeing the moment.
        if invented || v < 0.0 {
            status = RunStatus::TimedOut(*phase);
            continue;
        }
        values[phase.index()] = Some(v);
    }
    Ok(ImportedRun {
        phases: Phases(values),
        status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: &str = "RunInstances API call took: 1.543152 s
Moving from pending to running took: 6.918336 s
Moving from running to port closed took: 12.170474 s
Moving from port closed to port open took: 11.620210 s
";

    #[test]
    fn one_run_parses() {
        let runs = parse(ONE).unwrap();
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].status, RunStatus::Ok);
        assert_eq!(
            runs[0].phases,
            Phases([
                Some(1.543152),
                Some(6.918336),
                Some(12.170474),
                Some(11.620210)
            ])
        );
    }

    #[test]
    fn appended_runs_and_noise_parse() {
        let text = format!(
            "ec2-boot-bench: Received EACCES when attempting to connect\n{ONE}\n{}",
            ONE.replace("1.543152", "1.400000")
        );
        let runs = parse(&text).unwrap();
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[1].phases.get(Phase::RunInstances), Some(1.4));
    }

    #[test]
    fn invented_figures_are_timeouts() {
        let text = ONE
            .replace("12.170474", "120.000000")
            .replace("11.620210", "120.000000");
        let run = &parse(&text).unwrap()[0];
        assert_eq!(run.status, RunStatus::TimedOut(Phase::RunningToClosed));
        assert_eq!(run.phases.get(Phase::RunningToClosed), None);
        assert_eq!(run.phases.get(Phase::ClosedToOpen), None);
        let text = ONE.replace("11.620210", "120.000000");
        let run = &parse(&text).unwrap()[0];
        assert_eq!(run.status, RunStatus::TimedOut(Phase::ClosedToOpen));
        assert_eq!(run.phases.get(Phase::RunningToClosed), Some(12.170474));
        // 120.5 s is a real (slow) measurement.
        let text = ONE.replace("11.620210", "120.500000");
        assert_eq!(parse(&text).unwrap()[0].status, RunStatus::Ok);
    }

    #[test]
    fn broken_files_name_the_line() {
        let e = parse("hello\n").unwrap_err();
        assert!(e.message.contains("no ec2-boot-bench output"), "{e}");
        assert_eq!(e.line, None, "no line to name");
        assert!(!e.to_string().contains("line 0"), "{e}");
        let cut: String = ONE.lines().take(3).collect::<Vec<_>>().join("\n");
        let e = parse(&cut).unwrap_err();
        assert_eq!(e.line, Some(1));
        assert!(e.message.contains("3 of 4"), "{e}");
        let twice = format!("{cut}\n{ONE}");
        let e = parse(&twice).unwrap_err();
        assert_eq!(e.line, Some(4));
        let bad = ONE.replace("6.918336", "six");
        assert!(parse(&bad).unwrap_err().message.contains("`six`"));
    }
}
