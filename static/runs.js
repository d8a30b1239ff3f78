// Runs page: keeps states, progress and numbers live by polling /api/runs; the table itself is
// rendered by the server (filters and sorting are plain links and work without JavaScript).
"use strict";

(() => {
  const table = document.getElementById("runs-table");
  const form = document.getElementById("compare-form");
  if (!table || !form) return;
  const filterState = table.dataset.state || "";
  const POLL_MS = 3000;

  function checkedIds() {
    return Array.from(form.querySelectorAll('input[name="ids"]:checked')).map((c) => c.value);
  }

  function updateCompareHint() {
    const hint = document.getElementById("compare-hint");
    const button = document.getElementById("compare-button");
    const n = checkedIds().length;
    if (hint) hint.textContent = n === 0 ? "Tick runs to compare them." : n + " selected";
    if (button) button.disabled = n === 0;
  }

  // Sends ids=1,2,3 (the documented form) instead of ids=1&ids=2&ids=3.
  form.addEventListener("submit", (e) => {
    const ids = checkedIds();
    if (ids.length === 0) {
      e.preventDefault();
      return;
    }
    e.preventDefault();
    // Oldest first: the baseline of an ablation is usually the run started first.
    ids.sort((a, b) => Number(a) - Number(b));
    window.location.href = "/compare?ids=" + ids.join(",");
  });
  form.addEventListener("change", updateCompareHint);
  updateCompareHint();

  function setText(row, field, text) {
    const cell = row.querySelector('[data-field="' + field + '"]');
    if (cell && cell.textContent !== text) cell.textContent = text;
  }

  function setTime(row, field, iso) {
    const cell = row.querySelector('[data-field="' + field + '"]');
    if (!cell) return;
    const current = cell.querySelector("time");
    if ((current ? current.getAttribute("datetime") : null) === (iso || null)) return;
    cell.replaceChildren(Moco.timeEl(iso));
  }

  function updateRow(row, run) {
    row.dataset.state = run.state;
    const badge = row.querySelector('[data-field="state"]');
    Moco.setBadge(badge, run.state);
    if (badge) badge.title = run.error || "";
    Moco.updateProgress(row.querySelector('[data-field="progress"]'), run);
    setText(row, "last_loss", Moco.num(run.last_loss));
    setText(row, "best_knn", Moco.percent(run.best_knn));
    setText(row, "images_per_sec", Moco.isNum(run.images_per_sec) ? Moco.fixed(run.images_per_sec, 1) : "—");
    setTime(row, "started_at", run.started_at);
    setTime(row, "finished_at", run.finished_at);
  }

  function updateCounts(runs) {
    const counts = new Map();
    runs.forEach((r) => counts.set(r.state, (counts.get(r.state) || 0) + 1));
    document.querySelectorAll(".state-tabs a").forEach((a) => {
      const state = new URL(a.href).searchParams.get("state") || "";
      const span = a.querySelector("span");
      if (span) span.textContent = state ? counts.get(state) || 0 : runs.length;
    });
  }

  // New or vanished runs: take the server's rendering of the rows, keeping the ticked boxes.
  async function refreshRows() {
    const res = await fetch(window.location.href, { headers: { Accept: "text/html" } });
    if (!res.ok) return;
    const doc = new DOMParser().parseFromString(await res.text(), "text/html");
    const fresh = doc.querySelector("#runs-table tbody");
    if (!fresh) return;
    const ticked = new Set(checkedIds());
    const tbody = table.querySelector("tbody");
    tbody.replaceWith(document.importNode(fresh, true));
    table.querySelectorAll('input[name="ids"]').forEach((c) => (c.checked = ticked.has(c.value)));
    table.hidden = table.querySelectorAll("tbody tr").length === 0;
    const empty = document.getElementById("runs-empty");
    if (empty) empty.hidden = !table.hidden;
    Moco.localizeTimes(table);
    updateCompareHint();
  }

  async function poll() {
    try {
      const body = await Moco.getJson("/api/runs");
      const runs = body.runs || [];
      updateCounts(runs);
      const shown = runs.filter((r) => !filterState || r.state === filterState);
      const rows = new Map(Array.from(table.querySelectorAll("tbody tr")).map((tr) => [tr.dataset.runId, tr]));
      const sameSet = shown.length === rows.size && shown.every((r) => rows.has(String(r.id)));
      if (!sameSet) {
        await refreshRows();
        return;
      }
      shown.forEach((run) => updateRow(rows.get(String(run.id)), run));
    } catch (err) {
      console.warn("runs poll failed", err);
    } finally {
      setTimeout(poll, POLL_MS);
    }
  }
  setTimeout(poll, POLL_MS);
})();
