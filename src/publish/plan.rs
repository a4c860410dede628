//! `publish --plan`: every action a publish would take, found with read-only lookups.
//! Nothing is created, changed or deleted (not even the journal).

use futures_util::future::join_all;
use serde::Serialize;

use super::{AMI_NAME_TAG, PublishError, Release, ReleaseImage, UPLOADED_TAG, resolve_regions};
use crate::ami;
use crate::aws::{Clients, RetryPolicy};
use crate::params;
use crate::snapshot::ec2 as snap_ec2;
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
}

/// One planned action.
#[derive(Debug, Clone, Serialize)]
pub struct Action {
    /// The AMI name it belongs to.
    pub image: String,
    /// snapshot, ami, copy, share, deprecate, param.
    pub step: &'static str,
    /// Region.
    pub region: String,
    /// What happens.
    pub verb: Verb,
    /// Resource id, parameter name, permission...
    pub detail: String,
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
        if count(Verb::Check) > 0 {
            out.push_str(&format!(", {} to boot locally first", count(Verb::Check)));
        }
        out
    }
}

/// Work out what publishing `release` would do. `journal` is the one an earlier run
/// left, if any.
pub async fn plan(
    home: &Clients,
    release: &Release,
    journal: Option<&Journal>,
    retry: &RetryPolicy,
) -> Result<Plan, PublishError> {
    let (source, regions, _) = resolve_regions(home, release, retry).await?;
    let src = home.in_region(&source);
    let mut actions = Vec::new();
    for img in &release.images {
        actions.extend(image_plan(&src, release, img, &regions, journal, retry).await?);
    }
    Ok(Plan {
        date: release.date.clone(),
        source_region: source,
        regions,
        actions,
    })
}

async fn image_plan(
    src: &Clients,
    release: &Release,
    img: &ReleaseImage,
    regions: &[String],
    journal: Option<&Journal>,
    retry: &RetryPolicy,
) -> Result<Vec<Action>, PublishError> {
    let name = img.name();
    let act = |step, region: &str, verb, detail: String| Action {
        image: name.to_string(),
        step,
        region: region.to_string(),
        verb,
        detail,
    };
    let mut out = Vec::new();
    let source = &regions[0];
    // The AMI in every region, looked up concurrently.
    let found = join_all(regions.iter().map(|r| async move {
        let c = src.in_region(r);
        ami::find_by_name(&c, name, retry).await
    }))
    .await;
    let mut ids = Vec::new();
    for r in found {
        ids.push(r?.map(|i| {
            (
                i.image_id().unwrap_or_default().to_string(),
                i.public().unwrap_or(false),
            )
        }));
    }

    if ids[0].is_none() {
        if release.preflight == Some(true) {
            let key = StepKey::new(name, "preflight", "local", "");
            let done = match journal {
                Some(j) => j.get(&key)?.is_some_and(|s| s.status == Status::Done),
                None => false,
            };
            out.push(if done {
                act(
                    "preflight",
                    "local",
                    Verb::Reuse,
                    "passed in an earlier run".into(),
                )
            } else {
                act(
                    "preflight",
                    "local",
                    Verb::Check,
                    crate::boot::preflight::describe(img.spec.effective_boot_mode()).into(),
                )
            });
        }
        out.extend(snapshot_plan(src, img, journal, retry).await?);
    }
    for (i, region) in regions.iter().enumerate() {
        let (step, new) = if i == 0 {
            ("register", "register a new AMI".to_string())
        } else {
            ("copy", format!("copy from {source}"))
        };
        out.push(match &ids[i] {
            Some((id, _)) => act(step, region, Verb::Reuse, id.clone()),
            None => act(step, region, Verb::Create, new),
        });
    }
    let perms = release.share.permissions();
    if !perms.is_empty() {
        for (i, region) in regions.iter().enumerate() {
            let public_now = ids[i].as_ref().is_some_and(|(_, p)| *p);
            let what = super::run::describe_permissions(&release.share).join(", ");
            // Being public shows in DescribeImages; other grants are re-applied (harmless).
            let verb = if release.share.public && public_now && perms.len() == 1 {
                Verb::Unchanged
            } else {
                Verb::Update
            };
            out.push(act("share", region, verb, what));
        }
    }
    if let Some(at) = img.spec.deprecate_at {
        let when = at
            .fmt(aws_smithy_types::date_time::Format::DateTime)
            .unwrap_or_default();
        for region in regions {
            out.push(act("deprecate", region, Verb::Update, format!("at {when}")));
        }
    }
    // Parameters: compare with what each holds now (regions concurrently).
    let current = join_all(regions.iter().map(|region| async move {
        let c = src.in_region(region);
        let names = img.params_in(region);
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        params::get_many(&c, &refs, retry).await
    }))
    .await;
    for (i, region) in regions.iter().enumerate() {
        let held = current[i].as_ref().map_err(|e| e.clone())?;
        let value = ids[i].as_ref().map(|(id, _)| id.as_str());
        for p in img.params_in(region) {
            let now = held.get(&p).cloned();
            let new = value.unwrap_or("(the new AMI)");
            let (verb, detail) = match (now, value) {
                (None, _) => (Verb::Create, format!("{p} = {new}")),
                (Some(v), Some(want)) if v == want => (Verb::Unchanged, format!("{p} = {v}")),
                (Some(v), _) if release.ssm_overwrite => {
                    (Verb::Update, format!("{p}: {v} -> {new}"))
                }
                (Some(v), _) => (
                    Verb::Refuse,
                    format!("{p} holds {v}; set ssm_overwrite = true to replace it with {new}"),
                ),
            };
            out.push(act("param", region, verb, detail));
        }
    }
    Ok(out)
}

