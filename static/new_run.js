// New run form: a preset fills its defaults; the effective learning rate, the queue / batch rule
// and the estimated duration follow the inputs live. All three come from the server, which holds
// the rules; it validates again on submit and explains every error.
"use strict";

(() => {
  const form = document.getElementById("new-run-form");
  const presets = Moco.embedded("presets-data");
  if (!form || !presets) return;

  const field = (name) => form.querySelector('[name="' + name + '"]:not([type="hidden"])');

  function applyPreset(name) {
    const preset = presets[name];
    if (!preset) return;
    Object.entries(preset.values).forEach(([key, value]) => {
      // The run's name and its dataset are the user's choice, not the preset's.
      if (key === "name" || key === "preset" || key.startsWith("dataset")) return;
      const el = field(key);
      if (!el) return;
      if (el.type === "checkbox") el.checked = value === true;
      else el.value = value;
    });
    const desc = document.getElementById("f-preset-help");
    if (desc) desc.textContent = preset.description + ". Every value can be changed.";
    updateDerived();
  }

  // Asked again a moment after the user stops typing; only the latest answer is shown.
  let estimateTimer = null;
  let estimateAsked = 0;
  function updateDerived() {
    const out = document.getElementById("estimate");
    if (!out) return;
    clearTimeout(estimateTimer);
    estimateTimer = setTimeout(async () => {
      const asked = ++estimateAsked;
      try {
        const resp = await fetch("/runs/new/estimate", {
          method: "POST",
          body: new URLSearchParams(new FormData(form)),
          credentials: "same-origin",
        });
        if (!resp.ok || asked !== estimateAsked) return;
        const body = await resp.json();
        out.textContent = body.text;
        form.querySelectorAll("[data-effective-lr]").forEach((o) => (o.textContent = body.effective_lr));
        const note = document.getElementById("queue-rule");
        if (note) {
          note.textContent = body.queue_rule;
          note.classList.toggle("warn", !body.queue_ok);
        }
      } catch (_) {
        // Offline or the server restarting: keep the last estimate.
      }
    }, 250);
  }

  const presetSelect = field("preset");
  if (presetSelect) presetSelect.addEventListener("change", () => applyPreset(presetSelect.value));
  form.addEventListener("input", updateDerived);
  form.addEventListener("change", updateDerived);

  // After a rejected submit, bring the list of problems into view.
  const errors = document.getElementById("form-errors");
  if (errors) errors.focus();
})();
