//! Guards: what keeps an image whatever the policy says. An SSM parameter pointing at it,
//! instances running or stopped from it, a launch template's latest version launching
//! it, or being public. Pure: the same function judges the plan's inventory and the
//! fresh look taken right before each deletion.

use std::fmt;

use serde::Serialize;

use std::time::Duration;

use super::inventory::{Image, RESOLVE_SSM, Users};
use super::policy::human;
use super::series::ymd_hm;

/// Why an image must not be deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "guard", rename_all = "snake_case")]
pub enum Guard {
    /// An SSM parameter in its region holds its id.
    Parameter {
        /// The parameter.
        name: String,
    },
    /// Instances (pending, running, stopping or stopped) were launched from it.
    Instances {
        /// `i-... (state)`.
        instances: Vec<String>,
    },
    /// A launch template's latest version launches it.
    LaunchTemplate {
        /// lt-...
        id: String,
        /// Its name.
        name: String,
        /// The latest version.
        version: i64,
        /// The SSM parameter it resolves the image through, if any.
        via: Option<String>,
    },
    /// Everyone may launch it (kept unless --include-public).
    Public,
    /// Deregistration protection is on (kept unless --unprotect).
    Protected {
        /// With the 24-hour cooldown.
        cooldown: bool,
    },
    /// Its protection was disabled and the cooldown still runs.
    CoolingDown {
        /// When it ends (UTC).
        until: String,
    },
    /// Launched recently (`--unused-for`).
    RecentlyLaunched {
        /// When EC2 says it was last launched (UTC).
        at: String,
        /// The window.
        window: String,
    },
}

impl fmt::Display for Guard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Guard::Parameter { name } => write!(f, "SSM parameter {name} points at it"),
            Guard::Instances { instances } => {
                write!(f, "in use by instance(s) {}", instances.join(", "))
            }
            Guard::LaunchTemplate {
                id,
                name,
                version,
                via,
            } => {
                write!(
                    f,
                    "latest version ({version}) of launch template {id} ({name})"
                )?;
                match via {
                    Some(p) => write!(f, " launches it through SSM parameter {p}"),
                    None => write!(f, " launches it"),
                }
            }
            Guard::Public => write!(f, "public (pass --include-public to prune public images)"),
            Guard::Protected { cooldown } => write!(
                f,
                "deregistration protection is on{} (pass --unprotect to disable it and delete)",
                if *cooldown {
                    ", with the 24-hour cooldown"
                } else {
                    ""
                }
            ),
            Guard::CoolingDown { until } => write!(
                f,
                "its deregistration protection cooldown runs until {until}: deletable by a run \
                 after then"
            ),
            Guard::RecentlyLaunched { at, window } => write!(
                f,
                "launched {at}, within --unused-for {window} (EC2 reports launches up to 24 h late)"
            ),
        }
    }
}

/// Every guard on image `image_id` (public or not) given what uses images in its
/// region; empty when it may be deleted.
pub fn guards(image_id: &str, public: bool, users: &Users, include_public: bool) -> Vec<Guard> {
    let mut out = Vec::new();
    for (name, value) in &users.parameters {
        if value.trim() == image_id {
            out.push(Guard::Parameter { name: name.clone() });
        }
    }
    if let Some(instances) = users.instances.get(image_id).filter(|v| !v.is_empty()) {
        out.push(Guard::Instances {
            instances: instances.clone(),
        });
    }
    for t in &users.templates {
        let via = t.image.strip_prefix(RESOLVE_SSM);
        let launches = match via {
            Some(param) => users.parameters.get(param).map(|v| v.trim()) == Some(image_id),
            None => t.image == image_id,
        };
        if launches {
            out.push(Guard::LaunchTemplate {
                id: t.id.clone(),
                name: t.name.clone(),
                version: t.version,
                via: via.map(str::to_string),
            });
        }
    }
    if public && !include_public {
        out.push(Guard::Public);
    }
    out
}

/// The guards that come from the image itself: launched within `unused_for` of `now`
/// (deregistration protection is judged where the plan knows about --unprotect).
pub fn lifecycle_guards(img: &Image, unused_for: Option<Duration>, now: i64) -> Vec<Guard> {
    let mut out = Vec::new();
    if let (Some(window), Some(at)) = (unused_for, img.last_launched) {
        let w = i64::try_from(window.as_secs()).unwrap_or(i64::MAX);
        if now.saturating_sub(at) < w {
            out.push(Guard::RecentlyLaunched {
                at: ymd_hm(at),
                window: human(window),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prune::inventory::TemplateRef;

    fn users() -> Users {
        let mut u = Users::default();
        u.parameters
            .insert("/myos/amd64/base/ufs/15.0/CURRENT".into(), "ami-1".into());
        u.parameters.insert("/myos/other".into(), "ami-9".into());
        u.parameters.insert("/myos/lt".into(), "ami-4".into());
        u.instances.insert(
            "ami-2".into(),
            vec!["i-1 (running)".into(), "i-2 (stopped)".into()],
        );
        u.templates.push(TemplateRef {
            id: "lt-1".into(),
            name: "web".into(),
            version: 3,
            image: "ami-3".into(),
        });
        u.templates.push(TemplateRef {
            id: "lt-2".into(),
            name: "ssm".into(),
            version: 1,
            image: "resolve:ssm:/myos/lt".into(),
        });
        u
    }

    #[test]
    fn each_guard_names_its_reason() {
        let u = users();
        let g = guards("ami-1", false, &u, false);
        assert_eq!(
            g,
            vec![Guard::Parameter {
                name: "/myos/amd64/base/ufs/15.0/CURRENT".into()
            }]
        );
        assert_eq!(
            g[0].to_string(),
            "SSM parameter /myos/amd64/base/ufs/15.0/CURRENT points at it"
        );
        let g = guards("ami-2", false, &u, false);
        assert_eq!(
            g[0].to_string(),
            "in use by instance(s) i-1 (running), i-2 (stopped)"
        );
        let g = guards("ami-3", false, &u, false);
        assert_eq!(
            g[0].to_string(),
            "latest version (3) of launch template lt-1 (web) launches it"
        );
        let g = guards("ami-4", false, &u, false);
        // The parameter itself and the template resolving through it.
        assert_eq!(g.len(), 2, "{g:?}");
        assert!(g[1].to_string().ends_with("through SSM parameter /myos/lt"));
    }

    #[test]
    fn public_images_are_guarded_unless_included() {
        let u = Users::default();
        assert_eq!(guards("ami-5", true, &u, false), vec![Guard::Public]);
        assert!(guards("ami-5", true, &u, true).is_empty());
        assert!(guards("ami-5", false, &u, false).is_empty());
    }
}
