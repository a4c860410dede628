//! `publish --plan`: every action a publish would take, found with read-only lookups.
//! Nothing is created, changed or deleted (not even the journal).

use std::path::Path;

use serde::Serialize;

use super::announce::AnnounceDecision;
use super::survey::{
    CopyDecision, PreflightDecision, Problem, Replacement, Scope, SnapshotDecision, Survey,
    copy_decision, deprecation_set, missing_permissions, protection_missing,
};
use super::{PublishError, Release, ReleaseImage};
use crate::aws::{Clients, RetryPolicy};
use crate::params::{self, Change, Wanted};
use crate::state::journal::{Journal, Status, StepKey};

/// What would happen to one thing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verb {
    /// Made new.
    Create,
    /// Already there: used as is.
    Reuse,
    /// Changed.
    Update,
    /// Deleted (remains of an interrupted run).
    Delete,
    /// Already as wanted.
    Unchanged,
    /// Would be refused (overwrite not allowed).
    Refuse,
    /// Checked locally (the pre-flight boot).
    Check,
    /// Not ours to touch: left as it is (another publisher's upload in progress).
    Leave,
}

/// One planned action.
#[derive(Debug, Clone, Serialize)]
pub struct Action {
    /// The AMI name it belongs to.
    pub image: String,
    /// snapshot, ami, copy, share, deprecate, param, announce.
    pub step: &'static str,
    /// Region.
    pub region: String,
    /// What happens.
    pub verb: Verb,
    /// Resource id, parameter name, permission...
    pub detail: String,
    /// True for what `--replace` deregisters or deletes (or unprotects to do so).
    pub replaces: bool,
}

/// The plan of a publish.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// The build date the publish would use.
    pub date: String,
    /// Where images are uploaded and registered.
    pub source_region: String,
    /// Every region, the source first.
    pub regions: Vec<String>,
    /// Every action, image by image.
    pub actions: Vec<Action>,
    /// What would make the publish fail halfway (a blocking one stops it before the
    /// first upload), per region, with what to do.
    pub problems: Vec<Problem>,
    /// What those checks found in each region, problems or not.
    pub checks: Vec<String>,
}

impl Plan {
    /// The problems that stop a publish before it starts.
    pub fn blocking(&self) -> Vec<&Problem> {
        self.problems.iter().filter(|p| p.blocking).collect()
    }
}

impl Plan {
    /// The plan as aligned text lines.
    pub fn render(&self) -> String {
        let mut out = format!(
            "plan: date {}, source region {}, regions {}\n",
            self.date,
            self.source_region,
            self.regions.join(", ")
        );
        let mut last = "";
        for a in &self.actions {
            if a.image != last {
                out.push_str(&format!("{}\n", a.image));
                last = &a.image;
            }
            out.push_str(&format!(
                "  {:<9} {:<15} {:<9} {}\n",
                a.step,
                a.region,
                format!("{:?}", a.verb).to_lowercase(),
                a.detail
            ));
        }
        let count = |v: Verb| self.actions.iter().filter(|a| a.verb == v).count();
        out.push_str(&format!(
            "{} to create, {} to update, {} to delete, {} refused, {} in place",
            count(Verb::Create),
            count(Verb::Update),
            count(Verb::Delete),
            count(Verb::Refuse),
            count(Verb::Reuse) + count(Verb::Unchanged)
        ));
        if count(Verb::Leave) > 0 {
            out.push_str(&format!(", {} left alone", count(Verb::Leave)));
        }
        if count(Verb::Check) > 0 {
            out.push_str(&format!(", {} to boot locally first", count(Verb::Check)));
        }
        if !self.problems.is_empty() || !self.checks.is_empty() {
            out.push_str("\nchecked before anything is created:");
            for c in &self.checks {
                out.push_str(&format!("\n  {c}"));
            }
            for p in &self.problems {
                out.push_str(&format!("\n  PROBLEM {}", p.line()));
            }
        }
        out
    }
}

/// Work out what publishing `release` would do. `journal` is the one an earlier run
/// left, if any; `replace`: as `publish --replace` (AMIs made from an earlier version of
/// their image file are deregistered and published again, instead of refused).
pub async fn plan(
    home: &Clients,
    release: &Release,
    journal: Option<&Journal>,
    replace: bool,
    retry: &RetryPolicy,
) -> Result<Plan, PublishError> {
    plan_with(
        home,
        release,
        journal,
        replace,
        retry,
        &crate::snapshot::default_index_dir(),
        None,
    )
    .await
}

