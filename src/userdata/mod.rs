//! User data for the instances of FreeBSD's images: generate it from choices (packages,
//! services, rc.conf settings, files, a script, a hostname) for the base images'
//! configinit or for cloud-init ([`generate`]), check a user-data file the way the
//! image will read it at first boot ([`check`]), and write the static generator page
//! ([`page`]) that applies the same rules ([`rules`]) in the browser.

pub(crate) mod check;
pub(crate) mod generate;
pub(crate) mod page;
pub(crate) mod rules;
pub(crate) mod tar;
pub(crate) mod yaml;

pub use check::{CheckReport, check};
pub use generate::{
    Field, FileSpec, Flavour, Format, Generated, Part, PartKind, Problem, Spec, generate,
};
pub use page::write_page;
pub use rules::{LIMIT_BYTES, RULES};
