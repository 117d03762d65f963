// The tidings dashboard: one subscribe with `snapshot` per project view. The snapshot
// (the project, its files and processes at a seq) builds the view; the events after it,
// live or replayed after a reconnect, update it. A resume that cannot recover brings a new
// snapshot, which replaces the view: no REST read of the project on open or after an
// outage (only a project with more files than a snapshot holds pages the rest over
// REST). Every update below is idempotent (upsert or delete by id).

import { TidingsClient } from "./tidings.js";

const $ = (selector) => document.querySelector(selector);
const LOG_LIMIT = 50;

const view = {
  client: null,
  me: null,
  projects: new Map(),
  selected: null,
  files: new Map(),
  renderedFiles: null,
  gone: new Set(), // files deleted since the snapshot: a page read over REST may predate it
  processes: new Map(),
  processRows: new Map(), // process id -> its <li>, kept so updates happen in place
  viewers: new Map(), // user id -> username: who is viewing the open project (presence)
  connection: { state: "offline" },
};

// -- REST ---------------------------------------------------------------------------------

async function api(method, path, body) {
  const options = { method, credentials: "same-origin", headers: {} };
  if (body instanceof FormData) options.body = body;
  else if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  if (response.status === 401 && path !== "/api/auth/login") showLogin();
  return response;
}

async function json(method, path, body) {
  const response = await api(method, path, body);
  if (!response.ok) throw new Error(await errorText(response));
  return response.status === 204 ? null : response.json();
}

async function errorText(response) {
  try {
    const body = await response.json();
    if (typeof body.detail === "string") return body.detail;
    // A 422 lists what was wrong: name the field and the reason.
    if (Array.isArray(body.detail) && body.detail.length) {
      const { loc = [], msg } = body.detail[0];
      return `${loc.filter((part) => part !== "body").join(".")}: ${msg}`;
    }
    return `HTTP ${response.status}`;
  } catch (err) {
    return `HTTP ${response.status}`;
  }
}

// -- small DOM helpers (textContent only: names come from users) -----------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function formatSize(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 ** 2) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 ** 2).toFixed(1)} MiB`;
}

/** Local wall-clock time of an ISO timestamp, 24-hour: 16:32:05. */
function clock(iso) {
  if (!iso) return "";
  const time = new Date(iso);
  return Number.isNaN(time.getTime()) ? "" : time.toLocaleTimeString([], { hour12: false });
}

function notice(text) {
  const node = $("#notice");
  node.textContent = text || "";
  node.hidden = !text;
}

// -- login -------------------------------------------------------------------------------------

function showLogin() {
  if (view.client) view.client.close();
  view.client = null;
  $("#app-view").hidden = true;
  $("#who").hidden = true;
  $("#login-view").hidden = false;
  setStatus({ state: "offline" });
}

async function login(event) {
  event.preventDefault();
  const form = new FormData(event.target);
  const response = await api("POST", "/api/auth/login", {
    username: form.get("username"),
    password: form.get("password"),
  });
  if (!response.ok) {
    $("#login-error").textContent = await errorText(response);
    return;
  }
  $("#login-error").textContent = "";
  event.target.reset();
  await start(await response.json());
}

async function logout() {
  await api("POST", "/api/auth/logout");
  showLogin();
}

// -- the live connection ------------------------------------------------------------------------

async function start(me) {
  view.me = me;
  $("#username").textContent = me.username;
  $("#who").hidden = false;
  $("#login-view").hidden = true;
  $("#app-view").hidden = false;
  const client = new TidingsClient();
  view.client = client;
  client.addEventListener("status", (e) => setStatus(e.detail));
  client.addEventListener("snapshot", (e) => onSnapshot(e.detail));
  client.addEventListener("message", (e) => onMessage(e.detail));
  await client.connect();
}

function setStatus(detail) {
  view.connection = detail;
  renderStatus();
  if (detail.state === "closed" && detail.code === 4401) showLogin();
}

// Why the client reconnects, when it is not because the server closed (tidings.js).
const RECONNECT_REASONS = { silent: "no heartbeat", online: "back online", visible: "page shown again" };

