//! The dashboard's pages over plain HTTP (no browser, no JavaScript): the real server on
//! 127.0.0.1:0 with a fresh data directory. Lists, forms, errors and tables are server-rendered, so
//! everything here is what a user without JavaScript gets.
mod common;

use common::pages::{client, get, post_form};
use common::Server;
use reqwest::StatusCode;

/// The form of a tiny CPU run on the built-in dataset (seconds to train).
fn tiny(name: &str) -> Vec<(&str, &str)> {
    vec![
        ("preset", "cifar"),
        ("name", name),
        ("dataset", "synthetic"),
        ("epochs", "1"),
        ("batch_size", "32"),
        ("device", "cpu"),
        ("width", "8"),
        ("queue_size", "256"),
        ("shuffle_bn_splits", "2"),
        ("dataset.synthetic_train", "128"),
        ("dataset.synthetic_test", "64"),
        ("metrics_every", "1"),
        ("knn_every", "1"),
    ]
}

/// The HTML of the form field (or any element) whose opening tag carries `id="…"`, up to the
/// next field.
fn field_html<'a>(html: &'a str, id: &str) -> &'a str {
    let start = html
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no element with id {id}"));
    let rest = &html[start..];
    let end = rest[1..]
        .find("<div class=\"field")
        .map(|e| e + 1)
        .unwrap_or(rest.len());
    &rest[..end]
}

/// Every value of `attr="…"` in the tags named `tag`.
fn attrs(html: &str, tag: &str, attr: &str) -> Vec<String> {
    let mut out = Vec::new();
    for piece in html.split(&format!("<{tag} ")).skip(1) {
        let tag_text = &piece[..piece.find('>').unwrap_or(piece.len())];
        if let Some(i) = tag_text.find(&format!(" {attr}=\"")) {
            let v = &tag_text[i + attr.len() + 3..];
            out.push(v[..v.find('"').unwrap()].to_string());
        } else if tag_text.starts_with(&format!("{attr}=\"")) {
            let v = &tag_text[attr.len() + 2..];
            out.push(v[..v.find('"').unwrap()].to_string());
        }
    }
    out
}

