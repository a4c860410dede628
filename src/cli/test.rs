//! `ec2ami test AMI_ID...|RELEASE.toml`: launch each AMI on each instance type, wait
//! for SSH, run smoke checks, keep the console output and a screenshot, terminate.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use serde::Serialize;

use super::{Failure, GlobalArgs, connect, parse_duration, shutdown_signal};
use ec2ami::bench::Scope;
use ec2ami::boot::{self, Check};
use ec2ami::ec2test::{self, Target, TestOptions, TestReport};
use ec2ami::history::BuildInfo;
use ec2ami::publish::{self, ReleaseFile};
use ec2ami::state::now_epoch;

#[derive(Debug, Args)]
pub struct TestArgs {
    /// AMI ids (in --region), or one release file (its AMIs, by name, in its source
    /// region or in --regions).
    #[arg(required = true, value_name = "AMI_ID|RELEASE.toml")]
    targets: Vec<String>,
    /// Instance types, comma-separated (every AMI is tested on each).
    #[arg(long, required = true, value_name = "T[,T...]", value_delimiter = ',')]
    instance_type: Vec<String>,
    /// With a release file: test its AMIs in these regions (comma-separated, or `all`
    /// for every region it was published to that is enabled).
    #[arg(long, value_name = "R[,R...]", value_delimiter = ',')]
    regions: Vec<String>,
    /// A smoke check: a command run over SSH once sshd answers (repeatable).
    #[arg(long = "check", value_name = "COMMAND")]
    checks: Vec<String>,
    /// Smoke checks from a file: one command per line, or a script (starting with #!)
    /// copied to the instance and run.
    #[arg(long = "checks", value_name = "FILE")]
    checks_file: Option<PathBuf>,
    /// The user the checks log in as.
    #[arg(long, default_value = "ec2-user")]
    ssh_user: String,
    /// Launch into this subnet (default: the default VPC's default subnet).
    #[arg(long, value_name = "SUBNET_ID")]
    subnet: Option<String>,
    /// Security group (repeatable; default: the VPC's default group). It must let SSH in.
    #[arg(long = "security-group", value_name = "SG_ID")]
    security_groups: Vec<String>,
    /// User data for the instances (made by `ec2ami userdata`; checked as `ec2ami
    /// userdata --check` does, and refused when it finds an error).
    #[arg(long, value_name = "FILE")]
    user_data: Option<PathBuf>,
    /// Longest one test may take, from RunInstances to the last check.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse_duration)]
    timeout: Duration,
    /// Keep the console output and a screenshot of passing tests too (failed tests'
    /// are always kept).
    #[arg(long)]
    capture: bool,
    /// Where console outputs and screenshots go (default: a new directory per run in
    /// $XDG_STATE_HOME/ec2ami/test-runs).
    #[arg(long, value_name = "DIR")]
    artifacts: Option<PathBuf>,
    /// Write the results as JUnit XML to FILE (for CI systems).
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// Send the SSH banner probe and SSH to ADDR:PORT instead of the instance (for
    /// tests against a local emulator, whose instance addresses are fake).
    #[arg(long, value_name = "ADDR:PORT")]
    connect_to: Option<SocketAddr>,
    /// Do not record the results in the history.
    #[arg(long)]
    no_history: bool,
}

fn fail(message: String) -> Failure {
    Failure {
        message,
        interrupted: false,
    }
}

/// The JSON document of a test run.
#[derive(Serialize)]
struct TestOutput<'a> {
    #[serde(flatten)]
    report: &'a TestReport,
    passed: bool,
    instance_minutes: f64,
    history_ids: Vec<i64>,
}

/// Read `--user-data` and check it as the image will read it (`ec2ami userdata
/// --check`): refused when over EC2's limit or when the checker finds an error.
pub(crate) fn read_checked_user_data(p: &std::path::Path) -> Result<Vec<u8>, Failure> {
    let data = std::fs::read(p).map_err(|e| fail(format!("user data {}: {e}", p.display())))?;
    if data.len() > ec2ami::userdata::LIMIT_BYTES {
        return Err(fail(format!(
            "user data {}: {} bytes, more than EC2's limit of {} bytes",
            p.display(),
            data.len(),
            ec2ami::userdata::LIMIT_BYTES
        )));
    }
    let report = ec2ami::userdata::check(&data, None);
    if let Some(e) = report.errors.first() {
        return Err(fail(format!(
            "user data {}: {e} (ec2ami userdata --check {} says what it will do)",
            p.display(),
            p.display()
        )));
    }
    for w in &report.warnings {
        tracing::warn!("user data {}: {w}", p.display());
    }
    Ok(data)
}

/// The checks of --check and --checks.
pub(crate) fn checks_of(checks: &[String], file: Option<&PathBuf>) -> Result<Vec<Check>, Failure> {
    let mut out: Vec<Check> = checks.iter().map(|c| Check::command(c)).collect();
    if let Some(f) = file {
        let body =
            std::fs::read(f).map_err(|e| fail(format!("checks file {}: {e}", f.display())))?;
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let found = boot::checks_from_file(&name, &body);
        if found.is_empty() {
            return Err(fail(format!("checks file {} has no check", f.display())));
        }
        out.extend(found);
    }
    Ok(out)
}

