// vlmops explorer: plain JavaScript, no build step. Every call goes to the explorer's backend (/explorer/api),
// which passes the key on to the services. State that makes a search is kept in the URL's hash.
"use strict";

const API = "api";
const KEY = "vlmops-explorer-key";
const $ = (id) => document.getElementById(id);
const state = { collections: [], results: null, resultsQuery: null, registry: [], lastJob: null };

// ------------------------------------------------------------------ calls
class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

function headers(extra = {}) {
  const key = sessionStorage.getItem(KEY);
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

async function failure(res) {
  let text = "";
  try { text = await res.text(); } catch (_) { /* the body is gone */ }
  let message = text;
  try {
    let body = JSON.parse(text);
    if (Array.isArray(body) && body.length) body = body[0];  // the gate answers [{"error": ...}]
    message = body.error || body.message || text;
    if (Array.isArray(body.detail)) {  // a validation error: which field, and why
      message += ": " + body.detail.map((d) => `${(d.loc || []).join(".")}: ${d.msg}`).join("; ");
    }
    if (typeof message !== "string") message = JSON.stringify(message);
  } catch (_) { /* not JSON */ }
  if (!message) message = res.statusText || "no message";
  if (res.status === 401 || res.status === 403) {
    message += " (set an API key with the 'API key' button)";
  }
  return new ApiError(res.status, `${res.status}: ${message}`);
}

async function call(service, route, body) {
  let res;
  try {
    res = await fetch(`${API}/call/${service}/${route}`, {
      method: "POST", headers: headers({ "Content-Type": "application/json" }), body: JSON.stringify(body),
    });
  } catch (err) {
    throw new ApiError(0, `the explorer does not answer (${err.message})`);
  }
  if (!res.ok) throw await failure(res);
  return res.json();
}

async function get(path) {
  let res;
  try {
    res = await fetch(`${API}/${path}`, { headers: headers() });
  } catch (err) {
    throw new ApiError(0, `the explorer does not answer (${err.message})`);
  }
  if (!res.ok) throw await failure(res);
  return res.json();
}

async function post(path, body) {
  const res = await fetch(`${API}/${path}`, {
    method: "POST", headers: headers({ "Content-Type": "application/json" }), body: JSON.stringify(body),
  });
  if (!res.ok) throw await failure(res);
  return res.json();
}

// ------------------------------------------------------------------ messages
function showError(err, where) {
  const box = $("message");
  const text = err instanceof Error ? err.message : String(err);
  box.textContent = where ? `${where}: ${text}` : text;
  box.className = "message";
  box.hidden = false;
  if (err instanceof ApiError && (err.status === 401 || err.status === 403) && !sessionStorage.getItem(KEY)) {
    openKeyDialog();
  }
}
function showOk(text) { const box = $("message"); box.textContent = text; box.className = "message ok"; box.hidden = false; }
function clearMessage() { $("message").hidden = true; }

async function guarded(where, fn) {
  clearMessage();
  try { return await fn(); } catch (err) { showError(err, where); return undefined; }
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) if (c != null) node.append(c);
  return node;
}

// ------------------------------------------------------------------ files
function fileBase64(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",", 2)[1] || "");
    reader.onerror = () => reject(new Error(`could not read ${file.name}`));
    reader.readAsDataURL(file);
  });
}

function preview(img, file) {
  if (img.dataset.url) URL.revokeObjectURL(img.dataset.url);
  const url = URL.createObjectURL(file);
  img.dataset.url = url;
  img.src = url;
  img.hidden = false;
  img.alt = `the chosen image, ${file.name}`;
}

// ------------------------------------------------------------------ URL state
function readHash() { return new URLSearchParams(location.hash.slice(1)); }
function writeHash(params) {
  const clean = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") clean.set(k, v);
  history.replaceState(null, "", `#${clean.toString()}`);
}

