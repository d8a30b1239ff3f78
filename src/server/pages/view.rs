//! A run as the pages show it, formatted from the one run summary (`db::runs::RunSummary`, the
//! same fields the scripts receive from /api/runs, so server-rendered and live values agree).
use super::format;
use crate::config::Choice;
use crate::db::runs::{RunState, RunSummary};

/// The name, or "run N" for runs started without one.
pub fn display_name(run: &RunSummary) -> String {
    if run.name.trim().is_empty() {
        format!("run {}", run.id)
    } else {
        run.name.clone()
    }
}

/// The states in which the scheduler accepts a resume (the run page's script shows its button
/// then).
pub fn resumable_states() -> Vec<&'static str> {
    RunState::all()
        .iter()
        .filter(|s| s.can_resume())
        .map(|s| s.as_str())
        .collect()
}

/// The states in which the scheduler accepts a cancel.
pub fn cancellable_states() -> Vec<&'static str> {
    RunState::all()
        .iter()
        .filter(|s| s.can_cancel())
        .map(|s| s.as_str())
        .collect()
}

/// Progress as text; static/app.js `progressText` writes the same.
pub fn progress_text(run: &RunSummary) -> String {
    let eta = (run.state == RunState::Running)
        .then_some(run.eta_seconds)
        .flatten();
    progress_line(
        run.progress,
        run.epoch,
        run.epochs,
        run.step,
        run.total_steps,
        eta,
    )
}

/// "25.0 % · epoch 2/4 · step 30/120 · ETA 1 min 35 s" for a run or an evaluation: the ETA only
/// when given (running jobs), the total steps once they are known.
pub fn progress_line(
    progress: f64,
    epoch: i64,
    epochs: i64,
    step: i64,
    total_steps: i64,
    eta_seconds: Option<f64>,
) -> String {
    let pct = (progress.clamp(0.0, 1.0) * 1000.0).round() / 10.0;
    let epoch = epoch.clamp(0, epochs.max(0));
    let steps = if total_steps > 0 {
        format!("{step}/{total_steps}")
    } else {
        step.to_string()
    };
    let mut text = format!("{pct:.1} % · epoch {epoch}/{epochs} · step {steps}");
    if let Some(eta) = eta_seconds.filter(|e| e.is_finite()) {
        text.push_str(&format!(" · ETA {}", format::duration(eta)));
    }
    text
}

/// Every field a template prints, already formatted.
pub struct RunView {
    pub id: i64,
    pub name: String,
    pub preset: String,
    pub dataset: String,
    pub state: String,
    pub device: String,
    pub error: String,
    pub progress: f64,
    pub progress_percent: String,
    pub progress_text: String,
    pub last_loss: String,
    pub best_knn: String,
    pub last_knn: String,
    pub images_per_sec: String,
    pub created_at: String,
    pub created_at_short: String,
    pub started_at: String,
    pub started_at_short: String,
    pub finished_at: String,
    pub finished_at_short: String,
}

impl RunView {
    pub fn new(run: &RunSummary) -> RunView {
        let time = |t: &Option<String>| t.clone().unwrap_or_default();
        let short = |t: &Option<String>| t.as_deref().map(format::short_time).unwrap_or_default();
        let progress = if run.progress.is_finite() {
            run.progress.clamp(0.0, 1.0)
        } else {
            0.0
        };
        RunView {
            id: run.id,
            name: display_name(run),
            preset: run.preset.clone(),
            dataset: run.dataset.clone(),
            state: run.state.to_string(),
            device: run.device.clone(),
            error: run.error.clone().unwrap_or_default(),
            progress,
            progress_percent: format!("{:.0}", progress * 100.0),
            progress_text: progress_text(run),
            last_loss: format::opt_num(run.last_loss),
            best_knn: format::opt_percent(run.best_knn),
            last_knn: format::opt_percent(run.last_knn),
            images_per_sec: format::opt_fixed(run.images_per_sec, 1),
            created_at: run.created_at.clone(),
            created_at_short: format::short_time(&run.created_at),
            started_at: time(&run.started_at),
            started_at_short: short(&run.started_at),
            finished_at: time(&run.finished_at),
            finished_at_short: short(&run.finished_at),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(state: RunState) -> RunSummary {
        RunSummary {
            id: 7,
            name: String::new(),
            preset: "cifar".into(),
            dataset: "synthetic".into(),
            state,
            device: "cpu".into(),
            error: None,
            created_at: "2026-01-02T03:04:05Z".into(),
            started_at: Some("2026-01-02T03:04:06Z".into()),
            finished_at: None,
            step: 30,
            epoch: 2,
            total_steps: 120,
            epochs: 4,
            progress: 0.25,
            eta_seconds: Some(95.0),
            last_loss: Some(6.123456),
            images_per_sec: Some(812.345),
            best_knn: Some(41.5),
            last_knn: None,
        }
    }

    #[test]
    fn a_running_run_shows_progress_and_eta() {
        let v = RunView::new(&record(RunState::Running));
        assert_eq!(v.name, "run 7");
        assert_eq!(
            v.progress_text,
            "25.0 % · epoch 2/4 · step 30/120 · ETA 1 min 35 s"
        );
        assert_eq!(v.last_loss, "6.123");
        assert_eq!(v.best_knn, "41.50 %");
        assert_eq!(v.last_knn, "—");
        assert_eq!(v.images_per_sec, "812.3");
        assert_eq!(v.started_at_short, "2026-01-02 03:04:06 UTC");
        assert_eq!(v.finished_at, "");
    }

    #[test]
    fn actions_follow_the_scheduler_rules() {
        assert_eq!(
            cancellable_states(),
            vec!["queued", "running", "interrupted"]
        );
        assert_eq!(
            resumable_states(),
            vec!["failed", "cancelled", "interrupted"]
        );
    }

    #[test]
    fn steps_are_counted_before_their_total_is_known() {
        let mut run = record(RunState::Queued);
        run.total_steps = 0;
        run.step = 0;
        run.epoch = 0;
        run.progress = 0.0;
        assert_eq!(progress_text(&run), "0.0 % · epoch 0/4 · step 0");
    }

    #[test]
    fn a_finished_run_has_no_eta() {
        let v = RunView::new(&record(RunState::Completed));
        assert_eq!(v.progress_text, "25.0 % · epoch 2/4 · step 30/120");
    }
}
