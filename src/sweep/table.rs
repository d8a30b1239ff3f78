//! A sweep's results as a table: one row per grid point with its seeds folded together (mean ±
//! standard deviation), rendered for the page, as CSV and as Markdown.
use super::recipes::{Recipe, PAPER_SOURCE};
use super::{label_of, Point};
use crate::config::settings::value_text;
use crate::db::runs::RunState;
use serde::{Deserialize, Serialize};

/// What one member run has given so far.
#[derive(Debug, Clone, Serialize)]
pub struct MemberResult {
    pub position: usize,
    pub values: Point,
    pub run_id: i64,
    pub state: RunState,
    pub error: Option<String>,
    /// K, the negatives per query (`RunConfig::negatives`).
    pub negatives: i64,
    /// kNN top-1 in percent, as the runs store it.
    pub best_knn: Option<f64>,
    pub last_knn: Option<f64>,
    /// The latest completed linear probe of the run's checkpoints.
    pub linear_top1: Option<f64>,
}

impl MemberResult {
    /// "completed", "failed: collapsed", …: a failure names its kind, since in a sweep a
    /// failure is a result (m = 0 collapses).
    pub fn outcome(&self) -> String {
        match (self.state, self.error.as_deref()) {
            (RunState::Failed, Some(e)) if e.contains("collapsed") => "failed: collapsed".into(),
            (RunState::Failed, Some(e)) if e.contains("diverged") => "failed: diverged".into(),
            (state, _) => state.as_str().into(),
        }
    }
}

/// Mean and sample standard deviation of the values a row's members have.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Stat {
    pub mean: f64,
    /// 0 for a single value.
    pub spread: f64,
    pub n: usize,
}

impl Stat {
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Stat> {
        let v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        let n = v.len();
        let mean = v.iter().sum::<f64>() / n as f64;
        let spread = if n > 1 {
            (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
        } else {
            0.0
        };
        Some(Stat { mean, spread, n })
    }

    /// "61.2 ± 0.4" (percent, one decimal), "61.2" for one value.
    pub fn text(stat: Option<Stat>) -> String {
        match stat {
            None => "—".into(),
            Some(s) if s.n > 1 => format!("{:.1} ± {:.1}", s.mean, s.spread),
            Some(s) => format!("{:.1}", s.mean),
        }
    }
}

/// One grid point with its seeds.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// The varied fields' values but the seed.
    pub values: Point,
    pub label: String,
    pub negatives: i64,
    pub run_ids: Vec<i64>,
    /// The members' outcomes, counted: "2 completed, 1 failed: collapsed".
    pub outcome: String,
    pub best_knn: Option<Stat>,
    pub final_knn: Option<Stat>,
    pub linear_top1: Option<Stat>,
    /// The paper's figure for this point, when it reports one.
    pub paper: Option<&'static str>,
}