// ------------------------------------------------------------------ tabs
const TABS = ["search", "compare", "zeroshot", "playground", "registry"];
function selectTab(name, focus = false) {
  for (const t of TABS) {
    const on = t === name;
    $(`tab-${t}`).setAttribute("aria-selected", String(on));
    $(`tab-${t}`).tabIndex = on ? 0 : -1;
    $(`panel-${t}`).hidden = !on;
  }
  if (focus) $(`tab-${name}`).focus();
  const params = readHash();
  params.set("tab", name);
  history.replaceState(null, "", `#${params.toString()}`);
  if (name === "registry" && !state.registry.length) loadRegistry();
  if (name === "compare") fillCompareVersions();
}
function setupTabs() {
  TABS.forEach((t, i) => {
    const tab = $(`tab-${t}`);
    tab.addEventListener("click", () => selectTab(t));
    tab.addEventListener("keydown", (e) => {
      const step = { ArrowRight: 1, ArrowLeft: -1 }[e.key];
      if (step) { e.preventDefault(); selectTab(TABS[(i + step + TABS.length) % TABS.length], true); }
      if (e.key === "Home") { e.preventDefault(); selectTab(TABS[0], true); }
      if (e.key === "End") { e.preventDefault(); selectTab(TABS[TABS.length - 1], true); }
    });
  });
}

// ------------------------------------------------------------------ key
function openKeyDialog() {
  const d = $("key-dialog");
  if (!d.open) { $("key-input").value = ""; d.showModal(); $("key-input").focus(); }
}
function setupKey() {
  $("key-button").addEventListener("click", openKeyDialog);
  $("key-dialog").addEventListener("close", () => {
    const v = $("key-dialog").returnValue;
    if (v === "save" && $("key-input").value.trim()) {
      sessionStorage.setItem(KEY, $("key-input").value.trim());
      showOk("Key set for this tab.");
      loadCollections().then(restore);
    } else if (v === "clear") {
      sessionStorage.removeItem(KEY);
      showOk("Key forgotten.");
    }
    keyLabel();
  });
}
function keyLabel() { $("key-button").textContent = sessionStorage.getItem(KEY) ? "API key ✓" : "API key"; }

// ------------------------------------------------------------------ collections
function currentCollection() { return state.collections.find((c) => c.name === $("collection").value); }

async function loadCollections() {
  const rows = await guarded("collections", () => call("search", "collections/list", {}));
  if (!rows) return;
  state.collections = rows;
  const select = $("collection");
  const wanted = readHash().get("c") || select.value;
  select.replaceChildren(...rows.map((c) => el("option", { value: c.name, text: c.name })));
  if (rows.some((c) => c.name === wanted)) select.value = wanted;
  describeCollection();
}

function describeCollection() {
  const c = currentCollection();
  $("collection-info").textContent = c
    ? `${c.count} items · ${c.model} version ${c.version}` + (c.build ? ` · build of version ${c.build.version}` : "")
    : "no collection yet";
}

// ------------------------------------------------------------------ results
const thumbs = new Map();
async function thumbnail(collection, id, img) {
  const key = `${collection}/${id}`;
  try {
    if (!thumbs.has(key)) {
      const res = await fetch(`${API}/thumb?collection=${encodeURIComponent(collection)}&id=${encodeURIComponent(id)}&size=256`, { headers: headers() });
      if (!res.ok) throw await failure(res);
      thumbs.set(key, URL.createObjectURL(await res.blob()));
    }
    img.src = thumbs.get(key);
  } catch (err) {
    img.alt = `no thumbnail (${err.message})`;
  }
}

function payloadText(payload) {
  return Object.entries(payload || {}).map(([k, v]) => `${k}: ${v}`).join(" · ");
}

function renderResults(target, collection, results, onMore) {
  target.replaceChildren(...results.map((r, i) => {
    const img = el("img", { alt: payloadText(r.payload) || `result ${i + 1}`, loading: "lazy" });
    thumbnail(collection, r.id, img);
    const more = onMore
      ? el("button", { type: "button", class: "more", text: "More like this", "aria-label": `More like result ${i + 1}`, onclick: () => onMore(r.id) })
      : null;
    return el("figure", { class: "card", "data-id": r.id, "data-version": r.version },
      img,
      el("figcaption", {},
        el("div", { class: "score", text: `${i + 1}. score ${r.score.toFixed(3)}` }),
        el("div", { class: "payload", text: payloadText(r.payload) })),
      more);
  }));
  if (!results.length) target.replaceChildren(el("p", { class: "muted", text: "No results." }));
}

