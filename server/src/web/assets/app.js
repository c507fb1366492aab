// camp's dashboard: one script for every page. The path names the page; each
// page reads the coordinator's JSON (the shapes `camp --json` prints), draws
// it with DOM calls (text is always set as text, never parsed as HTML), and
// re-reads it when the server-sent event stream says something changed.
// Figures are SVG drawn by the coordinator (the figures `camp plot` draws).
"use strict";

const STATES = ["queued", "running", "succeeded", "failed", "cancelled"];
const STAGES = ["baseline", "qat", "sp", "rl"];
const PAGE_SIZE = 50;
/// A job page re-draws its charts at most this often while the job runs (ms).
const CHART_REFRESH_MS = 5000;

// ---- small helpers -------------------------------------------------------

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") e.className = value;
    else if (key === "dataset") Object.assign(e.dataset, value);
    else if (key.startsWith("on")) e.addEventListener(key.slice(2), value);
    else e.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    e.append(child instanceof Node ? child : String(child));
  }
  return e;
}

function link(href, text, attrs) {
  return el("a", Object.assign({ href }, attrs || {}), text);
}

function finite(x) {
  return typeof x === "number" && Number.isFinite(x);
}

function pct(x) {
  return finite(x) ? (100 * x).toFixed(2) + "%" : "";
}

function num(x) {
  if (!finite(x)) return x === null || x === undefined ? "" : String(x);
  const a = Math.abs(x);
  if (a === 0) return "0";
  if (a >= 1000) return Math.round(x).toLocaleString("en-US");
  if (a >= 1) return x.toFixed(2);
  if (a >= 1e-3) return x.toFixed(4);
  return x.toExponential(2);
}

function duration(ms) {
  if (!finite(ms) || ms < 0) return "";
  const s = Math.round(ms / 1000);
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m " + (s % 60) + "s";
  if (s < 86400) return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
  return Math.floor(s / 86400) + "d " + Math.floor((s % 86400) / 3600) + "h";
}

function ago(atMs, nowMs) {
  return atMs > 0 ? duration(nowMs - atMs) + " ago" : "";
}

function when(atMs) {
  if (!(atMs > 0)) return "";
  const d = new Date(atMs);
  return d.toISOString().replace("T", " ").slice(0, 19) + " UTC";
}

function bytes(n) {
  if (!finite(n)) return "";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n : n.toFixed(1)) + " " + units[i];
}

function badge(state) {
  return el("span", { class: "badge state-" + state }, state);
}

function showError(message) {
  const box = document.getElementById("error");
  box.textContent = message;
  box.hidden = !message;
}

function ready() {
  document.body.dataset.ready = "1";
}

// ---- talking to the coordinator -------------------------------------------

class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

async function api(path, options) {
  options = options || {};
  const init = { credentials: "same-origin", headers: {}, method: options.method || "GET" };
  if (init.method !== "GET") init.headers["x-camp-csrf"] = "1";
  if (options.json !== undefined) {
    init.body = JSON.stringify(options.json);
    init.headers["content-type"] = "application/json";
  }
  const response = await fetch(path, init);
  const text = await response.text();
  if (!response.ok) {
    let message = text || response.statusText;
    try { message = JSON.parse(text).error || message; } catch (_) { /* not JSON */ }
    if (response.status === 401 && !options.noRedirect) {
      location.href = "/login?next=" + encodeURIComponent(location.pathname + location.search);
    }
    throw new ApiError(message, response.status);
  }
  const type = response.headers.get("content-type") || "";
  return type.includes("json") ? JSON.parse(text) : { text, points: Number(response.headers.get("x-camp-points")) };
}

/// Puts the SVG at `path` into `box` (inline, so that it scales and its points can be counted).
async function loadSvg(box, path) {
  try {
    const reply = await api(path);
    const doc = new DOMParser().parseFromString(reply.text, "image/svg+xml");
    const svg = doc.documentElement;
    if (svg.nodeName !== "svg") throw new ApiError("not an SVG figure", 500);
    if (!svg.getAttribute("viewBox")) {
      svg.setAttribute("viewBox", "0 0 " + svg.getAttribute("width") + " " + svg.getAttribute("height"));
    }
    svg.removeAttribute("width");
    svg.removeAttribute("height");
    box.replaceChildren(document.importNode(svg, true));
    return reply.points;
  } catch (e) {
    if (e.status === 401) throw e;
    box.replaceChildren(el("p", { class: "muted empty-figure" }, e.message));
    return 0;
  }
}

