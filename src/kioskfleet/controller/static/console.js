// The operators' console: the live stream's state, telemetry charts (uPlot), command buttons.
// Fragments are refreshed by htmx on the stream's events (hx-trigger="sse:changes, sse:tick").
(function () {
  "use strict";
  const body = document.body;
  const live = document.getElementById("live");

  function setLive(ok) {
    live.textContent = ok ? body.dataset.liveOk : body.dataset.liveLost;
    live.className = "live " + (ok ? "ok" : "lost");
    body.dataset.live = ok ? "open" : "lost";
  }
  body.addEventListener("htmx:sseOpen", function () { setLive(true); });
  body.addEventListener("htmx:sseError", function () { setLive(false); });
  body.addEventListener("htmx:sseClose", function () { setLive(false); });
  // every event that reached the page (tests and people can see the stream is alive)
  body.addEventListener("htmx:sseMessage", function () {
    body.dataset.events = String(Number(body.dataset.events || "0") + 1);
  });

  // a state-changing call carries the web session's CSRF token (empty when signed out: the
  // server then answers 401, and the page says so)
  function jsonHeaders() {
    return { "Content-Type": "application/json", "X-CSRF-Token": body.dataset.csrf || "" };
  }

  function fill(template, values) {
    return template.replace(/\{(\w+)\}/g, function (_, k) { return k in values ? values[k] : ""; });
  }

  // -- charts ---------------------------------------------------------------------------
  const charts = document.getElementById("charts");
  let drawnAt = 0;
  async function drawCharts() {
    if (!charts || typeof uPlot === "undefined") return;
    drawnAt = Date.now();
    const r = await fetch("/api/stations/" + encodeURIComponent(charts.dataset.station) + "/telemetry?limit=720");
    if (!r.ok) return;
    const data = await r.json();
    const names = JSON.parse(document.getElementById("metric-names").textContent);
    const times = data.items.map(function (p) { return Date.parse(p.received_at) / 1000; });
    const keys = Object.keys(names).filter(function (k) {
      return data.items.some(function (p) { return typeof p.host[k] === "number"; });
    });
    charts.replaceChildren();
    if (!keys.length) {
      const p = document.createElement("p"); p.className = "quiet"; p.textContent = charts.dataset.empty;
      charts.append(p); return;
    }
    for (const key of keys) {
      const box = document.createElement("div"); box.className = "chart"; box.dataset.metric = key;
      charts.append(box);
      const values = data.items.map(function (p) { return typeof p.host[key] === "number" ? p.host[key] : null; });
      const width = Math.max(200, Math.min(box.clientWidth - 8, 600));
      new uPlot({
        title: names[key], width: width, height: 140, legend: { show: false },
        series: [{}, { label: names[key], stroke: "#0b3d66", width: 1.5, spanGaps: true }],
        axes: [{ size: 30 }, { size: 60 }],
      }, [times, values], box);
    }
  }
  if (charts) {
    drawCharts();
    body.addEventListener("htmx:sseMessage", function () {
      if (Date.now() - drawnAt > 10000) drawCharts();
    });
  }

  // -- commands ---------------------------------------------------------------------------
  const panel = document.getElementById("commands");
  const result = document.getElementById("cmd-result");
  async function send(button) {
    const station = panel.dataset.station;
    const name = button.dataset.command;
    const label = button.dataset.label + (button.dataset.slot ? " · " + button.dataset.slot : "");
    const states = JSON.parse(document.getElementById("cmd-states").textContent);
    const args = button.dataset.slot ? { slot: button.dataset.slot } : {};
    result.dataset.state = "sending";
    result.textContent = fill(panel.dataset.sending, { name: label });
    const base = "/api/stations/" + encodeURIComponent(station) + "/commands";
    const r = await fetch(base, {
      method: "POST", headers: jsonHeaders(),
      body: JSON.stringify({ name: name, args: args, ttl_s: 120 }),
    });
    const created = await r.json().catch(function () { return {}; });
    if (!r.ok) {
      result.dataset.state = "error";
      result.textContent = fill(panel.dataset.failed, { name: label, error: r.status + " " + JSON.stringify(created.detail || "") });
      return;
    }
    for (let i = 0; i < 60; i++) {
      const c = await (await fetch(base + "/" + encodeURIComponent(created.id))).json();
      result.dataset.state = c.state;
      let text = fill(panel.dataset.state, { name: label, state: states[c.state] || c.state });
      if (c.reply && c.reply.error) text += " — " + c.reply.error;
      else if (c.reply && c.reply.result != null) text += " — " + JSON.stringify(c.reply.result).slice(0, 300);
      result.textContent = text;
      if (c.state !== "pending" && c.state !== "sent") return;
      await new Promise(function (ok) { setTimeout(ok, 1000); });
    }
  }
  if (panel) {
    document.addEventListener("click", function (ev) {
      const button = ev.target.closest("button[data-command]");
      if (!button) return;
      button.disabled = true;
      send(button).finally(function () { button.disabled = false; });
    });
  }

  // a state as the page's language names it (the element's data-states), else as sent
  function named(el, state) {
    const names = JSON.parse(el.dataset.states || "{}");
    return names[state] || state;
  }

  // -- alerts queue: acknowledge / resolve with a note ------------------------------------------
  const actor = document.getElementById("alert-actor");
  if (actor) {
    const note = document.getElementById("alert-note");
    const said = document.getElementById("alert-result");
    document.addEventListener("click", async function (ev) {
      const button = ev.target.closest("button[data-alert-action]");
      if (!button) return;
      const id = button.dataset.alertId;
      const body = {};
      if (note.value.trim()) body.note = note.value.trim();
      button.disabled = true;
      const r = await fetch("/api/alerts/" + encodeURIComponent(id) + "/" + button.dataset.alertAction, {
        method: "POST", headers: jsonHeaders(), body: JSON.stringify(body),
      });
      const answer = await r.json().catch(function () { return {}; });
      if (r.ok) {
        said.dataset.state = answer.state;
        said.textContent = fill(actor.dataset.done, { id: id, state: named(actor, answer.state) });
        note.value = "";
      } else {
        said.dataset.state = "error";
        said.textContent = fill(actor.dataset.failed, { id: id, error: r.status + " " + (answer.detail || "") });
      }
      htmx.trigger("#body", "refresh");
    });
  }

  // -- a rollout: pause / resume / abort --------------------------------------------------------
  const rollout = document.getElementById("rollout-actor");
  if (rollout) {
    const note = document.getElementById("rollout-note");
    const said = document.getElementById("rollout-result");
    document.addEventListener("click", async function (ev) {
      const button = ev.target.closest("button[data-rollout-action]");
      if (!button) return;
      const id = rollout.dataset.rollout;
      const body = {};
      if (note.value.trim()) body.note = note.value.trim();
      button.disabled = true;
      const r = await fetch("/api/rollouts/" + encodeURIComponent(id) + "/" + button.dataset.rolloutAction, {
        method: "POST", headers: jsonHeaders(), body: JSON.stringify(body),
      });
      const answer = await r.json().catch(function () { return {}; });
      said.dataset.state = r.ok ? answer.state : "error";
      said.textContent = r.ok ? fill(rollout.dataset.done, { id: id, state: named(rollout, answer.state) })
        : fill(rollout.dataset.failed, { id: id, error: r.status + " " + (answer.detail || "") });
      htmx.trigger("#body", "refresh");
    });
  }
})();
