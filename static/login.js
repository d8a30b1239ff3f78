// Sign-in: sends the token to /api/login (which sets the cookie) and goes back where the user was.
"use strict";

(() => {
  const form = document.getElementById("login-form");
  if (!form) return;
  const error = document.getElementById("login-error");
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    error.hidden = true;
    const token = document.getElementById("token").value.trim();
    try {
      const res = await fetch("/api/login", {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify({ token }),
      });
      if (res.ok) {
        window.location.href = form.dataset.next || "/";
        return;
      }
      const body = await res.json().catch(() => ({}));
      error.textContent = body.error || "The server refused the token (HTTP " + res.status + ").";
    } catch (err) {
      error.textContent = "The server could not be reached: " + err.message;
    }
    error.hidden = false;
  });
})();
