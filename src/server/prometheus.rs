//! GET /metrics: the server's state in the Prometheus text format.
use super::AppState;
use crate::db::{self, runs::RunFilter, runs::RunState};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use std::fmt::Write;

pub async fn metrics(State(state): State<AppState>) -> Response {
    match render(&state).await {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => super::error::WebError::internal(format!("cannot render /metrics: {e:#}"))
            .into_response(),
    }
}

/// Escapes a label value (backslash, double quote, newline).
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

async fn render(state: &AppState) -> anyhow::Result<String> {
    let mut s = String::new();
    writeln!(s, "# HELP moco_runs Runs by state.")?;
    writeln!(s, "# TYPE moco_runs gauge")?;
    for (st, n) in db::runs::count_by_state(&state.db).await? {
        writeln!(s, "moco_runs{{state=\"{st}\"}} {n}")?;
    }
    let running = db::runs::list(
        &state.db,
        &RunFilter {
            state: Some(RunState::Running),
            ..RunFilter::default()
        },
    )
    .await?;
    writeln!(
        s,
        "# HELP moco_run_images_per_second Training throughput of each running run."
    )?;
    writeln!(s, "# TYPE moco_run_images_per_second gauge")?;
    for r in &running {
        writeln!(
            s,
            "moco_run_images_per_second{{run=\"{}\",name=\"{}\",device=\"{}\"}} {}",
            r.id,
            label(&r.name),
            label(&r.device),
            r.images_per_sec.unwrap_or(0.0)
        )?;
    }
    writeln!(
        s,
        "# HELP moco_run_step Optimizer steps taken by each running run."
    )?;
    writeln!(s, "# TYPE moco_run_step gauge")?;
    for r in &running {
        writeln!(s, "moco_run_step{{run=\"{}\"}} {}", r.id, r.step)?;
    }
    writeln!(
        s,
        "# HELP moco_run_total_steps Steps of each running run in all."
    )?;
    writeln!(s, "# TYPE moco_run_total_steps gauge")?;
    for r in &running {
        writeln!(
            s,
            "moco_run_total_steps{{run=\"{}\"}} {}",
            r.id, r.total_steps
        )?;
    }
    writeln!(
        s,
        "# HELP moco_events_total Events recorded since the database was created."
    )?;
    writeln!(s, "# TYPE moco_events_total counter")?;
    writeln!(
        s,
        "moco_events_total {}",
        db::events::last_id(&state.db).await?
    )?;
    writeln!(s, "# HELP moco_event_subscribers Open live event streams.")?;
    writeln!(s, "# TYPE moco_event_subscribers gauge")?;
    writeln!(s, "moco_event_subscribers {}", state.hub.subscribers())?;
    writeln!(
        s,
        "# HELP moco_uptime_seconds Seconds since the server started."
    )?;
    writeln!(s, "# TYPE moco_uptime_seconds gauge")?;
    writeln!(
        s,
        "moco_uptime_seconds {:.3}",
        state.started.elapsed().as_secs_f64()
    )?;
    Ok(s)
}
