// The tidings dashboard: REST for the current state, /ws (through tidings.js) for every
// change after it. Loading a project reads its seq first, then its files, then subscribes
// with since=seq, so the events replayed after seq are applied on top of state that may
// already include them: every update below is idempotent (upsert or delete by id).

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
  processes: new Map(),
  processesApi: null, // unknown until the first request; false when the server lacks it
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
    return typeof body.detail === "string" ? body.detail : `HTTP ${response.status}`;
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
  client.addEventListener("message", (e) => onMessage(e.detail));
  await client.connect();
}

function setStatus(detail) {
  view.connection = detail;
  renderStatus();
  if (detail.state === "closed" && detail.code === 4401) showLogin();
}

function renderStatus() {
  const { state, delay, code } = view.connection;
  const box = $("#status");
  box.dataset.state = state;
  const seq = view.selected && view.client ? view.client.lastSeq(view.selected) : undefined;
  box.dataset.seq = seq ?? "";
  let text = state;
  if (state === "open") text = seq === undefined ? "live" : `live · seq ${seq}`;
  else if (state === "reconnecting") text = `reconnecting in ${(delay / 1000).toFixed(1)} s (closed ${code})`;
  else if (state === "closed") text = `disconnected (${code})`;
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
    case "subscribed":
      if (message.recovered === false && pid === view.selected) loadProjectState(pid);
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
        renderFiles();
      }
      break;
    case "process.started":
    case "process.completed":
      if (pid === view.selected && message.process) {
        view.processes.set(message.process_id, { ...view.processes.get(message.process_id), ...message.process });
        renderProcesses();
      }
      break;
    case "process.progress":
      if (pid === view.selected) {
        const known = view.processes.get(message.process_id) || { id: message.process_id, kind: "", status: "running" };
        view.processes.set(message.process_id, { ...known, progress: message.progress, message: message.message });
        renderProcesses();
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
  if (message.file) what = message.file.name;
  else if (message.data && !project) what = message.data.name;
  else if (message.type === "process.progress") what = `${Math.round(message.progress * 100)}%`;
  else if (message.type === "error") what = message.message;
  else if (message.type === "subscribed" && "recovered" in message) what = `recovered: ${message.recovered}`;
  const time = (message.timestamp || "").slice(11, 19);
  const item = el(
    "li",
    { "data-type": message.type },
    el("span", { class: "time" }, time),
    el("span", { class: "type" }, message.type),
    el("span", { class: "seq" }, message.seq !== undefined ? `#${message.seq}` : ""),
    el("span", { class: "what" }, [project ? project.name : "", what].filter(Boolean).join(" · ")),
  );
  const log = $("#log");
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
  notice("");
  renderProjects();
  const seq = await loadProjectState(pid);
  if (seq !== null && view.selected === pid) view.client.subscribe(pid, { since: seq });
  renderStatus();
}

/** Fetch a project's state; returns the seq it is at least as new as (null: gone). */
async function loadProjectState(pid) {
  const response = await api("GET", `/api/projects/${encodeURIComponent(pid)}`);
  if (!response.ok) {
    dropProject(pid, "This project is not available.");
    return null;
  }
  const project = await response.json();
  view.projects.set(pid, project);
  const files = new Map();
  for (let offset = 0; offset !== null; ) {
    const page = await json("GET", `/api/projects/${encodeURIComponent(pid)}/files?limit=1000&offset=${offset}`);
    for (const f of page.items) files.set(f.id, f);
    offset = page.next_offset;
  }
  const processes = await loadProcesses(pid);
  if (view.selected !== pid) return project.seq;
  view.files = files;
  view.renderedFiles = null;
  view.processes = processes;
  $("#empty").hidden = true;
  $("#project").hidden = false;
  renderProjectHead();
  renderFiles();
  renderProcesses();
  return project.seq;
}

async function loadProcesses(pid) {
  const processes = new Map();
  if (view.processesApi === false) return processes;
  let response;
  try {
    response = await api("GET", `/api/projects/${encodeURIComponent(pid)}/processes`);
  } catch (err) {
    return processes;
  }
  if (response.status === 404 || response.status === 405) {
    const body = await response.json().catch(() => ({}));
    // A missing route answers {"detail":"Not Found"}; a missing project names itself.
    if (response.status === 405 || body.detail === "Not Found") view.processesApi = false;
    return processes;
  }
  if (!response.ok) return processes;
  view.processesApi = true;
  const body = await response.json();
  const items = Array.isArray(body) ? body : body.items || [];
  for (const p of items) processes.set(p.id, p);
  return processes;
}

function dropProject(pid, why) {
  view.projects.delete(pid);
  renderProjects();
  if (pid !== view.selected) return;
  view.selected = null;
  view.files = new Map();
  view.processes = new Map();
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

function renderProcesses() {
  const missing = view.processesApi === false;
  $("#processes-missing").hidden = !missing;
  $("#start-process").hidden = missing;
  const items = [...view.processes.values()].sort((a, b) => (b.created_at || "").localeCompare(a.created_at || ""));
  $("#processes").replaceChildren(
    ...items.map((p) => {
      const pct = Math.round((p.progress || 0) * 100);
      const running = p.status === "running" || p.status === "queued";
      return el(
        "li",
        { "data-id": p.id, "data-status": p.status },
        el("span", { class: "name" }, p.kind || "process"),
        el("span", { class: `tag ${p.status}` }, p.status),
        el("div", { class: "bar" }, el("div", { class: "fill", style: `width:${pct}%` })),
        el("span", { class: "num" }, `${pct}%`),
        el("span", { class: "muted message" }, p.error || p.message || ""),
        running
          ? el("button", { type: "button", class: "link", onclick: () => cancelProcess(p.id) }, "cancel")
          : "",
      );
    }),
  );
  if (!items.length && !missing) $("#processes").append(el("li", { class: "muted" }, "No processes yet."));
}

async function startProcess(event) {
  event.preventDefault();
  const kind = new FormData(event.target).get("kind");
  try {
    await json("POST", `/api/projects/${encodeURIComponent(view.selected)}/processes`, { kind, params: {} });
  } catch (err) {
    notice(`Could not start ${kind}: ${err.message}`);
  }
}

async function cancelProcess(processId) {
  try {
    await json("DELETE", `/api/projects/${encodeURIComponent(view.selected)}/processes/${encodeURIComponent(processId)}`);
  } catch (err) {
    notice(`Cancel failed: ${err.message}`);
  }
}

// -- boot -------------------------------------------------------------------------------------

$("#login").addEventListener("submit", login);
$("#logout").addEventListener("click", logout);
$("#new-project").addEventListener("submit", createProject);
$("#upload").addEventListener("submit", upload);
$("#start-process").addEventListener("submit", startProcess);

const me = await api("GET", "/api/auth/me");
if (me.ok) await start(await me.json());
else showLogin();
