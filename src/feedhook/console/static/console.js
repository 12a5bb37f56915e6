// The overview refreshes itself every few seconds, without reloading the page. It waits
// while the tab is hidden, and while the keyboard focus is inside it (so a refresh never
// takes the focus away from someone using it).
"use strict";
(function () {
  const region = document.getElementById("overview");
  const stamp = document.getElementById("updated");
  if (!region || !stamp) return;
  const every = Number(region.dataset.every || 5) * 1000;

  async function refresh() {
    if (document.hidden || region.contains(document.activeElement)) return;
    try {
      const answer = await fetch(region.dataset.refresh, { credentials: "same-origin" });
      if (answer.status === 401) {
        location.reload(); // signed out (the token changed, or the session is old)
        return;
      }
      if (!answer.ok) throw new Error("HTTP " + answer.status);
      region.innerHTML = await answer.text();
      stamp.textContent = "Updated " + new Date().toLocaleTimeString();
      stamp.classList.remove("error");
    } catch (error) {
      stamp.textContent = "Could not refresh (" + error.message + "); trying again";
      stamp.classList.add("error");
    }
  }

  setInterval(refresh, every);
})();
