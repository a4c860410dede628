//! `ec2ami report`: one plot per series (boot time per build over time: the phase
//! medians stacked, the total's median with its min-max band), as PNG and SVG, and a
//! static `index.html` with every plot and a table of the latest figures. Nothing in
//! the page reaches the network; the PNGs' text is drawn with a font built into the
//! binary, so no system font is needed.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;
use serde::Serialize;

use super::check::{CheckOptions, SeriesCheck, Verdict, check_all};
use super::{BuildPoint, SeriesKey, build};
use crate::bench::Phase;

/// DejaVu Sans, cut down to ASCII and a few symbols (11 KB; licence beside it).
const FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans-subset.ttf");
const FONT_FAMILY: &str = "sans-serif";

/// Plot size in pixels.
const SIZE: (u32, u32) = (1000, 520);
/// Width of the legend column, in pixels.
const LEGEND_WIDTH: u32 = 210;

/// Phase colours, in [`Phase::ALL`] order (colour-blind-safe Okabe-Ito).
const PHASE_COLOURS: [RGBColor; 4] = [
    RGBColor(86, 180, 233),
    RGBColor(0, 158, 115),
    RGBColor(230, 159, 0),
    RGBColor(204, 121, 167),
];

/// Why the report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A file or directory could not be written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Drawing a plot failed.
    #[error("plot {}: {message}", path.display())]
    Plot {
        /// The file.
        path: PathBuf,
        /// What plotters said.
        message: String,
    },
    /// There is nothing to plot.
    #[error("no boot-time history matches: run `ec2ami bench` or `ec2ami history import` first")]
    Empty,
}

/// What was written.
#[derive(Debug, Clone, Serialize)]
pub struct ReportSummary {
    /// The page.
    pub index: PathBuf,
    /// The user-data generator page the index links to.
    pub userdata_page: PathBuf,
    /// One entry per series.
    pub series: Vec<SeriesFiles>,
}

/// The plots of one series.
#[derive(Debug, Clone, Serialize)]
pub struct SeriesFiles {
    /// The series.
    pub series: String,
    /// Its PNG.
    pub png: PathBuf,
    /// Its SVG.
    pub svg: PathBuf,
    /// Builds plotted.
    pub builds: usize,
}

/// The bitmap backend's error type (plotters does not re-export its name).
type BitMapBackendError = <BitMapBackend<'static> as DrawingBackend>::ErrorType;

/// A bitmap plot's failure as a sentence: the bitmap backend's errors print as Debug
/// structures (`ImageError(IoError(Os { .. }))`), so their causes are taken out.
fn bitmap_error(e: DrawingAreaErrorKind<BitMapBackendError>) -> String {
    use plotters_backend::DrawingErrorKind;
    match e {
        DrawingAreaErrorKind::BackendError(DrawingErrorKind::DrawingError(b)) => match b {
            BitMapBackendError::IOError(io) => io.to_string(),
            #[allow(unreachable_patterns)] // the variant exists with plotters' image encoder
            BitMapBackendError::ImageError(i) => match std::error::Error::source(&i) {
                Some(cause) => cause.to_string(),
                None => i.to_string(),
            },
            BitMapBackendError::InvalidBuffer => "the pixel buffer is invalid".to_string(),
            #[allow(unreachable_patterns)]
            _ => "the bitmap backend failed".to_string(),
        },
        DrawingAreaErrorKind::BackendError(DrawingErrorKind::FontError(f)) => {
            format!("font: {f}")
        }
        other => other.to_string(),
    }
}

/// One test of `ec2ami test`, for the report's matrix.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TestCell {
    /// The build (the AMI's name, or its id).
    pub build: String,
    /// Region.
    pub region: String,
    /// The AMI.
    pub image_id: String,
    /// Instance type.
    pub instance_type: String,
    /// `passed`, `failed` or `timed_out`.
    pub verdict: String,
    /// The first check that failed, or why it failed.
    pub why: Option<String>,
    /// The console output kept with the run.
    pub console_output: Option<PathBuf>,
    /// The screenshot kept with the run.
    pub screenshot: Option<PathBuf>,
    /// When it was tested (the newest test of a cell is shown).
    pub measured_at: i64,
}

