//! The generator page: one HTML file with its style, its script and the rule tables
//! inline, nothing fetched (it works offline, from `file://`). The script
//! (`assets/userdata/page.js`) ports [`super::generate`] and takes every pattern,
//! message, limit and name from the JSON of [`super::RULES`] embedded in the page.

use std::path::{Path, PathBuf};

use super::RULES;

const TEMPLATE: &str = include_str!("../../assets/userdata/page.html");
const STYLE: &str = include_str!("../../assets/userdata/page.css");
const SCRIPT: &str = include_str!("../../assets/userdata/page.js");

/// The page's file name, in the directory `--page` and `report` write it to.
pub const PAGE_FILE: &str = "userdata.html";

/// Why the page could not be written.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct PageError {
    /// The file or directory.
    pub path: PathBuf,
    /// The OS error.
    #[source]
    pub source: std::io::Error,
}

/// The page's HTML.
pub fn page_html() -> String {
    TEMPLATE
        .replace("/*STYLE*/", STYLE)
        .replace("/*RULES*/", &RULES.json())
        .replace("/*SCRIPT*/", SCRIPT)
}

/// Write the page into `dir` (created if missing); returns its path.
pub fn write_page(dir: &Path) -> Result<PathBuf, PageError> {
    std::fs::create_dir_all(dir).map_err(|source| PageError {
        path: dir.to_owned(),
        source,
    })?;
    let path = dir.join(PAGE_FILE);
    std::fs::write(&path, page_html()).map_err(|source| PageError {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_is_self_contained() {
        let html = page_html();
        for placeholder in ["/*STYLE*/", "/*RULES*/", "/*SCRIPT*/"] {
            assert!(
                !html.contains(placeholder),
                "{placeholder} left in the page"
            );
        }
        // Nothing is loaded from anywhere: no URL, no external script, style or font.
        for banned in ["http:", "https:", "<link", "src=", "@import", "url("] {
            assert!(!html.contains(banned), "the page contains {banned}");
        }
        assert_eq!(html.matches("<script").count(), 2);
        assert_eq!(html.matches("</script>").count(), 2);
        // The embedded rules parse back to the tables.
        let start = html.find("id=\"rules\">").unwrap() + "id=\"rules\">".len();
        let end = start + html[start..].find("</script>").unwrap();
        let rules: serde_json::Value = serde_json::from_str(&html[start..end]).unwrap();
        assert_eq!(rules["limit_bytes"], 16384);
        assert_eq!(
            rules["rc_line"].as_array().unwrap().len(),
            RULES.rc_line.len()
        );
    }
}
