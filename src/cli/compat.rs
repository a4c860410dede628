//! `ec2ami compat bsdec2-image-upload ARGS...`, and `bsdec2-image-upload ARGS...` when
//! the binary is installed (or linked) under that name: bsdec2-image-upload's command
//! line, parsed with its own option grammar (libcperciva's getopt: options only before
//! the arguments, `--opt value` or `--opt=value`, `--` ends them), its exit status
//! (0, or 1 for any failure, usage included), its stderr progress lines and its stdout
//! `Created AMI in REGION region: ID` lines.

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use clap::Subcommand;

use super::publish::{publish_failure, run_release};
use super::{Failure, GlobalArgs, parse_duration, parse_workers};
use ec2ami::ami::Imds;
use ec2ami::aws;
use ec2ami::progress::ProgressMode;
use ec2ami::publish::announce::Announce;
use ec2ami::publish::compat::{self, Bsdec2Args};
use ec2ami::publish::{self, Event, EventSink, PublishOptions};
use ec2ami::snapshot;
use ec2ami::units::today;

/// The name the binary answers to as a drop-in.
pub const BSDEC2: &str = "bsdec2-image-upload";

#[derive(Debug, Subcommand)]
pub enum CompatCommand {
    /// bsdec2-image-upload's command line, done by ec2ami's pipeline (same output lines).
    ///
    /// bsdec2-image-upload [FLAGS] IMAGE NAME DESCRIPTION REGION BUCKET KEYFILE
    /// [TOPICARN RELEASEVERSION IMAGEVERSION]
    ///
    /// Flags (before the arguments): --public (= --publicamis --allregions),
    /// --publicamis, --allregions, --publicsnap, --ssm-name NAME, --ssm-name-extra NAME,
    /// --sriov, --ena, --arm64, --uefi, --uefi-preferred, --vhd, --vmdk, -v (version);
    /// ec2ami's own: --imds v2.0|optional, --workers N, --wait-timeout D, --index-dir DIR.
    ///
    /// Uploads IMAGE with the EBS direct APIs (BUCKET is accepted and not used),
    /// registers NAME in REGION, copies it to every region (--allregions), makes it
    /// public (--publicamis), writes the --ssm-name/--ssm-name-extra parameters in every
    /// region, prints `Created AMI in REGION region: ID` per region, and with the three
    /// last arguments announces the AMIs on the SNS topic. KEYFILE's ACCESS_KEY_ID /
    /// ACCESS_KEY_SECRET are the only credentials used. A rerun of an interrupted
    /// command finishes it. Installed as `bsdec2-image-upload` (a link to ec2ami), the
    /// binary takes this command line directly.
    #[command(name = "bsdec2-image-upload", disable_help_flag = true)]
    Bsdec2 {
        /// FLAGS... IMAGE NAME DESCRIPTION REGION BUCKET KEYFILE [TOPICARN RELEASEVERSION
        /// IMAGEVERSION]
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0.., value_name = "ARGS")]
        args: Vec<OsString>,
    },
}

const USAGE: &str = "usage: bsdec2-image-upload [--public] [--publicamis] [--allregions] \
[--publicsnap] [--ssm-name <path>] [--ssm-name-extra <path>] [--sriov] [--ena] [--arm64] \
[--uefi | --uefi-preferred] [--vhd | --vmdk] [-v] <disk image> <name> <description> <region> \
<bucket> <AWS keyfile> [<topicarn> <releaseversion> <imageversion>]";