/// [`plan`] with the block indexes (parents, interrupted uploads) kept in `index_dir`,
/// and the id of the state database the publish would use (what snapshots of its
/// interrupted runs are tagged with), for a plan made before a journal exists.
pub async fn plan_with(
    home: &Clients,
    release: &Release,
    journal: Option<&Journal>,
    replace: bool,
    retry: &RetryPolicy,
    index_dir: &Path,
    state_id: Option<&str>,
) -> Result<Plan, PublishError> {
    let scope = Scope {
        parameters: true,
        uefi: false,
    };
    let mut survey = Survey::take(home, release, journal, scope, retry).await?;
    if let Some(id) = state_id {
        survey.set_state_id(id);
    }
    let source = home.in_region(&survey.source);
    let mut actions = Vec::new();
    // AMIs made from an earlier version of their file: refused, or (--replace, ours
    // only) deregistered with their snapshots, and then planned as new.
    let stale = survey.stale(release);
    let reps = if replace {
        survey.replacements(release)
    } else {
        Vec::new()
    };
    for st in &stale {
        let act = |step, region: &str, verb, detail: String| Action {
            image: st.name.clone(),
            step,
            region: region.to_string(),
            verb,
            detail,
            replaces: step != "register",
        };
        if !replace {
            actions.push(act("register", &survey.source, Verb::Refuse, st.refusal()));
            continue;
        }
        let mine: Vec<&Replacement> = reps.iter().filter(|r| r.name == st.name).collect();
        if mine.is_empty() {
            actions.push(act(
                "register",
                &survey.source,
                Verb::Refuse,
                format!(
                    "{} is stale ({}) but was not made by ec2ami: --replace leaves it alone",
                    st.image_id, st.change
                ),
            ));
        }
        for r in mine {
            if r.unprotect {
                actions.push(act(
                    "unprotect",
                    &r.region,
                    Verb::Update,
                    format!(
                        "{} (deregistration protection off, to replace it)",
                        r.image_id
                    ),
                ));
            }
            actions.push(act(
                "deregister",
                &r.region,
                Verb::Delete,
                format!(
                    "{} (made from an earlier version of the image: {})",
                    r.image_id, st.change
                ),
            ));
            for snap in &r.snapshots {
                actions.push(act(
                    "snapshot",
                    &r.region,
                    Verb::Delete,
                    format!("{snap} (of {})", r.image_id),
                ));
            }
        }
    }
    survey.forget_replaced(&reps);
    for img in &release.images {
        if stale.iter().any(|s| s.name == img.name()) && !reps.iter().any(|r| r.name == img.name())
        {
            continue;
        }
        let parent = if img.parent_auto {
            super::parent::auto_parent(&source, img.name(), &img.path, index_dir, retry).await?
        } else {
            None
        };
        let local = Local { index_dir, parent };
        actions.extend(image_plan(release, img, &survey, journal, &local)?);
    }
    if let (Some(a), Some(decision)) = (&release.announce, &survey.announce) {
        let refused = actions.iter().any(|x| x.verb == Verb::Refuse);
        let (verb, detail) = match decision {
            // A refused action fails the run: nothing is announced then.
            AnnounceDecision::Send if refused => (
                Verb::Refuse,
                format!(
                    "`{}` to {}: not sent while an action above is refused",
                    a.subject(),
                    a.topic
                ),
            ),
            AnnounceDecision::Send => (
                Verb::Create,
                format!(
                    "`{}` to {} once every image is published",
                    a.subject(),
                    a.topic
                ),
            ),
            AnnounceDecision::Sent(id) => (
                Verb::Unchanged,
                format!("`{}` to {} (sent: message {id})", a.subject(), a.topic),
            ),
        };
        actions.push(Action {
            image: RELEASE_WIDE.to_string(),
            step: "announce",
            region: a.region().to_string(),
            verb,
            detail,
            replaces: false,
        });
    }
    // The run refuses to start on a stale AMI without --replace.
    let mut problems = survey.problems(release);
    if !replace {
        problems.extend(stale.iter().map(|st| Problem {
            region: survey.source.clone(),
            check: "image-changed",
            problem: st.what(),
            fix: st.ways_out().into(),
            blocking: true,
        }));
    }
    Ok(Plan {
        date: release.date.clone(),
        source_region: survey.source.clone(),
        regions: survey.regions.clone(),
        actions,
        problems,
        checks: survey.readiness_lines(),
    })
}

/// The `image` of actions that belong to the whole release (the announcement).
pub const RELEASE_WIDE: &str = "(the whole release)";