function filters() {
  const text = $("filter").value.trim();
  if (!text) return null;
  const out = {};
  for (const part of text.split(",")) {
    const [k, ...rest] = part.split("=");
    if (!k.trim() || !rest.length) throw new ApiError(400, `filter "${part.trim()}" is not key=value`);
    const v = rest.join("=").trim();
    out[k.trim()] = v === "true" ? true : v === "false" ? false : /^-?\d+$/.test(v) ? Number(v) : v;
  }
  return out;
}

async function runSearch(query) {
  const collection = $("collection").value;
  if (!collection) { showError("create a collection and ingest images first", "search"); return; }
  const top_k = Number($("topk").value) || 12;
  const body = { collection, top_k, filter: filters(), ...query };
  $("search-meta").textContent = "searching…";
  const results = await call("search", "search", body);
  state.results = results;
  state.resultsQuery = body;
  const by = query.text !== undefined ? `text "${query.text}"` : query.item_id ? `item ${query.item_id.slice(0, 8)}…` : "image";
  const version = results.length ? `${results[0].model} version ${results[0].version}` : "no results";
  $("search-meta").textContent = `${results.length} results for ${by} in ${collection} · ${version}`;
  $("download").disabled = !results.length;
  renderResults($("results"), collection, results, (id) => moreLikeThis(id));
  if (query.image === undefined) {
    writeHash({ tab: "search", c: collection, q: query.text, item: query.item_id, k: top_k, f: $("filter").value.trim() });
  }
}

function moreLikeThis(id) { guarded("more like this", () => runSearch({ item_id: id })); }

async function searchFile(file) {
  if (!file) return;
  const image = await fileBase64(file);
  await runSearch({ image });
}

function setupSearch() {
  $("search-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = $("q").value.trim();
    if (!text) { showError("type a query, or search by image", "search"); return; }
    guarded("search", () => runSearch({ text }));
  });
  $("search-file").addEventListener("change", (e) => guarded("image search", () => searchFile(e.target.files[0])));
  const drop = $("search-drop");
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); $("search-file").click(); } });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    guarded("image search", () => searchFile(e.dataTransfer.files[0]));
  });
  document.addEventListener("paste", (e) => {
    if ($("panel-search").hidden) return;
    const item = [...(e.clipboardData?.items || [])].find((it) => it.type.startsWith("image/"));
    if (item) { e.preventDefault(); guarded("pasted image search", () => searchFile(item.getAsFile())); }
  });
  $("download").addEventListener("click", () => {
    const blob = new Blob([JSON.stringify({ query: { ...state.resultsQuery, image: state.resultsQuery?.image ? "(image)" : undefined }, results: state.results }, null, 2)], { type: "application/json" });
    const a = el("a", { href: URL.createObjectURL(blob), download: "vlmops-results.json" });
    document.body.append(a); a.click(); a.remove();
  });
  $("collection").addEventListener("change", () => { describeCollection(); fillCompareVersions(); });
}

// ------------------------------------------------------------------ versions side by side
async function modelVersions(model) {
  let entry = state.registry.find((m) => m.name === model);
  if (!entry) {
    const view = await get(`registry?model=${encodeURIComponent(model)}`);
    entry = view[0];
    if (entry) state.registry = [...state.registry.filter((m) => m.name !== model), entry];
  }
  return entry ? entry.versions : [];
}