/// Copy the tests' console outputs and screenshots next to the page (`tests/`), so
/// the page links work wherever it is copied; returns the cells with relative links.
fn copy_artifacts(tests: &[TestCell], out: &Path) -> Vec<TestCell> {
    let dir = out.join("tests");
    tests
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let mut t = t.clone();
            for p in [&mut t.console_output, &mut t.screenshot] {
                *p = p.as_ref().and_then(|src| {
                    let name = format!(
                        "{i}-{}",
                        src.file_name()?.to_string_lossy().replace(['/', '\\'], "_")
                    );
                    std::fs::create_dir_all(&dir).ok()?;
                    std::fs::copy(src, dir.join(&name)).ok()?;
                    Some(PathBuf::from("tests").join(name))
                });
            }
            t
        })
        .collect()
}

/// The test matrix per build: images x instance types, a green or red cell each (the
/// newest test of that cell), linking its console output and screenshot.
pub fn test_matrix_html(tests: &[TestCell]) -> String {
    use std::collections::BTreeMap;
    if tests.is_empty() {
        return String::new();
    }
    let mut builds: BTreeMap<&str, Vec<&TestCell>> = BTreeMap::new();
    for t in tests {
        builds.entry(t.build.as_str()).or_default().push(t);
    }
    let mut h = String::from("<section id=\"tests\">\n<h2>Tests on EC2</h2>\n");
    for (build, cells) in builds.iter().rev() {
        let mut types: Vec<&str> = cells.iter().map(|c| c.instance_type.as_str()).collect();
        types.sort();
        types.dedup();
        let mut images: Vec<(&str, &str)> = cells
            .iter()
            .map(|c| (c.region.as_str(), c.image_id.as_str()))
            .collect();
        images.sort();
        images.dedup();
        let _ = write!(
            h,
            "<table class=\"tests\" data-build=\"{}\">\n<caption>{}</caption>\n<tr><th>image</th>",
            escape(build),
            escape(build)
        );
        for t in &types {
            let _ = write!(h, "<th>{}</th>", escape(t));
        }
        h.push_str("</tr>\n");
        for (region, image) in &images {
            let _ = write!(
                h,
                "<tr><td class=\"name\">{} {}</td>",
                escape(image),
                escape(region)
            );
            for ty in &types {
                let newest = cells
                    .iter()
                    .filter(|c| {
                        c.region == *region && c.image_id == *image && c.instance_type == *ty
                    })
                    .max_by_key(|c| c.measured_at);
                match newest {
                    None => h.push_str("<td class=\"untested\">&ndash;</td>"),
                    Some(c) => {
                        let pass = c.verdict == "passed";
                        let mut links = Vec::new();
                        if let Some(p) = &c.console_output {
                            links.push(format!(
                                "<a href=\"{}\" class=\"console\">console</a>",
                                escape(&p.display().to_string())
                            ));
                        }
                        if let Some(p) = &c.screenshot {
                            links.push(format!(
                                "<a href=\"{}\" class=\"screenshot\">screenshot</a>",
                                escape(&p.display().to_string())
                            ));
                        }
                        let _ = write!(
                            h,
                            "<td class=\"{}\" data-verdict=\"{}\" title=\"{}\">{}{}{}</td>",
                            if pass { "pass" } else { "fail" },
                            escape(&c.verdict),
                            escape(c.why.as_deref().unwrap_or_default()),
                            if pass { "pass" } else { "FAIL" },
                            if links.is_empty() { "" } else { " " },
                            links.join(" ")
                        );
                    }
                }
            }
            h.push_str("</tr>\n");
        }
        h.push_str("</table>\n");
    }
    h.push_str("</section>\n");
    h
}

/// Write the plots and `index.html` for `series` into `out` (created if missing).
/// `generated` says when and from what, for the page's header.
pub fn write_report(
    series: &[(SeriesKey, Vec<BuildPoint>)],
    out: &Path,
    check: &CheckOptions,
    generated: &str,
) -> Result<ReportSummary, ReportError> {
    write_report_with_tests(series, &[], out, check, generated)
}

