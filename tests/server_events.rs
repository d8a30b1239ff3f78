//! Live events over SSE: every event of a run carries its id, and a client that reconnects with
//! Last-Event-ID receives exactly the events it missed — none lost, none twice.
mod common;

use common::{is_final_state, tiny_run, Server, SseEvent, SseReader};
use std::collections::BTreeSet;

fn ids(events: &[SseEvent]) -> Vec<i64> {
    events.iter().map(|e| e.id.unwrap()).collect()
}

#[tokio::test]
async fn reconnecting_with_last_event_id_gets_every_event_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let id = server.create_run(&tiny_run("streamed", 3)).await;

    // First connection: a few events live, then the client drops off mid-run.
    let mut first = SseReader::open(&server, id, None).await;
    let mut part1 = Vec::new();
    for _ in 0..6 {
        part1.push(first.next().await.unwrap());
    }
    drop(first);
    let last = part1.last().unwrap().id.unwrap();

    // Reconnect after the last id seen: the gap comes from SQLite, then live events follow.
    let mut second = SseReader::open(&server, id, Some(last)).await;
    let part2 = second.until(is_final_state).await;
    drop(second);
    assert_eq!(part2.last().unwrap().data["state"], "completed");

    // A fresh client reading everything from the start sees the same sequence.
    let mut full_reader = SseReader::open(&server, id, None).await;
    let full = full_reader.until(is_final_state).await;
    let mut joined = part1.clone();
    joined.extend(part2.clone());
    assert_eq!(
        joined, full,
        "no event lost or repeated across the reconnect"
    );

    let all = ids(&full);
    assert!(all.windows(2).all(|w| w[0] < w[1]), "ids increase: {all:?}");
    assert_eq!(all.iter().collect::<BTreeSet<_>>().len(), all.len());

    // What a run reports, in order: queued, running, the untrained encoder's evaluation (epoch
    // 0), metrics per step (1..=6), an evaluation and a full checkpoint per epoch, the encoder
    // export, completed.
    let kinds: BTreeSet<&str> = full.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        kinds,
        ["checkpoint", "evaluation", "log", "metrics", "state"]
            .into_iter()
            .collect()
    );
    assert_eq!(full[0].event, "state");
    assert_eq!(full[0].data["state"], "queued");
    let steps: Vec<i64> = full
        .iter()
        .filter(|e| e.event == "metrics")
        .map(|e| e.data["step"].as_i64().unwrap())
        .collect();
    assert_eq!(steps, vec![1, 2, 3, 4, 5, 6]);
    let metrics = full.iter().find(|e| e.event == "metrics").unwrap();
    assert!(metrics.data["values"]["loss"].is_number());
    assert_eq!(metrics.data["epoch"], 0);
    let evals: Vec<i64> = full
        .iter()
        .filter(|e| e.event == "evaluation")
        .map(|e| e.data["epoch"].as_i64().unwrap())
        .collect();
    assert_eq!(evals, vec![0, 1, 2, 3]);
    let ckpts: Vec<&SseEvent> = full.iter().filter(|e| e.event == "checkpoint").collect();
    assert!(ckpts.iter().any(|c| c.data["kind"] == "encoder"));
    let listed = server.checkpoints(id).await;
    for c in &ckpts {
        let row = listed
            .iter()
            .find(|l| l["id"] == c.data["id"])
            .expect("every checkpoint event names a listed checkpoint");
        assert_eq!(row["sha256"], c.data["sha256"]);
        assert_eq!(row["download_url"], c.data["download_url"]);
    }

    // Reconnecting at the very end gets nothing more; an id in the middle gets exactly the rest.
    let mid = all[all.len() / 2];
    let mut tail = SseReader::open(&server, id, Some(mid)).await;
    let rest = tail.until(is_final_state).await;
    assert_eq!(
        ids(&rest),
        all.iter().copied().filter(|i| *i > mid).collect::<Vec<_>>()
    );

    // The query parameter works like the header (EventSource cannot set headers).
    let mut by_query = SseReader::open_path(
        &server,
        &format!("/api/runs/{id}/events?last_event_id={mid}"),
    )
    .await;
    assert_eq!(by_query.until(is_final_state).await, rest);
    let resp = server
        .get(&format!("/api/runs/{id}/events?last_event_id=abc"))
        .await;
    assert_eq!(resp.status(), 400);
}

#[tokio::test]
async fn many_clients_see_the_same_live_stream() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let id = server.create_run(&tiny_run("watched", 2)).await;
    let mut readers = Vec::new();
    for _ in 0..20 {
        readers.push(SseReader::open(&server, id, None).await);
    }
    let mut seen = Vec::new();
    for r in &mut readers {
        seen.push(ids(&r.until(is_final_state).await));
    }
    assert!(seen.iter().all(|s| *s == seen[0]));
    assert!(seen[0].len() > 8);
    let text = server.get("/metrics").await.text().await.unwrap();
    assert!(text.contains("moco_event_subscribers 20"), "{text}");
}
