// The Datasets page: starts downloads through the JSON API, follows them (polling
// /api/datasets/downloads) with a bar, percent and ETA, shows the reason of a failure, and when
// one finishes refreshes the table from the server. Mean/std not yet known are asked for one
// dataset at a time. Without this script the forms still start downloads.
"use strict";

(() => {
  const POLL_MS = 500;
  let polling = false;

  function row(name) {
    return document.getElementById("download-" + name);
  }

  function part(li, role) {
    return li.querySelector('[data-role="' + role + '"]');
  }

  // Same text as the server's (src/server/pages/datasets.rs).
  function progress(s) {
    if (s.state === "running" && s.stage === "extracting") {
      return [1, "100.0 % · unpacking and checking the files…"];
    }
    if (s.state === "running") {
      if (!s.total) return [0, Moco.bytes(s.bytes) + " received"];
      const f = Math.min(1, Math.max(0, s.bytes / s.total));
      let text = (f * 100).toFixed(1) + " % · " + Moco.bytes(s.bytes) + " of " + Moco.bytes(s.total);
      if (Moco.isNum(s.bytes_per_sec)) text += " · " + Moco.bytes(Math.floor(s.bytes_per_sec)) + "/s";
      if (Moco.isNum(s.eta_seconds)) text += " · ETA " + Moco.duration(s.eta_seconds);
      return [f, text];
    }
    if (s.state === "done") return [1, "100.0 % · done"];
    if (s.state === "failed") return [0, "failed"];
    return [0, ""];
  }

  function show(s) {
    const li = row(s.dataset);
    if (!li) return;
    const [f, text] = progress(s);
    const box = part(li, "progress");
    const bar = box.querySelector("progress");
    bar.value = f;
    bar.textContent = Math.round(f * 100) + " %";
    part(li, "text").textContent = text;
    box.hidden = text === "";
    const err = part(li, "error");
    err.textContent = s.error || "";
    err.hidden = !(s.state === "failed" && s.error);
    const button = part(li, "button");
    button.disabled = s.present || s.state === "running";
    button.textContent = s.present
      ? "Present"
      : s.state === "running"
        ? "Downloading…"
        : s.state === "failed"
          ? "Try again"
          : "Download " + s.title;
    button.classList.toggle("primary", !button.disabled);
    if (s.state === "running") li.dataset.running = "1";
    else delete li.dataset.running;
  }

  // Replaces the table with the server's current one (it scans the data directory again after a
  // download), then fills in what is still missing.
  async function refreshTable() {
    const res = await fetch("/datasets", { headers: { Accept: "text/html" } });
    if (!res.ok) return;
    const doc = new DOMParser().parseFromString(await res.text(), "text/html");
    const fresh = doc.getElementById("datasets-table");
    const table = document.getElementById("datasets-table");
    if (fresh && table) table.replaceWith(document.importNode(fresh, true));
    computeMissingStats();
  }

  async function poll() {
    if (polling) return;
    polling = true;
    try {
      for (;;) {
        let list;
        try {
          list = (await Moco.getJson("/api/datasets/downloads")).downloads;
        } catch (e) {
          await new Promise((r) => setTimeout(r, POLL_MS * 4));
          continue;
        }
        let finished = false;
        let running = false;
        for (const s of list) {
          const li = row(s.dataset);
          if (li && li.dataset.running === "1" && s.state !== "running") finished = true;
          if (s.state === "running") running = true;
          show(s);
        }
        if (finished) await refreshTable();
        if (!running) break;
        await new Promise((r) => setTimeout(r, POLL_MS));
      }
    } finally {
      polling = false;
    }
  }

  async function start(event) {
    event.preventDefault();
    const form = event.currentTarget;
    const name = form.querySelector('input[name="dataset"]').value;
    const li = row(name);
    const button = part(li, "button");
    button.disabled = true;
    const res = await fetch("/api/datasets/downloads", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify({ dataset: name }),
    });
    let body = {};
    try {
      body = await res.json();
    } catch (e) {
      body = {};
    }
    if (res.ok && body.download) {
      show(body.download);
      li.dataset.running = "1";
    } else {
      const err = part(li, "error");
      err.textContent =
        body.error ||
        (body.errors || []).map((e) => (e.field ? e.field + ": " : "") + e.message).join("; ") ||
        "The server answered HTTP " + res.status + ".";
      err.hidden = false;
      button.disabled = false;
    }
    poll();
  }

  // Mean/std the server has not computed yet: one request at a time, in table order.
  let computing = false;
  async function computeMissingStats() {
    if (computing) return;
    computing = true;
    try {
      for (;;) {
        const cell = document.querySelector('#datasets-table td[data-field="mean"][data-pending]');
        if (!cell) break;
        const tr = cell.closest("tr");
        const std = tr.querySelector('td[data-field="std"]');
        cell.removeAttribute("data-pending");
        std.removeAttribute("data-pending");
        cell.textContent = "computing…";
        std.textContent = "computing…";
        const res = await fetch("/api/datasets/stats?dataset=" + encodeURIComponent(tr.dataset.dataset));
        let body = {};
        try {
          body = await res.json();
        } catch (e) {
          body = {};
        }
        if (res.ok && body.mean) {
          const three = (v) => v.map((x) => x.toFixed(4)).join(" ");
          cell.textContent = three(body.mean);
          std.textContent = three(body.std);
        } else {
          cell.textContent = "—";
          std.textContent = "—";
          cell.title = body.error || "HTTP " + res.status;
        }
      }
    } finally {
      computing = false;
    }
  }

  document.querySelectorAll("form.download-form").forEach((f) => f.addEventListener("submit", start));
  if (document.querySelector('li.download[data-running="1"]')) poll();
  computeMissingStats();
})();
