//! The `metrics` table: one value per (run, name, step), written in batches by the recorder and
//! read back as downsampled series for charts.
use crate::train::events::MetricRecord;
use anyhow::Context;
use sqlx::{SqliteConnection, SqlitePool};
use std::collections::BTreeMap;

/// Writes every value of `record` (a resumed run may write a step again: the newer value wins).
pub async fn insert(
    conn: &mut SqliteConnection,
    run_id: i64,
    record: &MetricRecord,
) -> anyhow::Result<()> {
    for (name, value) in &record.values {
        // SQLite has no NaN/Inf: a non-finite value is left out rather than stored as NULL.
        if !value.is_finite() {
            continue;
        }
        sqlx::query(
            "INSERT OR REPLACE INTO metrics (run_id, step, epoch, name, value) \
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(run_id)
        .bind(record.step)
        .bind(record.epoch)
        .bind(name)
        .bind(value)
        .execute(&mut *conn)
        .await
        .with_context(|| format!("cannot store metric {name} of run {run_id}"))?;
    }
    Ok(())
}

/// Names of the metrics run `run_id` has recorded.
pub async fn names(pool: &SqlitePool, run_id: i64) -> anyhow::Result<Vec<String>> {
    let rows: Vec<(String,)> =
        sqlx::query_as("SELECT DISTINCT name FROM metrics WHERE run_id = ? ORDER BY name")
            .bind(run_id)
            .fetch_all(pool)
            .await?;
    Ok(rows.into_iter().map(|(n,)| n).collect())
}

/// Series of `names` after `since_step` (exclusive), each at most `max_points` points long.
pub async fn series(
    pool: &SqlitePool,
    run_id: i64,
    names: &[String],
    since_step: i64,
    max_points: usize,
) -> anyhow::Result<BTreeMap<String, Vec<(i64, f64)>>> {
    let mut out = BTreeMap::new();
    for name in names {
        let points: Vec<(i64, f64)> = sqlx::query_as(
            "SELECT step, value FROM metrics WHERE run_id = ? AND name = ? AND step > ? \
             ORDER BY step",
        )
        .bind(run_id)
        .bind(name)
        .bind(since_step)
        .fetch_all(pool)
        .await
        .with_context(|| format!("cannot read metric {name} of run {run_id}"))?;
        out.insert(name.clone(), downsample_min_max(&points, max_points));
    }
    Ok(out)
}

/// Shortens a series to at most `max_points` points (at least 2) while keeping its shape: the
/// steps are split into max_points / 2 buckets of equal point count and each bucket keeps its
/// minimum and maximum, in step order, so spikes (a diverging loss) survive.
/// The newest value of metric `name` of a run, if it has one.
pub async fn latest(pool: &SqlitePool, run_id: i64, name: &str) -> anyhow::Result<Option<f64>> {
    sqlx::query_scalar(
        "SELECT value FROM metrics WHERE run_id = ? AND name = ? ORDER BY step DESC LIMIT 1",
    )
    .bind(run_id)
    .bind(name)
    .fetch_optional(pool)
    .await
    .with_context(|| format!("cannot read {name} of run {run_id}"))
}

pub fn downsample_min_max(points: &[(i64, f64)], max_points: usize) -> Vec<(i64, f64)> {
    let max_points = max_points.max(2);
    if points.len() <= max_points {
        return points.to_vec();
    }
    let buckets = max_points / 2;
    let mut out = Vec::with_capacity(buckets * 2);
    for b in 0..buckets {
        let start = b * points.len() / buckets;
        let end = (b + 1) * points.len() / buckets;
        let bucket = &points[start..end];
        if bucket.is_empty() {
            continue;
        }
        let (mut lo, mut hi) = (0, 0);
        for (i, p) in bucket.iter().enumerate() {
            if p.1 < bucket[lo].1 {
                lo = i;
            }
            if p.1 > bucket[hi].1 {
                hi = i;
            }
        }
        if lo == hi {
            out.push(bucket[lo]);
        } else {
            let (first, second) = if lo < hi { (lo, hi) } else { (hi, lo) };
            out.push(bucket[first]);
            out.push(bucket[second]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::downsample_min_max;

    #[test]
    fn short_series_are_untouched() {
        let pts = vec![(1, 1.0), (2, 5.0), (3, 2.0)];
        assert_eq!(downsample_min_max(&pts, 10), pts);
    }

    #[test]
    fn buckets_keep_min_and_max_in_step_order() {
        // 8 points into 4 → 2 buckets of 4.
        let pts = vec![
            (1, 3.0),
            (2, 9.0),
            (3, 1.0),
            (4, 4.0),
            (5, 5.0),
            (6, 0.5),
            (7, 7.0),
            (8, 6.0),
        ];
        assert_eq!(
            downsample_min_max(&pts, 4),
            vec![(2, 9.0), (3, 1.0), (6, 0.5), (7, 7.0)]
        );
    }

    #[test]
    fn a_spike_survives_heavy_downsampling() {
        let mut pts: Vec<(i64, f64)> = (1..=10_000).map(|s| (s, 1.0)).collect();
        pts[6_789].1 = 1e6;
        let out = downsample_min_max(&pts, 100);
        assert!(out.len() <= 100);
        assert!(out.contains(&(6_790, 1e6)));
        assert_eq!(out.first().unwrap().0, 1);
    }
}