/// Calls `refresh` now and whenever the event stream says something changed,
/// never two at once; `job` narrows the stream to one job.
function follow(refresh, job) {
  let running = false;
  let again = false;
  const run = async () => {
    if (running) { again = true; return; }
    running = true;
    try {
      await refresh();
      showError("");
    } catch (e) {
      if (e.status !== 401) showError(e.message);
    } finally {
      running = false;
      ready();
      if (again) { again = false; run(); }
    }
  };
  const source = new EventSource("/api/events" + (job ? "?job=" + job : ""));
  // "ready" comes first on every (re)connection: anything missed meanwhile is read then.
  source.addEventListener("ready", run);
  source.addEventListener("change", run);
  source.onerror = () => { /* EventSource reconnects by itself */ };
  return run();
}

// ---- pages ------------------------------------------------------------------

async function whoami() {
  try {
    const session = await api("/api/session", { noRedirect: true });
    document.getElementById("whoami").textContent = session.user + (session.admin ? " (admin)" : "");
    const logout = document.getElementById("logout");
    logout.hidden = !session.auth_required && session.user === "anonymous";
    logout.onclick = async () => {
      await api("/api/session", { method: "DELETE" });
      location.href = "/login";
    };
    return session;
  } catch (e) {
    if (e.status === 401) {
      location.href = "/login?next=" + encodeURIComponent(location.pathname + location.search);
      return new Promise(() => {});
    }
    throw e;
  }
}

async function loginPage(app) {
  document.title = "camp · log in";
  let authRequired = true;
  try {
    const session = await api("/api/session", { noRedirect: true });
    authRequired = session.auth_required;
  } catch (_) { /* 401: a token is needed */ }
  const field = authRequired
    ? el("input", { id: "token", type: "password", autocomplete: "off", placeholder: "camp_…", required: true })
    : el("input", { id: "user", type: "text", autocomplete: "username", placeholder: "your name", required: true });
  const error = el("p", { id: "login-error", class: "error-text", role: "alert", hidden: true });
  const form = el("form", { id: "login", class: "card login" },
    el("h1", {}, "Log in"),
    el("p", { class: "muted" }, authRequired
      ? "This coordinator requires an API token (camp-server token --user NAME). It is kept in a cookie for this browser session."
      : "This coordinator trusts callers to name themselves (no --require-auth)."),
    el("label", { for: field.id }, authRequired ? "API token" : "User name"),
    field,
    el("button", { id: "login-submit", type: "submit" }, "Log in"),
    error);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.hidden = true;
    try {
      const body = authRequired ? { token: field.value } : { user: field.value };
      await api("/api/session", { method: "POST", json: body, noRedirect: true });
      const next = new URLSearchParams(location.search).get("next");
      location.href = next && next.startsWith("/") && !next.startsWith("//") ? next : "/jobs";
    } catch (e) {
      error.textContent = "Refused: " + e.message;
      error.hidden = false;
    }
  });
  app.replaceChildren(form);
  ready();
}

// -- jobs ------------------------------------------------------------------------

function jobProgress(job, nowMs) {
  const epochs = job.spec && job.spec.epochs;
  if (!epochs) return { text: "", fraction: 0, eta: "" };
  const done = job.state === "succeeded" ? epochs : job.epoch;
  const fraction = Math.min(1, done / epochs);
  let eta = "";
  if (job.state === "running" && job.started_at_ms > 0 && fraction > 0) {
    const elapsed = nowMs - job.started_at_ms;
    eta = duration(elapsed * (1 - fraction) / fraction);
  }
  const step = job.step ? " · step " + job.step : "";
  return { text: "epoch " + done + "/" + epochs + step, fraction, eta };
}

function jobCells(job, nowMs) {
  const progress = jobProgress(job, nowMs);
  const result = job.result || {};
  return {
    name: link("/jobs/" + job.id, job.name, { class: "job-link" }),
    owner: job.owner,
    stage: job.stage,
    state: badge(job.state),
    progress: el("div", { class: "progress" },
      el("div", { class: "bar" }, el("span", { style: null, dataset: { fraction: progress.fraction } })),
      el("span", {}, progress.text)),
    speed: finite(job.images_per_s) ? num(job.images_per_s) + " img/s" : "",
    eta: progress.eta,
    top1: pct(result.best_top1),
    energy: finite(result.normalized_energy) ? num(result.normalized_energy) + "×" : "",
    created: ago(job.created_at_ms, nowMs),
  };
}

/// Bars are sized by script (the style policy allows no inline style attribute).
function sizeBars(root) {
  for (const bar of root.querySelectorAll(".bar > span")) {
    bar.style.width = (100 * Number(bar.dataset.fraction || 0)).toFixed(1) + "%";
  }
}

