// Keeps the message page's timeline live: polls for events newer than the last one
// shown and swaps in the server-rendered timeline (the same template), no reload.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const box = document.getElementById("timeline");
  const live = document.getElementById("live");
  const url = (after) => `/messages/${encodeURIComponent(box.dataset.message)}/timeline?after=${after}`;
  async function poll() {
    try {
      const response = await fetch(url(box.dataset.after), { credentials: "same-origin", cache: "no-store" });
      if (response.ok) {
        const doc = await response.json();
        if (doc.html !== undefined) {
          box.innerHTML = doc.html;
          box.dataset.after = String(doc.after);
        }
        live.classList.remove("offline");
      } else {
        live.classList.add("offline");
      }
    } catch (e) {
      live.classList.add("offline");
    }
    setTimeout(poll, 1000);
  }
  setTimeout(poll, 1000);
});
