//! `validate`: compare what exists with what a release says should, item by item:
//! every AMI in every region (attributes), its launch permissions, its SSM parameters.

use serde::Serialize;

use super::survey::{RegionSurvey, Scope, Stale, Survey};
use super::{PublishError, Release, ReleaseImage};
use crate::ami;
use crate::aws::{AwsError, Clients, RetryPolicy};
use crate::state::journal::Journal;

/// The state of one expected item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Verdict {
    /// Exists as expected.
    Correct,
    /// Exists, but not as expected (the detail says how).
    Incorrect,
    /// Does not exist.
    Missing,
    /// Could not be checked (the detail says why).
    Unreachable,
}

/// One checked item.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// The AMI name.
    pub image: String,
    /// ami, permission or parameter.
    pub kind: &'static str,
    /// Region.
    pub region: String,
    /// AMI id, permission or parameter name.
    pub target: String,
    /// The verdict.
    pub verdict: Verdict,
    /// Why it is not Correct.
    pub detail: String,
}

/// Every check of a release.
#[derive(Debug, Clone, Serialize)]
pub struct Validation {
    /// Each item, image by image, region by region.
    pub checks: Vec<Check>,
}

impl Validation {
    /// True when every item is Correct.
    pub fn all_correct(&self) -> bool {
        self.checks.iter().all(|c| c.verdict == Verdict::Correct)
    }

