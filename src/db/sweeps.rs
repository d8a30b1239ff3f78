//! The `sweeps` and `sweep_members` tables: a sweep, its grid, and which run each grid point is.
//! A sweep's state is read from its members' runs, never stored twice.
use super::runs::{self, RunState};
use crate::config::RunConfig;
use crate::sweep::table::MemberResult;
use crate::sweep::{Expanded, Point, SweepSpec, SweepState};
use anyhow::Context;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sqlx::{FromRow, SqlitePool};

#[derive(Debug, Clone, FromRow)]
struct SweepRow {
    id: i64,
    name: String,
    recipe: Option<String>,
    spec: String,
    fields: String,
    skipped: String,
    created_at: String,
}

/// A sweep as lists and pages show it.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct SweepSummary {
    pub id: i64,
    pub name: String,
    pub recipe: Option<String>,
    /// From the members: running while one trains, queued while one waits, then interrupted or
    /// cancelled when one is, finished otherwise.
    pub state: SweepState,
    pub members: usize,
    /// Members in each run state, e.g. {"completed": 3, "failed": 1}.
    pub counts: std::collections::BTreeMap<String, usize>,
    /// Mean progress of the members, in [0, 1].
    pub progress: f64,
    /// The varied fields in order.
    pub fields: Vec<String>,
    /// Grid points a recipe left out, with the reason.
    pub skipped: Vec<String>,
    pub created_at: String,
}

/// One member with its run's summary.
#[derive(Debug, Clone)]
pub struct MemberRow {
    pub position: usize,
    pub values: Point,
    pub run: runs::RunSummary,
    pub config: RunConfig,
}

