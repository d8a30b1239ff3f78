//! The evaluation pages over plain HTTP (no JavaScript): evaluate a run's checkpoint from its
//! page, follow it on its own page, find it on the run, compare and evaluations pages; a refused
//! form shows why and stores nothing; encoder files are uploaded (page and API), checked, never
//! overwritten, and evaluated.
mod common;

use common::pages::{client, get, location, post_form};
use common::{tiny_run, Server, PATIENCE};
use std::time::{Duration, Instant};

/// The HTML from the element with `id="…"` to the end of its table or form.
fn element<'a>(html: &'a str, id: &str, end: &str) -> &'a str {
    let start = html
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no element with id {id}"));
    let rest = &html[start..];
    &rest[..rest.find(end).unwrap_or(rest.len())]
}

async fn wait_completed(server: &Server, id: &str) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let detail = server.get_json(&format!("/api/evals/{id}")).await;
        let state = detail["eval"]["state"].as_str().unwrap().to_string();
        if state == "completed" {
            return detail;
        }
        assert!(
            !["failed", "cancelled"].contains(&state.as_str()) && start.elapsed() < PATIENCE,
            "{detail}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_checkpoint_is_evaluated_from_the_run_page_and_shown_everywhere() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let run = server.create_run(&tiny_run("probed", 1)).await;
    assert_eq!(server.wait_finished(run).await["state"], "completed");
    let other = server.create_run(&tiny_run("other", 1)).await;
    server.wait_finished(other).await;

    let (status, html) = get(&server.at(&format!("/runs/{run}"))).await;
    assert_eq!(status, 200);
    assert!(html.contains(&format!(
        "<form method=\"post\" action=\"/runs/{run}/evaluate\" class=\"eval-form\""
    )));
    let form = element(&html, "eval-form", "</form>");
    // The newest checkpoint first, then each one; the fast protocol is the CPU's default.
    assert!(form.contains("The newest checkpoint"), "{form}");
    assert!(form.contains("encoder export · epoch 1 (step 2)"), "{form}");
    assert!(
        form.contains("<option value=\"linear:fast\" selected>"),
        "{form}"
    );
    assert!(
        form.contains("<option value=\"\" selected>The run&#39;s own dataset"),
        "{form}"
    );

    // A refused submission shows the reason beside the form and stores nothing.
    let res = post_form(
        &server.at(&format!("/runs/{run}/evaluate")),
        &[
            ("method", "linear:fast"),
            ("epochs", "0"),
            ("device", "cpu"),
        ],
    )
    .await;
    assert_eq!(res.status(), 422);
    let html = res.text().await.unwrap();
    let errors = element(&html, "eval-errors", "</div>");
    assert!(
        errors.contains("data-error-for=\"settings.epochs\""),
        "{errors}"
    );
    assert!(errors.contains("between 1 and 10000"), "{errors}");
    assert!(
        html.contains("<details open id=\"eval-details\">"),
        "the form stays open"
    );
    assert!(server.get_json("/api/evals").await["evals"]
        .as_array()
        .unwrap()
        .is_empty());

    let res = post_form(
        &server.at(&format!("/runs/{run}/evaluate")),
        &[
            ("checkpoint_id", ""),
            ("method", "linear:fast"),
            ("dataset", ""),
            ("epochs", "2"),
            ("batch_size", "16"),
            ("device", "cpu"),
        ],
    )
    .await;
    assert_eq!(res.status(), 303);
    let to = location(&res);
    let id = to.strip_prefix("/evals/").unwrap().to_string();
    let detail = wait_completed(&server, &id).await;
    let top1 = detail["eval"]["top1"].as_f64().unwrap();

    let (status, html) = get(&server.at(&to)).await;
    assert_eq!(status, 200);
    assert!(html.contains("linear (fast) evaluation"), "{html}");
    assert!(html.contains("<span class=\"badge completed\" id=\"eval-state\">completed</span>"));
    assert!(html.contains(&format!("{top1:.2} %")), "the top-1 is shown");
    let epochs = element(&html, "epochs-table", "</table>");
    assert_eq!(
        epochs.matches("<tr><td class=\"num\">").count(),
        2,
        "{epochs}"
    );
    assert!(html.contains("100.0 % · epoch 2/2 · step 8/8"), "{html}");
    assert!(
        html.contains("id=\"restart-form\" hidden"),
        "a completed evaluation stays"
    );

    // The run's table, the compare page's and the list all show it, with its checkpoint epoch.
    for (path, table) in [
        (format!("/runs/{run}"), "run-evals"),
        (format!("/compare?ids={run},{other}"), "compare-evals"),
        ("/evals".to_string(), "evals-table"),
    ] {
        let (status, html) = get(&server.at(&path)).await;
        assert_eq!(status, 200, "{path}");
        let rows = element(&html, table, "</table>");
        assert!(
            rows.contains(&format!("href=\"/evals/{id}\"")),
            "{path}: {rows}"
        );
        assert!(rows.contains("linear (fast)"), "{path}");
        assert!(
            rows.contains("<td class=\"num\" data-label=\"Checkpoint epoch\">1</td>"),
            "{path}"
        );
        assert!(rows.contains(&format!("{top1:.2} %")), "{path}");
    }
    // A cancel of an evaluation that ended is refused on its page, with the reason.
    let res = post_form(&server.at(&format!("/evals/{id}/cancel")), &[]).await;
    assert_eq!(res.status(), 409);
    assert!(res
        .text()
        .await
        .unwrap()
        .contains("only queued, running or interrupted"));
}

