//! `ec2ami disable`, `enable` and `restore`.

use clap::Args;

use super::{Failure, GlobalArgs, connect};
use ec2ami::ami::{self, retire};
use ec2ami::prune::restore;
use ec2ami::state::last_prune;

#[derive(Debug, Args)]
pub struct DisableArgs {
    /// AMIs (in --region); their copies in the other regions are disabled too.
    #[arg(required = true, value_name = "AMI_ID", value_parser = ec2ami::validate_input::ami_id)]
    image_ids: Vec<String>,
    /// Regions to look for copies in: `all` or a comma-separated list.
    #[arg(long, value_delimiter = ',', default_value = "all", value_parser = ec2ami::validate_input::region_or_all)]
    regions: Vec<String>,
    /// Disable them. Without it, prints what would be disabled and changes nothing.
    #[arg(long)]
    yes: bool,
}

#[derive(Debug, Args)]
pub struct EnableArgs {
    /// AMIs (in --region); their copies in the other regions are enabled too.
    #[arg(required = true, value_name = "AMI_ID", value_parser = ec2ami::validate_input::ami_id)]
    image_ids: Vec<String>,
    /// Regions to look for copies in: `all` or a comma-separated list.
    #[arg(long, value_delimiter = ',', default_value = "all", value_parser = ec2ami::validate_input::region_or_all)]
    regions: Vec<String>,
    /// Enable them and re-share them. Without it, prints what would change.
    #[arg(long)]
    yes: bool,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// AMIs to bring back (with the snapshots they map), looked for in --regions.
    #[arg(
        value_name = "AMI_ID",
        required_unless_present = "last_prune",
        conflicts_with = "last_prune",
        value_parser = ec2ami::validate_input::ami_id
    )]
    image_ids: Vec<String>,
    /// Bring back exactly what the last `prune --yes` deleted (its journalled report).
    #[arg(long)]
    last_prune: bool,
    /// Regions to look in (AMI_ID...): `all` or a comma-separated list.
    #[arg(long, value_delimiter = ',', default_value = "all", value_parser = ec2ami::validate_input::region_or_all)]
    regions: Vec<String>,
}

fn failures(items: &[retire::Retirement]) -> Result<(), Failure> {
    let failed = items.iter().filter(|r| r.error.is_some()).count();
    if failed == 0 {
        Ok(())
    } else {
        Err(Failure {
            message: format!("{failed} image(s) failed (see above)"),
            interrupted: false,
        })
    }
}

fn render(items: &[retire::Retirement], done: bool, hint: &str) -> String {
    let mut lines: Vec<String> = items.iter().map(|r| r.line(done)).collect();
    if !done {
        lines.push(hint.to_string());
    }
    lines.join("\n")
}

pub async fn disable(g: &GlobalArgs, a: &DisableArgs) -> Result<(), Failure> {
    let clients = connect(g).await?;
    let retry = g.retry();
    let regions = ami::resolve_regions(&clients, &a.regions, &retry).await?;
    let found = retire::find(&clients, &a.image_ids, &regions, &retry).await?;
    let plan = retire::plan_disable(&clients, &found, &retry).await?;
    if !a.yes {
        g.print(&plan, || {
            render(
                &plan,
                false,
                "nothing was changed: run again with --yes to disable them",
            )
        });
        return Ok(());
    }
    let db = g.state_db()?;
    let done = retire::disable(&clients, plan, Some(&db), &retry).await;
    g.print(&done, || render(&done, true, ""));
    failures(&done)
}

pub async fn enable(g: &GlobalArgs, a: &EnableArgs) -> Result<(), Failure> {
    let clients = connect(g).await?;
    let retry = g.retry();
    let regions = ami::resolve_regions(&clients, &a.regions, &retry).await?;
    let found = retire::find(&clients, &a.image_ids, &regions, &retry).await?;
    let state = g.state.clone().unwrap_or_else(ec2ami::state::default_path);
    let db = if state.exists() {
        Some(g.state_db()?)
    } else {
        tracing::warn!(
            "no state database at {}: no recorded sharing to restore",
            state.display()
        );
        None
    };
    let plan = retire::plan_enable(&clients, &found, db.as_ref(), &retry).await?;
    if !a.yes {
        g.print(&plan, || {
            render(
                &plan,
                false,
                "nothing was changed: run again with --yes to enable and re-share them",
            )
        });
        return Ok(());
    }
    let done = retire::enable(&clients, plan, &retry).await;
    g.print(&done, || render(&done, true, ""));
    failures(&done)
}

pub async fn restore(g: &GlobalArgs, a: &RestoreArgs) -> Result<(), Failure> {
    let retry = g.retry();
    let done = if a.last_prune {
        let state = g.state.clone().unwrap_or_else(ec2ami::state::default_path);
        if !state.exists() {
            return Err(Failure {
                message: format!(
                    "no state database at {}: no prune was journalled here",
                    state.display()
                ),
                interrupted: false,
            });
        }
        let Some(run) = last_prune(&g.state_db()?)? else {
            return Err(Failure {
                message: "no prune with --yes was journalled: nothing to restore".into(),
                interrupted: false,
            });
        };
        if run.deleted.is_empty() {
            tracing::info!("the last prune deleted nothing: nothing to restore");
        }
        let clients = connect(g).await?;
        restore::restore_items(&clients, &run.deleted, &retry).await
    } else {
        let clients = connect(g).await?;
        let regions = ami::resolve_regions(&clients, &a.regions, &retry).await?;
        let mut done = restore::restore_named(&clients, &a.image_ids, &regions, &retry).await;
        for id in &a.image_ids {
            if !done.iter().any(|r| &r.id == id) {
                done.push(restore::Restored {
                    region: regions.join(","),
                    kind: "image".into(),
                    id: id.clone(),
                    status: "not-in-bin",
                    detail: "in no region's Recycle Bin".into(),
                });
            }
        }
        done
    };
    g.print(&done, || {
        let mut lines: Vec<String> = done.iter().map(restore::Restored::line).collect();
        let n = |s: &str| done.iter().filter(|r| r.status == s).count();
        lines.push(format!(
            "restored {}; {} not in the Recycle Bin; {} failed",
            n("restored"),
            n("not-in-bin"),
            n("failed")
        ));
        lines.join("\n")
    });
    let missing = done.iter().filter(|r| r.status != "restored").count();
    if missing > 0 {
        return Err(Failure {
            message: format!("{missing} item(s) could not be restored (see above)"),
            interrupted: false,
        });
    }
    Ok(())
}