/// What the plan of one image knows besides the survey: the block index directory and
/// the parent `parent = "auto"` picks.
struct Local<'a> {
    index_dir: &'a Path,
    parent: Option<super::parent::AutoParent>,
}

/// The actions for one image, decided from the survey as the run decides them.
fn image_plan(
    release: &Release,
    img: &ReleaseImage,
    survey: &Survey,
    journal: Option<&Journal>,
    local: &Local<'_>,
) -> Result<Vec<Action>, PublishError> {
    let name = img.name();
    let act = |step, region: &str, verb, detail: String| Action {
        image: name.to_string(),
        step,
        region: region.to_string(),
        verb,
        detail,
        replaces: false,
    };
    let s = survey.image(img);
    let source = &survey.source;
    let mut amis = Vec::new();
    for r in &s.regions {
        amis.push(r.ami.clone()?);
    }
    let mut out = Vec::new();

    let recorded =
        |kind: &str, region: &str, target: &str| -> Result<Option<String>, PublishError> {
            Ok(match journal {
                Some(j) => j
                    .get(&StepKey::new(name, kind, region, target))?
                    .and_then(|s| s.resource_id),
                None => None,
            })
        };
    let passed = match journal {
        Some(j) => j
            .get(&StepKey::new(name, "preflight", "local", ""))?
            .is_some_and(|s| s.status == Status::Done),
        None => false,
    };
    match s.preflight_decision(release.preflight == Some(true), passed) {
        PreflightDecision::Boot => out.push(act(
            "preflight",
            "local",
            Verb::Check,
            crate::boot::preflight::describe(img.spec.effective_boot_mode()).into(),
        )),
        PreflightDecision::Passed => out.push(act(
            "preflight",
            "local",
            Verb::Reuse,
            "passed in an earlier run".into(),
        )),
        PreflightDecision::Skip => {}
    }
    match s.snapshot_decision(recorded("snapshot", source, "")?) {
        SnapshotDecision::FromAmi(_) => {}
        SnapshotDecision::Reuse {
            id,
            delete,
            left_alone,
            ..
        } => {
            out.extend(left_alone.iter().map(|d| foreign(&act, source, d)));
            out.extend(delete.iter().map(|d| leftover(&act, s, source, d)));
            out.push(act("snapshot", source, Verb::Reuse, id));
        }
        SnapshotDecision::Upload { delete, left_alone } => {
            out.extend(left_alone.iter().map(|d| foreign(&act, source, d)));
            let (resume, delete): (Vec<&String>, Vec<&String>) = delete.iter().partition(|d| {
                s.pending_snapshot(d) && crate::snapshot::resumable(local.index_dir, d)
            });
            out.extend(delete.iter().map(|d| leftover(&act, s, source, d)));
            let (size, format) = crate::image::DiskImage::probe(&img.path)
                .map(|(s, f)| (s, f.to_string()))
                .unwrap_or((0, "?".into()));
            let mut detail = format!(
                "upload {} ({format}, {:.2} GiB)",
                img.path.display(),
                size as f64 / (1u64 << 30) as f64
            );
            if let Some(r) = resume.first() {
                detail.push_str(&format!(
                    ", continuing the interrupted upload to {r} ({})",
                    s.leftover_why(r)
                ));
            }
            match &local.parent {
                // No block is read for a plan: without a kept index the count is not known.
                Some(p) if !p.indexed => detail.push_str(&format!(
                    " against parent {} ({}): no block index of it is kept in {}, so the run \
                     first builds one from the snapshot (GetSnapshotBlock of each of its \
                     blocks) and keeps it; blocks to send unknown until then",
                    p.id,
                    p.of,
                    local.index_dir.display()
                )),
                Some(p) => {
                    let (id, of) = (&p.id, &p.of);
                    match crate::snapshot::blocks_to_send(&img.path, local.index_dir, id) {
                        Ok((send, data)) => detail.push_str(&format!(
                            " against parent {id} ({of}): {send} blocks would be sent \
                             ({data} with data)"
                        )),
                        Err(e) => detail.push_str(&format!(
                            " against parent {id} ({of}): blocks to send unknown ({e})"
                        )),
                    }
                }
                None if img.parent_auto => detail.push_str(
                    ": no parent (parent = \"auto\" found no earlier completed snapshot \
                     of its series), a full upload",
                ),
                None => {}
            }
            out.push(act("snapshot", source, Verb::Create, detail));
        }
    }

    let source_id = amis[0].as_ref().map(|a| a.id.as_str());
    for (i, region) in survey.regions.iter().enumerate() {
        out.push(if i == 0 {
            match &amis[0] {
                Some(a) => act("register", region, Verb::Reuse, a.id.clone()),
                None => act(
                    "register",
                    region,
                    Verb::Create,
                    "register a new AMI".into(),
                ),
            }
        } else {
            match copy_decision(source_id, amis[i].as_ref()) {
                CopyDecision::Reuse(id) => act("copy", region, Verb::Reuse, id),
                CopyDecision::Create => act(
                    "copy",
                    region,
                    Verb::Create,
                    match release.copy_completion {
                        Some(c) => format!("copy from {source} ({c})"),
                        None => format!("copy from {source}"),
                    },
                ),
                CopyDecision::Refuse(why) => act("copy", region, Verb::Refuse, why),
            }
        });
    }

    if let Some(p) = img.spec.protect {
        let now = crate::state::now_epoch();
        for (i, region) in survey.regions.iter().enumerate() {
            let verb = if protection_missing(img, amis[i].as_ref(), now) {
                Verb::Update
            } else {
                Verb::Unchanged
            };
            out.push(act("protect", region, verb, p.to_string()));
        }
    }

    let wanted = release.share.words();
    if !wanted.is_empty() {
        for (i, region) in survey.regions.iter().enumerate() {
            let missing = match &amis[i] {
                Some(a) => {
                    let grants = match &s.regions[i].grants {
                        Some(g) => Some(g.clone()?),
                        None => None,
                    };
                    missing_permissions(&wanted, a, grants.as_ref())
                }
                None => wanted.clone(),
            };
            out.push(if missing.is_empty() {
                act("share", region, Verb::Unchanged, wanted.join(", "))
            } else {
                act("share", region, Verb::Update, missing.join(", "))
            });
        }
    }
    if release.public_snapshots {
        for (i, region) in survey.regions.iter().enumerate() {
            let public = match &s.regions[i].snapshots_public {
                Some(p) => p.clone()?,
                None => false,
            };
            out.push(if public {
                act("snapshots", region, Verb::Unchanged, "public".into())
            } else {
                act("snapshots", region, Verb::Update, "make public".into())
            });
        }
    }
    if let Some(at) = img.spec.deprecate_at {
        let when = at
            .fmt(aws_smithy_types::date_time::Format::DateTime)
            .unwrap_or_default();
        for (i, region) in survey.regions.iter().enumerate() {
            let verb = match &amis[i] {
                Some(a) if deprecation_set(a, at) => Verb::Unchanged,
                _ => Verb::Update,
            };
            out.push(act("deprecate", region, verb, format!("at {when}")));
        }
    }

    for (i, region) in survey.regions.iter().enumerate() {
        let held = match &s.regions[i].parameters {
            Some(p) => p.clone()?,
            None => Default::default(),
        };
        let value = amis[i].as_ref().map(|a| a.id.clone());
        for p in img.params_in(region) {
            let new = value.clone().unwrap_or_else(|| "(the new AMI)".into());
            let w = Wanted {
                region: region.to_string(),
                name: p.clone(),
                value: new.clone(),
                ours: recorded("param", region, &p)?,
            };
            let (verb, detail) =
                match params::decide(held.get(&p).map(String::as_str), &w, release.ssm_overwrite) {
                    Change::Created => (Verb::Create, format!("{p} = {new}")),
                    Change::Unchanged => (Verb::Unchanged, format!("{p} = {new}")),
                    Change::Updated { old } => (Verb::Update, format!("{p}: {old} -> {new}")),
                    Change::Refused { old } => (
                        Verb::Refuse,
                        format!(
                            "{p} holds {old}; set ssm_overwrite = true to replace it with {new}"
                        ),
                    ),
                };
            out.push(act("param", region, verb, detail));
        }
    }
    Ok(out)
}

/// The deletion of an interrupted upload's snapshot.
fn leftover(
    act: &impl Fn(&'static str, &str, Verb, String) -> Action,
    survey: &super::survey::ImageSurvey,
    region: &str,
    id: &str,
) -> Action {
    act(
        "snapshot",
        region,
        Verb::Delete,
        format!("{id} ({})", survey.leftover_why(id)),
    )
}

/// A snapshot of another publisher's upload in progress, left alone.
fn foreign(
    act: &impl Fn(&'static str, &str, Verb, String) -> Action,
    region: &str,
    id: &str,
) -> Action {
    act(
        "snapshot",
        region,
        Verb::Leave,
        format!("{id} (pending: another publisher's upload in progress, left alone)"),
    )
}