#[tokio::test]
async fn encoder_files_are_uploaded_checked_never_overwritten_and_evaluated() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = Server::start(&data);
    let run = server.create_run(&tiny_run("source", 1)).await;
    server.wait_finished(run).await;
    let export = std::fs::read_dir(data.join(format!("runs/{run}")))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("encoder-")
        })
        .unwrap();
    let bytes = std::fs::read(&export).unwrap();

    let (status, html) = get(&server.at("/evals")).await;
    assert_eq!(status, 200);
    assert!(html.contains("id=\"no-encoders\""), "no file yet");

    let upload = |name: &str, content: Vec<u8>| {
        let part = reqwest::multipart::Part::bytes(content).file_name(name.to_string());
        let form = reqwest::multipart::Form::new().part("file", part);
        client()
            .post(server.at("/evals/encoders"))
            .multipart(form)
            .send()
    };
    // Not a safetensors file: refused with the file's name, nothing kept.
    let res = upload("notes.safetensors", b"hello".to_vec())
        .await
        .unwrap();
    assert_eq!(res.status(), 422);
    let html = res.text().await.unwrap();
    let message = element(&html, "upload-message", "</p>");
    assert!(
        message.contains("notes.safetensors is not a safetensors file"),
        "{message}"
    );
    assert!(!message.contains(".upload-"), "{message}");
    let res = upload("../escape.safetensors", bytes.clone())
        .await
        .unwrap();
    assert_eq!(res.status(), 422);
    assert_eq!(std::fs::read_dir(data.join("encoders")).unwrap().count(), 0);

    let res = upload("tiny.safetensors", bytes.clone()).await.unwrap();
    assert_eq!(res.status(), 303);
    assert_eq!(location(&res), "/evals?uploaded=encoders/tiny.safetensors");
    assert_eq!(
        std::fs::read(data.join("encoders/tiny.safetensors")).unwrap(),
        bytes
    );
    let (_, html) = get(&server.at("/evals?uploaded=encoders/tiny.safetensors")).await;
    assert!(html.contains("Stored as encoders/tiny.safetensors"));
    assert!(
        html.contains("<option value=\"encoders/tiny.safetensors\" selected>"),
        "{html}"
    );
    // The same name again is refused: the stored file stays as it was.
    let res = upload("tiny.safetensors", b"other".to_vec()).await.unwrap();
    assert_eq!(res.status(), 422);
    assert!(res.text().await.unwrap().contains("already exists"));
    assert_eq!(
        std::fs::read(data.join("encoders/tiny.safetensors")).unwrap(),
        bytes
    );

    // The API takes the file as the body.
    let res = client()
        .put(server.at("/api/encoders/api.safetensors"))
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let res = client()
        .put(server.at("/api/encoders/bad.safetensors"))
        .body(b"x".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 422);
    let listed = server.get_json("/api/encoders").await;
    let paths: Vec<&str> = listed["encoders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        vec!["encoders/api.safetensors", "encoders/tiny.safetensors"]
    );

    // Evaluating a file needs a dataset; with one, it runs.
    let res = post_form(
        &server.at("/evals"),
        &[
            ("encoder", "encoders/tiny.safetensors"),
            ("method", "knn"),
            ("device", "cpu"),
        ],
    )
    .await;
    assert_eq!(res.status(), 422);
    assert!(res
        .text()
        .await
        .unwrap()
        .contains("is required when evaluating an encoder file"));
    let res = post_form(
        &server.at("/evals"),
        &[
            ("encoder", "encoders/tiny.safetensors"),
            ("method", "knn"),
            ("dataset", "synthetic"),
            ("device", "cpu"),
        ],
    )
    .await;
    assert_eq!(res.status(), 303);
    let id = location(&res).strip_prefix("/evals/").unwrap().to_string();
    let detail = wait_completed(&server, &id).await;
    assert_eq!(detail["eval"]["encoder"], "encoders/tiny.safetensors");
    assert!(detail["eval"]["run_id"].is_null());
}