async function jobsPage(app) {
  document.title = "camp · jobs";
  const params = new URLSearchParams(location.search);
  const filters = { state: params.get("state") || "", owner: params.get("owner") || "", stage: params.get("stage") || "" };
  let cursors = [0];
  let next = 0;
  const picked = new Set();

  const stateSelect = el("select", { id: "filter-state" }, el("option", { value: "" }, "any state"), STATES.map((s) => el("option", { value: s }, s)));
  const stageSelect = el("select", { id: "filter-stage" }, el("option", { value: "" }, "any stage"), STAGES.map((s) => el("option", { value: s }, s)));
  const ownerInput = el("input", { id: "filter-owner", type: "search", placeholder: "owner", size: 12 });
  stateSelect.value = filters.state;
  stageSelect.value = filters.stage;
  ownerInput.value = filters.owner;
  const compare = el("button", { id: "compare", type: "button", disabled: true }, "Compare selected");
  const prev = el("button", { id: "prev-page", type: "button" }, "← Newer");
  const nextButton = el("button", { id: "next-page", type: "button" }, "Older →");
  const info = el("span", { id: "page-info", class: "muted" });
  const tbody = el("tbody");
  const headers = ["", "ID", "Name", "Owner", "Stage", "State", "Progress", "Speed", "ETA", "Best top-1", "Energy", "Created"];
  const table = el("table", { id: "jobs", class: "grid" }, el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))), tbody);
  app.replaceChildren(
    el("div", { class: "toolbar" }, el("h1", {}, "Jobs"), stateSelect, stageSelect, ownerInput, compare),
    el("div", { class: "scroll" }, table),
    el("div", { class: "pager" }, prev, info, nextButton));

  const rows = new Map();
  function row(job, nowMs) {
    let tr = rows.get(job.id);
    if (!tr) {
      const pick = el("input", { type: "checkbox", class: "pick", value: job.id, "aria-label": "pick job " + job.id });
      pick.addEventListener("change", () => {
        if (pick.checked) picked.add(job.id); else picked.delete(job.id);
        compare.disabled = picked.size === 0;
      });
      tr = el("tr", { dataset: { jobId: job.id } },
        el("td", {}, pick), el("td", { class: "id" }, job.id),
        ["name", "owner", "stage", "state", "progress", "speed", "eta", "top1", "energy", "created"].map((c) => el("td", { class: c })));
      rows.set(job.id, tr);
    }
    tr.dataset.state = job.state;
    const cells = jobCells(job, nowMs);
    for (const [name, content] of Object.entries(cells)) {
      tr.querySelector("td." + name).replaceChildren(content);
    }
    return tr;
  }

  async function refresh() {
    const query = new URLSearchParams({ limit: PAGE_SIZE });
    for (const [k, v] of Object.entries(filters)) if (v) query.set(k, v);
    const before = cursors[cursors.length - 1];
    if (before) query.set("before", before);
    const reply = await api("/api/jobs?" + query);
    next = reply.next_before_id;
    tbody.replaceChildren(...reply.jobs.map((job) => row(job, reply.now_ms)));
    if (reply.jobs.length === 0) tbody.replaceChildren(el("tr", {}, el("td", { colspan: headers.length, class: "muted" }, "No jobs.")));
    sizeBars(tbody);
    prev.disabled = cursors.length === 1;
    nextButton.disabled = !next;
    info.textContent = "page " + cursors.length + (reply.jobs.length ? " · jobs " + reply.jobs[0].id + "–" + reply.jobs[reply.jobs.length - 1].id : "");
  }

  function refilter() {
    filters.state = stateSelect.value;
    filters.stage = stageSelect.value;
    filters.owner = ownerInput.value.trim();
    const query = new URLSearchParams();
    for (const [k, v] of Object.entries(filters)) if (v) query.set(k, v);
    history.replaceState(null, "", "/jobs" + (query.toString() ? "?" + query : ""));
    cursors = [0];
    rows.clear();
    refresh().catch((e) => showError(e.message));
  }
  stateSelect.addEventListener("change", refilter);
  stageSelect.addEventListener("change", refilter);
  ownerInput.addEventListener("change", refilter);
  nextButton.addEventListener("click", () => { if (next) { cursors.push(next); refresh().catch((e) => showError(e.message)); } });
  prev.addEventListener("click", () => { if (cursors.length > 1) { cursors.pop(); refresh().catch((e) => showError(e.message)); } });
  compare.addEventListener("click", () => { location.href = "/compare?jobs=" + [...picked].join(","); });
  await follow(refresh);
}

// -- one job ---------------------------------------------------------------------

/// The series a job page charts first; the rest are under "More series".
const MAIN_SERIES = ["loss", "top1", "test_top1", "test_loss", "lr", "images_per_s", "normalized_energy", "fullbit_share"];