async function fillCompareVersions() {
  const c = currentCollection();
  if (!c) return;
  const versions = await guarded("versions", () => modelVersions(c.model));
  if (!versions) return;
  const select = $("compare-version");
  const others = versions.filter((v) => v.version !== c.version);
  select.replaceChildren(...others.map((v) => el("option", { value: v.version, text: `version ${v.version}${v.aliases.length ? ` (${v.aliases.join(", ")})` : ""}` })));
  const wanted = readHash().get("v");
  const candidate = others.find((v) => v.aliases.includes("candidate"));
  if (wanted && others.some((v) => v.version === wanted)) select.value = wanted;
  else if (c.build && others.some((v) => v.version === c.build.version)) select.value = c.build.version;
  else if (candidate) select.value = candidate.version;
  if (!others.length) select.replaceChildren(el("option", { value: "", text: "no other version registered" }));
}

async function runCompare() {
  const c = currentCollection();
  const text = $("cq").value.trim();
  const version = $("compare-version").value;
  if (!c || !text) { showError("choose a collection and type a query", "compare"); return; }
  const top_k = Number($("ctopk").value) || 8;
  $("shadow").hidden = true;
  const left = await call("search", "search", { collection: c.name, text, top_k });
  $("col-a-title").textContent = `Live: ${c.model} version ${left.length ? left[0].version : c.version}`;
  renderResults($("col-a"), c.name, left, null);
  writeHash({ tab: "compare", c: c.name, cq: text, v: version });
  if (!version) { $("col-b").replaceChildren(); return; }
  $("col-b-title").textContent = `Version ${version}`;
  try {
    const right = await call("search", "search", { collection: c.name, text, top_k, version });
    $("col-b-title").textContent = `Version ${version}: ${right.length ? `${right[0].model} version ${right[0].version}` : "no results"}`;
    renderResults($("col-b"), c.name, right, null);
  } catch (err) {
    $("col-b").replaceChildren();
    if (err.status === 409) {
      $("shadow-text").textContent = `${err.message.replace(/^409: /, "")}`;
      $("shadow-start").dataset.version = version;
      $("shadow-start").textContent = `Start a shadow build of version ${version}`;
      $("shadow").hidden = false;
    } else throw err;
  }
}

async function startShadow() {
  const c = currentCollection();
  const version = $("shadow-start").dataset.version;
  const job = await post("shadow", { collection: c.name, version });
  state.lastJob = job.job;
  $("shadow-text").textContent = `Shadow build of ${c.name} by version ${version}: job ${job.job}`;
  $("shadow-start").disabled = true;
  const bar = $("shadow-progress");
  bar.hidden = false;
  for (;;) {
    await new Promise((r) => setTimeout(r, 1000));
    const s = await get(`jobs/${job.job}`);
    const total = s.info && s.info.total;
    if (total) { bar.max = total; bar.value = s.info.done || 0; }
    if (s.state === "SUCCESS") break;
    if (s.state === "FAILURE" || s.state === "REVOKED") {
      $("shadow-start").disabled = false;
      throw new ApiError(500, `the shadow build failed: ${s.info.error || s.state}`);
    }
  }
  $("shadow-start").disabled = false;
  bar.hidden = true;
  $("shadow").hidden = true;
  await loadCollections();
  await runCompare();
}

function setupCompare() {
  $("compare-form").addEventListener("submit", (e) => { e.preventDefault(); guarded("compare", runCompare); });
  $("shadow-start").addEventListener("click", () => guarded("shadow build", startShadow));
}

// ------------------------------------------------------------------ zero-shot
function list(text) { return text.split(",").map((s) => s.trim()).filter(Boolean); }

