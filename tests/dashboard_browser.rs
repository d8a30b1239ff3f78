//! The dashboard in a real browser: headless Chromium (through chromedriver) drives the real server
//! on 127.0.0.1:0 with a fresh data directory. A tiny run is started from the form on the built-in
//! dataset, followed live to completion, its encoder downloaded through the page's link and
//! compared byte for byte with the file on disk; a bad form comes back with the error beside its
//! field. A dataset is downloaded from the Datasets page (from a local mirror) with its bar
//! followed to 100 %. Screenshots are kept under target/test-artifacts/.
mod common;
mod mirror_support;

use common::browser::Browser;
use common::Server;
use fantoccini::Locator;
use std::time::Duration;

/// Records script errors on every page, and every text the run page's state badge shows from the
/// first paint on (installed before any page script runs, so no transition is missed).
const STATE_RECORDER: &str = r#"
window.__errors = [];
window.addEventListener("error", (e) => window.__errors.push(String(e.message)));
window.addEventListener("unhandledrejection", (e) => window.__errors.push(String(e.reason)));
window.__states = [];
document.addEventListener("DOMContentLoaded", () => {
  const badge = document.getElementById("run-state");
  if (!badge) return;
  const record = () => {
    const t = badge.textContent.trim();
    if (window.__states[window.__states.length - 1] !== t) window.__states.push(t);
  };
  record();
  new MutationObserver(record).observe(badge, { childList: true, characterData: true, subtree: true });
});
"#;

/// The tiny CPU run: (input id, value). ResNet-18 at width 8 on 128 synthetic images, 2 epochs of
/// 4 steps, metrics every step and kNN every epoch.
const TINY_RUN: &[(&str, &str)] = &[
    ("f-name", "browser-tiny"),
    ("f-epochs", "2"),
    ("f-batch_size", "32"),
    ("f-device", "cpu"),
    ("f-width", "8"),
    ("f-queue_size", "256"),
    ("f-shuffle_bn_splits", "2"),
    ("f-dataset-synthetic_train", "128"),
    ("f-dataset-synthetic_test", "64"),
    ("f-metrics_every", "1"),
    ("f-knn_every", "1"),
];

async fn fill(b: &Browser, fields: &[(&str, &str)]) {
    for (id, value) in fields {
        b.set_value(&format!("#{id}"), value).await;
    }
}

/// The page's scripts ran without an error.
async fn assert_no_script_errors(b: &Browser, page: &str) {
    let errors = b.js("return window.__errors || [];").await;
    assert_eq!(errors, serde_json::json!([]), "script errors on {page}");
}