/// [`write_report`] with the test matrix of `ec2ami test` (its console outputs and
/// screenshots are copied next to the page).
pub fn write_report_with_tests(
    series: &[(SeriesKey, Vec<BuildPoint>)],
    tests: &[TestCell],
    out: &Path,
    check: &CheckOptions,
    generated: &str,
) -> Result<ReportSummary, ReportError> {
    if series.is_empty() {
        return Err(ReportError::Empty);
    }
    std::fs::create_dir_all(out).map_err(|source| ReportError::Io {
        path: out.to_owned(),
        source,
    })?;
    register_font();
    let mut files = Vec::new();
    for (key, builds) in series {
        let slug = key.slug();
        let png = out.join(format!("{slug}.png"));
        let svg = out.join(format!("{slug}.svg"));
        let plot_err = |path: &Path, e: String| ReportError::Plot {
            path: path.to_owned(),
            message: e,
        };
        {
            let root = BitMapBackend::new(&png, SIZE).into_drawing_area();
            draw(&root, key, builds).map_err(|e| plot_err(&png, bitmap_error(e)))?;
            root.present()
                .map_err(|e| plot_err(&png, bitmap_error(e)))?;
        }
        {
            let root = SVGBackend::new(&svg, SIZE).into_drawing_area();
            draw(&root, key, builds).map_err(|e| plot_err(&svg, e.to_string()))?;
            root.present().map_err(|e| plot_err(&svg, e.to_string()))?;
        }
        files.push(SeriesFiles {
            series: key.to_string(),
            png,
            svg,
            builds: builds.len(),
        });
    }
    let checks = check_all(series, check);
    let mut html = index_html(series, &checks, check, generated);
    let matrix = test_matrix_html(&copy_artifacts(tests, out));
    if let Some(at) = html.find("<script>") {
        html.insert_str(at, &matrix);
    }
    let index = out.join("index.html");
    std::fs::write(&index, html).map_err(|source| ReportError::Io {
        path: index.clone(),
        source,
    })?;
    let userdata_page = crate::userdata::page::write_page(out).map_err(|e| ReportError::Io {
        path: e.path,
        source: e.source,
    })?;
    Ok(ReportSummary {
        index,
        userdata_page,
        series: files,
    })
}

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The font is part of the binary and known to parse (a unit test loads it).
        let _ = plotters::style::register_font(FONT_FAMILY, FontStyle::Normal, FONT);
    });
}

/// Draw one series' plot on `root`.
fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    key: &SeriesKey,
    builds: &[BuildPoint],
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    root.fill(&WHITE)?;
    // The legend gets its own column: over the plot it would hide data.
    let (plot_area, legend_area) = root.split_horizontally(SIZE.0 - LEGEND_WIDTH);
    let (x0, x1) = x_range(builds);
    let top = builds
        .iter()
        .filter_map(|b| b.stats.total.map(|s| s.max))
        .fold(1.0f64, f64::max)
        * 1.15;
    let mut chart = ChartBuilder::on(&plot_area)
        .caption(
            format!("{key}: boot time per build"),
            (FONT_FAMILY, 20).into_font(),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(x0..x1, 0f64..top)?;
    let fmt_day = |x: &f64| build::dashed(&build::date_of_day(x.round() as i64));
    chart
        .configure_mesh()
        .x_labels(6)
        .y_labels(8)
        .x_label_formatter(&fmt_day)
        .x_desc("build date")
        .y_desc("seconds")
        .label_style((FONT_FAMILY, 13).into_font())
        .light_line_style(RGBColor(235, 235, 235))
        .draw()?;

    let measured: Vec<&BuildPoint> = builds.iter().filter(|b| b.stats.total.is_some()).collect();
    // Stacked phase medians: the cumulative sum up to each phase, drawn from the top
    // phase down so each band shows its own phase.
    for phase in Phase::ALL.into_iter().rev() {
        let colour = PHASE_COLOURS[phase.index()];
        let points: Vec<(f64, f64)> = measured
            .iter()
            .map(|b| {
                let upto: f64 = Phase::ALL[..=phase.index()]
                    .iter()
                    .filter_map(|p| b.stats.phases[p.index()].map(|s| s.median))
                    .sum();
                (b.day as f64, upto)
            })
            .collect();
        chart.draw_series(AreaSeries::new(points, 0.0, colour.mix(0.55)).border_style(colour))?;
    }
    // The min-max band of the totals, then the median total.
    if measured.len() >= 2 {
        let mut band: Vec<(f64, f64)> = measured
            .iter()
            .filter_map(|b| b.stats.total.map(|s| (b.day as f64, s.max)))
            .collect();
        band.extend(
            measured
                .iter()
                .rev()
                .filter_map(|b| b.stats.total.map(|s| (b.day as f64, s.min))),
        );
        chart
            .draw_series(std::iter::once(Polygon::new(band, BLACK.mix(0.12))))?
            .label("total: min-max of runs")
            .legend(|(x, y)| {
                Rectangle::new([(x, y - 5), (x + 14, y + 5)], BLACK.mix(0.12).filled())
            });
    }
    for b in &measured {
        if let Some(t) = b.stats.total {
            let x = b.day as f64;
            chart.draw_series(std::iter::once(PathElement::new(
                vec![(x, t.min), (x, t.max)],
                BLACK.mix(0.5),
            )))?;
        }
    }
    let medians: Vec<(f64, f64)> = measured
        .iter()
        .filter_map(|b| b.median_total().map(|m| (b.day as f64, m)))
        .collect();
    chart.draw_series(LineSeries::new(medians.clone(), BLACK.stroke_width(2)))?;
    chart.draw_series(medians.iter().map(|p| Circle::new(*p, 3, BLACK.filled())))?;
    // Builds none of whose runs finished: a red cross at the top.
    let failed: Vec<f64> = builds
        .iter()
        .filter(|b| b.stats.total.is_none())
        .map(|b| b.day as f64)
        .collect();
    if !failed.is_empty() {
        chart.draw_series(
            failed
                .iter()
                .map(|x| Cross::new((*x, top * 0.95), 6, RED.stroke_width(2))),
        )?;
    }
    draw_legend(&legend_area, !failed.is_empty())?;
    Ok(())
}