/// Stores the sweep and every member as a queued run, in one transaction. Returns the sweep's
/// id and the members' run ids in grid order.
pub async fn insert(
    pool: &SqlitePool,
    spec: &SweepSpec,
    expanded: &Expanded,
    device: &str,
) -> anyhow::Result<(i64, Vec<i64>)> {
    let mut tx = pool.begin().await?;
    let id = sqlx::query(
        "INSERT INTO sweeps (name, recipe, spec, fields, skipped, created_at) \
         VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(&expanded.name)
    .bind(expanded.recipe.map(|r| r.name))
    .bind(serde_json::to_string(spec)?)
    .bind(serde_json::to_string(&expanded.fields)?)
    .bind(serde_json::to_string(&expanded.skipped)?)
    .bind(super::now())
    .execute(&mut *tx)
    .await
    .context("cannot store the sweep")?
    .last_insert_rowid();
    let mut run_ids = Vec::new();
    for m in &expanded.members {
        let run_id = runs::insert_in(&mut tx, &m.config, device).await?;
        sqlx::query(
            "INSERT INTO sweep_members (sweep_id, position, run_id, vals) VALUES (?, ?, ?, ?)",
        )
        .bind(id)
        .bind(m.position as i64)
        .bind(run_id)
        .bind(serde_json::to_string(&m.values)?)
        .execute(&mut *tx)
        .await
        .context("cannot store the sweep's members")?;
        run_ids.push(run_id);
    }
    tx.commit().await?;
    Ok((id, run_ids))
}

/// Every sweep, newest first.
pub async fn list(pool: &SqlitePool) -> anyhow::Result<Vec<SweepSummary>> {
    let rows: Vec<SweepRow> = sqlx::query_as(
        "SELECT id, name, recipe, spec, fields, skipped, created_at FROM sweeps ORDER BY id DESC",
    )
    .fetch_all(pool)
    .await
    .context("cannot list the sweeps")?;
    let mut out = Vec::new();
    for row in rows {
        let members = members(pool, row.id).await?;
        out.push(summary(&row, &members));
    }
    Ok(out)
}

/// A sweep and its members in grid order.
pub async fn get(
    pool: &SqlitePool,
    id: i64,
) -> anyhow::Result<Option<(SweepSummary, Vec<MemberRow>, SweepSpec)>> {
    let row: Option<SweepRow> = sqlx::query_as(
        "SELECT id, name, recipe, spec, fields, skipped, created_at FROM sweeps WHERE id = ?",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
    .with_context(|| format!("cannot read sweep {id}"))?;
    let Some(row) = row else { return Ok(None) };
    let members = members(pool, id).await?;
    let spec: SweepSpec = serde_json::from_str(&row.spec)
        .with_context(|| format!("the stored spec of sweep {id} is unreadable"))?;
    Ok(Some((summary(&row, &members), members, spec)))
}

async fn members(pool: &SqlitePool, sweep_id: i64) -> anyhow::Result<Vec<MemberRow>> {
    let links: Vec<(i64, i64, String)> = sqlx::query_as(
        "SELECT position, run_id, vals FROM sweep_members WHERE sweep_id = ? ORDER BY position",
    )
    .bind(sweep_id)
    .fetch_all(pool)
    .await
    .with_context(|| format!("cannot read the members of sweep {sweep_id}"))?;
    let mut out = Vec::new();
    for (position, run_id, vals) in links {
        let Some(row) = runs::get_row(pool, run_id).await? else {
            continue;
        };
        out.push(MemberRow {
            position: position as usize,
            values: serde_json::from_str(&vals).unwrap_or_default(),
            config: row.config()?,
            run: row.summary(),
        });
    }
    Ok(out)
}

fn summary(row: &SweepRow, members: &[MemberRow]) -> SweepSummary {
    let states: Vec<RunState> = members.iter().map(|m| m.run.state).collect();
    let mut counts = std::collections::BTreeMap::new();
    for s in &states {
        *counts.entry(s.as_str().to_string()).or_insert(0) += 1;
    }
    let progress = if members.is_empty() {
        0.0
    } else {
        members.iter().map(|m| m.run.progress).sum::<f64>() / members.len() as f64
    };
    SweepSummary {
        id: row.id,
        name: row.name.clone(),
        recipe: row.recipe.clone(),
        state: SweepState::of(&states),
        members: members.len(),
        counts,
        progress,
        fields: serde_json::from_str(&row.fields).unwrap_or_default(),
        skipped: serde_json::from_str(&row.skipped).unwrap_or_default(),
        created_at: row.created_at.clone(),
    }
}

/// The members' results for the table: run state and kNN, and the latest completed linear probe
/// of each run.
pub async fn results(
    pool: &SqlitePool,
    members: &[MemberRow],
) -> anyhow::Result<Vec<MemberResult>> {
    let mut out = Vec::new();
    for m in members {
        let linear: Option<(f64,)> = sqlx::query_as(
            "SELECT top1 FROM evals WHERE run_id = ? AND method = 'linear' AND state = 'completed' \
             AND top1 IS NOT NULL ORDER BY id DESC LIMIT 1",
        )
        .bind(m.run.id)
        .fetch_optional(pool)
        .await
        .context("cannot read the members' evaluations")?;
        out.push(MemberResult {
            position: m.position,
            values: m.values.clone(),
            run_id: m.run.id,
            state: m.run.state,
            error: m.run.error.clone(),
            negatives: m.config.negatives(),
            best_knn: m.run.best_knn,
            last_knn: m.run.last_knn,
            linear_top1: linear.map(|(t,)| t),
        });
    }
    Ok(out)
}

/// Deletes the sweep's row (its members' links go with it; the runs are deleted by the caller).
pub async fn delete(pool: &SqlitePool, id: i64) -> anyhow::Result<bool> {
    let done = sqlx::query("DELETE FROM sweeps WHERE id = ?")
        .bind(id)
        .execute(pool)
        .await
        .with_context(|| format!("cannot delete sweep {id}"))?;
    Ok(done.rows_affected() == 1)
}

/// The sweep a run belongs to, if any.
pub async fn of_run(pool: &SqlitePool, run_id: i64) -> anyhow::Result<Option<i64>> {
    let row: Option<(i64,)> = sqlx::query_as("SELECT sweep_id FROM sweep_members WHERE run_id = ?")
        .bind(run_id)
        .fetch_optional(pool)
        .await
        .context("cannot read the run's sweep")?;
    Ok(row.map(|(id,)| id))
}