#[tokio::test]
async fn static_files_are_embedded_and_cached_by_etag() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path());
    let res = client()
        .get(server.at("/static/app.css"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/css; charset=utf-8");
    let etag = res.headers()["etag"].to_str().unwrap().to_string();
    assert!(res
        .text()
        .await
        .unwrap()
        .contains("prefers-color-scheme: dark"));
    let again = client()
        .get(server.at("/static/app.css"))
        .header("If-None-Match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);

    let (status, uplot) = get(&server.at("/static/vendor/uplot/uPlot.iife.min.js")).await;
    assert_eq!(status, 200);
    assert!(uplot.contains("uPlot"), "uPlot is vendored");
    let (status, license) = get(&server.at("/static/vendor/uplot/LICENSE")).await;
    assert_eq!(status, 200);
    assert!(license.contains("The MIT License"), "{license}");
    // Only the embedded files exist: no path reaches the filesystem.
    for bad in [
        "/static/nope.js",
        "/static/../Cargo.toml",
        "/static/%2e%2e/Cargo.toml",
        "/static/vendor",
    ] {
        let (status, _) = get(&server.at(bad)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{bad}");
    }
    // Pages reference no other host: they work offline.
    for page in ["/", "/runs/new"] {
        let (_, html) = get(&server.at(page)).await;
        for src in attrs(&html, "script", "src")
            .into_iter()
            .chain(attrs(&html, "link", "href"))
        {
            assert!(src.starts_with("/static/"), "{page} loads {src}");
        }
    }
}

#[tokio::test]
async fn the_form_validates_keeps_values_and_starts_a_run() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path());

    // Every input is labelled; every engine setting has one.
    let (status, html) = get(&server.at("/runs/new")).await;
    assert_eq!(status, 200);
    let labels = attrs(&html, "label", "for");
    let mut ids = attrs(&html, "input", "id");
    ids.extend(attrs(&html, "select", "id"));
    assert!(ids.len() > 40, "{} inputs", ids.len());
    for id in &ids {
        assert!(labels.contains(id), "input {id} has no label");
    }
    let names = attrs(&html, "input", "name");
    for setting in [
        "queue_size",
        "momentum",
        "temperature",
        "base_lr",
        "lr_milestones",
        "symmetric",
        "knn_every",
        "dataset.synthetic_train",
        "collapse_threshold",
    ] {
        assert!(names.iter().any(|n| n == setting), "no input for {setting}");
    }
    assert!(html.contains("<details class=\"advanced card\">"));
    assert!(html.contains("Synthetic shapes (built in)"));
    // Without a GPU the form starts from the CPU demo: its defaults, the effective lr
    // 0.06 × 128 / 128, the queue rule satisfied, and how long it would take here (5000 / 128 =
    // 39 steps for each of 8 epochs; kNN untrained and every 2 epochs).
    if !tch::Cuda::is_available() {
        assert!(field_html(&html, "field-f-preset").contains("<option value=\"demo\" selected"));
        assert!(field_html(&html, "field-f-temperature").contains("value=\"0.1\""));
        assert!(html.contains(">0.06</output>"));
        assert!(html.contains("✓ queue_size 1024 = 8 × batch_size = 128."));
        let estimate = html
            .split("id=\"estimate\" aria-live=\"polite\">")
            .nth(1)
            .and_then(|rest| rest.split("</output>").next())
            .unwrap_or_else(|| panic!("no estimate in the page"));
        assert!(estimate.starts_with("about "), "{estimate}");
        assert!(
            estimate.ends_with("(312 steps, 5 kNN evaluations, on cpu)"),
            "{estimate}"
        );
    }
    // The script asks for the estimate as the form changes: the same line for the typed values.
    let res = post_form(&server.at("/runs/new/estimate"), &tiny("estimate")).await;
    assert_eq!(res.status(), 200);
    let body: serde_json::Value = res.json().await.unwrap();
    let text = body["text"].as_str().unwrap();
    assert!(
        text.ends_with("(4 steps, 2 kNN evaluations, on cpu)"),
        "{text}"
    );
    let mut bad_estimate = tiny("bad estimate");
    bad_estimate.retain(|(k, _)| *k != "epochs");
    bad_estimate.push(("epochs", "two"));
    let res = post_form(&server.at("/runs/new/estimate"), &bad_estimate).await;
    let body: serde_json::Value = res.json().await.unwrap();
    assert!(body["text"].as_str().unwrap().starts_with("—"), "{body}");

    // Without JavaScript a preset's defaults come from ?preset=.
    let (_, v1) = get(&server.at("/runs/new?preset=v1")).await;
    assert!(field_html(&v1, "field-f-temperature").contains("value=\"0.07\""));
    assert!(field_html(&v1, "field-f-queue_size").contains("value=\"65536\""));
    assert!(field_html(&v1, "field-f-lr_milestones").contains("value=\"0.6, 0.8\""));
    let (status, body) = get(&server.at("/runs/new?preset=v9")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("Unknown preset"), "{body}");

    // K not a multiple of the batch, and a word for a number: 422, both errors beside their
    // fields, the typed values kept, the advanced section open, nothing stored.
    let mut bad = tiny("bad");
    bad.retain(|(k, _)| !["queue_size", "batch_size", "epochs"].contains(k));
    bad.extend([
        ("queue_size", "1000"),
        ("batch_size", "256"),
        ("epochs", "two"),
    ]);
    let res = post_form(&server.at("/runs/new"), &bad).await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let html = res.text().await.unwrap();
    let queue = field_html(&html, "field-f-queue_size");
    assert!(queue.contains("class=\"error\""), "{queue}");
    assert!(
        queue.contains("queue_size 1000 must be a multiple of the keys enqueued per step"),
        "{queue}"
    );
    assert!(queue.contains("value=\"1000\""), "{queue}");
    assert!(queue.contains("aria-invalid=\"true\""), "{queue}");
    let epochs = field_html(&html, "field-f-epochs");
    assert!(
        epochs.contains("must be a whole number, got &#34;two&#34;")
            || epochs.contains("must be a whole number, got &quot;two&quot;"),
        "{epochs}"
    );
    assert!(field_html(&html, "field-f-name").contains("value=\"bad\""));
    assert!(html.contains("<details class=\"advanced card\" open>"));
    assert!(
        html.contains("href=\"#f-queue_size\""),
        "summary links to the field"
    );
    assert_eq!(server.run_count().await, 0);

    // A dataset path outside the data directory is refused by the server, next to the picker.
    let mut outside = tiny("outside");
    outside.retain(|(k, _)| *k != "dataset");
    outside.push(("dataset", "image_folder:../../etc"));
    let res = post_form(&server.at("/runs/new"), &outside).await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let html = res.text().await.unwrap();
    let picker = field_html(&html, "field-f-dataset");
    assert!(picker.contains("class=\"error\""), "{picker}");
    assert!(picker.contains("data directory"), "{picker}");
    assert_eq!(server.run_count().await, 0);

    // The same form started as a sweep with a bad member: the form again, the member named,
    // the grid open, nothing stored.
    let mut bad_sweep = tiny("sweep-http");
    bad_sweep.extend([("vary1_field", "queue_size"), ("vary1_values", "256, 100")]);
    let res = post_form(&server.at("/sweeps"), &bad_sweep).await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let html = res.text().await.unwrap();
    assert!(
        html.contains("The sweep was not started: 2 problems"),
        "{html}"
    );
    assert!(html.contains("members[1].queue_size"), "{html}");
    assert!(
        html.contains("id=\"sweep-grid\" open"),
        "the grid is shown open"
    );
    assert!(
        html.contains("value=\"256, 100\""),
        "the typed values are kept"
    );
    assert_eq!(server.run_count().await, 0);

    // A good form: 303 to the new run's page.
    let res = post_form(&server.at("/runs/new"), &tiny("tiny-http")).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let location = res.headers()["location"].to_str().unwrap().to_string();
    assert_eq!(location, "/runs/1");
    let (status, page) = get(&server.at(&location)).await;
    assert_eq!(status, 200);
    assert!(page.contains("tiny-http"));
    assert!(page.contains("/api/runs/1/events") || page.contains("data-run-id=\"1\""));

    let run = server.wait_state_fail_fast(1, &["completed"]).await;
    assert_eq!(run["step"], 4);
    let (_, page) = get(&server.at("/runs/1")).await;
    assert!(
        page.contains("class=\"badge completed\""),
        "completed badge"
    );
    assert!(page.contains("100.0 % · epoch 1/1 · step 4/4"));
    // Checkpoints with their download links and sizes, the log, the config.
    let links = attrs(&page, "a", "href");
    assert!(
        links
            .iter()
            .any(|l| l.starts_with("/api/runs/1/checkpoints/") && l.ends_with("/download")),
        "{links:?}"
    );
    assert!(page.contains("Download encoder") && page.contains("Download full"));
    assert!(page.contains("KiB") || page.contains("MiB"));
    assert!(page.contains("state: completed"), "the log shows the end");
    assert!(page.contains("kNN top-1 after epoch 1:"));
    assert!(page.contains("<th scope=\"row\">queue_size</th><td>256</td>"));
    // Nothing to cancel; the run cannot be resumed either.
    assert!(page.contains("id=\"cancel-form\" hidden"));
    assert!(page.contains("id=\"resume-form\" hidden"));

    // The augmentation preview is a real picture of this run's views.
    let res = client()
        .get(server.at("/runs/1/augment-preview.png"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "image/png");
    let png = res.bytes().await.unwrap();
    let img = image::load_from_memory(&png).unwrap();
    assert!(
        img.width() >= 96 && img.height() >= 96,
        "{}×{}",
        img.width(),
        img.height()
    );

    // "New run from these settings" starts from the run's config.
    let (_, copy) = get(&server.at("/runs/new?from=1")).await;
    assert!(field_html(&copy, "field-f-name").contains("value=\"tiny-http (copy)\""));
    assert!(field_html(&copy, "field-f-width").contains("value=\"8\""));
    assert!(copy.contains("Settings copied from run #1"));

    // Unknown runs are 404 pages.
    for path in [
        "/runs/99",
        "/runs/abc",
        "/runs/99/augment-preview.png",
        "/runs/new?from=99",
    ] {
        let (status, body) = get(&server.at(path)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert!(body.contains("There is no run"), "{path}: {body}");
    }
}

#[tokio::test]
async fn runs_list_filters_sorts_compares_and_cancels() {
    let tmp = tempfile::tempdir().unwrap();
    // A folder of "images" that are not images (for a run that fails).
    for class in ["cat", "dog"] {
        let dir = tmp.path().join("broken").join(class);
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..3 {
            std::fs::write(dir.join(format!("{i}.jpg")), b"not an image").unwrap();
        }
    }
    let server = Server::start(tmp.path());
    let (_, empty) = get(&server.at("/")).await;
    assert!(empty.contains("No runs yet"));

    // A momentum ablation: two tiny runs that differ only in m (and name).
    for (name, m) in [("m-0.99", "0.99"), ("m-0.9", "0.9")] {
        let mut form = tiny(name);
        form.push(("momentum", m));
        let res = post_form(&server.at("/runs/new"), &form).await;
        assert_eq!(res.status(), StatusCode::SEE_OTHER, "{name}");
    }
    server.wait_state_fail_fast(1, &["completed"]).await;
    server.wait_state_fail_fast(2, &["completed"]).await;

    let (status, list) = get(&server.at("/")).await;
    assert_eq!(status, 200);
    let rows = attrs(&list, "tr", "data-run-id");
    assert_eq!(rows, vec!["2", "1"], "newest first");
    assert!(list.contains("href=\"/runs/1\""));
    assert!(list.contains("completed <span class=\"muted\">2</span>"));
    assert!(list.contains("value=\"1\""), "a compare checkbox per run");
    let (_, by_name) = get(&server.at("/?sort=name_asc")).await;
    assert_eq!(attrs(&by_name, "tr", "data-run-id"), vec!["2", "1"]);
    let (_, by_name_desc) = get(&server.at("/?sort=name_desc")).await;
    assert_eq!(attrs(&by_name_desc, "tr", "data-run-id"), vec!["1", "2"]);
    let (_, running) = get(&server.at("/?state=running")).await;
    assert!(attrs(&running, "tr", "data-run-id").is_empty());
    assert!(running.contains("No running runs."));
    let (_, completed) = get(&server.at("/?state=completed&sort=created_asc")).await;
    assert_eq!(attrs(&completed, "tr", "data-run-id"), vec!["1", "2"]);
    for bad in ["/?state=sleeping", "/?sort=colour_asc"] {
        let (status, _) = get(&server.at(bad)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    }

    // Compare: the differing setting is highlighted and named, both with their kNN.
    for query in ["ids=1,2", "ids=1&ids=2"] {
        let (status, page) = get(&server.at(&format!("/compare?{query}"))).await;
        assert_eq!(status, 200);
        assert!(
            page.contains(
                "<tr class=\"diff\" data-differs=\"true\"><th scope=\"row\" class=\"mono\">momentum</th>\
                 <td class=\"mono\">0.99</td><td class=\"mono\">0.9</td></tr>"
            ),
            "{page}"
        );
        assert!(page.contains("1 setting differs"), "name does not count");
        assert!(page.contains(">momentum=0.9</td>"));
        assert_eq!(attrs(&page, "tr", "data-run-id"), vec!["1", "2"]);
        assert!(
            !page.contains("data-field=\"best_knn\">—"),
            "both have a kNN"
        );
    }
    let (_, partial) = get(&server.at("/compare?ids=1,x,7")).await;
    assert!(
        partial.contains("&#34;x&#34; is not a run id.")
            || partial.contains("&quot;x&quot; is not a run id.")
    );
    assert!(partial.contains("There is no run 7."));

    // A run that fails shows why, in the error box and in the log, and offers to resume: an
    // image folder whose files are not images passes the start checks but cannot be read.
    let (_, form_page) = get(&server.at("/runs/new")).await;
    assert!(
        form_page.contains("<option value=\"image_folder:broken\">"),
        "the picker lists the folder"
    );
    let mut broken = tiny("broken");
    broken.retain(|(k, _)| !["dataset", "batch_size", "shuffle_bn_splits"].contains(k));
    broken.extend([
        ("dataset", "image_folder:broken"),
        ("batch_size", "2"),
        ("shuffle_bn_splits", "1"),
    ]);
    let res = post_form(&server.at("/runs/new"), &broken).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(res.headers()["location"], "/runs/3");
    let failed = server.wait_finished(3).await;
    assert_eq!(failed["state"], "failed");
    let error = failed["error"].as_str().unwrap().to_string();
    assert!(!error.is_empty());
    let (_, page) = get(&server.at("/runs/3")).await;
    let error_box = field_html(&page, "run-error");
    assert!(
        !error_box.starts_with("id=\"run-error\" hidden"),
        "{error_box}"
    );
    let escaped = error
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    let escaped = escaped.replace('"', "&#34;").replace('\'', "&#39;");
    assert!(error_box.contains(&escaped), "{error} not in {error_box}");
    assert!(
        page.contains("state: failed — "),
        "the log names the failure"
    );
    assert!(page.contains("lvl lvl-error"));
    assert!(
        !page.contains("id=\"resume-form\" hidden"),
        "failed runs offer resume"
    );

    // A completed run cannot be cancelled: the page says why (409).
    let res = post_form(&server.at("/runs/1/cancel"), &[]).await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    let body = res.text().await.unwrap();
    assert!(body.contains("class=\"flash bad\""), "{body}");

    // A long run: cancel and resume through the page's forms.
    let mut long = tiny("long");
    long.retain(|(k, _)| *k != "epochs");
    long.push(("epochs", "500"));
    let res = post_form(&server.at("/runs/new"), &long).await;
    assert_eq!(res.headers()["location"], "/runs/4");
    server.wait_state_fail_fast(4, &["running"]).await;
    let (_, page) = get(&server.at("/runs/4")).await;
    assert!(
        !page.contains("id=\"cancel-form\" hidden"),
        "running runs offer cancel"
    );
    let res = post_form(&server.at("/runs/4/cancel"), &[]).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(res.headers()["location"], "/runs/4?done=cancel");
    server.wait_state_fail_fast(4, &["cancelled"]).await;
    let (_, page) = get(&server.at("/runs/4?done=cancel")).await;
    assert!(page.contains("Cancel requested"));
    assert!(
        !page.contains("id=\"resume-form\" hidden"),
        "cancelled runs offer resume"
    );
    let res = post_form(&server.at("/runs/4/resume"), &[]).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(res.headers()["location"], "/runs/4?done=resume");
    server.wait_state_fail_fast(4, &["queued", "running"]).await;
    let res = post_form(&server.at("/runs/4/cancel"), &[]).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    server.wait_state_fail_fast(4, &["cancelled"]).await;
}

#[tokio::test]
async fn a_server_with_a_token_asks_the_browser_to_sign_in() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start_with(tmp.path(), &["--token", "s3cret-token"], &[]);
    let (_, page) = get(&server.at("/")).await;
    assert!(page.contains("Sign in to make changes"), "{page}");
    let (status, login) = get(&server.at("/login?next=/runs/new")).await;
    assert_eq!(status, 200);
    assert!(login.contains("<label for=\"token\">Access token</label>"));
    assert!(login.contains("data-next=\"/runs/new\""));
    let (_, login) = get(&server.at("/login?next=//elsewhere.example/")).await;
    assert!(login.contains("data-next=\"/\""), "never leaves the server");

    // Without the token the form changes nothing.
    let res = post_form(&server.at("/runs/new"), &tiny("no-token")).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(server.run_count().await, 0);

    // Signing in sets the cookie the forms then carry.
    let res = client()
        .post(server.at("/api/login"))
        .json(&serde_json::json!({"token": "s3cret-token"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let cookie = res.headers()["set-cookie"].to_str().unwrap();
    let cookie = cookie.split(';').next().unwrap().to_string();
    assert_eq!(cookie, "moco_token=s3cret-token");
    let page = client()
        .get(server.at("/"))
        .header("Cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!page.contains("Sign in to make changes"));
    let mut form = tiny("with-token");
    form.retain(|(k, _)| *k != "epochs");
    form.push(("epochs", "500"));
    let res = client()
        .post(server.at("/runs/new"))
        .header("Cookie", &cookie)
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(res.headers()["location"], "/runs/1");
    let res = client()
        .post(server.at("/runs/1/cancel"))
        .header("Cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    server.wait_state_fail_fast(1, &["cancelled"]).await;
}

#[tokio::test]
async fn a_gpu_run_shows_device_memory_and_loss_scale_and_a_cpu_run_does_not() {
    use moco_server::config::{Preset, RunConfig};
    use moco_server::db::{self, runs::RunState};
    use moco_server::train::events::MetricRecord;
    // Runs recorded by a GPU machine and a CPU machine, in the data directory the server opens.
    let dir = tempfile::tempdir().unwrap();
    let pool = db::open(&dir.path().join("moco.sqlite")).await.unwrap();
    let cfg = RunConfig::preset(Preset::Cifar);
    let gpu = db::runs::insert(&pool, &cfg, "cuda:0").await.unwrap();
    let cpu = db::runs::insert(&pool, &cfg, "cpu").await.unwrap();
    let mut conn = pool.acquire().await.unwrap();
    for id in [gpu, cpu] {
        db::runs::finish(&mut conn, id, RunState::Completed, None, Some(10))
            .await
            .unwrap();
    }
    let values = [
        ("device_memory_mb", 1536.4),
        ("device_memory_peak_mb", 1200.0),
        ("loss_scale", 32768.0),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let record = MetricRecord {
        step: 10,
        epoch: 0,
        values,
    };
    db::metrics::insert(&mut conn, gpu, &record).await.unwrap();
    drop(conn);
    pool.close().await;

    let server = Server::start(dir.path());
    let (status, html) = get(&server.at(&format!("/runs/{gpu}"))).await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains(r#"data-metric="device_memory_mb">1536 MiB</div>"#));
    assert!(html.contains(r#"data-metric="device_memory_peak_mb">1200 MiB</div>"#));
    assert!(html.contains(r#"data-metric="loss_scale">32768</div>"#));
    let (status, html) = get(&server.at(&format!("/runs/{cpu}"))).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        !html.contains("device_memory_mb"),
        "a CPU run has no device tiles"
    );
}