/// A legend entry's mark.
enum Swatch {
    Line,
    Fill(RGBAColor),
    Cross,
}

/// The legend, top to bottom in the order the bands are stacked.
fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    failed: bool,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let mut entries = vec![
        (Swatch::Line, "total (median)".to_string()),
        (
            Swatch::Fill(BLACK.mix(0.12)),
            "total: min-max of runs".to_string(),
        ),
    ];
    for phase in Phase::ALL.into_iter().rev() {
        let c = PHASE_COLOURS[phase.index()].mix(0.55);
        entries.push((Swatch::Fill(c), phase.short().to_string()));
    }
    if failed {
        entries.push((Swatch::Cross, "no run finished".to_string()));
    }
    let font = (FONT_FAMILY, 13).into_font().color(&BLACK);
    for (i, (swatch, text)) in entries.iter().enumerate() {
        // Room for the note between the totals and the phases.
        let y = 60 + 24 * i as i32 + if i >= 2 { 22 } else { 0 };
        match swatch {
            Swatch::Line => area.draw(&PathElement::new(
                vec![(8, y), (26, y)],
                BLACK.stroke_width(2),
            ))?,
            Swatch::Fill(c) => area.draw(&Rectangle::new([(8, y - 6), (26, y + 6)], c.filled()))?,
            Swatch::Cross => area.draw(&Cross::new((17, y), 6, RED.stroke_width(2)))?,
        }
        area.draw_text(text, &font, (34, y - 7))?;
        if i == 1 {
            // What the coloured bands below are.
            let note = (FONT_FAMILY, 12).into_font().color(&RGBColor(90, 90, 90));
            area.draw_text("phase medians, stacked:", &note, (8, y + 14))?;
        }
    }
    Ok(())
}

/// The x range in days, padded so single builds and the edges stay visible.
fn x_range(builds: &[BuildPoint]) -> (f64, f64) {
    let lo = builds.iter().map(|b| b.day).min().unwrap_or(0) as f64;
    let hi = builds.iter().map(|b| b.day).max().unwrap_or(0) as f64;
    let pad = ((hi - lo) * 0.05).max(3.0);
    (lo - pad, hi + pad)
}

/// Escape text for HTML.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn secs(v: Option<f64>) -> String {
    v.map(|s| format!("{s:.2}"))
        .unwrap_or_else(|| "&ndash;".into())
}