fn looks_like_ami(s: &str) -> bool {
    s.strip_prefix("ami-")
        .is_some_and(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The AMIs to test: ids as given (each looked up, so a typo fails before any
/// launch), or a release's AMIs by name in its regions.
async fn targets(
    g: &GlobalArgs,
    a: &TestArgs,
    clients: &ec2ami::aws::Clients,
) -> Result<Vec<Target>, Failure> {
    let retry = g.retry();
    let release_args: Vec<&String> = a.targets.iter().filter(|t| !looks_like_ami(t)).collect();
    if release_args.is_empty() {
        if !a.regions.is_empty() {
            return Err(fail(
                "--regions needs a release file (AMI ids are tested in --region)".into(),
            ));
        }
        let mut out = Vec::new();
        for id in &a.targets {
            let image = ec2ami::ami::describe(clients, id, &retry)
                .await?
                .ok_or_else(|| fail(format!("{id} not found in {}", clients.region())))?;
            out.push(Target {
                region: clients.region().to_string(),
                image_id: id.clone(),
                name: Some(image.name.clone()),
            });
        }
        return Ok(out);
    }
    if a.targets.len() != 1 {
        return Err(fail(format!(
            "`{}` is not an AMI id; give AMI ids or one release file",
            release_args[0]
        )));
    }
    let path = PathBuf::from(&a.targets[0]);
    let file = ReleaseFile::read(&path)?;
    let db = Arc::new(g.state_db()?);
    let (_, date) = publish::recorded(&db, &file.key)?;
    let release = file.resolve(&date, false)?;
    Ok(ec2test::release_targets(clients, &release, &a.regions, &retry).await?)
}

pub async fn run(g: &GlobalArgs, a: &TestArgs) -> Result<(), Failure> {
    let checks = checks_of(&a.checks, a.checks_file.as_ref())?;
    let user_data = match &a.user_data {
        Some(p) => Some(read_checked_user_data(p)?),
        None => None,
    };
    let instance_types: Vec<String> = a
        .instance_type
        .iter()
        .map(|t| t.trim().to_string())
        .collect();
    if instance_types.iter().any(String::is_empty) {
        return Err(fail("--instance-type: an empty instance type".into()));
    }
    let db = g.state_db()?;
    let clients = connect(g).await?;
    let targets = targets(g, a, &clients).await?;
    let state_dir = match &g.state {
        Some(s) => s
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .map(|d| d.to_path_buf())
            .unwrap_or_else(ec2ami::state::state_dir),
        None => ec2ami::state::state_dir(),
    };
    let artifacts = a.artifacts.clone().unwrap_or_else(|| {
        state_dir
            .join("test-runs")
            .join(format!("{}-{}", now_epoch(), std::process::id()))
    });
    let opts = TestOptions {
        targets,
        instance_types,
        checks,
        ssh_user: a.ssh_user.clone(),
        subnet: a.subnet.clone(),
        security_groups: a.security_groups.clone(),
        user_data,
        timeout: a.timeout,
        connect_to: a.connect_to,
        capture: a.capture,
        artifacts,
        poll: Default::default(),
        retry: g.retry(),
        scope: Scope {
            endpoint: g.endpoint_url.clone().unwrap_or_default(),
            profile: g.profile.clone().unwrap_or_default(),
        },
    };
    let measured_at = now_epoch();
    let report = ec2test::run(&clients, &db, &opts, shutdown_signal()).await?;
    let history_ids = if a.no_history {
        Vec::new()
    } else {
        ec2test::record_history(
            &db,
            &report,
            |c| BuildInfo::from_image(c.image_name.as_deref(), &[]).normalized(),
            measured_at,
        )?
    };
    if let Some(j) = &a.junit {
        std::fs::write(j, ec2test::junit_xml(&report))
            .map_err(|e| fail(format!("--junit {}: {e}", j.display())))?;
    }
    g.print(
        &TestOutput {
            report: &report,
            passed: report.passed(),
            instance_minutes: report.instance_minutes(),
            history_ids,
        },
        || ec2test::matrix_table(&report),
    );
    if report.interrupted {
        return Err(Failure {
            message: "interrupted; every instance launched was terminated and the key pair deleted"
                .into(),
            interrupted: true,
        });
    }
    if !report.not_terminated.is_empty() || !report.key_pairs_left.is_empty() {
        return Err(fail(format!(
            "left behind (the next `ec2ami test` or `ec2ami bench --cleanup` retries): {}",
            report
                .not_terminated
                .iter()
                .chain(&report.key_pairs_left)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    if !report.passed() {
        let bad: Vec<String> = report
            .cells
            .iter()
            .filter(|c| c.verdict != ec2test::Verdict::Passed)
            .map(|c| {
                let mut s = format!(
                    "{} on {} in {}: {}",
                    c.image_id,
                    c.instance_type,
                    c.region,
                    c.error.as_deref().unwrap_or("failed")
                );
                if let Some(p) = &c.console_output {
                    s.push_str(&format!(" (console output {})", p.display()));
                }
                s
            })
            .collect();
        return Err(fail(format!(
            "{} of {} test(s) did not pass:\n{}",
            bad.len(),
            report.cells.len(),
            bad.join("\n")
        )));
    }
    Ok(())
}
