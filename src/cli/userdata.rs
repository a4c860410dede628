//! `ec2ami userdata`: print user data made from choices, check a user-data file, or
//! write the generator page.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use clap::{Args, ValueEnum};
use serde::Serialize;

use super::{Failure, GlobalArgs, OutputFormat};
use ec2ami::userdata::{self, Field, FileSpec, Flavour, Format, Generated, Problem, Spec};

/// Image flavour on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FlavourArg {
    /// FreeBSD's base images: configinit reads the user data.
    Base,
    /// FreeBSD's cloud-init images: a #cloud-config document.
    CloudInit,
}

impl From<FlavourArg> for Flavour {
    fn from(f: FlavourArg) -> Self {
        match f {
            FlavourArg::Base => Flavour::Base,
            FlavourArg::CloudInit => Flavour::CloudInit,
        }
    }
}

/// On or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum YesNo {
    /// On.
    Yes,
    /// Off.
    No,
}

#[derive(Debug, Args)]
pub struct UserdataArgs {
    /// For which images (default: base; with --check: guessed from the file).
    #[arg(long, value_enum)]
    flavour: Option<FlavourArg>,
    /// A package to install at first boot (repeatable): a name or an origin.
    #[arg(long = "pkg", value_name = "NAME")]
    packages: Vec<String>,
    /// A service to enable: NAME_enable="YES" (repeatable; rc.d names, e.g. php_fpm).
    #[arg(long, value_name = "SERVICE")]
    enable: Vec<String>,
    /// A service to disable: NAME_enable="NO" (repeatable).
    #[arg(long, value_name = "SERVICE")]
    disable: Vec<String>,
    /// An rc.conf setting, name="value" (repeatable).
    #[arg(long = "rc", value_name = "NAME=\"VALUE\"")]
    rc: Vec<String>,
    /// A file to write: PATH=@LOCAL_FILE or PATH=TEXT; >>PATH=... appends (repeatable,
    /// in order).
    #[arg(long = "file", value_name = "[>>]PATH=@LOCAL")]
    files: Vec<String>,
    /// A script to run at first boot (it must start with #!).
    #[arg(long, value_name = "FILE")]
    script: Option<PathBuf>,
    /// The instance's hostname.
    #[arg(long)]
    hostname: Option<String>,
    /// Turn the first-boot FreeBSD update on or off (base images).
    #[arg(long, value_enum, value_name = "yes|no")]
    freebsd_update: Option<YesNo>,
    /// Write the user data to FILE instead of stdout.
    #[arg(short = 'o', long = "out", value_name = "FILE")]
    out: Option<PathBuf>,
    /// Check a user-data file (- for stdin): what it does at first boot, what is wrong.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["packages", "enable", "disable", "rc", "files", "script", "hostname", "freebsd_update", "out", "page"])]
    check: Option<PathBuf>,
    /// Write the generator page (userdata.html) into DIR.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["packages", "enable", "disable", "rc", "files", "script", "hostname", "freebsd_update", "out", "flavour"])]
    page: Option<PathBuf>,
}

fn fail(message: String) -> Failure {
    Failure {
        message,
        interrupted: false,
    }
}

pub fn run(g: &GlobalArgs, a: &UserdataArgs) -> Result<(), Failure> {
    if let Some(dir) = &a.page {
        let path = userdata::write_page(dir)?;
        #[derive(Serialize)]
        struct PageOut<'a> {
            page: &'a Path,
        }
        g.print(&PageOut { page: &path }, || path.display().to_string());
        return Ok(());
    }
    if let Some(file) = &a.check {
        return check(g, file, a.flavour.map(Flavour::from));
    }
    let spec = spec(a)?;
    let generated = userdata::generate(&spec).map_err(|p| fail(problems_line(a, &spec, &p)))?;
    for w in &generated.warnings {
        tracing::warn!("{}", label(a, &spec, w));
    }
    if let Some(out) = &a.out {
        write_atomically(out, &generated.data)?;
    }
    match g.format {
        OutputFormat::Json => {
            let out = GenerateOutput::new(&generated, a.out.as_deref(), |p| label(a, &spec, p));
            super::emit(&serde_json::to_string_pretty(&out).expect("reports serialise"));
        }
        OutputFormat::Text => match &a.out {
            Some(out) => super::emit(&out.display().to_string()),
            None => {
                let mut stdout = std::io::stdout();
                if generated.format == Format::Tar && stdout.is_terminal() {
                    return Err(fail(format!(
                        "the user data is a tar archive of {} parts: write it with --out FILE \
                         or redirect stdout (--output json lists the parts)",
                        generated.parts.len()
                    )));
                }
                let written = stdout
                    .write_all(&generated.data)
                    .and_then(|()| stdout.flush());
                if let Err(e) = written {
                    if e.kind() == std::io::ErrorKind::BrokenPipe {
                        std::process::exit(141);
                    }
                    return Err(fail(format!("writing to stdout: {e}")));
                }
            }
        },
    }
    Ok(())
}

