// The demo page: recommendations with their explanation, similar items, and click events, through the public
// API only. Everything from the API is put into the page as text (textContent), never as HTML: item metadata
// comes from the catalogue's owner and must not be able to inject markup.
"use strict";

const COLORS = {
  collaborative: "#4e79a7", shared: "#f28e2b", synergy: "#e15759", popularity: "#9aa3ae",
};
const UNIQUE_COLORS = ["#59a14f", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f"];
const TITLE_FIELDS = ["title", "name"];  // the first one the catalogue has names the items
// Shown under the title when the catalogue has them, in this order; then any other field, up to MAX_FIELDS
// (fields whose name says url or id are links or keys, not text for a person).
const PREFERRED_FIELDS = ["genres", "category", "brand", "year", "release_date", "price"];
const MAX_FIELDS = 2;

const state = {
  user: null,          // user id, or null: anonymous (the history below is sent instead)
  history: [],         // anonymous clicks, most recent first
  fields: [],          // display fields asked for (from GET /model)
  titleField: null,
  components: [],
  selected: null,      // item whose similar items are shown
};

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k === "dataset") Object.assign(e.dataset, v);
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function setStatus(text, isError = false) {
  const s = $("status");
  s.textContent = text;
  s.classList.toggle("error", isError);
}

async function api(method, path, body, token) {
  const opts = { method, headers: {} };
  if (body !== undefined) {
    opts.headers["content-type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  if (token) opts.headers.authorization = `Bearer ${token}`;
  const r = await fetch(path, opts);
  let data = null;
  try { data = await r.json(); } catch (e) { /* not JSON: reported below */ }
  if (!r.ok) {
    const detail = data && data.detail ? data.detail : r.statusText;
    throw new Error(`${method} ${path}: HTTP ${r.status}: ${detail}`);
  }
  return data;
}

function componentColor(name) {
  if (COLORS[name]) return COLORS[name];
  const k = state.components.filter((c) => !COLORS[c]).indexOf(name);
  return UNIQUE_COLORS[(k < 0 ? 0 : k) % UNIQUE_COLORS.length];
}

function label(name) {
  return name.startsWith("unique:") ? `unique to ${name.slice(7)}` : name;
}

function titleOf(item) {
  const m = item.meta || {};
  return state.titleField && m[state.titleField] ? String(m[state.titleField]) : item.item_id;
}

function fieldsText(meta) {
  const parts = [];
  for (const f of state.fields) {
    if (f === state.titleField || !meta || meta[f] === undefined || meta[f] === null) continue;
    const v = Array.isArray(meta[f]) ? meta[f].join(", ") : meta[f];
    if (String(v) !== "") parts.push(`${f.replace(/_/g, " ")}: ${v}`);
  }
  return parts.join(" · ");
}

function pct(x) {
  const p = x * 100;
  return Math.abs(p) < 10 && p !== 0 ? `${p.toFixed(1)}%` : `${Math.round(p)}%`;
}

// One bar per item: each component's share of the score as a segment. Shares may be negative or above 1 when
// components pull in opposite directions, so widths are |share| / sum |share| and negative ones are hatched.
function explainBar(explain) {
  const entries = Object.entries(explain);
  const total = entries.reduce((s, [, v]) => s + Math.abs(v), 0) || 1;
  const bar = el("div", { class: "bar", role: "img",
    "aria-label": entries.map(([k, v]) => `${label(k)} ${pct(v)}`).join(", ") });
  bar.title = entries.map(([k, v]) => `${label(k)}: ${pct(v)} of the score`).join("\n");
  for (const [name, share] of entries) {
    const seg = el("span", { class: share < 0 ? "negative" : "", dataset: { component: name } });
    seg.style.width = `${(100 * Math.abs(share)) / total}%`;
    seg.style.background = componentColor(name);
    bar.append(seg);
  }
  return bar;
}

function renderLegend(names) {
  const legend = $("legend");
  legend.replaceChildren(...names.map((n) => {
    const li = el("li", {}, label(n));
    li.style.setProperty("--swatch", componentColor(n));
    return li;
  }));
}

function itemRow(item, { explained = false, scoreLabel = "score" } = {}) {
  const li = el("li", { class: "item", dataset: { itemId: item.item_id } });
  if (item.item_id === state.selected) li.classList.add("selected");
  const title = el("button", { type: "button", class: "title", title: "show similar items",
    onclick: () => showSimilar(item.item_id, titleOf(item)) }, titleOf(item));
  const head = el("div", { class: "head" }, title);
  if (titleOf(item) !== item.item_id) head.append(el("span", { class: "id" }, item.item_id));
  head.append(el("span", { class: "score", title: scoreLabel }, `${scoreLabel} ${item.score.toFixed(3)}`));
  li.append(head);
  const extra = fieldsText(item.meta);
  if (extra) li.append(el("div", { class: "fields" }, extra));
  if (explained && item.explain) li.append(explainBar(item.explain));
  if (explained && item.because && item.because.length) {
    const names = item.because.map((b) => `${titleOf(b)} (${pct(b.share)})`);
    li.append(el("div", { class: "because" }, `Because of: ${names.join(", ")}`));
  } else if (explained && item.explain && item.explain.popularity !== undefined) {
    li.append(el("div", { class: "because" }, "Popular with everyone (nothing known about you yet)"));
  }
  li.append(el("div", { class: "actions" },
    el("button", { type: "button", class: "similar-btn", onclick: () => showSimilar(item.item_id, titleOf(item)) },
      "Similar items"),
    el("button", { type: "button", class: "click-btn", onclick: () => clicked(item.item_id, titleOf(item)) },
      "I clicked this")));
  return li;
}

async function refresh() {
  const k = Number($("k").value);
  const body = { k, explain: true, fields: state.fields };
  if (state.user) body.user_id = state.user;
  if (!state.user && state.history.length) body.history = state.history.map((h) => h.id);
  $("recs-title").textContent = state.user ? `Recommendations for ${state.user}` : "Recommendations (anonymous)";
  renderHistory();
  try {
    const r = await api("POST", "/recommend", body);
    $("source").textContent = {
      user: "From this user's learned taste and recent clicks.",
      history: "From the clicked items (the model's user tower reads them).",
      popular: "Nothing is known about this user yet: the most popular items (score = share of all interactions).",
    }[r.source] + (r.cached ? " (cached)" : "");
    renderLegend(r.source === "popular" ? ["popularity"] : state.components);
    $("recs").replaceChildren(...r.items.map((it) => itemRow(it, { explained: true })));
    $("recs").dataset.source = r.source;
  } catch (e) {
    setStatus(e.message, true);
  }
}

async function showSimilar(itemId, title) {
  state.selected = itemId;
  for (const li of document.querySelectorAll(".item")) li.classList.toggle("selected", li.dataset.itemId === itemId);
  $("similar-title").textContent = `Similar to ${title}`;
  $("similar-of").textContent = "Closest items by the cosine of their vectors.";
  const q = new URLSearchParams({ k: "10" });
  if (state.fields.length) q.set("fields", state.fields.join(","));
  try {
    const r = await api("GET", `/items/${encodeURIComponent(itemId)}/similar?${q}`);
    $("similar").replaceChildren(...r.items.map((it) => itemRow(it, { scoreLabel: "cosine" })));
  } catch (e) {
    setStatus(e.message, true);
  }
}

async function clicked(itemId, title) {
  if (!state.user) {  // anonymous: the click joins the history sent with the next request
    state.history = [{ id: itemId, title }, ...state.history.filter((h) => h.id !== itemId)];
    setStatus(`Added “${title}” to your history.`);
    await refresh();
    return;
  }
  try {
    const r = await postEvent({ user_id: state.user, item_id: itemId, type: "click" });
    setStatus(`Recorded a click on “${title}” (event ${r.event_id}, stored in ${r.durable_in}).`);
    $("status").dataset.eventId = r.event_id;
  } catch (e) {
    setStatus(e.message, true);
    return;
  }
  await refresh();
}

// POST /events needs a bearer token when the service sets MRDIB_EVENTS_TOKEN (SECURITY.md): asked for once,
// kept for this tab only (sessionStorage), forgotten when the service refuses it.
async function postEvent(event) {
  let token = sessionStorage.getItem("mrdib-events-token");
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      return await api("POST", "/events", event, token);
    } catch (e) {
      if (!/HTTP 40[13]/.test(e.message) || attempt > 0) throw e;
      sessionStorage.removeItem("mrdib-events-token");
      token = window.prompt("This service needs its events token (MRDIB_EVENTS_TOKEN) to record clicks:");
      if (!token) throw e;
      sessionStorage.setItem("mrdib-events-token", token);
    }
  }
  throw new Error("unreachable");
}

