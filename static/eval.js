// Evaluation page: the per-epoch curves, then live by polling /api/evals/{id} once a second
// while the evaluation is queued or running. The numbers and tables are server-rendered; this
// script keeps them current and reloads the page once it ends (for the final result).
"use strict";

(() => {
  const page = document.getElementById("eval-page");
  if (!page) return;
  const info = Moco.embedded("eval-data") || {};
  const evalId = info.id;
  const cancellable = new Set(info.cancellable_states || []);
  const restartable = new Set(info.restartable_states || []);
  const $ = (id) => document.getElementById(id);
  const POLL_MS = 1000;

  const charts = {
    loss: new Moco.Chart($("chart-loss"), {
      xLabel: "epoch",
      yLabel: "loss",
      series: [{ label: "training loss", color: "#2f6fdf", width: 2, points: true }],
    }),
    accuracy: new Moco.Chart($("chart-accuracy"), {
      xLabel: "epoch",
      yLabel: "%",
      series: [
        { label: "top-1 %", color: "#2b8a3e", width: 2, points: true },
        { label: "top-5 %", color: "#ae3ec9", points: true },
      ],
    }),
  };

  function setStat(name, text) {
    const el = document.querySelector('[data-stat="' + name + '"]');
    if (el) el.textContent = text;
  }

  function draw(detail) {
    const epochs = detail.epochs || [];
    const x = epochs.map((r) => r.epoch);
    charts.loss.setData([x, epochs.map((r) => r.loss)]);
    charts.accuracy.setData([x, epochs.map((r) => r.top1), epochs.map((r) => r.top5)]);
  }

  // Live values; the server-rendered ones stand until the first poll.
  function show(detail) {
    const e = detail.eval;
    draw(detail);
    Moco.setBadge($("eval-state"), e.state);
    Moco.updateProgress($("eval-progress"), e);
    setStat("top1", Moco.percent(e.top1));
    setStat("top5", Moco.percent(e.top5));
    setStat("best_top1", Moco.percent(e.best_top1));
    setStat("last_loss", Moco.num(e.last_loss));
    $("cancel-form").hidden = !cancellable.has(e.state);
    $("restart-form").hidden = !restartable.has(e.state);
    const error = $("eval-error");
    if (error) {
      error.hidden = !e.error;
      $("eval-error-text").textContent = e.error || "";
    }
    return e.state;
  }

  async function poll() {
    try {
      const detail = await Moco.getJson("/api/evals/" + evalId);
      const state = show(detail);
      if (!Moco.ACTIVE.has(state)) {
        // Ended while the page was open: render the result tables on the server.
        if (Moco.ACTIVE.has(page.dataset.state)) window.location.reload();
        return;
      }
    } catch (err) {
      // The server may be restarting: keep trying.
    }
    setTimeout(poll, POLL_MS);
  }

  if (info.detail) draw(info.detail);
  if (Moco.ACTIVE.has(page.dataset.state)) setTimeout(poll, POLL_MS);
})();
