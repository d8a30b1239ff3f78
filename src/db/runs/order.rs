//! Which runs a list shows and in what order, as SQL (the runs page and the JSON API alike).
use super::RunState;
use crate::config::Choice;

/// What a run list is ordered by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, strum::IntoStaticStr, strum::VariantArray)]
#[strum(serialize_all = "snake_case")]
pub enum SortKey {
    #[default]
    Created,
    Name,
    Preset,
    /// Running, queued, interrupted, then finished runs.
    State,
    Progress,
    Loss,
    /// Best kNN accuracy.
    Knn,
    /// Images per second.
    Speed,
    Started,
    Finished,
}

impl SortKey {
    /// The SQL expression, and whether runs without a value exist (they sort last either way).
    fn expression(self) -> (&'static str, bool) {
        match self {
            SortKey::Created => ("id", false),
            // Runs created without a name are stored as "run-N".
            SortKey::Name => ("name COLLATE NOCASE", false),
            SortKey::Preset => ("preset", false),
            SortKey::State => (
                "CASE state WHEN 'running' THEN 0 WHEN 'queued' THEN 1 WHEN 'interrupted' THEN 2 \
                 ELSE 3 END",
                false,
            ),
            // As `RunRow::summary` computes `progress`.
            SortKey::Progress => (
                "CASE WHEN state = 'completed' THEN 1.0 WHEN total_steps > 0 \
                 THEN min(1.0, max(0.0, CAST(step AS REAL) / total_steps)) ELSE 0.0 END",
                false,
            ),
            SortKey::Loss => ("last_loss", true),
            SortKey::Knn => ("best_knn", true),
            SortKey::Speed => ("images_per_sec", true),
            SortKey::Started => ("started_at", true),
            SortKey::Finished => ("finished_at", true),
        }
    }
}

/// The order of a run list: a key and a direction, named "knn_desc", "name_asc" …; "state"
/// alone is "state_asc". Ties: the newer run first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunSort {
    pub key: SortKey,
    pub descending: bool,
}

impl Default for RunSort {
    fn default() -> Self {
        RunSort {
            key: SortKey::Created,
            descending: true,
        }
    }
}

impl RunSort {
    pub fn parse(s: &str) -> Option<RunSort> {
        if s == "state" {
            return Some(RunSort {
                key: SortKey::State,
                descending: false,
            });
        }
        let (key, dir) = s.rsplit_once('_')?;
        let descending = match dir {
            "asc" => false,
            "desc" => true,
            _ => return None,
        };
        Some(RunSort {
            key: SortKey::parse(key)?,
            descending,
        })
    }

    /// "knn_desc".
    pub fn name(self) -> String {
        let dir = if self.descending { "desc" } else { "asc" };
        format!("{}_{dir}", self.key.name())
    }

    /// Every name `parse` accepts.
    pub fn names() -> Vec<String> {
        let mut names: Vec<String> = SortKey::all()
            .iter()
            .flat_map(|&key| [false, true].map(|descending| RunSort { key, descending }.name()))
            .collect();
        names.push("state".into());
        names
    }

    pub(super) fn order_by(self) -> String {
        let (expr, nullable) = self.key.expression();
        let dir = if self.descending { "DESC" } else { "ASC" };
        let nulls_last = if nullable {
            format!("{expr} IS NULL, ")
        } else {
            String::new()
        };
        format!("{nulls_last}{expr} {dir}, id DESC")
    }
}

/// Which runs a list shows.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub state: Option<RunState>,
    pub preset: Option<String>,
    /// Case-insensitive substring of the name.
    pub search: Option<String>,
    /// Only these runs (the compare page).
    pub ids: Option<Vec<i64>>,
    pub sort: RunSort,
    /// At most this many (newest by the sort); None = all.
    pub limit: Option<i64>,
}
