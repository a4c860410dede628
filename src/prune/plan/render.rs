//! Rendering: the plan as text, per region and series, one line per image and snapshot.
//! The JSON form is the same types serialised (`--output json`).

use super::{Action, Plan, Recovery};

impl Action {
    /// The word in the text plan.
    fn label(self) -> &'static str {
        match self {
            Action::Keep => "keep",
            Action::Guarded => "guarded",
            Action::Delete => "delete",
            Action::Disable => "disable",
            Action::Unprotect => "unprotect",
        }
    }
}

impl Plan {
    /// The plan as text: per region and series, one line per image.
    pub fn render(&self) -> String {
        let mut out = format!(
            "prune plan: {}; {}\npolicy: {}\n",
            self.selection,
            self.series_from,
            self.policy.join("; ")
        );
        for r in &self.regions {
            out.push_str(&format!("{}\n", r.region));
            if let Some(e) = &r.error {
                out.push_str(&format!("  NOT LOOKED AT: {e}\n"));
                continue;
            }
            out.push_str(&format!("  recycle bin: {}\n", r.recycle_bin));
            if r.series.is_empty() && r.orphans.is_empty() {
                out.push_str("  nothing selected\n");
            }
            for s in &r.series {
                out.push_str(&format!("  {}  [{}]\n", s.series, s.rule));
                for i in &s.images {
                    let mut why = if i.guards.is_empty() {
                        i.reason.clone()
                    } else {
                        let g: Vec<String> = i.guards.iter().map(|g| g.to_string()).collect();
                        format!("{}; kept: {}", i.reason, g.join("; "))
                    };
                    if let Some(r) = &i.recovery {
                        why.push_str(&format!("; {}", r.note));
                    }
                    out.push_str(&format!(
                        "    {:<8} {:<21} {}  {why}\n",
                        i.action.label(),
                        i.image_id,
                        i.built
                    ));
                    for sn in &i.snapshots {
                        out.push_str(&format!(
                            "      {:<8} {:<22} {:>8} GiB  {}{}\n",
                            sn.action.label(),
                            sn.snapshot_id,
                            fmt_gib(sn.gib),
                            sn.reason,
                            recovery_suffix(&sn.recovery)
                        ));
                    }
                }
            }
            if !r.orphans.is_empty() {
                out.push_str("  orphaned snapshots\n");
                for sn in &r.orphans {
                    out.push_str(&format!(
                        "    {:<8} {:<22} {:>8} GiB  {}{}\n",
                        sn.action.label(),
                        sn.snapshot_id,
                        fmt_gib(sn.gib),
                        sn.reason,
                        recovery_suffix(&sn.recovery)
                    ));
                }
            }
            if r.images_to_disable + r.images_to_unprotect > 0 {
                out.push_str(&format!(
                    "  {}: disable {} image(s); disable the protection of {} image(s) (deleted by a later run)\n",
                    r.region, r.images_to_disable, r.images_to_unprotect
                ));
            }
            out.push_str(&format!(
                "  {}: delete {} image(s) and {} snapshot(s), {} GiB, about ${:.2}/month\n",
                r.region,
                r.images_to_delete,
                r.snapshots_to_delete,
                fmt_gib(r.gib_freed),
                r.usd_per_month
            ));
        }
        out.push_str(&format!(
            "total: delete {} image(s) and {} snapshot(s) in {} region(s), freeing {} GiB, \
             about ${:.2}/month at ${}/GB-month ({})",
            self.images_to_delete,
            self.snapshots_to_delete,
            self.regions.len(),
            fmt_gib(self.gib_freed),
            self.usd_per_month,
            self.price_per_gb_month,
            self.estimate
        ));
        if self.images_to_disable + self.images_to_unprotect > 0 {
            out.push_str(&format!(
                "\nand disable {} image(s), disable the deregistration protection of {} image(s)",
                self.images_to_disable, self.images_to_unprotect
            ));
        }
        if self.gib_freed_upper_bound {
            out.push_str("\nsome of the GiB freed are upper bounds (see the note above)");
        }
        if let Some(note) = self.lineage {
            out.push_str(&format!("\n{note}"));
        }
        if let Some(note) = self.launches {
            out.push_str(&format!("\n{note}"));
        }
        let failed = self.failed_regions().len();
        if failed > 0 {
            out.push_str(&format!("\n{failed} region(s) could not be looked at"));
        }
        out
    }
}

fn recovery_suffix(r: &Option<Recovery>) -> String {
    r.as_ref()
        .map(|r| format!("; {}", r.note))
        .unwrap_or_default()
}

/// GiB as the plan writes them: whole numbers bare, otherwise two decimals.
fn fmt_gib(x: f64) -> String {
    if x.fract() == 0.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::super::{Plan, plan_region};

    #[test]
    fn the_text_plan_says_what_and_why() {
        let mut imgs = weekly("A", 3);
        imgs[2].public = true;
        let p = plan_region(&inventory(imgs), &opts(1));
        let plan = Plan::new(vec![p], &opts(1));
        let text = plan.render();
        for needle in [
            "us-east-1\n",
            "MyOS 15.0-A-{date} base  [keep 1, min-age 2d]",
            "keep     ami-A0",
            "delete   ami-A1",
            "older than the newest",
            "guarded  ami-A2",
            "kept: public (pass --include-public",
            "delete   snap-A1",
            "total: delete 1 image(s) and 1 snapshot(s) in 1 region(s), freeing 10 GiB, about $0.50/month",
            "an estimate",
        ] {
            assert!(text.contains(needle), "`{needle}` not in:\n{text}");
        }
    }
}
