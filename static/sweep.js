// Sweep page: the table, the members and the progress kept current while members train; the
// members' kNN curves overlaid and, when the grid varies K, best kNN against K per mechanism.
"use strict";

(() => {
  const page = document.getElementById("sweep-page");
  let detail = Moco.embedded("sweep-data");
  if (!page || !detail) return;
  const id = page.dataset.sweepId;
  const knnCurves = new Map();

  function stat(s) {
    if (!s) return "—";
    return s.n > 1 ? s.mean.toFixed(1) + " ± " + s.spread.toFixed(1) : s.mean.toFixed(1);
  }

  function renderTable() {
    const fields = detail.sweep.fields.filter((f) => f !== "seed");
    const body = document.querySelector("#sweep-table tbody");
    const hasPaper = typeof detail.paper_source === "string";
    body.replaceChildren(
      ...detail.rows.map((row) => {
        const tr = document.createElement("tr");
        const cell = (text, name) => {
          const td = document.createElement("td");
          td.textContent = text;
          if (name) td.dataset.cell = name;
          tr.appendChild(td);
          return td;
        };
        fields.forEach((f) => {
          const pair = row.values.find((p) => p[0] === f);
          cell(pair ? String(pair[1]) : "");
        });
        cell(String(row.negatives));
        const runs = cell("");
        row.run_ids.forEach((r) => {
          const a = document.createElement("a");
          a.href = "/runs/" + r;
          a.textContent = "#" + r;
          runs.append(a, " ");
        });
        cell(row.outcome, "outcome");
        cell(stat(row.best_knn), "best");
        cell(stat(row.final_knn), "final");
        cell(stat(row.linear_top1), "linear");
        if (hasPaper) cell(row.paper || "—", "paper");
        return tr;
      })
    );
    detail.members.forEach((m) => {
      const tr = document.querySelector('#members-table tr[data-run-id="' + m.run.id + '"]');
      if (!tr) return;
      const badge = tr.querySelector('[data-cell="state"]');
      badge.textContent = m.outcome;
      Moco.setBadge(badge, m.run.state);
      badge.textContent = m.outcome;
      tr.querySelector('[data-cell="progress"]').textContent = Math.round(m.run.progress * 100) + " %";
      tr.querySelector('[data-cell="best"]').textContent = Moco.percent(m.run.best_knn);
    });
    const state = document.getElementById("sweep-state");
    Moco.setBadge(state, detail.sweep.state);
    state.textContent = detail.sweep.state;
    page.dataset.state = detail.sweep.state;
    document.querySelector("#sweep-progress progress").value = detail.sweep.progress;
    const counts = Object.entries(detail.sweep.counts).map(([s, n]) => n + " " + s).join(", ");
    document.getElementById("sweep-counts").textContent = Math.round(detail.sweep.progress * 100) + " % · " + counts;
    const resumable = detail.members.some((m) => ["cancelled", "interrupted"].includes(m.run.state));
    const active = ["running", "queued"].includes(detail.sweep.state);
    document.getElementById("resume-form").hidden = !resumable;
    document.getElementById("cancel-form").hidden = !(active || detail.members.some((m) => m.run.state === "interrupted"));
  }

  // kNN by epoch: one series per member.
  const knnChart = new Moco.Chart(document.getElementById("knn-chart"), {
    xLabel: "epoch",
    yLabel: "kNN top-1 %",
    series: detail.members.map((m) => ({ label: m.label, width: 2, points: true })),
  });

  async function loadCurves() {
    await Promise.all(
      detail.members.map(async (m) => {
        const known = knnCurves.get(m.run.id);
        if (known && known.done) return;
        try {
          const body = await Moco.getJson("/api/runs/" + m.run.id + "/evaluations");
          knnCurves.set(m.run.id, { points: body.evaluations, done: !Moco.ACTIVE.has(m.run.state) });
        } catch (_) {
          // A member deleted meanwhile: its curve stays as it was.
        }
      })
    );
    const epochs = new Set();
    knnCurves.forEach((c) => c.points.forEach((p) => epochs.add(p.epoch)));
    const xs = Array.from(epochs).sort((a, b) => a - b);
    const ys = detail.members.map((m) => {
      const c = knnCurves.get(m.run.id);
      const byEpoch = new Map((c ? c.points : []).map((p) => [p.epoch, p.knn_top1]));
      return xs.map((x) => (byEpoch.has(x) ? byEpoch.get(x) : null));
    });
    if (xs.length) knnChart.setData([xs, ...ys]);
  }

  // Best kNN against K, one series per mechanism, when the grid varies K (the paper's Figure 3).
  const kCard = document.getElementById("k-card");
  let kChart = null;
  function renderK() {
    const ks = Array.from(new Set(detail.rows.map((r) => r.negatives))).sort((a, b) => a - b);
    if (ks.length < 2) return;
    const mechanismOf = (row) => {
      const pair = row.values.find((p) => p[0] === "mechanism");
      return pair ? String(pair[1]) : "moco";
    };
    const mechanisms = Array.from(new Set(detail.rows.map(mechanismOf)));
    if (!kChart) {
      kCard.hidden = false;
      kChart = new Moco.Chart(document.getElementById("k-chart"), {
        xLabel: "K (negatives)",
        yLabel: "best kNN %",
        series: mechanisms.map((m) => ({ label: m, width: 2, points: true })),
      });
    }
    const ys = mechanisms.map((mech) =>
      ks.map((k) => {
        const row = detail.rows.find((r) => r.negatives === k && mechanismOf(r) === mech);
        return row && row.best_knn ? row.best_knn.mean : null;
      })
    );
    kChart.setData([ks, ...ys]);
  }

  async function refresh() {
    try {
      detail = await Moco.getJson("/api/sweeps/" + id);
    } catch (_) {
      return;
    }
    renderTable();
    renderK();
    await loadCurves();
  }

  renderK();
  loadCurves();
  setInterval(() => {
    if (["running", "queued"].includes(detail.sweep.state)) refresh();
  }, 2000);
})();