    /// A table for people, with a summary line.
    pub fn render(&self) -> String {
        let rows: Vec<[String; 6]> = self
            .checks
            .iter()
            .map(|c| {
                [
                    format!("{:?}", c.verdict),
                    c.kind.to_string(),
                    c.region.clone(),
                    c.target.clone(),
                    c.image.clone(),
                    c.detail.clone(),
                ]
            })
            .collect();
        let head = ["STATUS", "ITEM", "REGION", "TARGET", "IMAGE", "DETAIL"].map(String::from);
        let mut width = [0usize; 5];
        for r in std::iter::once(&head).chain(&rows) {
            for (w, cell) in width.iter_mut().zip(r) {
                *w = (*w).max(cell.len());
            }
        }
        let mut out = String::new();
        for r in std::iter::once(&head).chain(&rows) {
            let mut line = String::new();
            for (i, cell) in r.iter().enumerate() {
                if i < 5 {
                    line.push_str(&format!("{cell:<w$}  ", w = width[i]));
                } else {
                    line.push_str(cell);
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        let n = |v| self.checks.iter().filter(|c| c.verdict == v).count();
        out.push_str(&format!(
            "{} correct, {} incorrect, {} missing, {} unreachable",
            n(Verdict::Correct),
            n(Verdict::Incorrect),
            n(Verdict::Missing),
            n(Verdict::Unreachable)
        ));
        out
    }
}

/// Check every AMI, permission and parameter `release` describes, from one survey
/// (`journal`: an earlier publish's, for what it recorded of the image files).
pub async fn validate(
    home: &Clients,
    release: &Release,
    journal: Option<&Journal>,
    retry: &RetryPolicy,
) -> Result<Validation, PublishError> {
    let scope = Scope {
        parameters: true,
        uefi: true,
    };
    let survey = Survey::take(home, release, journal, scope, retry).await?;
    let mut checks = Vec::new();
    for img in &release.images {
        let s = survey.image(img);
        let stale = s.stale(&img.path);
        for r in &s.regions {
            let optional = survey.best_effort.contains(&r.region);
            checks.extend(check_region(r, release, img, optional, stale.as_ref()));
        }
    }
    // What would make the rest of the publish fail: the same checks `--plan` shows.
    for p in survey.problems(release) {
        checks.push(Check {
            image: "(release)".into(),
            kind: "readiness",
            region: p.region.clone(),
            target: p.check.to_string(),
            verdict: if p.blocking {
                Verdict::Incorrect
            } else {
                Verdict::Unreachable
            },
            detail: format!("{} -- {}", p.problem, p.fix),
        });
    }
    Ok(Validation { checks })
}

fn check_region(
    r: &RegionSurvey,
    release: &Release,
    img: &ReleaseImage,
    best_effort: bool,
    stale: Option<&Stale>,
) -> Vec<Check> {
    let region = r.region.clone();
    let check = |kind, target: &str, verdict, detail: String| Check {
        image: img.name().to_string(),
        kind,
        region: region.clone(),
        target: target.to_string(),
        verdict,
        detail,
    };
    let unreachable = |e: &AwsError| (Verdict::Unreachable, e.to_string());
    let mut out = Vec::new();
    let image = match &r.ami {
        Err(e) => {
            let (v, d) = unreachable(e);
            out.push(check("ami", img.name(), v, d));
            return out;
        }
        Ok(None) => {
            let note = if best_effort {
                "no AMI of that name (a best-effort region)"
            } else {
                "no AMI of that name"
            };
            out.push(check("ami", img.name(), Verdict::Missing, note.into()));
            None
        }
        Ok(Some(i)) => {
            let mut diff = ami::register::differences(&img.spec, i);
            if let Some(st) = stale {
                diff.push(format!(
                    "made from an earlier version of {} ({}): publish --replace",
                    st.path.display(),
                    st.change
                ));
            }
            out.push(if diff.is_empty() {
                check("ami", &i.id, Verdict::Correct, String::new())
            } else {
                check("ami", &i.id, Verdict::Incorrect, diff.join("; "))
            });
            Some(i)
        }
    };

    if let (Some(i), Some(want)) = (image, &img.spec.uefi_data) {
        let (verdict, detail) = match &r.uefi {
            Some(Ok(Some(have))) if *have == want.sha256 => (Verdict::Correct, String::new()),
            Some(Ok(Some(_))) => (
                Verdict::Incorrect,
                format!("holds other UEFI data than {}", want.source),
            ),
            Some(Ok(None)) => (
                Verdict::Incorrect,
                format!("has no UEFI data, expected {}", want.source),
            ),
            Some(Err(e)) => unreachable(e),
            None => (Verdict::Unreachable, "not read".into()),
        };
        out.push(check("uefi-data", &i.id, verdict, detail));
    }

    if let Some(i) = image {
        let (verdict, detail) = match (release.public(), i.public) {
            (true, true) | (false, false) => (Verdict::Correct, String::new()),
            (true, false) => (Verdict::Incorrect, "private, expected public".into()),
            (false, true) => (Verdict::Incorrect, "public, but the release is not".into()),
        };
        out.push(check("permission", "public", verdict, detail));
        let wanted: Vec<String> = release
            .share
            .words()
            .into_iter()
            .filter(|w| w != "public")
            .collect();
        match &r.grants {
            _ if wanted.is_empty() => {}
            Some(Err(e)) => {
                let (v, d) = unreachable(e);
                out.push(check("permission", "launchPermission", v, d));
            }
            Some(Ok(have)) => {
                for w in wanted {
                    out.push(if have.contains(&w) {
                        check("permission", &w, Verdict::Correct, String::new())
                    } else {
                        check("permission", &w, Verdict::Missing, "not granted".into())
                    });
                }
            }
            None => {}
        }
    }

    let expected = image.map(|i| i.id.as_str());
    for p in img.params_in(&region) {
        let held = match &r.parameters {
            Some(Ok(held)) => Ok(held.get(&p)),
            Some(Err(e)) => Err(e),
            None => Ok(None),
        };
        let (verdict, detail) = match (held, expected) {
            (Err(e), _) => unreachable(e),
            (Ok(None), _) => (Verdict::Missing, "no such parameter".into()),
            (Ok(Some(v)), Some(want)) if v == want => (Verdict::Correct, String::new()),
            (Ok(Some(v)), Some(want)) => {
                (Verdict::Incorrect, format!("holds {v}, expected {want}"))
            }
            (Ok(Some(v)), None) => (
                Verdict::Incorrect,
                format!("holds {v}, but the AMI it should name is missing"),
            ),
        };
        out.push(check("parameter", &p, verdict, detail));
    }
    out
}