/// The snapshot part: reuse, clean up, or upload.
async fn snapshot_plan(
    src: &Clients,
    img: &ReleaseImage,
    journal: Option<&Journal>,
    retry: &RetryPolicy,
) -> Result<Vec<Action>, PublishError> {
    let name = img.name();
    let region = src.region().to_string();
    let act = |verb, detail: String| Action {
        image: name.to_string(),
        step: "snapshot",
        region: region.clone(),
        verb,
        detail,
    };
    let mut out = Vec::new();
    let mut reuse = None;
    let recorded = match journal {
        Some(j) => j.get(&StepKey::new(name, "snapshot", &region, ""))?,
        None => None,
    };
    {
        if let Some(step) = recorded {
            let id = step.resource_id.unwrap_or_default();
            match (step.status, snap_ec2::describe_one(src, &id, retry).await?) {
                (Status::Done, Some(_)) => reuse = Some(id),
                (_, Some(_)) => out.push(act(Verb::Delete, format!("{id} (interrupted upload)"))),
                (_, None) => {}
            }
        }
    }
    if reuse.is_none() {
        let tagged = snap_ec2::describe_own(
            src,
            vec![ami::filter(&format!("tag:{AMI_NAME_TAG}"), name)],
            retry,
        )
        .await?;
        for s in &tagged {
            let id = s.snapshot_id().unwrap_or_default().to_string();
            if out.iter().any(|a| a.detail.starts_with(&id)) {
                continue;
            }
            if reuse.is_none() && snap_ec2::tag(s, UPLOADED_TAG).is_some() {
                reuse = Some(id);
            } else {
                out.push(act(Verb::Delete, format!("{id} (interrupted upload)")));
            }
        }
    }
    out.push(match reuse {
        Some(id) => act(Verb::Reuse, id),
        None => {
            let (size, format) = crate::image::DiskImage::check(&img.path)
                .map(|(s, f)| (s, f.to_string()))
                .unwrap_or((0, "?".into()));
            act(
                Verb::Create,
                format!(
                    "upload {} ({format}, {:.2} GiB)",
                    img.path.display(),
                    size as f64 / (1u64 << 30) as f64
                ),
            )
        }
    });
    Ok(out)
}