function renderStatus() {
  const { state, delay, code } = view.connection;
  const box = $("#status");
  box.dataset.state = state;
  box.dataset.transport = view.connection.transport ?? "";
  const seq = view.selected && view.client ? view.client.lastSeq(view.selected) : undefined;
  box.dataset.seq = seq ?? "";
  let text = state;
  if (state === "open") text = seq === undefined ? "live" : `live · seq ${seq}`;
  if (state === "open" && view.connection.transport === "stream") text += " (SSE)";
  else if (state === "reconnecting") {
    const why = RECONNECT_REASONS[view.connection.reason] ?? `closed ${code}`;
    text = `reconnecting in ${(delay / 1000).toFixed(1)} s (${why})`;
  } else if (state === "closed") text = `disconnected (${code})`;
  $("#status-text").textContent = text;
}

function onMessage(message) {
  const pid = message.project_id;
  switch (message.type) {
    case "connection.established":
      // Project events for projects we are not subscribed to are not replayed: refetch.
      loadProjects();
      break;
    case "project.created":
    case "project.updated":
      view.projects.set(pid, message.data);
      renderProjects();
      if (pid === view.selected) renderProjectHead();
      break;
    case "project.deleted":
      dropProject(pid, "This project was deleted.");
      break;
    case "unsubscribed":
      if (message.reason === "access_revoked") dropProject(pid, "Your access to this project was removed.");
      break;
    case "error":
      if (message.code === "not_found" && pid && pid === view.selected) {
        dropProject(pid, "This project is not available.");
      }
      break;
    case "file.uploaded":
      if (pid === view.selected) {
        view.files.set(message.file.id, message.file);
        renderFiles();
      }
      break;
    case "file.deleted":
      if (pid === view.selected) {
        view.files.delete(message.file.id);
        view.gone.add(message.file.id);
        renderFiles();
      }
      break;
    case "process.started":
    case "process.completed":
      if (pid === view.selected && message.process) {
        mergeProcess(message.process);
        renderProcesses();
      }
      break;
    case "process.progress":
      if (pid === view.selected) onProgress(message);
      break;
    case "subscribed":
      // The list of viewers now; presence.joined / presence.left keep it current.
      if (pid === view.selected && Array.isArray(message.presence)) {
        view.viewers = new Map(message.presence.map((u) => [u.id, u.username]));
        renderViewers();
      }
      break;
    case "presence.joined":
    case "presence.left":
      if (pid === view.selected) {
        if (message.type === "presence.joined") view.viewers.set(message.user.id, message.user.username);
        else view.viewers.delete(message.user.id);
        renderViewers();
      }
      break;
    default:
      break;
  }
  logEvent(message);
  renderStatus();
}

function logEvent(message) {
  const project = message.project_id ? view.projects.get(message.project_id) : null;
  let what = "";
  const process = message.process_id ? message.process || view.processes.get(message.process_id) : null;
  if (message.file) what = message.file.name;
  else if (message.data && !project) what = message.data.name;
  else if (message.type === "process.progress") what = `${processTitle(process || {})} ${Math.round(message.progress * 100)}%`;
  else if (process) what = `${processTitle(process)} ${process.status}`;
  else if (message.type === "error") what = message.message;
  else if (message.type === "subscribed" && "recovered" in message) what = `recovered: ${message.recovered}`;
  const time = clock(message.timestamp);
  const summary = [project ? project.name : "", what].filter(Boolean).join(" · ");
  const log = $("#log");
  const newest = log.firstElementChild;
  const sameRun = newest?.dataset.type === "process.progress" && newest.dataset.process === message.process_id;
  if (message.type === "process.progress" && sameRun) {
    // A run of progress reports of one process is one line that keeps moving.
    newest.querySelector(".time").textContent = time;
    newest.querySelector(".what").textContent = summary;
    return;
  }
  const item = el(
    "li",
    { "data-type": message.type, ...(message.process_id ? { "data-process": message.process_id } : {}) },
    el("span", { class: "time" }, time),
    el("span", { class: "type" }, message.type),
    el("span", { class: "seq" }, message.seq !== undefined ? `#${message.seq}` : ""),
    el("span", { class: "what" }, summary),
  );
  log.prepend(item);
  while (log.children.length > LOG_LIMIT) log.lastChild.remove();
}