/// The command line, split where bsdec2-image-upload's own arguments begin: the
/// process's arguments when the binary runs as `bsdec2-image-upload`, else those after
/// `compat bsdec2-image-upload` (the global options before `compat` parsed by clap).
/// `None`: an ordinary ec2ami command line.
pub fn split(argv: &[OsString]) -> Option<(super::Cli, Vec<OsString>)> {
    use clap::Parser;
    let name = argv
        .first()
        .map(PathBuf::from)
        .and_then(|p| p.file_name().map(|n| n.to_os_string()));
    if name.as_deref() == Some(BSDEC2.as_ref()) {
        let cli = super::Cli::try_parse_from(["ec2ami", "compat", BSDEC2]).ok()?;
        return Some((cli, argv[1..].to_vec()));
    }
    let at = argv
        .windows(2)
        .position(|w| w[0] == "compat" && w[1] == BSDEC2)?;
    let cli = super::Cli::try_parse_from(&argv[..at + 2]).ok()?;
    matches!(cli.command, super::Command::Compat(_)).then(|| (cli, argv[at + 2..].to_vec()))
}

/// What the command line asks for.
#[derive(Debug)]
enum Parsed {
    /// `-v`: print the version and stop (bsdec2-image-upload does so at once).
    Version,
    /// `--help` / `-h`.
    Help,
    /// Publish.
    Run(Box<CompatRun>),
}

/// A publish as bsdec2-image-upload's arguments describe it.
#[derive(Debug)]
struct CompatRun {
    args: Bsdec2Args,
    workers: usize,
    wait: Duration,
    index_dir: Option<PathBuf>,
}

/// A usage error: the message, printed with the usage line; exit status 1.
#[derive(Debug, PartialEq, Eq)]
struct Usage(String);

fn text(arg: &OsString, what: &str) -> Result<String, Usage> {
    arg.to_str()
        .map(str::to_string)
        .ok_or_else(|| Usage(format!("{what} is not valid UTF-8")))
}

/// Parse bsdec2-image-upload's arguments (without the program name).
fn parse(raw: &[OsString]) -> Result<Parsed, Usage> {
    let mut a = Bsdec2Args {
        imds: Imds::V2,
        ..Bsdec2Args::default()
    };
    let mut run = CompatRun {
        args: Bsdec2Args::default(),
        workers: snapshot::DEFAULT_WORKERS,
        wait: Duration::from_secs(3600),
        index_dir: None,
    };
    let mut i = 0;
    while i < raw.len() {
        let arg = text(&raw[i], &format!("argument {}", i + 1));
        let Ok(arg) = arg else {
            break; // Not an option: the arguments start here.
        };
        if arg == "--" {
            i += 1;
            break;
        }
        if arg == "-" || !arg.starts_with('-') {
            break;
        }
        i += 1;
        if !arg.starts_with("--") {
            match arg.as_str() {
                "-v" => return Ok(Parsed::Version),
                "-h" => return Ok(Parsed::Help),
                _ => return Err(Usage(format!("unknown flag `{arg}`"))),
            }
        }
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (arg.clone(), None),
        };
        let flag = |slot: &mut bool| -> Result<(), Usage> {
            if inline.is_some() {
                return Err(Usage(format!("{name} takes no value")));
            }
            *slot = true;
            Ok(())
        };
        let mut value = || -> Result<String, Usage> {
            if let Some(v) = &inline {
                return Ok(v.clone());
            }
            let v = raw
                .get(i)
                .ok_or_else(|| Usage(format!("missing argument for {name}")))?;
            i += 1;
            text(v, &format!("the value of {name}"))
        };
        match name.as_str() {
            "--public" => flag(&mut a.public)?,
            "--publicamis" => flag(&mut a.public_amis)?,
            "--allregions" => flag(&mut a.all_regions)?,
            "--publicsnap" => flag(&mut a.public_snap)?,
            "--sriov" => flag(&mut a.sriov)?,
            "--ena" => flag(&mut a.ena)?,
            "--arm64" => flag(&mut a.arm64)?,
            "--uefi" => flag(&mut a.uefi)?,
            "--uefi-preferred" => flag(&mut a.uefi_preferred)?,
            "--vhd" => flag(&mut a.vhd)?,
            "--vmdk" => flag(&mut a.vmdk)?,
            "--help" => return Ok(Parsed::Help),
            "--ssm-name" => a.ssm_name = Some(value()?),
            "--ssm-name-extra" => a.ssm_name_extra = Some(value()?),
            "--imds" => {
                a.imds = value()?
                    .parse()
                    .map_err(|e| Usage(format!("--imds: {e}")))?;
            }
            "--workers" => run.workers = parse_workers(&value()?).map_err(Usage)?,
            "--wait-timeout" => {
                run.wait =
                    parse_duration(&value()?).map_err(|e| Usage(format!("--wait-timeout: {e}")))?;
            }
            "--index-dir" => run.index_dir = Some(PathBuf::from(value()?)),
            _ => return Err(Usage(format!("unknown flag `{name}`"))),
        }
    }
    let rest = &raw[i..];
    if rest.len() != 6 && rest.len() != 9 {
        let late = rest
            .iter()
            .filter_map(|r| r.to_str())
            .find(|r| r.starts_with("--"));
        let hint = match late {
            Some(f) => format!(" (flags go before the arguments: `{f}` is after them)"),
            None => String::new(),
        };
        return Err(Usage(format!(
            "{} argument(s) after the flags; bsdec2-image-upload takes 6 (IMAGE NAME DESCRIPTION \
             REGION BUCKET KEYFILE) or 9 (the same, then TOPICARN RELEASEVERSION \
             IMAGEVERSION){hint}",
            rest.len()
        )));
    }
    a.image = PathBuf::from(&rest[0]);
    a.name = text(&rest[1], "NAME")?;
    a.description = text(&rest[2], "DESCRIPTION")?;
    a.region = text(&rest[3], "REGION")?;
    a.bucket = text(&rest[4], "BUCKET")?;
    a.keyfile = PathBuf::from(&rest[5]);
    if rest.len() == 9 {
        let (t, r, v) = (
            text(&rest[6], "TOPICARN")?,
            text(&rest[7], "RELEASEVERSION")?,
            text(&rest[8], "IMAGEVERSION")?,
        );
        a.announce = Some(Announce::new(&t, &r, &v).map_err(Usage)?);
    }
    run.args = a;
    Ok(Parsed::Run(Box::new(run)))
}