/// The choices from the command line (local files read).
fn spec(a: &UserdataArgs) -> Result<Spec, Failure> {
    let mut files = Vec::new();
    for f in &a.files {
        let (append, rest) = match f.strip_prefix(">>") {
            Some(r) => (true, r),
            None => (false, f.strip_prefix('>').unwrap_or(f)),
        };
        let Some((path, value)) = rest.split_once('=') else {
            return Err(fail(format!(
                "--file '{f}': expected PATH=@LOCAL_FILE or PATH=TEXT (>>PATH=... to append)"
            )));
        };
        let content = match value.strip_prefix('@') {
            Some("") => {
                return Err(fail(format!("--file '{f}': no local file after @")));
            }
            Some(local) => std::fs::read(local)
                .map_err(|e| fail(format!("--file '{f}': cannot read {local}: {e}")))?,
            None => value.as_bytes().to_vec(),
        };
        files.push(FileSpec {
            path: path.to_string(),
            append,
            content,
        });
    }
    let script = match &a.script {
        Some(p) => Some(
            std::fs::read(p)
                .map_err(|e| fail(format!("--script {}: cannot read it: {e}", p.display())))?,
        ),
        None => None,
    };
    Ok(Spec {
        flavour: a.flavour.map(Flavour::from).unwrap_or_default(),
        packages: a.packages.clone(),
        enable: a.enable.clone(),
        disable: a.disable.clone(),
        rc: a.rc.clone(),
        files,
        script,
        hostname: a.hostname.clone(),
        freebsd_update: a.freebsd_update.map(|u| u == YesNo::Yes),
    })
}

/// A problem with the option it is about: `--rc 'foo=bar': the value is not...`.
fn label(a: &UserdataArgs, spec: &Spec, p: &Problem) -> String {
    let item = |list: &[String]| {
        p.index
            .and_then(|i| list.get(i))
            .map(|v| format!(" '{v}'"))
            .unwrap_or_default()
    };
    let what = match p.field {
        Field::Packages => format!("--pkg{}", item(&spec.packages)),
        Field::Enable => format!("--enable{}", item(&spec.enable)),
        Field::Disable => format!("--disable{}", item(&spec.disable)),
        Field::Rc => format!("--rc{}", item(&spec.rc)),
        Field::File => format!("--file{}", item(&a.files)),
        Field::Script => format!(
            "--script {}",
            a.script.as_deref().unwrap_or(Path::new("")).display()
        ),
        Field::Hostname => format!("--hostname '{}'", spec.hostname.as_deref().unwrap_or("")),
        Field::FreebsdUpdate => "--freebsd-update".to_string(),
        Field::Size => "the user data".to_string(),
        Field::Nothing => return p.message.clone(),
    };
    format!("{what}: {}", p.message)
}

fn problems_line(a: &UserdataArgs, spec: &Spec, problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| label(a, spec, p))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The JSON document of generated user data.
#[derive(Serialize)]
struct GenerateOutput<'a> {
    flavour: Flavour,
    format: Format,
    bytes: usize,
    limit: usize,
    parts: Vec<PartOutput<'a>>,
    warnings: Vec<String>,
    out: Option<&'a Path>,
    user_data_base64: String,
}

#[derive(Serialize)]
struct PartOutput<'a> {
    name: &'a str,
    kind: userdata::PartKind,
    path: Option<&'a str>,
    bytes: usize,
}

impl<'a> GenerateOutput<'a> {
    fn new(g: &'a Generated, out: Option<&'a Path>, label: impl Fn(&Problem) -> String) -> Self {
        GenerateOutput {
            flavour: g.flavour,
            format: g.format,
            bytes: g.data.len(),
            limit: userdata::LIMIT_BYTES,
            parts: g
                .parts
                .iter()
                .map(|p| PartOutput {
                    name: &p.name,
                    kind: p.kind,
                    path: p.path.as_deref(),
                    bytes: p.data.len(),
                })
                .collect(),
            warnings: g.warnings.iter().map(label).collect(),
            out,
            user_data_base64: base64::engine::general_purpose::STANDARD.encode(&g.data),
        }
    }
}

/// Write `data` to `path` through a temporary file renamed into place.
fn write_atomically(path: &Path, data: &[u8]) -> Result<(), Failure> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let err = |e: std::io::Error| fail(format!("{}: {e}", path.display()));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(err)?;
    tmp.write_all(data).map_err(err)?;
    tmp.persist(path).map_err(|e| err(e.error))?;
    Ok(())
}

/// The most `--check` reads: far over EC2's limit, so the size error still shows.
const CHECK_READ_LIMIT: u64 = 64 << 20;

fn check(g: &GlobalArgs, file: &Path, flavour: Option<Flavour>) -> Result<(), Failure> {
    let mut data = Vec::new();
    let name = ec2ami::image::shown_path(file);
    if name == "-" {
        std::io::stdin()
            .take(CHECK_READ_LIMIT)
            .read_to_end(&mut data)
            .map_err(|e| fail(format!("{name}: {e}")))?;
    } else {
        // A regular file only: a FIFO or a device would block or never end.
        data = ec2ami::validate_input::read_regular_file(file, CHECK_READ_LIMIT).map_err(fail)?;
    }
    let report = userdata::check(&data, flavour);
    g.print(&report, || report.text(&name));
    if report.ok() {
        Ok(())
    } else {
        Err(fail(format!(
            "{name}: {} problem(s): the image would not do what was meant",
            report.errors.len()
        )))
    }
}