// -- projects ---------------------------------------------------------------------------------

async function loadProjects() {
  const projects = await json("GET", "/api/projects");
  view.projects = new Map(projects.map((p) => [p.id, p]));
  renderProjects();
  if (view.selected && !view.projects.has(view.selected)) dropProject(view.selected, "This project is gone.");
}

function renderProjects() {
  const list = $("#projects");
  list.replaceChildren(
    ...[...view.projects.values()].map((p) =>
      el(
        "li",
        {
          "data-id": p.id,
          class: p.id === view.selected ? "selected" : "",
          onclick: () => selectProject(p.id),
        },
        el("span", { class: "name" }, p.name),
        el("span", { class: "muted" }, p.owner === view.me.username ? "owner" : p.owner),
      ),
    ),
  );
  if (!view.projects.size) list.append(el("li", { class: "muted" }, "No projects yet."));
}

async function selectProject(pid) {
  if (view.selected === pid) return;
  if (view.selected && view.client) view.client.unsubscribe(view.selected);
  view.selected = pid;
  view.viewers = new Map();
  renderViewers();
  notice("");
  renderProjects();
  // The state arrives with the `subscribed` reply (onSnapshot), and again should a
  // reconnect find that events were lost meanwhile.
  view.client.subscribe(pid, { snapshot: true });
  renderStatus();
}

/** A project's state at a seq: the view, afresh. Events after it follow. */
function onSnapshot({ project_id: pid, snapshot }) {
  if (pid !== view.selected) return;
  view.projects.set(pid, snapshot.project);
  renderProjects();
  view.files = new Map(snapshot.files.map((f) => [f.id, f]));
  view.renderedFiles = null;
  view.gone = new Set();
  view.processes = new Map(snapshot.processes.map((p) => [p.id, p]));
  $("#empty").hidden = true;
  $("#project").hidden = false;
  renderProjectHead();
  renderFiles();
  renderProcesses();
  if (snapshot.files_truncated) loadMoreFiles(pid, snapshot.files.length);
  if (snapshot.processes_truncated) loadMoreProcesses(pid);
}

/** More files than a snapshot holds: page the rest over REST, as the events go on. */
async function loadMoreFiles(pid, offset) {
  try {
    for (let next = offset; next !== null; ) {
      const page = await json("GET", `/api/projects/${encodeURIComponent(pid)}/files?limit=1000&offset=${next}`);
      if (view.selected !== pid) return;
      for (const f of page.items) if (!view.gone.has(f.id) && !view.files.has(f.id)) view.files.set(f.id, f);
      renderFiles();
      next = page.next_offset;
    }
  } catch (err) {
    notice(`Could not load every file: ${err.message}`);
  }
}

async function loadMoreProcesses(pid) {
  try {
    const processes = await loadProcesses(pid);
    if (view.selected !== pid) return;
    for (const p of processes.values()) mergeProcess(p);
    renderProcesses();
  } catch (err) {
    // The snapshot's processes stay; the events keep them current.
  }
}

function dropProject(pid, why) {
  view.projects.delete(pid);
  renderProjects();
  if (pid !== view.selected) return;
  view.selected = null;
  view.viewers = new Map();
  renderViewers();
  view.files = new Map();
  view.processes = new Map();
  renderProcesses();
  $("#project").hidden = true;
  $("#empty").hidden = false;
  $("#empty").textContent = why;
}

function renderProjectHead() {
  const p = view.projects.get(view.selected);
  if (!p) return;
  $("#project-name").textContent = p.name;
  $("#project-meta").textContent = `owner ${p.owner}${p.description ? " · " + p.description : ""}`;
}

