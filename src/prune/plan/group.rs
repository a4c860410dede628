//! Grouping: which images are candidates ([`Selection`]), how their names split into
//! series and build dates, and which images use each snapshot.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::super::policy::Aged;
use super::super::series::{Glob, SeriesPattern};
use crate::aws::Ami as Image;

/// Which images are candidates.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Name globs (`--name`); empty: every name.
    pub names: Vec<Glob>,
    /// Only images with ec2ami's ownership tag (always so when no name glob is given).
    pub managed_only: bool,
}

impl Selection {
    /// Whether `img` is a candidate.
    pub fn selects(&self, img: &Image) -> bool {
        let managed_only = self.managed_only || self.names.is_empty();
        (!managed_only || img.managed())
            && (self.names.is_empty() || self.names.iter().any(|g| g.matches(&img.name)))
    }

    /// How the selection reads in a plan.
    pub fn describe(&self) -> String {
        let names: Vec<&str> = self.names.iter().map(Glob::as_str).collect();
        match (names.is_empty(), self.managed_only) {
            (true, _) => "images with ec2ami's ownership tag".into(),
            (false, false) => format!("images named {}", names.join(" or ")),
            (false, true) => format!(
                "images with ec2ami's ownership tag named {}",
                names.join(" or ")
            ),
        }
    }
}

/// An image with what its name says.
pub(super) struct Member<'a> {
    pub(super) img: &'a Image,
    pub(super) aged: Aged,
    pub(super) date_from: &'static str,
}

/// The candidates of a region: each series' images, newest first, and the images whose
/// name the series pattern does not match.
pub(super) struct Groups<'a> {
    /// Series name (`{date}` for the date) to its images, newest first.
    pub(super) series: BTreeMap<String, Vec<Member<'a>>>,
    /// Selected images whose name does not match the pattern.
    pub(super) unmatched: Vec<&'a Image>,
}

/// Group the selected `images` into series by `pattern`.
pub(super) fn group<'a>(
    images: &'a [Image],
    selection: &Selection,
    pattern: &SeriesPattern,
) -> Groups<'a> {
    let mut by_series: BTreeMap<String, Vec<Member>> = BTreeMap::new();
    let mut unmatched = Vec::new();
    for img in images.iter().filter(|i| selection.selects(i)) {
        match pattern.split(&img.name) {
            Some(parts) => {
                let built = parts.date.unwrap_or(img.created);
                by_series.entry(parts.series).or_default().push(Member {
                    img,
                    aged: Aged {
                        built,
                        youngest: built.max(img.created),
                    },
                    date_from: if parts.date.is_some() {
                        "name"
                    } else {
                        "creation"
                    },
                });
            }
            None => unmatched.push(img),
        }
    }
    for members in by_series.values_mut() {
        members.sort_by(|a, b| {
            (b.aged.built, b.img.created, &b.img.id).cmp(&(a.aged.built, a.img.created, &a.img.id))
        });
    }
    Groups {
        series: by_series,
        unmatched,
    }
}

/// The images using each snapshot. Every image of the account maps into this, selected
/// or not: a snapshot is deleted only when every image using it is.
pub(super) fn snapshot_users(images: &[Image]) -> HashMap<&str, Vec<&str>> {
    let mut users: HashMap<&str, Vec<&str>> = HashMap::new();
    for img in images {
        for s in dedup(img.snapshot_ids()) {
            users.entry(s).or_default().push(&img.id);
        }
    }
    users
}

/// `v` without repeats, in first-seen order.
pub(super) fn dedup<'a>(v: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let mut seen = BTreeSet::new();
    v.into_iter().filter(|s| seen.insert(*s)).collect()
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::super::plan_region;
    use super::*;
    use crate::aws::tags;

    #[test]
    fn selection_is_by_tag_unless_names_are_given() {
        let mut imgs = weekly("A", 3);
        imgs[2].tags.remove(tags::OWNERSHIP);
        imgs.push(image("ami-other", "Other 20200101", 100, &[]));
        imgs[3].tags.remove(tags::OWNERSHIP);
        let inv = inventory(imgs);
        let p = plan_region(&inv, &opts(0));
        assert_eq!(actions(&p).len(), 2, "only tagged ones");
        let mut o = opts(0);
        o.selection.names = vec![Glob::new("MyOS *")];
        assert_eq!(plan_region(&inv, &o).series[0].images.len(), 3);
        o.selection.managed_only = true;
        assert_eq!(plan_region(&inv, &o).series[0].images.len(), 2);
    }

    #[test]
    fn names_split_into_series_newest_first_and_the_rest_is_unmatched() {
        let mut imgs = weekly("A", 3);
        imgs.reverse();
        imgs.push(image("ami-x", "MyOS 15.0-A-nodate base", 3, &[]));
        imgs.push(image(
            "ami-odd",
            "Something else",
            3,
            &["snap-A0", "snap-A0"],
        ));
        let pattern = SeriesPattern::default();
        let g = group(&imgs, &Selection::default(), &pattern);
        let ids = |s: &str| -> Vec<(&str, &str)> {
            g.series[s]
                .iter()
                .map(|m| (m.img.id.as_str(), m.date_from))
                .collect()
        };
        assert_eq!(
            ids("MyOS 15.0-A-{date} base"),
            vec![("ami-A0", "name"), ("ami-A1", "name"), ("ami-A2", "name")]
        );
        // The default pattern puts every name in a series: an undated one is its own,
        // dated by its creation.
        let names: Vec<&String> = g.series.keys().collect();
        assert_eq!(names.len(), 3, "{names:?}");
        let undated = &g.series["MyOS 15.0-A-nodate base"];
        assert_eq!(undated[0].date_from, "creation");
        assert_eq!(undated[0].aged.built, undated[0].img.created);
        assert!(g.unmatched.is_empty());
        // A --series-pattern leaves the names it does not match out of every series.
        let pattern = SeriesPattern::parse(r"^MyOS 15\.0-A-(?P<date>[0-9]{8}) base$").unwrap();
        let g = group(&imgs, &Selection::default(), &pattern);
        assert_eq!(g.series.len(), 1);
        assert_eq!(
            g.unmatched
                .iter()
                .map(|i| i.id.as_str())
                .collect::<Vec<_>>(),
            vec!["ami-x", "ami-odd"]
        );
        // A snapshot an image maps twice counts that image once.
        assert_eq!(snapshot_users(&imgs)["snap-A0"], vec!["ami-A0", "ami-odd"]);
    }
}
