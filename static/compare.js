// Compare page: the chosen metrics of several runs overlaid, one chart per metric.
"use strict";

(() => {
  const data = Moco.embedded("compare-data");
  const container = document.getElementById("compare-charts");
  if (!data || !container || data.runs.length === 0) return;

  // One store per run: step-indexed metrics, and kNN by epoch.
  const stores = new Map(data.runs.map((r) => [r.id, new Moco.SeriesStore()]));
  const charts = new Map();
  let smoothing = 0.6;

  function selected() {
    return Array.from(document.querySelectorAll('#metric-picker input[type="checkbox"]:checked')).map((c) => c.value);
  }

  function metricInfo(name) {
    return data.metrics.find((m) => m.name === name);
  }

  function chartFor(name) {
    let entry = charts.get(name);
    if (entry) return entry;
    const info = metricInfo(name);
    const card = document.createElement("div");
    card.className = "card chart-card";
    card.dataset.metric = name;
    const h = document.createElement("h3");
    h.textContent = info.label;
    const div = document.createElement("div");
    div.className = "chart";
    div.id = "compare-chart-" + name;
    const empty = document.createElement("div");
    empty.className = "chart-empty";
    empty.textContent = "No data yet";
    div.appendChild(empty);
    card.append(h, div);
    container.appendChild(card);
    const chart = new Moco.Chart(div, {
      xLabel: info.per_epoch ? "epoch" : "step",
      yLabel: info.label,
      series: data.runs.map((r) => ({ label: r.label, color: r.color, width: 2, points: info.per_epoch })),
    });
    entry = { card, chart, div };
    charts.set(name, entry);
    return entry;
  }

  function draw() {
    const wanted = new Set(selected());
    charts.forEach((entry, name) => (entry.card.hidden = !wanted.has(name)));
    wanted.forEach((name) => {
      const info = metricInfo(name);
      const { chart, div } = chartFor(name);
      const xs = new Set();
      data.runs.forEach((r) => stores.get(r.id).get(name).x.forEach((x) => xs.add(x)));
      const x = Array.from(xs).sort((a, b) => a - b);
      const index = new Map(x.map((v, i) => [v, i]));
      let points = 0;
      const ys = data.runs.map((r) => {
        const s = stores.get(r.id).get(name);
        const y = new Array(x.length).fill(null);
        const values = info.smooth ? Moco.ema(s.y, smoothing) : s.y;
        s.x.forEach((step, i) => (y[index.get(step)] = values[i]));
        points += s.x.length;
        return y;
      });
      chart.setData([x, ...ys]);
      div.dataset.points = String(points);
    });
    // Keep the chosen metrics in the address (shareable), with readable commas.
    const url = new URL(window.location.href);
    url.searchParams.set("metrics", Array.from(wanted).join(","));
    history.replaceState(null, "", url.pathname + "?" + url.searchParams.toString().replace(/%2C/g, ","));
  }

  document.getElementById("metric-picker").addEventListener("change", draw);
  const slider = document.getElementById("smoothing");
  const out = document.getElementById("smoothing-value");
  slider.addEventListener("input", () => {
    smoothing = Math.min(0.999, Math.max(0, Number(slider.value)));
    out.textContent = smoothing.toFixed(3);
    draw();
  });

  const stepMetrics = data.metrics.filter((m) => !m.per_epoch).map((m) => m.name);
  Promise.all(
    data.runs.map(async (r) => {
      const store = stores.get(r.id);
      const [metrics, evaluations] = await Promise.all([
        Moco.getJson("/api/runs/" + r.id + "/metrics?names=" + stepMetrics.join(",") + "&max_points=1500"),
        Moco.getJson("/api/runs/" + r.id + "/evaluations"),
      ]);
      Object.entries(metrics.series || {}).forEach(([name, pts]) => pts.forEach(([s, v]) => store.add(name, s, v)));
      (evaluations.evaluations || []).forEach((e) => store.add("knn_top1", e.epoch, e.knn_top1));
    })
  )
    .catch((err) => console.warn("compare data failed", err))
    .finally(draw);
})();