function specList(spec) {
  const dl = el("dl", { id: "job-spec", class: "spec" });
  for (const [key, value] of Object.entries(spec || {})) {
    const text = value === null ? "—" : typeof value === "object" ? JSON.stringify(value) : String(value);
    dl.append(el("dt", {}, key), el("dd", {}, text));
  }
  return dl;
}

function facts(pairs) {
  return el("dl", { class: "facts" }, pairs.filter(([, v]) => v !== "" && v !== null && v !== undefined).map(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
}

function resultFacts(result) {
  if (!result) return el("p", { class: "muted" }, "No result yet: a result is stored when the job succeeds.");
  return facts([
    ["best top-1", pct(result.best_top1) + (result.best_epoch ? " (epoch " + result.best_epoch + ")" : "")],
    ["final top-1", pct(result.final_top1)],
    ["final top-5", pct(result.final_top5)],
    ["normalised energy", finite(result.normalized_energy) ? num(result.normalized_energy) + "×" : ""],
    ["energy per image", finite(result.energy_pj) ? num(result.energy_pj) + " pJ" : ""],
    ["4-bit share", pct(result.fullbit_share)],
    ["bits (w/a)", result.bits_weights ? result.bits_weights + "/" + result.bits_activations : ""],
    ["epochs", result.epochs],
    ["images/s", finite(result.images_per_s) ? num(result.images_per_s) : ""],
  ]);
}

function energyTable(energy) {
  if (!energy) return el("p", { class: "muted" }, "No energy model for this spec.");
  const totals = el("table", { id: "energy", class: "grid compact" },
    el("tbody", {},
      el("tr", {}, el("th", {}, "network"), el("td", {}, energy.arch + " on " + energy.dataset)),
      el("tr", {}, el("th", {}, "bits (w/a)"), el("td", {}, energy.bits_weights + "/" + energy.bits_activations)),
      el("tr", {}, el("th", {}, "multiply-accumulates"), el("td", {}, num(energy.macs))),
      el("tr", {}, el("th", {}, "blocks' energy"), el("td", {}, num(energy.energy_pj) + " pJ")),
      el("tr", {}, el("th", {}, "normalised (4-bit blocks = 1)"), el("td", {}, num(energy.normalized_energy))),
      energy.energy_pj_all_off !== undefined
        ? el("tr", {}, el("th", {}, "all gates off (1-bit)"), el("td", {}, num(energy.energy_pj_all_off) + " pJ · " + num(energy.normalized_energy_all_off)))
        : null,
      el("tr", {}, el("th", {}, "energy table"), el("td", {}, energy.table.name + " (fp32 " + energy.table.fp32_pj + " pJ, int8 mult " + energy.table.int8_mult_pj + " pJ, add " + energy.table.int8_add_pj + " pJ)"))));
  const layers = el("table", { class: "grid compact" },
    el("thead", {}, el("tr", {}, ["path", "role", "MACs", "bits", "pJ"].map((h) => el("th", {}, h)))),
    el("tbody", {}, energy.layers.map((l) => el("tr", {}, el("td", {}, l.path), el("td", {}, l.role), el("td", { class: "num" }, num(l.macs)), el("td", { class: "num" }, l.bits), el("td", { class: "num" }, num(l.energy_pj))))));
  return el("div", {}, totals, el("details", {}, el("summary", {}, energy.layers.length + " layers"), el("div", { class: "scroll" }, layers)));
}

async function jobPage(app, id) {
  document.title = "camp · job " + id;
  const title = el("h1", { id: "job-title" }, "Job " + id);
  const state = el("span", { id: "job-state", class: "badge" });
  const actions = el("div", { class: "actions" });
  const summary = el("section", { class: "card" });
  const result = el("section", { class: "card" });
  const charts = el("div", { id: "charts", class: "charts" });
  const more = el("details", { class: "more-charts" }, el("summary", {}, "More series"));
  const attempts = el("table", { id: "attempts", class: "grid compact" });
  const checkpoints = el("table", { id: "checkpoints", class: "grid compact" });
  const energy = el("section", { class: "card" });
  const spec = el("section", { class: "card" });
  const log = el("pre", { id: "log", class: "log" });
  app.replaceChildren(
    el("div", { class: "toolbar" }, title, state, actions),
    el("div", { class: "columns" }, summary, result),
    el("h2", {}, "Charts"), charts, more,
    el("div", { class: "columns" },
      el("section", { class: "card" }, el("h2", {}, "Attempts"), attempts),
      el("section", { class: "card" }, el("h2", {}, "Checkpoints"), el("div", { class: "scroll" }, checkpoints))),
    el("div", { class: "columns" },
      el("section", { class: "card" }, el("h2", {}, "Energy"), energy),
      el("section", { class: "card" }, el("h2", {}, "Spec"), spec)),
    el("section", { class: "card" }, el("h2", {}, "Log (newest lines)"), log));

  const figures = new Map();
  let chartsDrawnAt = 0;
  let chartTimer = null;
  let session = null;

  async function drawCharts(series) {
    chartsDrawnAt = Date.now();
    const ordered = [...series].sort((a, b) => {
      const ia = MAIN_SERIES.indexOf(a.name), ib = MAIN_SERIES.indexOf(b.name);
      return (ia < 0 ? 99 : ia) - (ib < 0 ? 99 : ib) || a.name.localeCompare(b.name);
    });
    const draws = [];
    for (const s of ordered) {
      let figure = figures.get(s.name);
      if (!figure) {
        const box = el("div", { class: "figure-box" });
        figure = el("figure", { class: "chart", dataset: { metric: s.name } }, box, el("figcaption", {}, s.name));
        figures.set(s.name, figure);
        (MAIN_SERIES.includes(s.name) ? charts : more).append(figure);
      }
      const box = figure.querySelector(".figure-box");
      const caption = figure.querySelector("figcaption");
      const main = MAIN_SERIES.includes(s.name);
      if (!main && !more.open) continue;
      draws.push(loadSvg(box, "/api/jobs/" + id + "/chart/" + encodeURIComponent(s.name)).then((points) => {
        caption.textContent = s.name + " · " + points + " points" + (s.per_epoch ? " (by epoch)" : " (by step)");
      }));
    }
    more.hidden = ordered.every((s) => MAIN_SERIES.includes(s.name));
    if (!series.length) charts.replaceChildren(el("p", { class: "muted" }, "No metrics reported yet."));
    await Promise.all(draws);
  }
  more.addEventListener("toggle", () => { if (more.open) chartsDrawnAt = 0; refreshNow(); });

  let lastSeries = [];
  async function refresh() {
    const reply = await api("/api/jobs/" + id);
    const job = reply.job;
    const now = reply.now_ms;
    title.textContent = "#" + job.id + " " + job.name;
    state.textContent = job.state;
    state.className = "badge state-" + job.state;
    const progress = jobProgress(job, now);
    const ended = ["succeeded", "failed", "cancelled"].includes(job.state);
    actions.replaceChildren();
    if (!ended && session && (session.admin || session.user === job.owner)) {
      actions.append(el("button", { id: "cancel", type: "button", class: "danger", onclick: async () => {
        if (!confirm("Cancel job " + job.id + "?")) return;
        try { await api("/api/jobs/" + id + "/cancel", { method: "POST" }); refreshNow(); } catch (e) { showError(e.message); }
      } }, job.cancel_requested ? "Cancelling…" : "Cancel"));
    }
    if (job.experiment_id) actions.append(link("/experiments/" + job.experiment_id, "experiment " + job.experiment_id + " · " + job.node, { class: "button" }));
    summary.replaceChildren(el("h2", {}, "Run"), facts([
      ["owner", job.owner],
      ["stage", job.stage],
      ["network", job.spec ? job.spec.arch + " on " + job.spec.dataset : ""],
      ["progress", progress.text + (progress.eta ? " · ETA " + progress.eta : "")],
      ["attempt", job.attempt + " of " + job.max_attempts + (job.lease_losses ? " · " + job.lease_losses + " lost to expired leases" : "")],
      ["worker", job.worker],
      ["priority", job.priority],
      ["parents", job.parents.length ? job.parents.join(", ") : ""],
      ["waiting because", job.waiting_reason],
      ["message", job.message],
      ["submitted", when(job.created_at_ms)],
      ["started", when(job.started_at_ms)],
      ["finished", when(job.finished_at_ms)],
    ]));
    result.replaceChildren(el("h2", {}, "Result"), resultFacts(job.result));
    attempts.replaceChildren(
      el("thead", {}, el("tr", {}, ["attempt", "worker", "outcome", "checkpoints", "first log", "last log"].map((h) => el("th", {}, h)))),
      el("tbody", {}, reply.attempts.map((a) => el("tr", {},
        el("td", {}, a.attempt), el("td", {}, a.worker || "—"), el("td", {}, a.outcome),
        el("td", {}, a.checkpoints + (a.last_epoch_saved ? " (to epoch " + a.last_epoch_saved + ")" : "")),
        el("td", {}, when(a.first_log_ms)), el("td", {}, when(a.last_log_ms))))));
    checkpoints.replaceChildren(
      el("thead", {}, el("tr", {}, ["id", "attempt", "epoch", "step", "top-1", "size", "sha256", ""].map((h) => el("th", {}, h)))),
      el("tbody", {}, reply.checkpoints.map((c) => el("tr", { dataset: { checkpointId: c.id } },
        el("td", {}, c.id), el("td", {}, c.attempt), el("td", {}, c.epoch + (c.best ? " ★" : "")), el("td", {}, c.step),
        el("td", {}, pct(c.top1)), el("td", {}, bytes(c.size)), el("td", { class: "mono" }, c.sha256.slice(0, 12)),
        el("td", {}, link("/api/checkpoints/" + c.id + "/download", "download", { class: "download", download: "checkpoint-" + c.id + ".safetensors" }))))));
    if (!reply.checkpoints.length) checkpoints.replaceChildren(el("tbody", {}, el("tr", {}, el("td", { class: "muted" }, "None yet."))));
    energy.replaceChildren(energyTable(reply.energy));
    spec.replaceChildren(specList(job.spec));
    log.textContent = reply.log.map((l) => "[" + l.attempt + "] " + l.line).join("\n") || "(no log lines yet)";
    log.scrollTop = log.scrollHeight;
    lastSeries = reply.series;
    const waited = Date.now() - chartsDrawnAt;
    if (ended || waited >= CHART_REFRESH_MS) {
      await drawCharts(reply.series);
    } else if (!chartTimer) {
      chartTimer = setTimeout(() => { chartTimer = null; drawCharts(lastSeries).catch((e) => showError(e.message)); }, CHART_REFRESH_MS - waited);
    }
  }
  let refreshNow = () => {};
  session = await whoami();
  refreshNow = () => refresh().catch((e) => showError(e.message));
  await follow(refresh, id);
}

// -- experiments -------------------------------------------------------------------

async function experimentsPage(app) {
  document.title = "camp · experiments";
  const tbody = el("tbody");
  let cursors = [0];
  let next = 0;
  const prev = el("button", { id: "prev-page", type: "button" }, "← Newer");
  const older = el("button", { id: "next-page", type: "button" }, "Older →");
  app.replaceChildren(el("div", { class: "toolbar" }, el("h1", {}, "Experiments")),
    el("table", { id: "experiments", class: "grid" },
      el("thead", {}, el("tr", {}, ["ID", "Name", "Owner", "Submitted"].map((h) => el("th", {}, h)))), tbody),
    el("div", { class: "pager" }, prev, older));
  async function refresh() {
    const before = cursors[cursors.length - 1];
    const reply = await api("/api/experiments?limit=" + PAGE_SIZE + (before ? "&before=" + before : ""));
    next = reply.next_before_id;
    tbody.replaceChildren(...reply.experiments.map((x) => el("tr", { dataset: { experimentId: x.id } },
      el("td", {}, x.id), el("td", {}, link("/experiments/" + x.id, x.name)), el("td", {}, x.owner), el("td", {}, when(x.created_at_ms)))));
    if (!reply.experiments.length) tbody.replaceChildren(el("tr", {}, el("td", { colspan: 4, class: "muted" }, "No experiments: `camp pipeline submit` makes one.")));
    prev.disabled = cursors.length === 1;
    older.disabled = !next;
  }
  older.addEventListener("click", () => { if (next) { cursors.push(next); refresh().catch((e) => showError(e.message)); } });
  prev.addEventListener("click", () => { if (cursors.length > 1) { cursors.pop(); refresh().catch((e) => showError(e.message)); } });
  await follow(refresh);
}

const SVG_NS = "http://www.w3.org/2000/svg";

function svgEl(tag, attrs, ...children) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "dataset") Object.assign(e.dataset, v); else e.setAttribute(k, v);
  }
  for (const c of children.flat(Infinity)) if (c !== null && c !== undefined) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