function renderHistory() {
  const box = $("history-box");
  box.hidden = Boolean(state.user) || state.history.length === 0;
  $("history").replaceChildren(...state.history.map((h) => el("li", {}, h.title)));
}

function rememberUser(user) {
  let recent = [];
  try { recent = JSON.parse(localStorage.getItem("mrdib-recent-users") || "[]"); } catch (e) { recent = []; }
  recent = [user, ...recent.filter((u) => u !== user)].slice(0, 10);
  localStorage.setItem("mrdib-recent-users", JSON.stringify(recent));
  $("recent-users").replaceChildren(...recent.map((u) => el("option", { value: u })));
}

function useUser(user) {
  state.user = user || null;
  const url = new URL(window.location.href);
  if (state.user) { url.searchParams.set("user", state.user); rememberUser(state.user); }
  else url.searchParams.delete("user");
  window.history.replaceState(null, "", url);
  $("user").value = state.user || "";
  setStatus("");
  return refresh();
}

async function start() {
  $("who").addEventListener("submit", (ev) => { ev.preventDefault(); useUser($("user").value.trim()); });
  $("anon").addEventListener("click", () => useUser(null));
  $("k").addEventListener("change", refresh);
  $("clear-history").addEventListener("click", () => { state.history = []; refresh(); });
  try {
    const m = await api("GET", "/model");
    $("model-version").textContent = `${m.model_version} (${m.n_items} items, ${m.n_users} users)`;
    state.components = m.components;
    const available = m.item_meta_fields || [];
    state.titleField = TITLE_FIELDS.find((f) => available.includes(f)) || null;
    const readable = available.filter((f) => f !== state.titleField && !/(url|_id)$/i.test(f));
    const others = [...PREFERRED_FIELDS.filter((f) => readable.includes(f)),
      ...readable.filter((f) => !PREFERRED_FIELDS.includes(f))].slice(0, MAX_FIELDS);
    state.fields = state.titleField ? [state.titleField, ...others] : others;
  } catch (e) {
    setStatus(`${e.message} (is a model published?)`, true);
    return;
  }
  try {
    JSON.parse(localStorage.getItem("mrdib-recent-users") || "[]").forEach((u) =>
      $("recent-users").append(el("option", { value: u })));
  } catch (e) { /* ignore a damaged list */ }
  await useUser(new URLSearchParams(window.location.search).get("user"));
  document.body.dataset.ready = "true";
}

start();