/// The rows of `members` (in grid order), seeds folded.
pub fn rows(members: &[MemberResult], recipe: Option<&Recipe>) -> Vec<Row> {
    let mut rows: Vec<(Point, Vec<&MemberResult>)> = Vec::new();
    for m in members {
        let key: Point = m
            .values
            .iter()
            .filter(|(k, _)| k != "seed")
            .cloned()
            .collect();
        match rows.iter_mut().find(|(k, _)| *k == key) {
            Some((_, list)) => list.push(m),
            None => rows.push((key, vec![m])),
        }
    }
    rows.into_iter()
        .map(|(values, list)| {
            let mut outcomes: Vec<(String, usize)> = Vec::new();
            for m in &list {
                let o = m.outcome();
                match outcomes.iter_mut().find(|(name, _)| *name == o) {
                    Some((_, n)) => *n += 1,
                    None => outcomes.push((o, 1)),
                }
            }
            let outcome = if list.len() == 1 {
                outcomes[0].0.clone()
            } else {
                outcomes
                    .iter()
                    .map(|(name, n)| format!("{n} {name}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let percent =
                |f: fn(&MemberResult) -> Option<f64>| Stat::of(list.iter().filter_map(|m| f(m)));
            Row {
                label: if values.is_empty() {
                    "base".into()
                } else {
                    label_of(&values)
                },
                paper: recipe.and_then(|r| r.figure(&values)),
                values,
                negatives: list[0].negatives,
                run_ids: list.iter().map(|m| m.run_id).collect(),
                outcome,
                best_knn: percent(|m| m.best_knn),
                final_knn: percent(|m| m.last_knn),
                linear_top1: percent(|m| m.linear_top1),
            }
        })
        .collect()
}

/// The table's columns after the varied fields.
const COLUMNS: [&str; 6] = [
    "K",
    "runs",
    "state",
    "best kNN %",
    "final kNN %",
    "linear top-1 %",
];

fn cells(row: &Row) -> Vec<String> {
    vec![
        row.negatives.to_string(),
        row.run_ids
            .iter()
            .map(|id| id.to_string())
            .collect::<Vec<_>>()
            .join(" "),
        row.outcome.clone(),
        Stat::text(row.best_knn),
        Stat::text(row.final_knn),
        Stat::text(row.linear_top1),
    ]
}

/// Fields a table shows: the varied ones but the seed, which is folded.
fn shown_fields(fields: &[String]) -> Vec<&str> {
    fields
        .iter()
        .map(String::as_str)
        .filter(|f| *f != "seed")
        .collect()
}

fn value_of(row: &Row, field: &str) -> String {
    row.values
        .iter()
        .find(|(k, _)| k == field)
        .map(|(_, v)| value_text(v))
        .unwrap_or_default()
}

/// The table as Markdown, with the paper's column (and its source) when the sweep is a recipe.
pub fn markdown(rows: &[Row], fields: &[String], recipe: Option<&Recipe>) -> String {
    let fields = shown_fields(fields);
    let mut header: Vec<String> = fields.iter().map(|f| f.to_string()).collect();
    header.extend(COLUMNS.iter().map(|c| c.to_string()));
    if recipe.is_some() {
        header.push("paper top-1 %".into());
    }
    let mut out = format!("| {} |\n", header.join(" | "));
    out += &format!("|{}\n", " --- |".repeat(header.len()));
    for row in rows {
        let mut line: Vec<String> = fields.iter().map(|f| value_of(row, f)).collect();
        line.extend(cells(row));
        if recipe.is_some() {
            line.push(row.paper.unwrap_or("—").to_string());
        }
        let line: Vec<String> = line.iter().map(|c| c.replace('|', "\\|")).collect();
        out += &format!("| {} |\n", line.join(" | "));
    }
    if recipe.is_some() {
        out += &format!("\nThe paper's column: {PAPER_SOURCE}.\n");
    }
    out
}

/// The table as CSV (RFC 4180 quoting), numbers unformatted: mean and spread in their own
/// columns.
pub fn csv(rows: &[Row], fields: &[String], recipe: Option<&Recipe>) -> String {
    let fields = shown_fields(fields);
    let mut header: Vec<String> = fields.iter().map(|f| f.to_string()).collect();
    header.extend(
        [
            "K",
            "run_ids",
            "state",
            "seeds",
            "best_knn_mean",
            "best_knn_sd",
            "final_knn_mean",
            "final_knn_sd",
            "linear_top1_mean",
            "linear_top1_sd",
        ]
        .map(String::from),
    );
    if recipe.is_some() {
        header.push("paper_top1".into());
    }
    let mut out = csv_line(&header);
    let num =
        |s: Option<Stat>, f: fn(Stat) -> f64| s.map(|s| format!("{:.4}", f(s))).unwrap_or_default();
    for row in rows {
        let mut line: Vec<String> = fields.iter().map(|f| value_of(row, f)).collect();
        line.push(row.negatives.to_string());
        line.push(
            row.run_ids
                .iter()
                .map(|id| id.to_string())
                .collect::<Vec<_>>()
                .join(" "),
        );
        line.push(row.outcome.clone());
        line.push(row.run_ids.len().to_string());
        for stat in [row.best_knn, row.final_knn, row.linear_top1] {
            line.push(num(stat, |s| s.mean));
            line.push(num(stat, |s| s.spread));
        }
        if recipe.is_some() {
            line.push(row.paper.unwrap_or_default().to_string());
        }
        out += &csv_line(&line);
    }
    out
}

fn csv_line(cells: &[String]) -> String {
    let quoted: Vec<String> = cells
        .iter()
        .map(|c| {
            if c.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", c.replace('"', "\"\""))
            } else {
                c.clone()
            }
        })
        .collect();
    format!("{}\r\n", quoted.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn member(
        position: usize,
        m: f64,
        seed: u64,
        state: RunState,
        knn: Option<f64>,
    ) -> MemberResult {
        MemberResult {
            position,
            values: vec![("momentum".into(), json!(m)), ("seed".into(), json!(seed))],
            run_id: position as i64 + 10,
            state,
            error: (state == RunState::Failed)
                .then(|| "the representation collapsed: at step 40 …".to_string()),
            negatives: 1024,
            best_knn: knn,
            last_knn: knn.map(|k| k - 1.0),
            linear_top1: None,
        }
    }

    #[test]
    fn seeds_fold_into_mean_and_spread_and_failures_are_results() {
        let members = [
            member(0, 0.0, 0, RunState::Failed, Some(20.0)),
            member(1, 0.0, 1, RunState::Failed, None),
            member(2, 0.99, 0, RunState::Completed, Some(50.0)),
            member(3, 0.99, 1, RunState::Completed, Some(54.0)),
        ];
        let recipe = super::super::recipes::find("momentum");
        let rows = rows(&members, recipe);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].outcome, "2 failed: collapsed");
        assert_eq!(rows[0].paper, Some("fails"));
        assert_eq!(rows[1].run_ids, vec![12, 13]);
        let best = rows[1].best_knn.unwrap();
        assert!((best.mean - 52.0).abs() < 1e-9 && (best.spread - 8f64.sqrt()).abs() < 1e-9);
        assert_eq!(Stat::text(rows[1].best_knn), "52.0 ± 2.8");
        assert_eq!(Stat::text(rows[0].best_knn), "20.0");
        let fields = vec!["momentum".to_string(), "seed".to_string()];
        let md = markdown(&rows, &fields, recipe);
        assert_eq!(
            md.lines().take(4).collect::<Vec<_>>(),
            vec![
                "| momentum | K | runs | state | best kNN % | final kNN % | linear top-1 % | paper top-1 % |",
                "| --- | --- | --- | --- | --- | --- | --- | --- |",
                "| 0.0 | 1024 | 10 11 | 2 failed: collapsed | 20.0 | 19.0 | — | fails |",
                "| 0.99 | 1024 | 12 13 | 2 completed | 52.0 ± 2.8 | 51.0 ± 2.8 | — | 57.8 |",
            ]
        );
        let csv = csv(&rows, &fields, recipe);
        let lines: Vec<&str> = csv.split("\r\n").collect();
        assert_eq!(lines[0], "momentum,K,run_ids,state,seeds,best_knn_mean,best_knn_sd,final_knn_mean,final_knn_sd,linear_top1_mean,linear_top1_sd,paper_top1");
        assert_eq!(
            lines[2],
            "0.99,1024,12 13,2 completed,2,52.0000,2.8284,51.0000,2.8284,,,57.8"
        );
    }

    #[test]
    fn csv_cells_with_commas_or_quotes_are_quoted() {
        assert_eq!(
            csv_line(&["a,b".into(), "say \"hi\"".into(), "c".into()]),
            "\"a,b\",\"say \"\"hi\"\"\",c\r\n"
        );
    }
}