/// The page: a table of each series' latest build, then every plot.
pub fn index_html(
    series: &[(SeriesKey, Vec<BuildPoint>)],
    checks: &[SeriesCheck],
    opts: &CheckOptions,
    generated: &str,
) -> String {
    let mut h = String::new();
    h.push_str(concat!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n",
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n",
        "<title>Boot times</title>\n<style>\n",
        "body{font-family:sans-serif;margin:1.5em;color:#222}\n",
        "table{border-collapse:collapse;margin:1em 0}\n",
        "th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}\n",
        "th:first-child,td:first-child,td.name{text-align:left}\n",
        "td{white-space:nowrap}\ntd.name{white-space:normal}\n",
        "th{background:#f3f3f3}\n",
        "tr.regression td{background:#fde2e2}\n",
        "figure{margin:2em 0}\nimg{max-width:100%;height:auto;border:1px solid #eee}\n",
        ".missing{color:#b00;font-weight:bold}\n",
        "td.pass{background:#d9f2d9;color:#064}\ntd.fail{background:#f8d0d0;color:#900;font-weight:bold}\n",
        "</style>\n</head>\n<body>\n<h1>Boot times</h1>\n"
    ));
    let _ = writeln!(
        h,
        "<p>{}. Medians over each build's runs; the check compares the newest build with \
         the median of up to {} builds before it and flags it above {:.2}&times;.</p>",
        escape(generated),
        opts.window,
        opts.threshold
    );
    let _ = writeln!(
        h,
        "<p>Launching these images? <a href=\"{}\" id=\"userdata-link\">Make their user \
         data</a>: packages to install, services to enable, rc.conf settings, files and a \
         script for the first boot.</p>",
        crate::userdata::page::PAGE_FILE
    );
    h.push_str("<table>\n<tr><th>series</th><th>latest build</th><th>date</th>");
    for p in Phase::ALL {
        let _ = write!(h, "<th>{} s</th>", escape(p.short()));
    }
    h.push_str("<th>total s</th><th>min&ndash;max s</th><th>runs</th><th>check</th></tr>\n");
    for ((key, builds), check) in series.iter().zip(checks) {
        let Some(latest) = builds.last() else {
            continue;
        };
        let regression = check.verdict.is_regression();
        let _ = write!(
            h,
            "<tr{}><td class=\"name\"><a href=\"#{}\">{}</a></td><td class=\"name\">{}</td><td>{}</td>",
            if regression {
                " class=\"regression\""
            } else {
                ""
            },
            escape(&key.slug()),
            escape(&key.to_string()),
            escape(&latest.label),
            escape(&build::dashed(&latest.date))
        );
        for p in Phase::ALL {
            let _ = write!(
                h,
                "<td>{}</td>",
                secs(latest.stats.phases[p.index()].map(|s| s.median))
            );
        }
        let total = latest.stats.total;
        let _ = writeln!(
            h,
            "<td>{}</td><td>{}</td><td>{}</td><td class=\"name\">{}</td></tr>",
            secs(total.map(|s| s.median)),
            total
                .map(|s| format!("{:.2}&ndash;{:.2}", s.min, s.max))
                .unwrap_or_else(|| "&ndash;".into()),
            total.map(|s| s.count).unwrap_or(0) + latest.timed_out,
            verdict_cell(&check.verdict)
        );
    }
    h.push_str("</table>\n");
    for (key, builds) in series {
        let slug = escape(&key.slug());
        let name = escape(&key.to_string());
        let _ = write!(
            h,
            "<figure id=\"{slug}\">\n<h2>{name}</h2>\n\
             <img src=\"{slug}.svg\" width=\"{}\" height=\"{}\" alt=\"boot time per build: {name}\">\n\
             <figcaption>{} build(s). <a href=\"{slug}.png\">PNG</a> \
             <a href=\"{slug}.svg\">SVG</a></figcaption>\n</figure>\n",
            SIZE.0,
            SIZE.1,
            builds.len()
        );
    }
    // Marks the page with how many plots loaded, and names any that did not: a page
    // copied without its images says so instead of showing empty frames.
    h.push_str(concat!(
        "<script>\nwindow.addEventListener('load', function () {\n",
        "  var ok = 0, bad = 0;\n",
        "  for (var i = 0; i < document.images.length; i++) {\n",
        "    var img = document.images[i];\n",
        "    if (img.complete && img.naturalWidth > 0) { ok++; } else {\n",
        "      bad++;\n",
        "      var p = document.createElement('p');\n",
        "      p.className = 'missing';\n",
        "      p.textContent = 'plot missing: ' + img.getAttribute('src');\n",
        "      img.parentNode.insertBefore(p, img);\n",
        "    }\n  }\n",
        "  document.body.setAttribute('data-plots-loaded', ok);\n",
        "  document.body.setAttribute('data-plots-failed', bad);\n",
        "});\n</script>\n</body>\n</html>\n"
    ));
    h
}

