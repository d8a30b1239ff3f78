// Shared helpers of the dashboard pages: formatting, state badges, charts (uPlot) and live
// updates. Every page is complete without JavaScript; these scripts only keep it live.
"use strict";

const Moco = (() => {
  // The run states and which of them are still moving, as the server defines them.
  const RUN_STATES = embedded("run-states") || { all: [], active: [] };
  const STATES = RUN_STATES.all;
  const ACTIVE = new Set(RUN_STATES.active);

  function isNum(v) {
    return typeof v === "number" && Number.isFinite(v);
  }

  // Numbers the way the server renders them: a few significant digits, exponent for tiny values.
  function num(v, digits = 4) {
    if (!isNum(v)) return "—";
    if (v === 0) return "0";
    const a = Math.abs(v);
    if (a >= 1e6 || a < 1e-3) return v.toExponential(2);
    return String(Number(v.toPrecision(digits)));
  }

  function fixed(v, d) {
    return isNum(v) ? v.toFixed(d) : "—";
  }

  function percent(v) {
    return isNum(v) ? v.toFixed(2) + " %" : "—";
  }

  function duration(seconds) {
    if (!isNum(seconds) || seconds < 0) return "—";
    const s = Math.round(seconds);
    if (s < 60) return s + " s";
    const m = Math.floor(s / 60);
    if (m < 60) return m + " min " + (s % 60) + " s";
    const h = Math.floor(m / 60);
    if (h < 48) return h + " h " + (m % 60) + " min";
    return Math.floor(h / 24) + " d " + (h % 24) + " h";
  }

  function bytes(n) {
    if (!isNum(n)) return "—";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    let v = n;
    while (v >= 1024 && i < units.length - 1) {
      v /= 1024;
      i++;
    }
    return (i === 0 ? v : v.toFixed(1)) + " " + units[i];
  }

  // RFC 3339 from the server → the viewer's local time, compact.
  function localTime(iso) {
    if (!iso) return "—";
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return iso;
    const pad = (x) => String(x).padStart(2, "0");
    return (
      d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " +
      pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds())
    );
  }

  // Rewrites every server-rendered <time datetime> in `root` to local time.
  function localizeTimes(root = document) {
    root.querySelectorAll("time[datetime]").forEach((t) => {
      t.textContent = localTime(t.getAttribute("datetime"));
      t.title = t.getAttribute("datetime");
    });
  }

  function timeEl(iso) {
    if (!iso) return document.createTextNode("—");
    const t = document.createElement("time");
    t.setAttribute("datetime", iso);
    t.textContent = localTime(iso);
    t.title = iso;
    return t;
  }

  function setBadge(el, state) {
    if (!el) return;
    STATES.forEach((s) => el.classList.remove(s));
    el.classList.add(state);
    el.textContent = state;
  }

  // Same text as the server's progress cell.
  function progressText(run) {
    const pct = Math.round((run.progress || 0) * 1000) / 10;
    // The summary's epoch is 1-based (0 before the first step).
    const epoch = Math.max(0, Math.min(run.epoch, run.epochs));
    const steps = run.total_steps > 0 ? run.step + "/" + run.total_steps : String(run.step);
    let text = pct.toFixed(1) + " % · epoch " + epoch + "/" + run.epochs + " · step " + steps;
    if (run.state === "running" && isNum(run.eta_seconds)) text += " · ETA " + duration(run.eta_seconds);
    return text;
  }

  function updateProgress(container, run) {
    if (!container) return;
    const bar = container.querySelector("progress");
    if (bar) {
      bar.value = run.progress || 0;
      bar.textContent = Math.round((run.progress || 0) * 100) + " %";
    }
    const text = container.querySelector(".progress-text");
    if (text) text.textContent = progressText(run);
  }

  async function getJson(url) {
    const res = await fetch(url, { headers: { Accept: "application/json" } });
    if (!res.ok) throw new Error(url + ": HTTP " + res.status);
    return res.json();
  }

  // Debiased exponential moving average (as TensorBoard smooths): weight in [0, 0.999].
  function ema(values, weight) {
    const out = new Array(values.length);
    let last = 0;
    let n = 0;
    for (let i = 0; i < values.length; i++) {
      const v = values[i];
      if (!isNum(v)) {
        out[i] = null;
        continue;
      }
      last = last * weight + (1 - weight) * v;
      n++;
      const debias = weight === 0 ? 1 : 1 - Math.pow(weight, n);
      out[i] = last / debias;
    }
    return out;
  }

  // A growing set of named series keyed by step, merged from the REST backfill and SSE.
  class SeriesStore {
    constructor() {
      this.series = new Map();
    }
    get(name) {
      let s = this.series.get(name);
      if (!s) {
        s = { x: [], y: [] };
        this.series.set(name, s);
      }
      return s;
    }
    add(name, x, y) {
      if (!isNum(x) || !isNum(y)) return;
      const s = this.get(name);
      const n = s.x.length;
      if (n === 0 || x > s.x[n - 1]) {
        s.x.push(x);
        s.y.push(y);
        return;
      }
      // Out of order (backfill after live points): binary search, replace or insert.
      let lo = 0;
      let hi = n;
      while (lo < hi) {
        const mid = (lo + hi) >> 1;
        if (s.x[mid] < x) lo = mid + 1;
        else hi = mid;
      }
      if (s.x[lo] === x) s.y[lo] = y;
      else {
        s.x.splice(lo, 0, x);
        s.y.splice(lo, 0, y);
      }
    }
    last(name) {
      const s = this.series.get(name);
      return s && s.y.length ? s.y[s.y.length - 1] : null;
    }
    count(name) {
      const s = this.series.get(name);
      return s ? s.x.length : 0;
    }
    // uPlot's aligned form: one x array (union of steps) and one y array per name.
    aligned(names) {
      const xs = new Set();
      names.forEach((n) => this.get(n).x.forEach((x) => xs.add(x)));
      const x = Array.from(xs).sort((a, b) => a - b);
      const index = new Map(x.map((v, i) => [v, i]));
      const ys = names.map((n) => {
        const s = this.get(n);
        const y = new Array(x.length).fill(null);
        for (let i = 0; i < s.x.length; i++) y[index.get(s.x[i])] = s.y[i];
        return y;
      });
      return [x, ...ys];
    }
  }

  const PALETTE = ["#2f6fdf", "#e8590c", "#2b8a3e", "#ae3ec9", "#c92a2a", "#0c8599", "#5c940d", "#d6336c"];

  function cssVar(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  }

  // A uPlot chart that fills its container's width and follows the colour scheme.
  // series: [{label, color?, scale?, width?, dash?}]; axes: extra y axes as {scale, side, label}.
  class Chart {
    constructor(container, opts) {
      this.container = container;
      this.opts = opts;
      this.plot = null;
      this.data = null;
      this.empty = container.querySelector(".chart-empty");
      this.resizeObserver = new ResizeObserver(() => this.resize());
      this.resizeObserver.observe(container);
      const media = window.matchMedia("(prefers-color-scheme: dark)");
      media.addEventListener("change", () => this.rebuild());
    }
    width() {
      return Math.max(240, Math.floor(this.container.clientWidth));
    }
    build() {
      const text = cssVar("--muted") || "#666";
      const grid = cssVar("--border") || "#ddd";
      const tickValues = (u, splits) => splits.map((v) => (v == null ? "" : num(v, 3)));
      const axis = (extra) =>
        Object.assign(
          { stroke: text, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1 }, values: tickValues },
          extra
        );
      const series = [{ label: this.opts.xLabel || "step" }].concat(
        this.opts.series.map((s, i) => ({
          label: s.label,
          stroke: s.color || PALETTE[i % PALETTE.length],
          width: s.width || 1.5,
          dash: s.dash,
          scale: s.scale || "y",
          spanGaps: true,
          // Points always for sparse series (per epoch); otherwise uPlot's default, which shows
          // them only while they are far apart (a single step is still visible).
          points: s.points ? { show: true, size: 5 } : { size: 4 },
          value: (u, v) => (v == null ? "—" : num(v)),
        }))
      );
      // Steps and epochs are whole numbers: no ticks between them.
      const wholeIncrs = [];
      for (let k = 1; k <= 1e9; k *= 10) wholeIncrs.push(k, 2 * k, 5 * k);
      const axes = [axis({ label: this.opts.xLabel || "step", labelSize: 18, incrs: wholeIncrs })].concat(
        [axis({ scale: "y", label: this.opts.yLabel || "", labelSize: this.opts.yLabel ? 18 : 0, size: 64 })],
        (this.opts.axes || []).map((a) =>
          axis({ scale: a.scale, side: 1, label: a.label || "", labelSize: a.label ? 18 : 0, size: 64, grid: { show: false } })
        )
      );
      const scales = { x: { time: false } };
      (this.opts.scales || []).forEach((s) => (scales[s.name] = s.options));
      this.plot = new uPlot(
        {
          width: this.width(),
          height: this.opts.height || 220,
          scales,
          series,
          axes,
          legend: { live: true },
          cursor: { drag: { x: true, y: false } },
        },
        this.data || [[], ...this.opts.series.map(() => [])],
        this.container
      );
    }
    setData(data) {
      this.data = data;
      const hasPoints = data[0].length > 0;
      if (this.empty) this.empty.hidden = hasPoints;
      if (!this.plot) this.build();
      else this.plot.setData(data);
    }
    resize() {
      if (this.plot) this.plot.setSize({ width: this.width(), height: this.opts.height || 220 });
    }
    rebuild() {
      if (this.plot) {
        this.plot.destroy();
        this.plot = null;
      }
      this.build();
    }
  }

  // Coalesces bursts of updates into one redraw per animation frame.
  function throttle(fn) {
    let queued = false;
    return () => {
      if (queued) return;
      queued = true;
      requestAnimationFrame(() => {
        queued = false;
        fn();
      });
    };
  }

  // Reads JSON embedded by the server in <script type="application/json" id=...>.
  function embedded(id) {
    const el = document.getElementById(id);
    return el ? JSON.parse(el.textContent) : null;
  }

  document.addEventListener("DOMContentLoaded", () => {
    localizeTimes();
    // Come back to this page after signing in.
    document.querySelectorAll("a.sign-in").forEach((a) => {
      a.href = "/login?next=" + encodeURIComponent(window.location.pathname + window.location.search);
    });
  });

  return {
    STATES, ACTIVE, isNum, num, fixed, percent, duration, bytes, localTime, localizeTimes, timeEl,
    setBadge, progressText, updateProgress, getJson, ema, SeriesStore, Chart, PALETTE, throttle, embedded,
  };
})();