/// The pipeline as layers: a job one column right of its deepest parent.
function drawDag(jobs) {
  const byId = new Map(jobs.map((j) => [j.id, j]));
  const depth = new Map();
  const depthOf = (job) => {
    if (depth.has(job.id)) return depth.get(job.id);
    depth.set(job.id, 0);
    const d = job.parents.reduce((m, p) => byId.has(p) ? Math.max(m, depthOf(byId.get(p)) + 1) : m, 0);
    depth.set(job.id, d);
    return d;
  };
  const columns = [];
  for (const job of jobs) {
    const d = depthOf(job);
    (columns[d] = columns[d] || []).push(job);
  }
  const W = 170, H = 46, GX = 60, GY = 16, PAD = 10;
  const pos = new Map();
  columns.forEach((col, c) => col.forEach((job, r) => pos.set(job.id, { x: PAD + c * (W + GX), y: PAD + r * (H + GY) })));
  const width = PAD * 2 + columns.length * W + Math.max(0, columns.length - 1) * GX;
  const height = PAD * 2 + Math.max(1, ...columns.map((c) => c.length)) * (H + GY) - GY;
  const svg = svgEl("svg", { id: "dag", viewBox: "0 0 " + width + " " + height, width, height, role: "img", "aria-label": "pipeline graph" });
  for (const job of jobs) {
    for (const p of job.parents) {
      if (!pos.has(p)) continue;
      const a = pos.get(p), b = pos.get(job.id);
      const x1 = a.x + W, y1 = a.y + H / 2, x2 = b.x, y2 = b.y + H / 2, mx = (x1 + x2) / 2;
      svg.append(svgEl("path", { class: "edge", d: `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}` }));
    }
  }
  for (const job of jobs) {
    const p = pos.get(job.id);
    const why = job.waiting_reason || job.message || "";
    const g = svgEl("g", { class: "node state-" + job.state, transform: `translate(${p.x},${p.y})`, dataset: { jobId: job.id, state: job.state } },
      svgEl("title", {}, "#" + job.id + " " + job.node + ": " + job.state + (why ? " — " + why : "")),
      svgEl("rect", { width: W, height: H, rx: 7 }),
      svgEl("text", { x: 10, y: 19, class: "node-name" }, job.node || job.name),
      svgEl("text", { x: 10, y: 36, class: "node-state" }, job.state + " · #" + job.id));
    const a = svgEl("a", { href: "/jobs/" + job.id }, g);
    svg.append(a);
  }
  return svg;
}