fn verdict_cell(v: &Verdict) -> String {
    match v {
        Verdict::Ok { ratio, .. } => format!("ok ({ratio:.2}&times; baseline)"),
        Verdict::Regression {
            ratio,
            last_good,
            first_bad,
            ..
        } => {
            let r = ratio
                .map(|r| format!("{r:.2}&times; baseline"))
                .unwrap_or_else(|| "every run timed out".into());
            format!(
                "<strong>REGRESSION</strong> ({r}; first bad {}, last good {})",
                escape(first_bad),
                escape(last_good.as_deref().unwrap_or("none"))
            )
        }
        Verdict::NotEnoughHistory { .. } => "not enough history".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::series;
    use crate::history::tests::bench_of;

    #[test]
    fn the_bundled_font_parses() {
        assert!(plotters::style::register_font("test-font", FontStyle::Normal, FONT).is_ok());
    }

    #[test]
    fn odd_series_still_plot() {
        // One build only; and a series whose newest build never finished a run.
        let single = bench_of("only", "20241003", "t3.micro", &[12.0]);
        let mut broken = bench_of("broken", "20241010", "c5.xlarge", &[30.0, 31.0]);
        for r in &mut broken.runs {
            r.status = crate::bench::RunStatus::TimedOut(Phase::RunningToClosed);
            r.phases = crate::bench::Phases([Some(1.0), Some(5.0), None, None]);
        }
        let fine = bench_of("fine", "20241003", "c5.xlarge", &[25.0, 26.0]);
        let s = series(&[single, fine, broken]);
        let dir = tempfile::tempdir().unwrap();
        let out = write_report(&s, dir.path(), &CheckOptions::default(), "test").unwrap();
        assert_eq!(out.series.len(), 2);
        for f in &out.series {
            assert!(std::fs::metadata(&f.png).unwrap().len() > 1000, "{f:?}");
            let svg = std::fs::read_to_string(&f.svg).unwrap();
            assert!(svg.starts_with("<svg"), "{}", &svg[..50]);
        }
        let svg = std::fs::read_to_string(&out.series[0].svg).unwrap();
        assert!(
            svg.contains("no run finished"),
            "the timed-out build is marked"
        );
        let html = std::fs::read_to_string(&out.index).unwrap();
        assert!(html.contains("every run timed out"), "{html}");
        // The generator page is written beside the index, which links it.
        assert_eq!(out.userdata_page, dir.path().join("userdata.html"));
        let page = std::fs::read_to_string(&out.userdata_page).unwrap();
        assert_eq!(page, crate::userdata::page::page_html());
        assert!(html.contains("<a href=\"userdata.html\""), "{html}");
        assert!(matches!(
            write_report(&[], dir.path(), &CheckOptions::default(), "test"),
            Err(ReportError::Empty)
        ));
    }

    #[test]
    fn html_escapes_and_lists_every_series() {
        let mut b = bench_of("x<y>", "20241003", "c5.xlarge", &[10.0]);
        b.build.flavour = Some("a&b".into());
        let s = series(&[b]);
        let checks = check_all(&s, &CheckOptions::default());
        let html = index_html(&s, &checks, &CheckOptions::default(), "now");
        assert!(html.contains("x&lt;y&gt;"), "{html}");
        assert!(html.contains("a&amp;b"));
        assert!(!html.contains("x<y>"));
        assert!(html.contains(&format!("src=\"{}.svg\"", escape(&s[0].0.slug()))));
        assert!(
            !html.contains("http"),
            "the page must not reach the network"
        );
    }
}