/** Who is viewing the open project, live (you included). */
function renderViewers() {
  const list = $("#viewers");
  const names = [...view.viewers.values()].sort();
  list.replaceChildren(...names.map((name) => el("li", { class: "viewer" }, name)));
  $("#viewer-count").textContent = String(names.length);
}

async function createProject(event) {
  event.preventDefault();
  const name = new FormData(event.target).get("name");
  try {
    const project = await json("POST", "/api/projects", { name });
    event.target.reset();
    view.projects.set(project.id, project);
    renderProjects();
    selectProject(project.id);
  } catch (err) {
    alert(err.message);
  }
}

// -- files ------------------------------------------------------------------------------------

function renderFiles() {
  const files = [...view.files.values()].sort((a, b) => (a.path + a.name).localeCompare(b.path + b.name));
  $("#file-count").textContent = String(files.length);
  const pid = view.selected;
  const before = view.renderedFiles; // null right after loading: nothing is "new" then
  view.renderedFiles = new Set(files.map((f) => f.id));
  $("#files tbody").replaceChildren(
    ...files.map((f) =>
      el(
        "tr",
        { "data-id": f.id, "data-name": f.name, class: before && !before.has(f.id) ? "fresh" : "" },
        el("td", {}, el("a", { href: `/api/projects/${pid}/files/${f.id}/content` }, f.name)),
        el("td", { class: "muted" }, f.path),
        el("td", {}, el("span", { class: `tag ${f.asset_type}` }, f.asset_type)),
        el("td", { class: "num" }, formatSize(f.size)),
        el("td", {}, el("button", { type: "button", class: "link", onclick: () => deleteFile(pid, f.id) }, "delete")),
      ),
    ),
  );
  if (!files.length) $("#files tbody").append(el("tr", {}, el("td", { colspan: "5", class: "muted" }, "No files yet.")));
}

async function upload(event) {
  event.preventDefault();
  const form = new FormData(event.target);
  if (!form.get("path")) form.delete("path");
  try {
    await json("POST", `/api/projects/${encodeURIComponent(view.selected)}/files`, form);
    event.target.reset(); // the file appears through its file.uploaded event
  } catch (err) {
    notice(`Upload failed: ${err.message}`);
  }
}

async function deleteFile(pid, fileId) {
  try {
    await json("DELETE", `/api/projects/${encodeURIComponent(pid)}/files/${encodeURIComponent(fileId)}`);
  } catch (err) {
    notice(`Delete failed: ${err.message}`);
  }
}

// -- processes --------------------------------------------------------------------------------
//
// A process is learnt from several sources that can arrive in any order: the list fetched
// with the project, the answer to our own POST or DELETE, the durable process.started /
// process.completed events (replayed after a reconnect) and the ephemeral process.progress
// ones. mergeProcess never moves a process backwards: a lower status rank, or a lower
// progress at the same rank, is stale news and is ignored.

const STATUS_RANK = { queued: 0, running: 1, succeeded: 2, failed: 2, cancelled: 2 };
const ACTIVE = new Set(["queued", "running"]);

function mergeProcess(update) {
  const known = view.processes.get(update.id);
  if (known) {
    const was = STATUS_RANK[known.status] ?? 0;
    const now = STATUS_RANK[update.status] ?? was;
    if (now < was) return known;
    if (now === was && (update.progress ?? 0) < (known.progress ?? 0)) {
      update = { ...update, progress: known.progress, message: known.message };
    }
  }
  const merged = { ...known, ...update };
  view.processes.set(update.id, merged);
  return merged;
}

function onProgress(message) {
  const id = message.process_id;
  const known = view.processes.get(id);
  if (!known) {
    // Started before the list we hold was read and not replayed to us: ask for it.
    view.processes.set(id, { id, kind: "", status: "running", progress: 0, message: "" });
    refreshProcess(view.selected, id);
  } else if (!ACTIVE.has(known.status)) {
    return; // a late progress report for a process we already know has ended
  }
  mergeProcess({ id, status: "running", progress: message.progress, message: message.message });
  renderProcesses();
}