async function experimentPage(app, id) {
  document.title = "camp · experiment " + id;
  const title = el("h1", { id: "experiment-title" }, "Experiment " + id);
  const dag = el("div", { id: "dag-box", class: "card scroll" });
  const curve = el("figure", { id: "curve", class: "curve" }, el("div", { class: "figure-box" }), el("figcaption", {}, "Accuracy against energy"));
  const results = el("table", { id: "results", class: "grid" });
  const csv = link("/api/experiments/" + id + "/results.csv", "Download CSV", { id: "results-csv", class: "button", download: "experiment-" + id + "-results.csv" });
  const compare = el("span");
  const waiting = el("ul", { id: "waiting", class: "waiting" });
  app.replaceChildren(el("div", { class: "toolbar" }, title, csv, compare),
    el("h2", {}, "Pipeline"), dag, waiting,
    el("h2", {}, "Accuracy–energy curve"), curve,
    el("h2", {}, "Results"), el("div", { class: "scroll" }, results));
  async function refresh() {
    const reply = await api("/api/experiments/" + id);
    const x = reply.experiment;
    title.textContent = x.name + " (#" + x.id + ", " + x.owner + ")";
    dag.replaceChildren(drawDag(x.jobs));
    waiting.replaceChildren(...x.jobs.filter((j) => (j.state === "queued" && j.waiting_reason) || (j.state === "cancelled" && j.message))
      .map((j) => el("li", {}, el("b", {}, j.node), ": " + (j.waiting_reason || j.message))));
    const points = await loadSvg(curve.querySelector(".figure-box"), "/api/experiments/" + id + "/curve");
    curve.querySelector("figcaption").textContent = points ? points + " points: fixed precision (triangles) and CAMP (circles, by alpha)" : "No finished point yet";
    const rl = x.jobs.filter((j) => j.stage === "rl" || j.stage === "sp").map((j) => j.id);
    compare.replaceChildren(rl.length ? link("/compare?jobs=" + rl.join(",") + "&metric=test_top1", "Compare sp/rl runs", { class: "button" }) : "");
    results.replaceChildren(
      el("thead", {}, el("tr", {}, ["node", "job", "stage", "bits/alpha", "top-1", "energy", "4-bit share", "state"].map((h) => el("th", {}, h)))),
      el("tbody", {}, reply.results.map((r) => el("tr", { dataset: { jobId: r.job_id } },
        el("td", {}, r.node), el("td", {}, link("/jobs/" + r.job_id, "#" + r.job_id)), el("td", {}, r.stage), el("td", {}, r.variant),
        el("td", { class: "num" }, pct(r.top1)), el("td", { class: "num" }, num(r.normalized_energy)), el("td", { class: "num" }, pct(r.fullbit_share)),
        el("td", {}, badge(r.state))))));
  }
  await follow(refresh);
}

