// Run page: charts from /api/runs/{id}/metrics and /evaluations, then live over SSE
// (/api/runs/{id}/events: metrics, state, evaluation, checkpoint, log). The numbers, tables and
// the log are server-rendered; this script keeps them current.
"use strict";

(() => {
  const page = document.getElementById("run-page");
  if (!page) return;
  const runId = page.dataset.runId;
  const info = Moco.embedded("run-data") || {};
  const resumable = new Set(info.resumable_states || []);
  const cancellable = new Set(info.cancellable_states || []);
  const TERMINAL = new Set(Moco.STATES.filter((s) => !Moco.ACTIVE.has(s)));
  const METRICS = [
    "loss", "lr", "momentum", "top1", "pos_logit", "neg_logit", "neg_logit_max", "queue_fill", "queue_ptr",
    "key_age_mean", "key_age_max", "queue_similarity", "drift", "images_per_sec", "data_wait_ms",
    "device_memory_mb", "device_memory_peak_mb", "loss_scale", "grad_norm", "grad_norm_first",
  ];
  // A run on several processes: each rank's images/s of its own work (metric names as
  // train::events::metric::per_rank spells them).
  const RANKS = Array.from({ length: info.ranks || 0 }, (_, r) => "images_per_sec_rank" + r);
  const RANK_COMM = Array.from({ length: info.ranks || 0 }, (_, r) => "comm_ms_rank" + r);
  METRICS.push(...RANKS, ...RANK_COMM);
  const $ = (id) => document.getElementById(id);

  const store = new Moco.SeriesStore();
  const knn = new Moco.SeriesStore();
  let state = page.dataset.state;
  let loggedState = state;
  let smoothing = 0.9;

  const charts = {
    loss: new Moco.Chart($("chart-loss"), {
      yLabel: "loss",
      series: [
        { label: "loss (raw)", color: "rgba(47, 111, 223, 0.35)", width: 1 },
        { label: "loss (EMA)", color: "#2f6fdf", width: 2 },
      ],
    }),
    lr: new Moco.Chart($("chart-lr"), {
      yLabel: "lr",
      series: [{ label: "lr" }, { label: "m", scale: "m", color: "#e8590c" }],
      axes: [{ scale: "m", label: "m" }],
      // m lives just below 1: show [m − (1 − m)/2, 1] rather than an automatic range around it.
      scales: [{ name: "m", options: { range: (u, min, max) => [Math.max(0, Math.min(min, 1) - (1 - Math.min(min, 1)) / 2 - 1e-4), Math.max(1, max)] } }],
    }),
    top1: new Moco.Chart($("chart-top1"), { yLabel: "top-1", series: [{ label: "top-1", color: "#2b8a3e" }] }),
    logits: new Moco.Chart($("chart-logits"), {
      yLabel: "q·k",
      series: [
        { label: "positive", color: "#2b8a3e", width: 2 },
        { label: "negative (mean)", color: "#c92a2a" },
        { label: "negative (max)", color: "#c92a2a", dash: [4, 4] },
      ],
    }),
    knn: new Moco.Chart($("chart-knn"), {
      xLabel: "epoch",
      yLabel: "kNN top-1 %",
      series: [{ label: "kNN top-1 %", color: "#ae3ec9", width: 2, points: true }],
    }),
    speed: new Moco.Chart($("chart-speed"), {
      yLabel: "images/s",
      series: [{ label: "images/s", color: "#0c8599" }, { label: "data wait ms", scale: "ms", color: "#e8590c" }],
      axes: [{ scale: "ms", label: "ms" }],
    }),
    grad: new Moco.Chart($("chart-grad"), {
      yLabel: "‖g‖",
      series: [
        { label: "whole encoder", color: "#2f6fdf" },
        { label: "first layer", scale: "first", color: "#e8590c" },
      ],
      axes: [{ scale: "first", label: "first layer" }],
    }),
    ranks: $("chart-ranks") && new Moco.Chart($("chart-ranks"), {
      yLabel: "images/s (own work)",
      series: RANKS.map((_, r) => ({ label: "rank " + r })),
    }),
    queue: new Moco.Chart($("chart-queue"), {
      yLabel: "similarity",
      series: [{ label: "queue similarity", color: "#c92a2a" }, { label: "drift", scale: "drift", color: "#5c940d" }],
      axes: [{ scale: "drift", label: "drift" }],
    }),
  };

  const redraw = Moco.throttle(() => {
    const loss = store.aligned(["loss"]);
    charts.loss.setData([loss[0], loss[1], Moco.ema(loss[1], smoothing)]);
    $("chart-loss").dataset.points = String(loss[0].length);
    charts.lr.setData(store.aligned(["lr", "momentum"]));
    charts.top1.setData(store.aligned(["top1"]));
    charts.logits.setData(store.aligned(["pos_logit", "neg_logit", "neg_logit_max"]));
    const k = knn.aligned(["knn_top1"]);
    charts.knn.setData(k);
    $("chart-knn").dataset.points = String(k[0].length);
    charts.speed.setData(store.aligned(["images_per_sec", "data_wait_ms"]));
    charts.grad.setData(store.aligned(["grad_norm", "grad_norm_first"]));
    charts.queue.setData(store.aligned(["queue_similarity", "drift"]));
    if (charts.ranks) charts.ranks.setData(store.aligned(RANKS));
    updateQueueStats();
  });

  function updateQueueStats() {
    document.querySelectorAll("[data-metric]").forEach((el) => {
      const name = el.dataset.metric;
      const v = store.last(name);
      if (v == null) return;
      let text;
      if (name === "queue_fill") text = Moco.fixed(v * 100, 1) + " %";
      else if (name === "queue_ptr" || name === "key_age_max") text = String(Math.round(v));
      else if (name === "key_age_mean") text = Moco.fixed(v, 1);
      else if (name === "device_memory_mb" || name === "device_memory_peak_mb") text = Math.round(v) + " MiB";
      else if (name === "loss_scale") text = String(Math.round(v));
      else text = Moco.num(v);
      el.textContent = text;
    });
  }

  const slider = $("smoothing");
  const sliderValue = $("smoothing-value");
  if (slider) {
    slider.addEventListener("input", () => {
      smoothing = Math.min(0.999, Math.max(0, Number(slider.value)));
      sliderValue.textContent = smoothing.toFixed(3);
      redraw();
    });
  }

  // ---- run summary (progress, numbers, buttons) ----

  function setStat(name, text) {
    const el = document.querySelector('[data-stat="' + name + '"]');
    if (el && el.textContent !== text) el.textContent = text;
  }

  function setTimeStat(name, iso) {
    const el = document.querySelector('[data-stat="' + name + '"]');
    if (!el) return;
    const t = el.querySelector("time");
    if ((t ? t.getAttribute("datetime") : null) === (iso || null)) return;
    el.replaceChildren(Moco.timeEl(iso));
  }

  function applyState(newState, error) {
    state = newState;
    page.dataset.state = newState;
    Moco.setBadge($("run-state"), newState);
    $("cancel-form").hidden = !cancellable.has(newState);
    $("resume-form").hidden = !resumable.has(newState);
    const box = $("run-error");
    if (error) {
      $("run-error-text").textContent = error;
      box.querySelector("strong").textContent = "The run " + newState + ":";
      box.hidden = false;
    }
  }

  let lastSummary = null;

  // Between summary refreshes, the step of each metrics event moves the progress bar.
  function applyMetricsProgress(m) {
    if (!lastSummary || !(lastSummary.total_steps > 0) || m.step <= lastSummary.step) return;
    const run = Object.assign({}, lastSummary, {
      step: m.step,
      epoch: Math.max(lastSummary.epoch, m.epoch + 1),
      progress: Math.min(1, m.step / lastSummary.total_steps),
    });
    if (m.values && Moco.isNum(m.values.loss)) run.last_loss = m.values.loss;
    if (m.values && Moco.isNum(m.values.images_per_sec)) run.images_per_sec = m.values.images_per_sec;
    lastSummary = run;
    Moco.updateProgress($("run-progress"), run);
    setStat("last_loss", Moco.num(run.last_loss));
    setStat("images_per_sec", Moco.isNum(run.images_per_sec) ? Moco.fixed(run.images_per_sec, 1) : "—");
  }

  function applySummary(run) {
    lastSummary = run;
    applyState(run.state, run.error);
    Moco.updateProgress($("run-progress"), run);
    setStat("last_loss", Moco.num(run.last_loss));
    setStat("best_knn", Moco.percent(run.best_knn));
    setStat("last_knn", Moco.percent(run.last_knn));
    setStat("images_per_sec", Moco.isNum(run.images_per_sec) ? Moco.fixed(run.images_per_sec, 1) : "—");
    setStat("device", run.device);
    setTimeStat("started_at", run.started_at);
    setTimeStat("finished_at", run.finished_at);
  }

  let summaryPending = false;
  async function refreshSummary() {
    if (summaryPending) return;
    summaryPending = true;
    try {
      const body = await Moco.getJson("/api/runs/" + runId);
      applySummary(body.run);
    } catch (err) {
      console.warn("summary refresh failed", err);
    } finally {
      summaryPending = false;
    }
  }

  // ---- checkpoints and log ----

  function addCheckpoint(c) {
    const table = $("checkpoints");
    if (table.querySelector('tr[data-checkpoint-id="' + c.id + '"]')) return;
    const tr = document.createElement("tr");
    tr.dataset.checkpointId = c.id;
    tr.dataset.kind = c.kind;
    const cell = (text, cls) => {
      const td = document.createElement("td");
      if (cls) td.className = cls;
      td.textContent = text;
      tr.appendChild(td);
      return td;
    };
    cell(c.kind === "full" ? "full (resumable)" : "encoder (safetensors)");
    cell(String(c.epoch), "num");
    cell(String(c.step), "num");
    cell(Moco.bytes(c.size_bytes), "num nowrap");
    cell((c.sha256 || "").slice(0, 12), "mono").title = c.sha256 || "";
    const td = document.createElement("td");
    const a = document.createElement("a");
    a.className = "button small download-" + c.kind;
    a.href = c.download_url;
    a.setAttribute("download", "");
    a.textContent = "Download " + c.kind;
    td.appendChild(a);
    tr.appendChild(td);
    table.querySelector("tbody").appendChild(tr);
    table.hidden = false;
    $("checkpoints-empty").hidden = true;
  }

  let lastEventId = Number(page.dataset.lastEventId || 0);
  function addLog(id, level, message) {
    if (id && id <= lastEventId) return;
    if (id) lastEventId = id;
    const list = $("event-log");
    const li = document.createElement("li");
    if (id) li.dataset.eventId = id;
    li.appendChild(Moco.timeEl(new Date().toISOString()));
    const lvl = document.createElement("span");
    lvl.className = "lvl lvl-" + level;
    lvl.textContent = level;
    const msg = document.createElement("span");
    msg.className = "msg";
    msg.textContent = message;
    li.append(lvl, msg);
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 30;
    list.appendChild(li);
    if (atBottom) list.scrollTop = list.scrollHeight;
    $("log-empty").hidden = true;
  }

  // ---- data: backfill, then live ----

  async function backfill() {
    const [metrics, evaluations] = await Promise.all([
      Moco.getJson("/api/runs/" + runId + "/metrics?names=" + METRICS.join(",") + "&max_points=2000"),
      Moco.getJson("/api/runs/" + runId + "/evaluations"),
    ]);
    Object.entries(metrics.series || {}).forEach(([name, points]) =>
      points.forEach(([step, value]) => store.add(name, step, value))
    );
    (evaluations.evaluations || []).forEach((e) => knn.add("knn_top1", e.epoch, e.knn_top1));
    redraw();
  }

  const live = $("live-status");
  let source = null;
  let summaryTimer = null;

  function stopLive() {
    if (source) source.close();
    source = null;
    if (summaryTimer) clearInterval(summaryTimer);
    summaryTimer = null;
    if (live) live.textContent = "";
  }

  function startLive() {
    // Everything up to the rendered page's newest event is already on the page or in the
    // backfill; a reconnect continues from the last event received (Last-Event-ID).
    source = new EventSource("/api/runs/" + runId + "/events?last_event_id=" + lastEventId);
    source.onopen = () => live && (live.textContent = "● live");
    source.onerror = () => live && (live.textContent = "reconnecting…");
    const on = (type, fn) =>
      source.addEventListener(type, (e) => {
        try {
          fn(JSON.parse(e.data), Number(e.lastEventId) || 0);
        } catch (err) {
          console.warn("bad " + type + " event", err);
        }
      });
    on("metrics", (m) => {
      Object.entries(m.values || {}).forEach(([name, value]) => store.add(name, m.step, value));
      applyMetricsProgress(m);
      redraw();
    });
    on("evaluation", (e, id) => {
      knn.add("knn_top1", e.epoch, e.knn_top1);
      const when = e.epoch === 0 ? "of the untrained encoder (epoch 0)" : "after epoch " + e.epoch;
      addLog(id, "info", "kNN top-1 " + when + ": " + Moco.percent(e.knn_top1));
      redraw();
      refreshSummary();
    });
    on("checkpoint", (c, id) => {
      addCheckpoint(c);
      addLog(id, "info", c.kind + " checkpoint saved at epoch " + c.epoch + ", step " + c.step + " (" + Moco.bytes(c.size_bytes) + ")");
    });
    on("log", (l, id) => addLog(id, l.level, l.message));
    on("state", (s, id) => {
      applyState(s.state, s.error);
      // A repeated state is a progress update, not a change.
      if (s.state !== loggedState) {
        loggedState = s.state;
        addLog(id, s.state === "failed" ? "error" : "info", "state: " + s.state + (s.error ? " — " + s.error : ""));
      }
      refreshSummary();
      if (TERMINAL.has(s.state)) {
        // Final numbers (kNN, end time) land with the state change; fetch them once more.
        setTimeout(refreshSummary, 1000);
        stopLive();
      }
    });
    summaryTimer = setInterval(refreshSummary, 3000);
    refreshSummary();
  }

  backfill().catch((err) => console.warn("backfill failed", err));
  if (!TERMINAL.has(state)) startLive();

  // Cancelling stops the training (it can be resumed later): ask first, a stray click is costly.
  const cancelForm = $("cancel-form");
  if (cancelForm) {
    cancelForm.addEventListener("submit", (e) => {
      if (!window.confirm("Cancel this run? It stops after the current step and keeps a resumable checkpoint.")) {
        e.preventDefault();
      }
    });
  }

  // A resumed run becomes queued again: follow it live once more.
  const resumeForm = $("resume-form");
  if (resumeForm) resumeForm.addEventListener("submit", () => stopLive());
})();
