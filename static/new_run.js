// New run form: a preset fills its defaults, the effective learning rate and the queue / batch
// rule follow the inputs live. The server validates again on submit and explains every error.
"use strict";

(() => {
  const form = document.getElementById("new-run-form");
  const presets = Moco.embedded("presets-data");
  if (!form || !presets) return;

  const field = (name) => form.querySelector('[name="' + name + '"]:not([type="hidden"])');
  const numberOf = (name) => {
    const el = field(name);
    if (!el || el.value.trim() === "") return NaN;
    return Number(el.value);
  };

  function updateEffectiveLr() {
    const lr = numberOf("base_lr");
    const batch = numberOf("batch_size");
    const base = numberOf("lr_base_batch");
    const ok = Number.isFinite(lr) && Number.isFinite(batch) && Number.isFinite(base) && base > 0;
    const text = ok ? Moco.num((lr * batch) / base, 6) : "—";
    form.querySelectorAll("[data-effective-lr]").forEach((o) => (o.textContent = text));
  }

  // queue_size must be a multiple of the keys enqueued per step (2 × batch with the symmetric loss).
  function updateQueueRule() {
    const note = document.getElementById("queue-rule");
    if (!note) return;
    const k = numberOf("queue_size");
    const batch = numberOf("batch_size");
    const sym = field("symmetric");
    const symmetric = sym ? sym.checked : false;
    if (!Number.isInteger(k) || !Number.isInteger(batch) || k < 1 || batch < 1) {
      note.textContent = "queue_size must be a multiple of batch_size (2 × batch_size with the symmetric loss).";
      note.classList.remove("warn");
      return;
    }
    const perStep = symmetric ? 2 * batch : batch;
    const what = symmetric ? "2 × batch_size = " + perStep + " (symmetric loss)" : "batch_size = " + perStep;
    if (k % perStep === 0) {
      note.textContent = "✓ queue_size " + k + " = " + k / perStep + " × " + what + ".";
      note.classList.remove("warn");
    } else {
      const lower = Math.max(1, Math.floor(k / perStep)) * perStep;
      note.textContent =
        "✗ queue_size " + k + " is not a multiple of " + what + "; e.g. " + lower + " or " + (lower + perStep) + ".";
      note.classList.add("warn");
    }
  }

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
    updateEffectiveLr();
    updateQueueRule();
    updateEstimate();
  }

  // The estimated duration comes from the server (it knows the dataset's size and the device's
  // speed); asked again a moment after the user stops typing.
  let estimateTimer = null;
  let estimateAsked = 0;
  function updateEstimate() {
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
      } catch (_) {
        // Offline or the server restarting: keep the last estimate.
      }
    }, 400);
  }

  const presetSelect = field("preset");
  if (presetSelect) presetSelect.addEventListener("change", () => applyPreset(presetSelect.value));
  form.addEventListener("input", () => {
    updateEffectiveLr();
    updateQueueRule();
    updateEstimate();
  });
  form.addEventListener("change", () => {
    updateQueueRule();
    updateEstimate();
  });
  updateEffectiveLr();
  updateQueueRule();

  // After a rejected submit, bring the list of problems into view.
  const errors = document.getElementById("form-errors");
  if (errors) errors.focus();
})();
