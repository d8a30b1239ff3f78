// The New run form's sweep grid: the number of runs, what a recipe leaves out and the estimated
// duration, asked again a moment after the user stops typing while the grid is open; the chosen
// recipe's description.
"use strict";

(() => {
  const form = document.getElementById("new-run-form");
  const grid = document.getElementById("sweep-grid");
  const out = document.getElementById("sweep-plan");
  if (!form || !grid || !out) return;
  const recipe = document.getElementById("sweep-recipe");

  function showRecipe() {
    document.querySelectorAll("#sweep-recipe-help [data-recipe]").forEach((p) => {
      p.hidden = recipe.value !== "" && p.dataset.recipe !== recipe.value;
    });
  }

  let timer = null;
  let asked = 0;
  function updatePlan() {
    if (!grid.open) return;
    clearTimeout(timer);
    timer = setTimeout(async () => {
      const mine = ++asked;
      try {
        const resp = await fetch("/sweeps/plan", {
          method: "POST",
          body: new URLSearchParams(new FormData(form)),
          credentials: "same-origin",
        });
        if (!resp.ok || mine !== asked) return;
        const body = await resp.json();
        if (body.problems) {
          out.textContent = body.problems.join(" ");
          out.classList.add("warn");
        } else {
          const left = body.skipped.length ? " Left out: " + body.skipped.join("; ") + "." : "";
          out.textContent = body.text + "." + left;
          out.classList.remove("warn");
        }
      } catch (_) {
        // Offline or the server restarting: keep the last plan.
      }
    }, 300);
  }

  form.addEventListener("input", updatePlan);
  form.addEventListener("change", updatePlan);
  grid.addEventListener("toggle", updatePlan);
  if (recipe) {
    recipe.addEventListener("change", showRecipe);
    showRecipe();
  }
  updatePlan();
})();