/// Run bsdec2-image-upload's command line `raw`; prints and exits as it does.
pub fn main(g: &GlobalArgs, raw: &[OsString]) -> ExitCode {
    let run = match parse(raw) {
        Ok(Parsed::Version) => {
            eprintln!("{BSDEC2} (ec2ami {})", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Ok(Parsed::Help) => {
            println!("{USAGE}\n\n{}", HELP.trim());
            return ExitCode::SUCCESS;
        }
        Ok(Parsed::Run(r)) => r,
        Err(Usage(message)) => {
            eprintln!("error: {message}\n{USAGE}");
            return ExitCode::FAILURE;
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(publish_compat(g, &run)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("error: {}", f.message);
            if f.interrupted {
                ExitCode::from(super::EXIT_INTERRUPTED)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

const HELP: &str = "
Done by ec2ami: IMAGE is uploaded with the EBS direct APIs (BUCKET is not used; VHD,
VMDK and other formats are converted locally first), NAME is registered in REGION,
copied to every region (--allregions), made public (--publicamis; --public is both),
its snapshots too (--publicsnap), and --ssm-name/--ssm-name-extra are written in every
region. stdout: `Created AMI in REGION region: ID`, one line per region, REGION first.
With TOPICARN RELEASEVERSION IMAGEVERSION, the AMIs are announced on that SNS topic
once they are all available and public. KEYFILE holds ACCESS_KEY_ID=... and
ACCESS_KEY_SECRET=... lines: the only credentials used. A rerun of the same command
finishes an interrupted one and sends the announcement at most once.
ec2ami's own flags: --imds v2.0|optional (default v2.0), --workers N (default 64),
--wait-timeout DURATION (default 60m), --index-dir DIR.
Exit status: 0 done, 1 failure (usage included), 130 interrupted.";

/// Prints bsdec2-image-upload's progress lines for publish's events.
fn narrator() -> EventSink {
    let source_snapshot: Mutex<Option<(String, String)>> = Mutex::new(None);
    EventSink(Arc::new(move |e: &Event| {
        let line = match e {
            Event::Snapshot {
                path,
                snapshot_id,
                region,
                blocks,
                reused,
            } => {
                *source_snapshot.lock().expect("not poisoned") =
                    Some((snapshot_id.clone(), region.clone()));
                if *reused {
                    format!(
                        "Using {snapshot_id} in {region} for {} (an earlier run made it)... done.",
                        path.display()
                    )
                } else {
                    format!(
                        "Uploading {} to\nEBS snapshot {snapshot_id} in {region}\nin {blocks} \
                         block(s)... done.",
                        path.display()
                    )
                }
            }
            Event::Registered { .. } => "Registering AMI... done.".to_string(),
            Event::Copying { regions } => format!("Copying AMI to regions: {}.", regions.join(" ")),
            Event::Copied { region, .. } => format!("Waiting for AMI copying to {region}... done."),
            Event::Shared => "Marking images as public... done.".to_string(),
            Event::SnapshotsPublic => match &*source_snapshot.lock().expect("not poisoned") {
                Some((id, region)) => format!("Marking {id} in {region} as public... done."),
                None => "Marking snapshots as public... done.".to_string(),
            },
            Event::Parameters => "Storing AMI Ids in SSM Parameter Store... done.".to_string(),
        };
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{line}");
    }))
}

async fn publish_compat(g: &GlobalArgs, run: &CompatRun) -> Result<(), Failure> {
    let invalid = |m: String| Failure {
        message: m,
        interrupted: false,
    };
    let args = &run.args;
    let release = args.release(&today()).map_err(invalid)?;
    let keys = compat::read_key_file(&args.keyfile)?;
    tracing::debug!("bucket {} is not used (EBS direct APIs)", args.bucket);
    let mut opts = g.aws();
    opts.region = Some(args.region.clone());
    // The key file's keys and nothing else: no profile, no environment credentials.
    opts.profile = None;
    opts.credentials = Some(aws_sdk_ec2::config::Credentials::new(
        keys.access_key_id,
        keys.secret,
        None,
        None,
        "bsdec2-image-upload key file",
    ));
    let clients = aws::connect(&opts).await?;
    let db = Arc::new(g.state_db()?);
    let label = args.image.display().to_string();
    let session = publish::start(&db, &release.key, &label).map_err(publish_failure)?;
    let popts = PublishOptions {
        workers: run.workers,
        wait: run.wait,
        retry: g.retry(),
        // bsdec2-image-upload's lines instead of ec2ami's progress, unless -v.
        progress: if g.verbose > 0 {
            g.progress()
        } else {
            ProgressMode::Quiet
        },
        index_dir: run
            .index_dir
            .clone()
            .unwrap_or_else(snapshot::default_index_dir),
        events: Some(narrator()),
        replace: false,
        // bsdec2-image-upload boots nothing: `ec2ami boot` or publish's pre-flight do.
        preflight: None,
        image: Default::default(),
    };
    run_release(g, &clients, &release, &session, &popts).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    const POS: [&str; 6] = [
        "ec2.raw",
        "FreeBSD 15.0-RELEASE-amd64 base UFS",
        "FreeBSD/amd64 releng/15.0@abc",
        "us-east-1",
        "bucket",
        "keys",
    ];

    fn run_of(v: &[&str]) -> CompatRun {
        match parse(&os(v)) {
            Ok(Parsed::Run(r)) => *r,
            other => panic!("{v:?}: {other:?}"),
        }
    }

    #[test]
    fn flags_in_any_order_before_the_arguments() {
        let mut v = vec![
            "--publicsnap",
            "--arm64",
            "--ssm-name",
            "/freebsd/arm64/base/ufs/15.0/RELEASE",
            "--ssm-name-extra=/freebsd/arm64/base/ufs/15.0/RELEASE/latest",
            "--vmdk",
            "--sriov",
            "--ena",
            "--public",
        ];
        v.extend(POS);
        let r = run_of(&v);
        let a = &r.args;
        assert!(a.public && a.public_snap && a.arm64 && a.vmdk && a.sriov && a.ena);
        assert_eq!(
            a.ssm_name.as_deref(),
            Some("/freebsd/arm64/base/ufs/15.0/RELEASE")
        );
        assert_eq!(
            a.ssm_name_extra.as_deref(),
            Some("/freebsd/arm64/base/ufs/15.0/RELEASE/latest")
        );
        assert_eq!(a.name, POS[1]);
        assert_eq!(a.keyfile, PathBuf::from("keys"));
        assert!(a.announce.is_none());

        let mut v = vec!["--uefi-preferred", "--workers", "8", "--"];
        v.extend(POS);
        v.extend([
            "arn:aws:sns:us-east-1:123456789012:rel",
            "15.0-RELEASE",
            "releng/15.0@abc",
        ]);
        let r = run_of(&v);
        assert_eq!(r.workers, 8);
        assert!(r.args.uefi_preferred);
        let ann = r.args.announce.unwrap();
        assert_eq!(ann.region(), "us-east-1");
        assert_eq!(ann.subject(), "New 15.0-RELEASE AMIs");
    }

    #[test]
    fn version_and_help() {
        assert!(matches!(parse(&os(&["-v"])), Ok(Parsed::Version)));
        // -v stops at once, as in bsdec2-image-upload, whatever follows.
        assert!(matches!(
            parse(&os(&["--ena", "-v", "--bogus"])),
            Ok(Parsed::Version)
        ));
        assert!(matches!(parse(&os(&["--help"])), Ok(Parsed::Help)));
    }

    #[test]
    fn bad_command_lines() {
        let with = |pre: &[&str], post: &[&str]| {
            let mut v: Vec<&str> = pre.to_vec();
            v.extend(POS);
            v.extend(post);
            match parse(&os(&v)) {
                Err(Usage(m)) => m,
                other => panic!("{v:?} accepted: {other:?}"),
            }
        };
        assert!(with(&["--bogus"], &[]).contains("unknown flag `--bogus`"));
        assert!(with(&["-x"], &[]).contains("unknown flag `-x`"));
        assert!(with(&["--ena=yes"], &[]).contains("--ena takes no value"));
        for extra in [
            &["arn:aws:sns:us-east-1:123456789012:t"][..],
            &["a", "b"],
            &["a", "b", "c", "d"],
        ] {
            let m = with(&[], extra);
            assert!(m.contains("takes 6") && m.contains("or 9"), "{m}");
        }
        let m = with(&[], &["--ena"]);
        assert!(m.contains("`--ena` is after them"), "{m}");
        let m = with(&[], &["arn:aws:sqs:us-east-1:123456789012:q", "15.0", "x"]);
        assert!(m.contains("not an SNS topic ARN"), "{m}");
        let m = match parse(&os(&["--ssm-name"])) {
            Err(Usage(m)) => m,
            other => panic!("{other:?}"),
        };
        assert!(m.contains("missing argument for --ssm-name"), "{m}");
        assert!(with(&["--workers", "0"], &[]).contains("worker count"));
    }

    #[test]
    fn the_command_line_is_split_where_bsdec2s_arguments_begin() {
        let argv = os(&[
            "ec2ami",
            "--state",
            "/tmp/s.db",
            "compat",
            BSDEC2,
            "-v",
            "--region",
            "x",
        ]);
        let (cli, raw) = split(&argv).unwrap();
        assert_eq!(raw, os(&["-v", "--region", "x"]));
        assert_eq!(cli.global.state, Some(PathBuf::from("/tmp/s.db")));
        assert_eq!(cli.global.verbose, 0);
        let argv = os(&["/usr/local/bin/bsdec2-image-upload", "--public", "x"]);
        let (_, raw) = split(&argv).unwrap();
        assert_eq!(raw, os(&["--public", "x"]));
        assert!(split(&os(&["ec2ami", "publish", "r.toml"])).is_none());
    }
}
