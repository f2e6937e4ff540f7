// Refreshes the live streams table every 2 s from streams.json (same origin, session cookie).
// Cells are written with textContent only: nothing from the relay is parsed as HTML.
"use strict";
(function () {
  const body = document.getElementById("live-streams");
  const status = document.getElementById("live-status");
  if (!body || !status) {
    return;
  }
  const columns = ["stream_id", "agent_id", "tunnel_id", "kind", "peer", "state", "up", "down", "pauses"];
  async function refresh() {
    try {
      const answer = await fetch("streams.json", { credentials: "same-origin", cache: "no-store" });
      if (!answer.ok) {
        status.textContent = "(refresh failed: " + answer.status + ")";
        return;
      }
      const data = await answer.json();
      const rows = data.streams.map(function (stream) {
        const row = document.createElement("tr");
        columns.forEach(function (name) {
          const cell = document.createElement("td");
          cell.textContent = String(stream[name]);
          row.appendChild(cell);
        });
        return row;
      });
      body.replaceChildren.apply(body, rows);
      status.textContent = "(" + data.count + ", updated " + new Date().toISOString().slice(11, 19) + " UTC)";
    } catch (err) {
      status.textContent = "(refresh failed)";
    }
  }
  window.setInterval(refresh, 2000);
})();