async function refreshProcess(pid, id) {
  try {
    const process = await json("GET", `/api/projects/${encodeURIComponent(pid)}/processes/${encodeURIComponent(id)}`);
    if (view.selected !== pid) return;
    mergeProcess(process);
    renderProcesses();
  } catch (err) {
    // Gone meanwhile (its project deleted): the project's own events say so.
  }
}

async function loadProcesses(pid) {
  const page = await json("GET", `/api/projects/${encodeURIComponent(pid)}/processes?limit=100`);
  return new Map(page.items.map((p) => [p.id, p]));
}

function processTitle(p) {
  if (p.kind === "external") return p.params?.label || p.params?.name || "external";
  return p.kind || "process";
}


function duration(p) {
  if (!p.started_at || !p.finished_at) return "";
  const seconds = (new Date(p.finished_at) - new Date(p.started_at)) / 1000;
  if (seconds < 0.1) return "< 0.1 s";
  return seconds < 60 ? `${seconds.toFixed(1)} s` : `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
}

function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

/** One line about a finished process: what it found or made, or why it stopped. */
function outcome(p) {
  const r = p.result || {};
  if (p.status === "failed") return { text: p.error || "failed", tone: "bad" };
  if (p.status === "cancelled") return { text: `Cancelled at ${Math.round((p.progress || 0) * 100)}%`, tone: "" };
  if (p.kind === "export") {
    const missing = (r.missing || []).length;
    return {
      text: `${plural(r.files ?? 0, "file")} · ${formatSize(r.size ?? 0)}${missing ? ` · ${missing} missing` : ""}`,
      tone: missing ? "warn" : "",
    };
  }
  if (p.kind === "verify") {
    const bad = (r.mismatched || []).length;
    const missing = (r.missing || []).length;
    if (!bad && !missing) return { text: `${plural(r.checked ?? 0, "file")} checked · all intact`, tone: "good" };
    return { text: `${plural(r.checked ?? 0, "file")} checked · ${bad} changed · ${missing} missing`, tone: "bad" };
  }
  if (p.kind === "thumbnails") {
    const skipped = (r.skipped || []).length;
    return {
      text: `${plural((r.thumbnails || []).length, "thumbnail")}${skipped ? ` · ${skipped} skipped` : ""}`,
      tone: skipped ? "warn" : "",
    };
  }
  return { text: p.message || "Done", tone: "" };
}

/** The row of a process, updated in place so that its bar's width change animates. */
function processRow(p) {
  let row = view.processRows.get(p.id);
  if (!row) {
    row = el(
      "li",
      { class: "process", "data-id": p.id },
      el(
        "div",
        { class: "process-head" },
        el("span", { class: "name" }),
        el("span", { class: "tag" }),
        el("span", { class: "muted when" }),
        el("span", { class: "actions" }),
      ),
      el(
        "div",
        { class: "process-progress" },
        el(
          "div",
          { class: "bar", role: "progressbar", "aria-valuemin": "0", "aria-valuemax": "1" },
          el("div", { class: "fill" }),
        ),
        el("span", { class: "num pct" }),
      ),
      el("div", { class: "message" }),
    );
    view.processRows.set(p.id, row);
  }
  const pct = Math.round((p.progress || 0) * 100);
  const active = ACTIVE.has(p.status);
  row.dataset.kind = p.kind;
  row.dataset.status = p.status;
  row.querySelector(".name").textContent = processTitle(p);
  const tag = row.querySelector(".tag");
  tag.className = `tag ${p.status}`;
  tag.textContent = p.status;
  const when = p.started_at || p.created_at;
  row.querySelector(".when").textContent = [clock(when), duration(p)].filter(Boolean).join(" · ");
  const bar = row.querySelector(".bar");
  bar.setAttribute("aria-valuenow", String(p.progress || 0));
  bar.setAttribute("aria-valuetext", `${pct}%`);
  bar.setAttribute("aria-label", `${processTitle(p)} progress`);
  row.querySelector(".fill").style.width = `${pct}%`;
  row.querySelector(".pct").textContent = `${pct}%`;

  const message = row.querySelector(".message");
  if (active) {
    message.className = "message muted";
    message.textContent = p.status === "queued" ? "Waiting for a free slot…" : p.message || "Starting…";
  } else {
    const { text, tone } = outcome(p);
    message.className = `message ${tone || "muted"}`;
    message.textContent = text;
  }

  const actions = row.querySelector(".actions");
  const state = active ? `active:${p.cancelling ? 1 : 0}` : p.status;
  if (actions.dataset.state !== state) {
    actions.dataset.state = state;
    const pid = view.selected;
    if (active) {
      actions.replaceChildren(
        el(
          "button",
          { type: "button", class: "link cancel", onclick: () => cancelProcess(pid, p.id) },
          p.cancelling ? "cancelling…" : "cancel",
        ),
      );
      if (p.cancelling) actions.firstChild.disabled = true;
    } else if (p.status === "succeeded" && p.kind === "export") {
      const href = `/api/projects/${encodeURIComponent(pid)}/processes/${encodeURIComponent(p.id)}/result`;
      actions.replaceChildren(el("a", { class: "download", href, download: p.result?.archive || "export.zip" }, "⬇ Download zip"));
    } else {
      actions.replaceChildren();
    }
  }
  return row;
}

function renderProcesses() {
  const list = $("#processes");
  const items = [...view.processes.values()].sort((a, b) => (b.created_at || "~").localeCompare(a.created_at || "~"));
  const wanted = new Set(items.map((p) => p.id));
  for (const [id, row] of view.processRows) {
    if (!wanted.has(id)) {
      row.remove();
      view.processRows.delete(id);
    }
  }
  list.querySelector(":scope > .empty")?.remove();
  // Insert and reorder without detaching rows already in place (that would restart them).
  items.forEach((p, index) => {
    const row = processRow(p);
    if (list.children[index] !== row) list.insertBefore(row, list.children[index] || null);
  });
  if (!items.length) list.append(el("li", { class: "muted empty" }, "No processes yet."));
}

function syncProcessForm() {
  const kind = $("#start-process select[name=kind]").value;
  $("#start-process select[name=compression]").hidden = kind !== "export";
}

async function startProcess(event) {
  event.preventDefault();
  const form = new FormData(event.target);
  const kind = form.get("kind");
  const params = {};
  if (form.get("path")) params.path = form.get("path");
  if (kind === "export") params.compression = form.get("compression");
  const pid = view.selected;
  try {
    const process = await json("POST", `/api/projects/${encodeURIComponent(pid)}/processes`, { kind, params });
    notice("");
    if (view.selected !== pid) return;
    mergeProcess(process); // queued: others see it once it starts (process.started)
    renderProcesses();
  } catch (err) {
    notice(`Could not start ${kind}: ${err.message}`);
  }
}

async function cancelProcess(pid, processId) {
  const known = view.processes.get(processId);
  if (known) {
    known.cancelling = true;
    renderProcesses();
  }
  try {
    // Answers once the process has stopped, with it (cancelled).
    const process = await json(
      "DELETE",
      `/api/projects/${encodeURIComponent(pid)}/processes/${encodeURIComponent(processId)}`,
    );
    if (view.selected === pid) mergeProcess(process);
  } catch (err) {
    notice(`Cancel failed: ${err.message}`); // 409: it had finished meanwhile
  } finally {
    const current = view.processes.get(processId);
    if (current) delete current.cancelling;
    if (view.selected === pid) renderProcesses();
  }
}

// -- boot -------------------------------------------------------------------------------------

$("#login").addEventListener("submit", login);
$("#logout").addEventListener("click", logout);
$("#new-project").addEventListener("submit", createProject);
$("#upload").addEventListener("submit", upload);
$("#start-process").addEventListener("submit", startProcess);
$("#start-process select[name=kind]").addEventListener("change", syncProcessForm);
syncProcessForm();

const me = await api("GET", "/api/auth/me");
if (me.ok) await start(await me.json());
else showLogin();