// -- compare -------------------------------------------------------------------------

async function comparePage(app) {
  document.title = "camp · compare";
  const params = new URLSearchParams(location.search);
  const ids = (params.get("jobs") || "").split(",").map((s) => s.trim()).filter(Boolean);
  const metric = el("select", { id: "compare-metric" });
  const figure = el("figure", { id: "compare", class: "chart wide" }, el("div", { class: "figure-box" }), el("figcaption"));
  const list = el("ul", { class: "compared" });
  app.replaceChildren(el("div", { class: "toolbar" }, el("h1", {}, "Compare"), el("label", { for: "compare-metric" }, "metric"), metric), figure, list);
  if (!ids.length) {
    figure.replaceChildren(el("p", { class: "muted" }, "Pick jobs on the jobs page, then Compare selected."));
    ready();
    return;
  }
  // The metrics the first job has, the chosen one first.
  const first = await api("/api/jobs/" + encodeURIComponent(ids[0]));
  const names = first.series.map((s) => s.name);
  const chosen = params.get("metric") || (names.includes("test_top1") ? "test_top1" : names[0] || "test_top1");
  for (const name of new Set([chosen, ...names])) metric.append(el("option", { value: name }, name));
  metric.value = chosen;
  metric.addEventListener("change", () => {
    params.set("metric", metric.value);
    history.replaceState(null, "", "/compare?" + params);
    refresh().catch((e) => showError(e.message));
  });
  async function refresh() {
    const query = new URLSearchParams({ jobs: ids.join(","), metric: metric.value });
    const points = await loadSvg(figure.querySelector(".figure-box"), "/api/compare?" + query);
    figure.querySelector("figcaption").textContent = metric.value + " of " + ids.length + " jobs · " + points + " points";
    list.replaceChildren(...ids.map((i) => el("li", {}, link("/jobs/" + i, "job " + i))));
  }
  await follow(refresh);
}