async function runZeroShot() {
  const file = $("zs-file").files[0];
  if (!file) { showError("choose an image", "zero-shot"); return; }
  const labels = list($("zs-labels").value);
  let negatives = list($("zs-negatives").value);
  const none = $("zs-none").checked;
  if (none && !negatives.length) negatives = ["something else"];
  if (!none) negatives = [];
  const all = [...labels, ...negatives.filter((n) => !labels.includes(n))];
  if (labels.length < 1 || all.length < 2) { showError("give at least two labels (or one label and \"none of these\")", "zero-shot"); return; }
  const templates = $("zs-templates").value.split("\n").map((s) => s.trim()).filter(Boolean);
  const item = { image: await fileBase64(file), labels: all };
  if (templates.length) item.templates = templates;
  const [out] = await call("embedding", "classify", { items: [item] });
  const probs = Object.fromEntries(out.labels.map((l, i) => [l, out.probs[i]]));
  const rows = labels.map((l) => ({ label: l, p: probs[l], none: false }));
  if (negatives.length) rows.push({ label: "none of these", p: negatives.reduce((s, n) => s + (probs[n] || 0), 0), none: true });
  rows.sort((a, b) => b.p - a.p);
  $("zs-meta").textContent = `top: ${rows[0].label} · ${out.model} version ${out.version}`;
  $("zs-bars").replaceChildren(...rows.map((r) => el("div", { class: `bar${r.none ? " none" : ""}`, "data-label": r.label },
    el("span", { text: r.label }),
    el("div", { class: "track", role: "meter", "aria-valuemin": "0", "aria-valuemax": "1", "aria-valuenow": r.p.toFixed(3), "aria-label": r.label },
      el("div", { class: "fill", style: `width:${(100 * r.p).toFixed(1)}%` })),
    el("span", { class: "num", text: `${(100 * r.p).toFixed(1)} %` }))));
}

function setupZeroShot() {
  $("zs-file").addEventListener("change", (e) => { if (e.target.files[0]) preview($("zs-preview"), e.target.files[0]); });
  $("zs-form").addEventListener("submit", (e) => { e.preventDefault(); guarded("zero-shot", runZeroShot); });
}

// ------------------------------------------------------------------ playground
async function playgroundItem() {
  const file = $("pg-file").files[0];
  if (!file) throw new ApiError(400, "choose an image first");
  return { image: await fileBase64(file) };
}
function versionNote(out) { return el("span", { class: "version", text: ` (${out.model} version ${out.version})` }); }

async function runCaption() {
  const [out] = await call("captioning", "caption", { items: [await playgroundItem()] });
  $("pg-caption-out").replaceChildren(el("q", { text: out.caption }), versionNote(out));
}
async function runVqa() {
  const question = $("pg-question").value.trim();
  if (!question) throw new ApiError(400, "type a question");
  const [out] = await call("vqa", "answer", { items: [{ ...(await playgroundItem()), question }] });
  const score = out.score == null ? "" : ` · ${(100 * out.score).toFixed(0)} %`;
  $("pg-vqa-out").replaceChildren(el("strong", { text: out.answer }), el("span", { text: score }), versionNote(out));
}
async function runGround() {
  const queries = list($("pg-queries").value);
  if (!queries.length) throw new ApiError(400, "name at least one thing to find");
  const threshold = Number($("pg-threshold").value);
  const [out] = await call("grounding", "ground", { items: [{ ...(await playgroundItem()), queries, threshold }] });
  const img = $("pg-image");
  const svg = $("pg-boxes");
  svg.setAttribute("viewBox", `0 0 ${img.naturalWidth} ${img.naturalHeight}`);
  svg.setAttribute("preserveAspectRatio", "none");
  const ns = "http://www.w3.org/2000/svg";
  const shapes = [];
  out.detections.forEach((d, i) => {
    const [x0, y0, x1, y1] = d.box;
    const g = document.createElementNS(ns, "g");
    g.setAttribute("class", "detection");
    const rect = document.createElementNS(ns, "rect");
    rect.setAttribute("x", x0); rect.setAttribute("y", y0);
    rect.setAttribute("width", Math.max(0, x1 - x0)); rect.setAttribute("height", Math.max(0, y1 - y0));
    const label = document.createElementNS(ns, "text");
    label.setAttribute("x", x0 + 1); label.setAttribute("y", Math.max(10, y0 - 2));
    label.setAttribute("font-size", Math.max(6, img.naturalWidth / 24));
    label.textContent = `${i + 1}. ${d.query} ${d.score.toFixed(2)}`;
    g.append(rect, label);
    shapes.push(g);
  });
  svg.replaceChildren(...shapes);
  $("pg-ground-out").replaceChildren(
    ...out.detections.map((d) => el("li", { text: `${d.query}: ${d.score.toFixed(3)} at [${d.box.map((v) => v.toFixed(0)).join(", ")}]` })),
    el("li", { class: "version", text: out.detections.length ? `${out.model} version ${out.version}` : `nothing above ${threshold} (${out.model} version ${out.version})` }));
}