fn run_id_from(url: &str) -> i64 {
    url.rsplit('/')
        .next()
        .and_then(|s| s.split('?').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a run page: {url}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_run_from_the_form_to_the_downloaded_encoder() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let b = Browser::start().await;
    b.cdp(
        "Page.addScriptToEvaluateOnNewDocument",
        serde_json::json!({ "source": STATE_RECORDER }),
    )
    .await;

    // An empty list says so and offers the form.
    b.goto(&server.at("/")).await;
    assert!(
        b.text("#runs-empty").await.contains("No runs yet"),
        "empty runs page"
    );
    assert_no_script_errors(&b, "dashboard-01-runs-empty").await;
    b.screenshot("dashboard-01-runs-empty").await;

    // The form: preset cifar, the tiny settings (most under "Advanced settings").
    b.goto(&server.at("/runs/new")).await;
    b.client
        .find(Locator::Css("#f-preset"))
        .await
        .unwrap()
        .select_by_value("v1")
        .await
        .unwrap();
    // Picking a preset fills its defaults (v1: T = 0.07, K = 65536) ...
    let value = |id: &'static str| {
        let b = &b;
        async move {
            b.client
                .find(Locator::Id(id))
                .await
                .unwrap()
                .prop("value")
                .await
                .unwrap()
                .unwrap_or_default()
        }
    };
    assert_eq!(value("f-temperature").await, "0.07");
    assert_eq!(value("f-queue_size").await, "65536");
    b.client
        .find(Locator::Css("#f-preset"))
        .await
        .unwrap()
        .select_by_value("cifar")
        .await
        .unwrap();
    assert_eq!(value("f-temperature").await, "0.1");
    assert_eq!(value("f-momentum").await, "0.99");
    b.client
        .find(Locator::Css("details.advanced > summary"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    fill(&b, TINY_RUN).await;
    // The derived values follow the inputs: 0.06 × 32 / 512, and K = 8 × 32.
    // (Both come from the server a moment after the last keystroke.)
    b.wait_text("#effective-lr", |t| t == "0.00375").await;
    let rule = b
        .wait_text("#queue-rule", |t| t.contains("queue_size 256"))
        .await;
    assert!(
        rule.starts_with("✓ queue_size 256 = 8 × batch_size = 32"),
        "{rule}"
    );
    assert_no_script_errors(&b, "dashboard-02-new-run-filled").await;
    b.screenshot_full("dashboard-02-new-run-filled", 1280).await;
    b.client
        .find(Locator::Id("start-run"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();

    // The run page: it becomes running, the loss chart fills, it completes.
    let url = b
        .wait_until("the run page", Duration::from_secs(30), || async {
            let url = b.client.current_url().await.ok()?.to_string();
            url.contains("/runs/")
                .then_some(url)
                .filter(|u| !u.ends_with("/new"))
        })
        .await;
    let run_id = run_id_from(&url);
    let title = b.text("h1").await;
    assert!(
        title.contains(&format!("browser-tiny #{run_id}")),
        "{title}"
    );
    let loss_points = b
        .wait_until(
            "loss points on the chart",
            Duration::from_secs(180),
            || async {
                let n = b
                    .client
                    .find(Locator::Id("chart-loss"))
                    .await
                    .ok()?
                    .attr("data-points")
                    .await
                    .ok()??
                    .parse::<usize>()
                    .ok()?;
                (n > 0).then_some(n)
            },
        )
        .await;
    assert!(loss_points >= 1);
    b.screenshot("dashboard-03-run-live").await;
    b.wait_until("the run to complete", Duration::from_secs(300), || async {
        let state = b.text("#run-state").await;
        assert_ne!(
            state,
            "failed",
            "the tiny run failed: {}",
            b.text("#run-error").await
        );
        (state == "completed").then_some(())
    })
    .await;
    let states: Vec<String> =
        serde_json::from_value(b.js("return window.__states;").await).unwrap();
    assert!(
        states.contains(&"running".to_string()),
        "the badge never showed running: {states:?}"
    );
    assert_eq!(states.last().map(String::as_str), Some("completed"));
    // 2 epochs × 4 steps, a loss value every step; the kNN monitor after each epoch.
    b.wait_until("all 8 loss points", Duration::from_secs(30), || async {
        let n: usize = b
            .client
            .find(Locator::Id("chart-loss"))
            .await
            .ok()?
            .attr("data-points")
            .await
            .ok()??
            .parse()
            .ok()?;
        (n == 8).then_some(())
    })
    .await;
    // The untrained encoder (epoch 0), then one point per epoch.
    b.wait_until("3 kNN points", Duration::from_secs(30), || async {
        let n: usize = b
            .client
            .find(Locator::Id("chart-knn"))
            .await
            .ok()?
            .attr("data-points")
            .await
            .ok()??
            .parse()
            .ok()?;
        (n == 3).then_some(())
    })
    .await;
    let progress = b.text("#run-progress .progress-text").await;
    assert!(
        progress.starts_with("100.0 % · epoch 2/2 · step 8/8"),
        "{progress}"
    );
    // Nothing to cancel any more; the finished run can be used as a template.
    let cancel_shown = b
        .client
        .find(Locator::Id("cancel-form"))
        .await
        .unwrap()
        .is_displayed()
        .await
        .unwrap();
    assert!(!cancel_shown, "a completed run offers to cancel");

    // The encoder, downloaded through the page's link, is the file on disk.
    let link = b
        .wait_until(
            "the encoder download link",
            Duration::from_secs(30),
            || async { b.client.find(Locator::Css("a.download-encoder")).await.ok() },
        )
        .await;
    let href = link.attr("href").await.unwrap().unwrap();
    let ckpt_id: i64 = href
        .trim_end_matches("/download")
        .rsplit('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_no_script_errors(&b, "dashboard-04-run-completed").await;
    b.screenshot_full("dashboard-04-run-completed", 1280).await;
    link.click().await.unwrap();
    let downloaded = b
        .wait_until("the encoder download", Duration::from_secs(60), || async {
            let entries: Vec<_> = std::fs::read_dir(&b.downloads).ok()?.flatten().collect();
            let done = entries.iter().find(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.ends_with(".safetensors")
            })?;
            // Chromium renames the file when it is complete; no partial download remains.
            entries
                .iter()
                .all(|e| !e.file_name().to_string_lossy().ends_with(".crdownload"))
                .then(|| done.path())
        })
        .await;
    let pool = moco_server::db::open(&server.data_dir.join("moco.sqlite"))
        .await
        .unwrap();
    let (rel, kind): (String, String) =
        sqlx::query_as("SELECT path, kind FROM checkpoints WHERE id = ? AND run_id = ?")
            .bind(ckpt_id)
            .bind(run_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(kind, "encoder");
    let on_disk = std::fs::read(server.data_dir.join(&rel)).unwrap();
    let got = std::fs::read(&downloaded).unwrap();
    assert!(on_disk.len() > 1000, "encoder of {} bytes", on_disk.len());
    assert!(got == on_disk, "the downloaded encoder differs from {rel}");

    // The list shows the finished run.
    b.goto(&server.at("/")).await;
    let row = format!("tr[data-run-id=\"{run_id}\"]");
    assert_eq!(
        b.text(&format!("{row} [data-field=state]")).await,
        "completed"
    );
    let knn = b.text(&format!("{row} [data-field=best_knn]")).await;
    assert!(knn.ends_with(" %"), "best kNN {knn:?}");
    assert_no_script_errors(&b, "dashboard-05-runs").await;
    b.screenshot("dashboard-05-runs").await;

    // A bad form: K not a multiple of the batch. The error sits beside queue_size, the typed
    // values are kept, and nothing is stored.
    b.goto(&server.at("/runs/new")).await;
    b.client
        .find(Locator::Css("details.advanced > summary"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    fill(
        &b,
        &[
            ("f-name", "bad-queue"),
            ("f-batch_size", "256"),
            ("f-queue_size", "1000"),
        ],
    )
    .await;
    let rule = b
        .wait_text("#queue-rule", |t| t.contains("queue_size 1000"))
        .await;
    assert!(
        rule.starts_with("✗ queue_size 1000 must be a multiple"),
        "{rule}"
    );
    b.client
        .find(Locator::Id("start-run"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let error = b
        .wait_until("the queue_size error", Duration::from_secs(30), || async {
            b.client
                .find(Locator::Css("#field-f-queue_size .error"))
                .await
                .ok()
        })
        .await
        .text()
        .await
        .unwrap();
    assert!(
        error.contains("queue_size 1000 must be a multiple"),
        "{error}"
    );
    assert_eq!(value("f-queue_size").await, "1000");
    assert_eq!(value("f-name").await, "bad-queue");
    assert!(b
        .text("#form-errors")
        .await
        .contains("The run was not started"));
    assert!(b
        .client
        .current_url()
        .await
        .unwrap()
        .path()
        .ends_with("/runs/new"));
    assert_no_script_errors(&b, "dashboard-06-form-error").await;
    b.screenshot_full("dashboard-06-form-error", 1280).await;
    let runs: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM runs")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(runs, 1, "the bad form stored a run");

    // A second run differing in m, started over the JSON API while the list is open: the list
    // shows it and follows it to completion without a reload. Then both are compared.
    b.goto(&server.at("/")).await;
    b.js("window.__sameDocument = true; return null;").await;
    let body = serde_json::json!({
        "preset": "cifar", "name": "browser-m09", "epochs": 2, "batch_size": 32, "device": "cpu",
        "width": 8, "queue_size": 256, "shuffle_bn_splits": 2, "metrics_every": 1, "knn_every": 1,
        "momentum": 0.9,
        "dataset": {"kind": "synthetic", "synthetic_train": 128, "synthetic_test": 64}
    });
    let res = reqwest::Client::new()
        .post(server.at("/api/runs"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let second: serde_json::Value = res.json().await.unwrap();
    let second_id = second["run"]["id"].as_i64().unwrap();
    let second_state = format!("tr[data-run-id=\"{second_id}\"] [data-field=state]");
    b.wait_until(
        "the second run in the list, completed",
        Duration::from_secs(300),
        || async {
            let state = b
                .client
                .find(Locator::Css(&second_state))
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            assert_ne!(state, "failed");
            (state == "completed").then_some(())
        },
    )
    .await;
    assert_eq!(
        b.js("return window.__sameDocument === true;").await,
        true,
        "the list updated itself, without a reload"
    );
    let progress = b
        .text(&format!("tr[data-run-id=\"{second_id}\"] .progress-text"))
        .await;
    assert!(progress.starts_with("100.0 %"), "{progress}");
    // Tick both runs and press Compare.
    for id in [run_id, second_id] {
        b.client
            .find(Locator::Id(&format!("select-{id}")))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
    }
    b.client
        .find(Locator::Id("compare-button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.wait_until("the compare page", Duration::from_secs(30), || async {
        let url = b.client.current_url().await.ok()?;
        (url.path() == "/compare").then_some(())
    })
    .await;
    let url = b.client.current_url().await.unwrap();
    // The page adds the chosen metrics to the address once its charts are drawn.
    let ids = format!("ids={run_id},{second_id}");
    let query = url.query().unwrap_or("");
    assert!(
        query == ids || query.starts_with(&format!("{ids}&")),
        "{url}"
    );
    let diff = b.text("#settings-table tr.diff:not(:first-child)").await;
    assert!(diff.starts_with("momentum"), "{diff}");
    for chart in ["loss", "knn_top1", "top1"] {
        b.wait_until(
            &format!("{chart} curves of both runs"),
            Duration::from_secs(30),
            || async {
                let n: usize = b
                    .client
                    .find(Locator::Id(&format!("compare-chart-{chart}")))
                    .await
                    .ok()?
                    .attr("data-points")
                    .await
                    .ok()??
                    .parse()
                    .ok()?;
                // 8 steps (or the untrained baseline and 2 epochs) per run.
                (n == if chart == "knn_top1" { 6 } else { 16 }).then_some(())
            },
        )
        .await;
    }
    // Another metric on demand.
    b.client
        .find(Locator::Id("metric-momentum"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.wait_until("the momentum chart", Duration::from_secs(10), || async {
        b.client
            .find(Locator::Id("compare-chart-momentum"))
            .await
            .ok()
    })
    .await;
    assert!(b
        .client
        .current_url()
        .await
        .unwrap()
        .as_str()
        .contains("momentum"));
    assert_no_script_errors(&b, "dashboard-09-compare").await;
    b.screenshot_full("dashboard-09-compare", 1280).await;

    // For people: the pages on a phone and in the dark colour scheme.
    for (path, name) in [
        ("/".to_string(), "runs"),
        (format!("/runs/{run_id}"), "run"),
        ("/runs/new".to_string(), "new-run"),
    ] {
        b.goto(&server.at(&path)).await;
        b.screenshot_full(&format!("dashboard-07-phone-{name}"), 390)
            .await;
    }
    b.cdp(
        "Emulation.setEmulatedMedia",
        serde_json::json!({"features": [{"name": "prefers-color-scheme", "value": "dark"}]}),
    )
    .await;
    b.goto(&server.at(&format!("/runs/{run_id}"))).await;
    b.wait_until(
        "the charts in the dark",
        Duration::from_secs(30),
        || async {
            let n: usize = b
                .client
                .find(Locator::Id("chart-loss"))
                .await
                .ok()?
                .attr("data-points")
                .await
                .ok()??
                .parse()
                .ok()?;
            (n == 8).then_some(())
        },
    )
    .await;
    let background = b
        .js("return getComputedStyle(document.body).backgroundColor;")
        .await;
    assert_eq!(
        background, "rgb(15, 18, 22)",
        "the dark scheme follows the system"
    );
    assert_no_script_errors(&b, "dashboard-08-dark-run").await;
    b.screenshot_full("dashboard-08-dark-run", 1280).await;

    b.client.clone().close().await.unwrap();
}

/// The text of the element `css`, empty while there is none (the page may be replacing it).
async fn text_of(b: &Browser, css: &str) -> String {
    let script = format!(
        "const e = document.querySelector({}); return e ? e.textContent.trim() : '';",
        serde_json::to_string(css).unwrap()
    );
    b.js(&script).await.as_str().unwrap_or("").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dataset_downloaded_from_the_page_joins_the_table_and_the_picker() {
    let archive = mirror_support::cifar10_archive();
    let sum = mirror_support::md5_hex(&archive);
    // Slow enough (about 4 s) for the bar to be seen on its way.
    let mirror = mirror_support::serve_slowly(archive, 30, Duration::from_millis(150));
    let tmp = tempfile::tempdir().unwrap();
    let url = mirror.url();
    let server = Server::start_with(
        &tmp.path().join("data"),
        &[],
        &[
            ("MOCO_FETCH_MIRROR_CIFAR10", url.as_str()),
            ("MOCO_FETCH_MD5_CIFAR10", sum.as_str()),
        ],
    );
    let b = Browser::start().await;
    b.cdp(
        "Page.addScriptToEvaluateOnNewDocument",
        serde_json::json!({ "source": STATE_RECORDER }),
    )
    .await;
    b.goto(&server.at("/datasets")).await;
    assert_eq!(b.text("h1").await, "Datasets");
    // The synthetic set's mean/std arrive after the page.
    b.wait_until("the synthetic mean", Duration::from_secs(30), || async {
        let t = text_of(&b, r#"tr[data-dataset="synthetic"] td[data-field=mean]"#).await;
        (t.split(' ').count() == 3 && t.starts_with("0.")).then_some(())
    })
    .await;

    let item = "#download-cifar10";
    b.client
        .find(Locator::Css(&format!("{item} button")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    // Every value the bar had when looked at.
    let seen = std::sync::Mutex::new(Vec::new());
    b.wait_until("the bar at 100 %", Duration::from_secs(120), || async {
        let value = b
            .js("return document.querySelector('#download-cifar10 progress').value;")
            .await
            .as_f64()
            .unwrap_or(0.0);
        let text = text_of(&b, "#download-cifar10 [data-role=text]").await;
        seen.lock().unwrap().push(value);
        (text == "100.0 % · done" && value == 1.0).then_some(())
    })
    .await;
    let seen = seen.into_inner().unwrap();
    assert!(
        seen.iter().any(|v| *v > 0.0 && *v < 1.0),
        "the bar never showed a part done: {seen:?}"
    );
    let button = b
        .client
        .find(Locator::Css(&format!("{item} button")))
        .await
        .unwrap();
    assert_eq!(button.text().await.unwrap(), "Present");
    assert!(button.attr("disabled").await.unwrap().is_some());
    // The table was refreshed with the new set, and its mean/std follow.
    b.wait_until("the new row's mean", Duration::from_secs(30), || async {
        let t = text_of(
            &b,
            r#"tr[data-dataset="cifar10:cifar-10-batches-bin"] td[data-field=mean]"#,
        )
        .await;
        (t.split(' ').count() == 3 && t.starts_with("0.")).then_some(())
    })
    .await;
    assert_no_script_errors(&b, "dashboard-10-datasets").await;
    b.screenshot_full("dashboard-10-datasets", 1280).await;

    // The New run picker offers it.
    b.goto(&server.at("/runs/new")).await;
    let options = b
        .js("return Array.from(document.querySelectorAll('#f-dataset option')).map(o => o.value);")
        .await;
    assert!(
        options
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o == "cifar10:cifar-10-batches-bin"),
        "{options}"
    );
    b.client.clone().close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linear_probe_queued_from_the_run_page_is_followed_live_to_its_result() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    // Trained on two CPU processes, so the page also has its Processes panel.
    let mut config = common::tiny_run("probed", 1);
    config["devices"] = 2.into();
    let run = server.create_run(&config).await;
    assert_eq!(server.wait_finished(run).await["state"], "completed");
    let b = Browser::start().await;
    b.cdp(
        "Page.addScriptToEvaluateOnNewDocument",
        serde_json::json!({ "source": STATE_RECORDER }),
    )
    .await;

    b.goto(&server.at(&format!("/runs/{run}"))).await;
    // Each rank's figures: a row per rank and one curve per rank on its chart.
    b.wait_until("the ranks' chart", Duration::from_secs(30), || async {
        let n = b
            .js("return document.querySelectorAll('#chart-ranks canvas').length;")
            .await
            .as_i64()?;
        (n > 0).then_some(())
    })
    .await;
    let series = b
        .js("return Array.from(document.querySelectorAll('#chart-ranks .u-legend .u-series th')).map((e) => e.textContent.trim());")
        .await;
    assert_eq!(
        series,
        serde_json::json!(["step", "rank 0", "rank 1"]),
        "legend"
    );
    for rank in 0..2 {
        let speed = b
            .text(&format!(
                "#rank-table [data-metric=\"images_per_sec_rank{rank}\"]"
            ))
            .await;
        assert!(
            speed.replace(',', "").parse::<f64>().is_ok_and(|v| v > 0.0),
            "rank {rank}: {speed:?}"
        );
    }
    assert_no_script_errors(&b, "dashboard-19-run-ranks").await;
    b.screenshot_full("dashboard-19-run-ranks", 1280).await;
    b.client
        .find(Locator::Css("#eval-details > summary"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    // The official protocol, long enough (150 epochs of 8 steps) to be watched while it runs.
    b.client
        .find(Locator::Css("#eval-method"))
        .await
        .unwrap()
        .select_by_value("linear:moco")
        .await
        .unwrap();
    fill(
        &b,
        &[
            ("eval-epochs", "150"),
            ("eval-batch", "8"),
            ("eval-device", "cpu"),
        ],
    )
    .await;
    b.screenshot_full("dashboard-20-run-evaluate-form", 1280)
        .await;
    b.client
        .find(Locator::Id("eval-submit"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.wait_until("the evaluation page", Duration::from_secs(30), || async {
        let url = b.client.current_url().await.ok()?.to_string();
        url.contains("/evals/").then_some(())
    })
    .await;
    assert!(b.text("h1").await.contains("linear (moco) evaluation"));

    // Live: the progress moves through the epochs while the page stays open.
    let midway = b
        .wait_until("a progress midway", Duration::from_secs(120), || async {
            let text = text_of(&b, "#eval-progress .progress-text").await;
            let epoch: i64 = text
                .split("epoch ")
                .nth(1)?
                .split('/')
                .next()?
                .parse()
                .ok()?;
            (epoch > 0 && epoch < 150).then_some(text)
        })
        .await;
    assert!(
        midway.contains("ETA") || midway.contains("step"),
        "{midway}"
    );
    assert_no_script_errors(&b, "dashboard-21-eval-live").await;
    b.screenshot_full("dashboard-21-eval-live", 1280).await;
    b.wait_until(
        "the evaluation to complete",
        Duration::from_secs(300),
        || async {
            let state = text_of(&b, "#eval-state").await;
            assert!(
                !["failed", "cancelled"].contains(&state.as_str()),
                "{state}"
            );
            (state == "completed").then_some(())
        },
    )
    .await;
    // The page reloaded with the result: every epoch in the table and on both charts.
    let rows = b
        .wait_until("the epochs table", Duration::from_secs(10), || async {
            let n = b
                .js("return document.querySelectorAll('#epochs-table tbody tr').length;")
                .await
                .as_i64()?;
            (n == 150).then_some(n)
        })
        .await;
    assert_eq!(rows, 150);
    let canvases = b
        .js("return document.querySelectorAll('#chart-loss canvas, #chart-accuracy canvas').length;")
        .await;
    assert_eq!(canvases, serde_json::json!(2));
    let top1 = b.text("[data-stat=\"top1\"]").await;
    assert!(top1.ends_with('%'), "{top1}");
    assert!(
        b.js("return document.getElementById('cancel-form').hidden;")
            .await
            == serde_json::json!(true)
    );
    assert_no_script_errors(&b, "dashboard-22-eval-done").await;
    b.screenshot_full("dashboard-22-eval-done", 1280).await;

    // The run page lists it with its scores.
    b.goto(&server.at(&format!("/runs/{run}"))).await;
    let row = b.text("#run-evals tbody tr").await;
    assert!(
        row.contains("linear (moco)") && row.contains(&top1),
        "{row}"
    );
    b.client.clone().close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_from_the_form_shows_its_plan_then_its_table_filling_live() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let b = Browser::start().await;
    b.cdp(
        "Page.addScriptToEvaluateOnNewDocument",
        serde_json::json!({ "source": STATE_RECORDER }),
    )
    .await;
    // The New run form's settings are the base; its grid starts the sweep.
    b.goto(&server.at("/sweeps")).await;
    b.client
        .find(Locator::Css(".page-head a.button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.wait_until("the New run form", Duration::from_secs(30), || async {
        let url = b.client.current_url().await.ok()?.to_string();
        url.contains("/runs/new").then_some(())
    })
    .await;
    b.client
        .find(Locator::Css("#f-preset"))
        .await
        .unwrap()
        .select_by_value("cifar")
        .await
        .unwrap();
    b.js("document.querySelector('details.advanced').open = true;")
        .await;
    fill(&b, TINY_RUN).await;
    fill(&b, &[("f-name", "browser-sweep")]).await;
    b.js("document.getElementById('sweep-grid').open = true;")
        .await;
    fill(
        &b,
        &[
            ("sweep-vary1-field", "temperature"),
            ("sweep-vary1-values", "0.1, 0.2"),
            ("sweep-seeds", "0,1"),
        ],
    )
    .await;
    // The plan follows the form: four runs and how long they take.
    let plan = b
        .wait_text("#sweep-plan", |t| t.starts_with("4 runs, about "))
        .await;
    assert!(plan.ends_with("one after another."), "{plan}");
    b.screenshot_full("dashboard-30-sweep-form", 1280).await;
    b.client
        .find(Locator::Id("start-sweep"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.wait_until("the sweep page", Duration::from_secs(30), || async {
        let url = b.client.current_url().await.ok()?.to_string();
        url.contains("/sweeps/").then_some(())
    })
    .await;
    assert!(b.text("h1").await.starts_with("browser-sweep"));
    // Live: the state and the table move without a reload until every member completed.
    b.wait_until("the sweep to finish", Duration::from_secs(300), || async {
        (text_of(&b, "#sweep-state").await == "finished").then_some(())
    })
    .await;
    let outcomes = b
        .js("return Array.from(document.querySelectorAll('#sweep-table [data-cell=outcome]')).map(c => c.textContent);")
        .await;
    assert_eq!(outcomes, serde_json::json!(["2 completed", "2 completed"]));
    let best = b
        .js("return Array.from(document.querySelectorAll('#sweep-table [data-cell=best]')).map(c => c.textContent);")
        .await;
    for cell in best.as_array().unwrap() {
        assert!(cell.as_str().unwrap().contains(" ± "), "{best}");
    }
    // The members' kNN curves are drawn on one chart.
    b.wait_until("the kNN chart", Duration::from_secs(10), || async {
        let n = b
            .js("return document.querySelectorAll('#knn-chart canvas').length;")
            .await
            .as_i64()?;
        (n == 1).then_some(())
    })
    .await;
    assert_no_script_errors(&b, "dashboard-31-sweep-finished").await;
    b.screenshot_full("dashboard-31-sweep-finished", 1280).await;
    let href = b
        .js("return document.getElementById('csv-link').getAttribute('href');")
        .await;
    assert!(
        href.as_str().unwrap().ends_with("/table?format=csv"),
        "{href}"
    );
}
