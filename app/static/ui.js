// The operator page (GET /ui): look a person up; see who a new item would be recommended to. Plain DOM, no
// libraries. Every value from the service is put in the page as text (textContent), never as HTML. The API key
// stays in this tab (sessionStorage) and goes only to this service, as X-API-Key.
"use strict";

const $ = (id) => document.getElementById(id);
let platforms = [];
let current = null; // {who, history, recs: {platform: items}}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (v !== undefined && v !== null) node.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function status(text, isError) {
  const s = $("status");
  s.textContent = text;
  s.className = isError ? "error" : "";
}

function badge(platform) {
  const i = platforms.indexOf(platform);
  return el("span", { class: "badge p" + (i < 0 ? 5 : i % 6) }, platform);
}

async function call(path, body) {
  const headers = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) headers["X-API-Key"] = key;
  const r = await fetch(path, { method: body ? "POST" : "GET", headers, body: body ? JSON.stringify(body) : undefined });
  let data = null;
  try { data = await r.json(); } catch (e) { data = null; }
  if (!r.ok) {
    const d = data && data.detail && data.detail[0];
    let msg = d ? d.msg + (d.loc && d.loc.length ? " (" + d.loc.join(".") + ")" : "") : r.statusText;
    if (r.status === 401 || r.status === 403) msg += ": enter an API key (XREC_API_KEYS) at the top right";
    throw new Error(r.status + ": " + msg);
  }
  return data;
}

function who() {
  if (document.querySelector("input[name=by]:checked").value === "person") {
    const id = $("person-id").value.trim();
    if (!id) throw new Error("enter a person id");
    return { person_id: id };
  }
  const account = $("account-id").value.trim();
  if (!account) throw new Error("enter an account id");
  return { account_id: account, account_platform: $("account-platform").value };
}

function fmtTime(ts) {
  return new Date(ts * 1000).toISOString().slice(0, 16).replace("T", " ");
}

function fillPlatforms(list) {
  platforms = list;
  for (const id of ["account-platform", "try-platform", "aud-platform"]) {
    const sel = $(id);
    const keep = sel.value;
    sel.replaceChildren(...list.map((p) => el("option", { value: p }, p)));
    if (list.includes(keep)) sel.value = keep;
  }
}

async function loadInfo() {
  try {
    const r = await fetch("readyz");
    const info = await r.json();
    if (info.status !== "ready") {
      $("model").textContent = "no bundle loaded" + (info.detail ? ": " + info.detail : "");
      return;
    }
    $("model").textContent = "model " + info.model_version + " · " + (info.items || 0).toLocaleString() + " items";
    if (info.platforms && info.platforms.length) fillPlatforms(info.platforms);
  } catch (e) {
    $("model").textContent = "service not reachable";
  }
}