function setupPlayground() {
  $("pg-file").addEventListener("change", (e) => {
    if (!e.target.files[0]) return;
    preview($("pg-image"), e.target.files[0]);
    $("pg-boxes").replaceChildren();
  });
  $("pg-caption").addEventListener("click", () => guarded("caption", runCaption));
  $("pg-vqa").addEventListener("submit", (e) => { e.preventDefault(); guarded("question", runVqa); });
  $("pg-ground").addEventListener("submit", (e) => { e.preventDefault(); guarded("grounding", runGround); });
}

// ------------------------------------------------------------------ registry
function fmt(v) { return typeof v === "number" ? v.toFixed(3) : v == null ? "–" : String(v); }

async function loadRegistry() {
  const view = await guarded("registry", () => get("registry"));
  if (!view) return;
  state.registry = view;
  const select = $("reg-model");
  const current = select.value || (currentCollection() || {}).model;
  select.replaceChildren(...view.map((m) => el("option", { value: m.name, text: m.name })));
  if (view.some((m) => m.name === current)) select.value = current;
  renderRegistry();
}

function renderRegistry() {
  const model = state.registry.find((m) => m.name === $("reg-model").value);
  if (!model) { $("reg-versions").replaceChildren(el("caption", { text: "no registered model" })); return; }
  const metricNames = [...new Set(model.versions.flatMap((v) => Object.keys(v.metrics)))].slice(0, 6);
  const head = el("tr", {}, ...["version", "aliases", "registered", "lineage", ...metricNames, "evaluated on (gate metrics)"].map((h) => el("th", { scope: "col", text: h })));
  const rows = model.versions.map((v) => el("tr", { "data-version": v.version },
    el("td", { text: v.version }),
    el("td", {}, ...v.aliases.map((a) => el("span", { class: "alias", text: a }))),
    el("td", { text: v.created_ms ? new Date(v.created_ms).toLocaleString() : "" }),
    el("td", { text: Object.entries(v.lineage).map(([k, x]) => `${k}: ${String(x).slice(0, 16)}`).join(" · ") }),
    ...metricNames.map((m) => el("td", { class: "num", text: v.metrics[m] ?? "–" })),
    el("td", { text: Object.entries(v.evals).map(([h, e]) => `${e.dataset || h} (${e.classes} classes)` +
      Object.entries(e.gate || {}).map(([m, x]) => ` · ${m} ${fmt(x)}`).join("")).join("; ") })));
  $("reg-versions").replaceChildren(el("caption", { class: "sr", text: `versions of ${model.name}` }), el("thead", {}, head), el("tbody", {}, ...rows));
  const options = () => model.versions.map((v) => el("option", { value: v.version, text: `${v.version}${v.aliases.length ? ` (${v.aliases.join(", ")})` : ""}` }));
  $("reg-base").replaceChildren(...options());
  $("reg-candidate").replaceChildren(...options());
  const prod = model.versions.find((v) => v.aliases.includes("production"));
  const cand = model.versions.find((v) => v.aliases.includes("candidate") && v !== prod) || model.versions.find((v) => v !== prod);
  if (prod) $("reg-base").value = prod.version;
  if (cand) $("reg-candidate").value = cand.version;
  $("reg-history").replaceChildren(...model.history.map((e) => el("li", {
    text: `${new Date(e.at * 1000).toLocaleString()}: ${e.action} to version ${e.version}` +
      (e.previous ? ` (from ${e.previous})` : "") + (e.forced ? ", forced" : "") + (e.reason ? `: ${e.reason}` : ""),
  })));
  if (!model.history.length) $("reg-history").replaceChildren(el("li", { class: "muted", text: "no promotion or rollback yet" }));
}