// -- workers -------------------------------------------------------------------------

async function workersPage(app) {
  document.title = "camp · workers";
  const tbody = el("tbody");
  app.replaceChildren(el("div", { class: "toolbar" }, el("h1", {}, "Workers")),
    el("div", { class: "scroll" }, el("table", { id: "workers", class: "grid" },
      el("thead", {}, el("tr", {}, ["Name", "Host", "Device", "Data sets", "Labels", "State", "Job", "Heartbeat"].map((h) => el("th", {}, h)))), tbody)));
  let fetched = { at: Date.now(), workers: [] };
  function ages() {
    const drift = Date.now() - fetched.at;
    for (const tr of tbody.querySelectorAll("tr[data-worker-id]")) {
      const age = Number(tr.dataset.age) + drift;
      tr.querySelector("td.heartbeat").textContent = duration(age) + " ago";
    }
  }
  async function refresh() {
    const reply = await api("/api/workers");
    fetched = { at: Date.now(), workers: reply.workers };
    tbody.replaceChildren(...reply.workers.map((w) => el("tr", { dataset: { workerId: w.id, state: w.state, age: w.heartbeat_age_ms } },
      el("td", { class: "name" }, w.name),
      el("td", { class: "host" }, w.hostname),
      el("td", { class: "device" }, w.device_kind + (w.gpus.length ? " · " + w.gpus.join(", ") : "") + (w.devices > 1 ? " · " + w.devices + " devices" : "")),
      el("td", { class: "datasets" }, w.datasets.join(", ")),
      el("td", { class: "labels" }, Object.entries(w.labels || {}).map(([k, v]) => el("span", { class: "chip" }, k + "=" + v))),
      el("td", { class: "state" }, badge(w.state)),
      el("td", { class: "job" }, w.running_jobs.map((j) => link("/jobs/" + j, "#" + j))),
      el("td", { class: "heartbeat" }))));
    if (!reply.workers.length) tbody.replaceChildren(el("tr", {}, el("td", { colspan: 8, class: "muted" }, "No worker has registered.")));
    ages();
  }
  // Ages tick on the page (no request); the list is read again on every change.
  setInterval(ages, 1000);
  await follow(refresh);
}

// ---- routing ---------------------------------------------------------------------

async function main() {
  const app = document.getElementById("app");
  const path = location.pathname.replace(/\/+$/, "") || "/";
  for (const a of document.querySelectorAll("nav a")) {
    if (path.startsWith(a.getAttribute("href"))) a.classList.add("current");
  }
  try {
    if (path === "/login") return await loginPage(app);
    let m;
    if ((m = path.match(/^\/jobs\/(\d+)$/))) return await jobPage(app, Number(m[1]));
    await whoami();
    if (path === "/jobs") return await jobsPage(app);
    if ((m = path.match(/^\/experiments\/(\d+)$/))) return await experimentPage(app, Number(m[1]));
    if (path === "/experiments") return await experimentsPage(app);
    if (path === "/compare") return await comparePage(app);
    if (path === "/workers") return await workersPage(app);
    app.replaceChildren(el("p", {}, "No such page."));
  } catch (e) {
    if (e.status !== 401) showError(e.message);
  }
  ready();
}

main();