function renderPerson(h) {
  const dl = $("person");
  const rows = [["person id", h.person_id], ["known", h.known ? "yes" : "no: cold start (popular items)"],
    ["events", h.total.toLocaleString() + (h.events.length < h.total ? " (newest " + h.events.length + " shown)" : "")],
    ["model", h.model_version]];
  if (h.degraded) rows.push(["note", "Redis unavailable: events since the bundle may be missing"]);
  dl.replaceChildren(...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
}

function renderTimeline(h) {
  const ol = $("timeline");
  $("timeline-count").textContent = "(" + h.total + " events, newest first)";
  if (!h.events.length) {
    ol.replaceChildren(el("li", { class: "empty" }, "no events"));
    return;
  }
  const items = [...h.events].reverse().map((e) =>
    el("li", {}, el("time", { datetime: new Date(e.ts * 1000).toISOString() }, fmtTime(e.ts)),
      el("span", {}, badge(e.platform)),
      el("span", {}, e.title || "(not in the catalog)", " ", el("span", { class: "id" }, e.item_id))));
  ol.replaceChildren(...items);
}

function titleOf(itemId) {
  const e = current && current.history.events.find((x) => x.item_id === itemId);
  return e && e.title ? e.title : itemId;
}

function reasons(list) {
  if (!list.length) return el("span", { class: "empty" }, "popular on this platform");
  return el("span", {}, ...list.map((r) =>
    el("span", { class: "reason", title: r.item_id }, badge(r.platform), titleOf(r.item_id), " ",
      el("span", { class: "muted" }, Math.round(r.weight * 100) + "%"))));
}

function renderRecs(platform, answer) {
  const head = el("tr", {}, el("th", {}, "#"), el("th", {}, "item"), el("th", {}, "score"), el("th", {}, "because of"));
  const rows = answer.items.map((it, i) =>
    el("tr", { class: "rec" }, el("td", { class: "num" }, i + 1),
      el("td", {}, it.title, el("br"), el("span", { class: "id" }, it.item_id)),
      el("td", { class: "num" }, it.score.toFixed(4)), el("td", {}, reasons(it.reasons))));
  const note = answer.cold_start ? el("span", { class: "muted" }, " · cold start") : null;
  return el("section", { class: "platform-recs", "data-platform": platform },
    el("h3", {}, badge(platform), " ", platform, note),
    answer.items.length ? el("table", {}, el("thead", {}, head), el("tbody", {}, ...rows))
      : el("p", { class: "empty" }, "nothing to recommend"));
}

async function search(ev) {
  if (ev) ev.preventDefault();
  let person;
  try { person = who(); } catch (e) { status(e.message, true); return; }
  sessionStorage.setItem("xrec.apiKey", $("api-key").value.trim());
  const k = Math.max(1, Math.min(200, parseInt($("k").value, 10) || 10));
  $("search").disabled = true;
  status("looking up…");
  try {
    const history = await call("v1/history", { ...person, limit: 500 });
    if (history.platforms && history.platforms.length && !platforms.length) fillPlatforms(history.platforms);
    current = { who: person, history, recs: {} };
    renderPerson(history);
    renderTimeline(history);
    const answers = await Promise.all(platforms.map((p) => call("v1/recommend", { ...person, platform: p, k })));
    const blocks = [];
    platforms.forEach((p, i) => { current.recs[p] = answers[i].items; blocks.push(renderRecs(p, answers[i])); });
    $("recs").replaceChildren(...blocks);
    $("try-result").replaceChildren();
    $("result").hidden = false;
    status("found " + history.person_id + ": " + history.total + " events, recommendations for " + platforms.length +
      " platforms");
  } catch (e) {
    status(e.message, true);
  } finally {
    $("search").disabled = false;
  }
}

async function tryItem(ev) {
  ev.preventDefault();
  const title = $("try-title").value.trim();
  if (!current) return;
  if (!title) { $("try-result").replaceChildren(el("p", { class: "error" }, "enter a title")); return; }
  const platform = $("try-platform").value;
  const top = (current.recs[platform] || []).map((it) => ({ item_id: it.item_id }));
  const newId = platform + ":ui-new-item";
  const items = [{ item_id: newId, title, platform }, ...top];
  $("try").disabled = true;
  try {
    const out = await call("v1/rank", { ...current.who, platform, items });
    const pos = out.items.findIndex((it) => it.item_id === newId);
    const mine = out.items[pos];
    const verdict = top.length
      ? "would rank #" + (pos + 1) + " of " + out.items.length + " against this person's current top " + top.length + " on " + platform
      : "scored on " + platform;
    $("try-result").replaceChildren(
      el("p", { class: "verdict", id: "try-verdict" }, "“" + title + "” " + verdict + " · score " + mine.score.toFixed(4)),
      el("p", {}, "because of: ", reasons(mine.reasons)));
  } catch (e) {
    $("try-result").replaceChildren(el("p", { class: "error" }, e.message));
  } finally {
    $("try").disabled = false;
  }
}

// ---- who would like a new item (POST /v1/items/audience) ----------------------------------------------------

function shortHash(account) {
  return account.length > 12 ? account.slice(0, 12) + "…" : account;
}

function lookUp(personId) {
  document.querySelector("input[name=by][value=person]").checked = true;
  toggleBy();
  $("person-id").value = personId;
  search(null);
  $("lookup").scrollIntoView();
}

function renderAudience(out) {
  const head = el("tr", {}, el("th", {}, "#"), el("th", {}, "person"), el("th", {}, "accounts"),
    el("th", {}, "events"), el("th", {}, "score"), el("th", {}, "because they had"));
  const rows = out.persons.map((p, i) =>
    el("tr", { class: "aud-person", "data-person": p.person_id },
      el("td", { class: "num" }, i + 1),
      el("td", {}, el("button", { type: "button", class: "linkish", title: "look this person up" }, p.person_id),
        out.persons.some((x) => x.variant !== "default") ? el("span", { class: "muted" }, " · " + p.variant) : null),
      el("td", {}, p.accounts.length
        ? el("span", {}, ...p.accounts.map((a) => el("span", { class: "reason", title: a.account }, badge(a.platform),
          el("span", { class: "id" }, shortHash(a.account)))))
        : el("span", { class: "empty" }, "none linked")),
      el("td", { class: "num" }, p.events),
      el("td", { class: "num" }, p.score.toFixed(4)),
      el("td", {}, p.reasons.length
        ? el("span", {}, ...p.reasons.map((r) => el("span", { class: "reason", title: r.item_id }, badge(r.platform),
          r.title, " ", el("span", { class: "muted" }, Math.round(r.weight * 100) + "%"))))
        : el("span", { class: "empty" }, "—"))));
  for (const [i, p] of out.persons.entries()) {
    rows[i].querySelector("button.linkish").addEventListener("click", () => lookUp(p.person_id));
  }
  $("aud-result").replaceChildren(out.persons.length
    ? el("table", { id: "aud-table" }, el("thead", {}, head), el("tbody", {}, ...rows))
    : el("p", { class: "empty" }, "nobody: no person with a history is known"));
}

async function findAudience(ev) {
  ev.preventDefault();
  const title = $("aud-title").value.trim();
  const s = $("aud-status");
  if (!title) { s.textContent = "enter a title"; s.className = "error"; return; }
  sessionStorage.setItem("xrec.apiKey", $("api-key").value.trim());
  const k = Math.max(1, Math.min(100, parseInt($("aud-k").value, 10) || 10));
  const platform = $("aud-platform").value;
  $("aud-find").disabled = true;
  s.textContent = "scoring it for every known person…";
  s.className = "muted";
  try {
    const out = await call("v1/items/audience", { platform, title, k });
    renderAudience(out);
    s.textContent = "“" + title + "” on " + platform + ": the best " + out.persons.length + " of " +
      out.known.toLocaleString() + " known persons (" + out.rescored.toLocaleString() + " re-scored)" +
      (out.capped ? "; the least recently active were left out" : "") +
      (out.degraded ? "; Redis unavailable: recent events may be missing" : "") + " · " + Math.round(out.took_ms) + " ms";
  } catch (e) {
    $("aud-result").replaceChildren();
    s.textContent = e.message;
    s.className = "error";
  } finally {
    $("aud-find").disabled = false;
  }
}

function toggleBy() {
  const byPerson = document.querySelector("input[name=by]:checked").value === "person";
  $("by-person").hidden = !byPerson;
  $("by-account").hidden = byPerson;
}

document.addEventListener("DOMContentLoaded", () => {
  $("api-key").value = sessionStorage.getItem("xrec.apiKey") || "";
  for (const r of document.querySelectorAll("input[name=by]")) r.addEventListener("change", toggleBy);
  $("search-form").addEventListener("submit", search);
  $("try-form").addEventListener("submit", tryItem);
  $("aud-form").addEventListener("submit", findAudience);
  loadInfo();
});