async function runClasses() {
  const model = $("reg-model").value;
  const q = new URLSearchParams({ model, base: $("reg-base").value, candidate: $("reg-candidate").value });
  $("reg-classes").replaceChildren();
  const t = await get(`registry/classes?${q}`);
  const short = (m) => m.replace("class_", "").replace("recall@", "R@").replace("precision@", "P@").replace("r_precision", "R-P");
  const head1 = el("tr", {}, el("th", { scope: "col", text: "class" }), el("th", { scope: "col", text: "images" }),
    ...t.metrics.map((m) => el("th", { scope: "colgroup", colspan: "3", text: short(m) })));
  const head2 = el("tr", {}, el("th"), el("th"), ...t.metrics.flatMap(() => ["v" + t.base, "v" + t.candidate, "diff"].map((h) => el("th", { scope: "col", text: h }))));
  const rows = t.rows.map((r) => el("tr", {}, el("th", { scope: "row", text: r.class }), el("td", { class: "num", text: r.n_images == null ? "–" : String(Math.round(r.n_images)) }),
    ...t.metrics.flatMap((m) => {
      const c = r.metrics[m];
      const cls = c.diff == null ? "num" : c.diff < 0 ? "num drop-cell" : c.diff > 0 ? "num gain-cell" : "num";
      return [el("td", { class: "num", text: fmt(c.base) }), el("td", { class: "num", text: fmt(c.candidate) }),
        el("td", { class: cls, text: c.diff == null ? "–" : `${c.diff > 0 ? "+" : ""}${c.diff.toFixed(3)}${c.diff < 0 ? " ▼" : ""}` })];
    })));
  $("reg-classes").replaceChildren(el("thead", {}, head1, head2), el("tbody", {}, ...rows));
  const dropped = t.rows.filter((r) => t.metrics.some((m) => (r.metrics[m].diff ?? 0) < 0)).map((r) => r.class);
  $("reg-classes-meta").textContent = `${t.model}: version ${t.base} (base) against ${t.candidate} (candidate), dataset ${t.dataset}; ` +
    (dropped.length ? `classes that dropped: ${dropped.join(", ")}` : "no class dropped");
}

function setupRegistry() {
  $("reg-model").addEventListener("change", renderRegistry);
  $("reg-refresh").addEventListener("click", () => { state.registry = []; loadRegistry(); });
  $("reg-classes-form").addEventListener("submit", (e) => { e.preventDefault(); guarded("per-class table", runClasses); });
}

// ------------------------------------------------------------------ start
async function serviceStates() {
  const info = await guarded("the explorer", () => get("info"));
  if (!info) return;
  const down = Object.entries(info.services).filter(([, up]) => !up).map(([n]) => n);
  $("services").textContent = down.length ? `not ready: ${down.join(", ")}` : "all services ready";
  if (info.auth && !sessionStorage.getItem(KEY)) $("services").textContent += " · this platform needs an API key";
}

async function restore() {
  const p = readHash();
  if (p.get("k")) $("topk").value = p.get("k");
  if (p.get("f")) $("filter").value = p.get("f");
  if (p.get("cq")) $("cq").value = p.get("cq");
  const tab = TABS.includes(p.get("tab")) ? p.get("tab") : "search";
  selectTab(tab);
  if (tab === "search" && (p.get("q") || p.get("item"))) {
    if (p.get("q")) $("q").value = p.get("q");
    await guarded("search", () => runSearch(p.get("item") ? { item_id: p.get("item") } : { text: p.get("q") }));
  }
}

document.addEventListener("DOMContentLoaded", async () => {
  setupTabs(); setupKey(); setupSearch(); setupCompare(); setupZeroShot(); setupPlayground(); setupRegistry();
  keyLabel();
  await serviceStates();
  await loadCollections();
  await restore();
  document.body.dataset.ready = "true";
});
window.addEventListener("unhandledrejection", (e) => showError(e.reason, "unexpected"));
window.addEventListener("error", (e) => showError(e.message, "unexpected"));
