// Confirmation before destruction: forms with data-confirm ask first.
document.addEventListener("submit", (event) => {
  const message = event.target.dataset && event.target.dataset.confirm;
  if (message && !window.confirm(message)) event.preventDefault();
});
// htmx requests carry the CSRF token the API and pages check.
document.addEventListener("htmx:configRequest", (event) => {
  const meta = document.querySelector('meta[name="csrf-token"]');
  if (meta) event.detail.headers["X-CSRFToken"] = meta.content;
});
// Deployments: auto-cleanup countdowns, tag selects filled from the tags route, logs panels.
(() => {
  const pad = (n) => String(n).padStart(2, "0");
  const duration = (s) => {
    if (s <= 0) return "due now";
    const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
    return (d ? `${d}d ` : "") + (d || h ? `${h}h ` : "") + `${m}m ${pad(s % 60)}s`;
  };
  const tick = () => document.querySelectorAll(".countdown[data-remaining]").forEach((el) => {
    if (!el.dataset.deadline) el.dataset.deadline = Date.now() + Number(el.dataset.remaining) * 1000;
    el.textContent = duration(Math.max(0, Math.round((el.dataset.deadline - Date.now()) / 1000)));
  });
  setInterval(tick, 1000);

  // The API's answer or its error document's message.
  const getJSON = async (url) => {
    const response = await fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error((body.error && body.error.message) || `the server answered ${response.status}`);
    return body;
  };
  const option = (value, label, selected) => {
    const o = document.createElement("option");
    o.value = value; o.textContent = label; o.selected = !!selected;
    return o;
  };
  const loadTags = (select) => {
    if (select.dataset.loaded) return;
    select.dataset.loaded = "1";
    const problem = select.parentElement.querySelector(".tags-problem");
    const wanted = select.dataset.selected;
    getJSON(select.dataset.tagsUrl).then((body) => {
      const tags = (Array.isArray(body) ? body : body.tags || body.items || [])
        .map((t) => (typeof t === "string" ? t : t.tag || t.name));
      if (wanted && !tags.includes(wanted)) tags.unshift(wanted);
      select.replaceChildren(...(tags.length ? tags.map((t) => option(t, t, t === wanted))
        : [option("", "no tags match")]));
      if (!tags.length && problem && !problem.textContent) problem.textContent = "The registry lists no tags for this service.";
    }).catch((err) => {
      if (!wanted) select.replaceChildren(option("", "tags unavailable"));
      if (problem) problem.textContent = `Tags unavailable: ${err.message}`;
    });
  };
  const loadLogs = (panel) => {
    const pre = panel.querySelector("pre");
    pre.textContent = "loading the last 200 lines…";
    getJSON(panel.dataset.logsUrl).then((body) => {
      const lines = Array.isArray(body) ? body : body.lines || body.items || [];
      pre.textContent = lines.map((l) => (typeof l === "string" ? l : l.line || l.text || JSON.stringify(l))).join("\n") || "(no output yet)";
    }).catch((err) => { pre.textContent = `Logs unavailable: ${err.message}`; });
  };
  const init = (root) => root.querySelectorAll("select[data-tags-url]").forEach(loadTags);
  document.addEventListener("DOMContentLoaded", () => init(document));
  document.addEventListener("htmx:load", (event) => init(event.detail.elt));
  document.addEventListener("toggle", (event) => {
    if (event.target.matches("details.logs-panel") && event.target.open && !event.target.dataset.loaded) {
      event.target.dataset.loaded = "1";
      loadLogs(event.target);
    }
  }, true);
  // Follow: new lines as they come, over a WebSocket (app/ui/log_stream.py); a second click stops.
  const follow = (button) => {
    const panel = button.closest("details.logs-panel");
    const pre = panel.querySelector("pre");
    if (panel.socket) { panel.socket.close(); return; }
    // url_for builds WebSocket URLs whole (ws://host/path), with the server's idea of scheme and
    // host; a proxy in front may change both, so the page's own go with the path.
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const path = new URL(panel.dataset.followUrl).pathname;
    const socket = new WebSocket(`${scheme}//${location.host}${path}`);
    panel.socket = socket;
    button.textContent = "Stop following";
    pre.textContent = "";
    socket.onmessage = (message) => {
      const data = JSON.parse(message.data);
      if (data.lines && data.lines.length) {
        pre.textContent += data.lines.join("\n") + "\n";
        pre.scrollTop = pre.scrollHeight;
      } else if (data.error || data.end) {
        pre.textContent += `[${data.error || data.end}]\n`;
      }
    };
    socket.onclose = () => { panel.socket = null; button.textContent = "Follow"; };
  };
  document.addEventListener("click", (event) => {
    if (event.target.matches(".logs-refresh")) loadLogs(event.target.closest("details.logs-panel"));
    if (event.target.matches(".logs-follow")) follow(event.target);
  });
})();
