// EdgeInspect operator console: one page, no build step. Live state arrives as server-sent events
// (/api/events): "tiles" (every camera, at least once a second), "alarm", "ack", "review", "label".
// Lists are loaded from the JSON API when the stream (re)connects, then kept up to date by the events.
"use strict";

const body = document.body;
const cameraTimeoutS = Number(body.dataset.cameraTimeout);
const state = {
  user: null,
  tiles: [],
  serverOffsetMs: 0, // server clock minus browser clock, from the tiles' now_ns
  alarms: new Map(),
  review: new Map(),
  selected: new Set(),
  muted: localStorage.getItem("edgeinspect.muted") === "yes",
  view: "line",
};

// ---- small helpers --------------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

async function api(path, options = {}) {
  const init = { credentials: "same-origin", ...options };
  if (options.json !== undefined) {
    init.method = init.method || "POST";
    init.headers = { "Content-Type": "application/json" };
    init.body = JSON.stringify(options.json);
  }
  const response = await fetch(path, init);
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const detail = typeof data.detail === "string" ? data.detail : `${response.status} ${response.statusText}`;
    throw Object.assign(new Error(detail), { status: response.status });
  }
  return data;
}

const pad = (n, width = 2) => String(n).padStart(width, "0");
function clock(ns) {
  const d = new Date(ns / 1e6);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}
function stamp(ns) {
  const d = new Date(ns / 1e6);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${clock(ns)}`;
}
const percent = (ratio) => (ratio === null || ratio === undefined ? "–" : `${(100 * ratio).toFixed(1)} %`);
const nowNs = () => (Date.now() + state.serverOffsetMs) * 1e6;

function toast(message) {
  const node = document.getElementById("toast");
  node.textContent = message;
  node.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => (node.hidden = true), 4000);
}

// A part's archived image with its defect regions drawn over it, in the image's own pixel coordinates.
// `heat` lays the part's archived heat map over it (the model's anomaly map: blue to red up from half the
// threshold); for a part without one (a classifier's), each region is shaded by its score instead.
function partImage(part, heat = false) {
  if (!part || !part.has_image) return el("div", { class: "no-image" }, "no image archived");
  const id = encodeURIComponent(part.result_id);
  const svgNs = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(svgNs, "svg");
  svg.setAttribute("preserveAspectRatio", "xMidYMid meet");
  const img = el("img", { src: `/images/${id}`, alt: `part ${part.part_id || ""}` });
  const frame = el("div", { class: `part-image${heat ? " heat" : ""}` }, img);
  if (heat) {
    const map = el("img", { class: "heat-map", src: `/images/${id}/heat`, alt: "" });
    map.addEventListener("error", () => {
      map.remove();
      frame.classList.add("no-heat-map");
    });
    frame.append(map);
  }
  frame.append(svg);
  img.addEventListener("load", () => {
    svg.setAttribute("viewBox", `0 0 ${img.naturalWidth} ${img.naturalHeight}`);
    for (const defect of part.defects || []) {
      if (!defect.bbox) continue;
      const [x, y, w, h] = defect.bbox;
      const rect = document.createElementNS(svgNs, "rect");
      Object.entries({ x, y, width: w, height: h, class: "region" }).forEach(([k, v]) => rect.setAttribute(k, v));
      rect.style.setProperty("--score-fill", `rgba(255, ${Math.round(200 * (1 - defect.score))}, 0, ${0.25 + 0.5 * defect.score})`);
      svg.append(rect);
    }
  });
  return frame;
}

// Images are kept per list and result, so that re-rendering a list (every second for the tiles) does not
// reload or flicker them.
function cachedImage(cache, part, heat = false) {
  if (!part) return partImage(part);
  const key = `${part.result_id}|${heat}`;
  if (!cache.has(key)) cache.set(key, partImage(part, heat));
  return cache.get(key);
}
function prune(cache, keep) {
  for (const key of cache.keys()) if (!keep.has(key.split("|")[0])) cache.delete(key);
}

// A tile keeps showing its image until the next one has loaded: a camera sending 10 archived parts a
// second would otherwise show nothing but images still loading.
const tileFrames = new Map();
function tileImage(tile) {
  let entry = tileFrames.get(tile.camera);
  if (!entry) {
    entry = { id: undefined, frame: el("div", { class: "tile-image" }) };
    tileFrames.set(tile.camera, entry);
  }
  const part = tile.last_image;
  const id = part ? part.result_id : null;
  if (id !== entry.id) {
    entry.id = id;
    const next = partImage(part);
    const img = next.querySelector("img");
    if (!img || !entry.frame.firstChild) entry.frame.replaceChildren(next);
    else img.addEventListener("load", () => entry.id === id && entry.frame.replaceChildren(next));
  }
  return entry.frame;
}
const alarmImages = new Map();

function defectText(part) {
  const top = (part.defects || [])[0];
  if (!top) return "–";
  const region = top.bbox ? ` at ${top.bbox[0]},${top.bbox[1]} ${top.bbox[2]}×${top.bbox[3]} px` : "";
  return `${top.cls} (${top.score.toFixed(2)})${region}`;
}

// ---- views ----------------------------------------------------------------------------------------

function showView(name) {
  state.view = name;
  document.querySelectorAll("nav [role=tab]").forEach((tab) => tab.setAttribute("aria-selected", String(tab.dataset.view === name)));
  document.querySelectorAll(".view").forEach((view) => (view.hidden = view.id !== `view-${name}`));
  if (name === "shift") loadShift();
  if (name === "audit") loadAudit();
}

// Line view ----------------------------------------------------------------------------------------

function renderTiles() {
  const root = document.getElementById("tiles");
  if (!state.tiles.length) return;
  const now = nowNs();
  root.replaceChildren(
    ...state.tiles.map((tile) => {
      const last = tile.last || {};
      const ageS = last.t_capture_ns ? (now - last.t_capture_ns) / 1e9 : null;
      const silent = !tile.online;
      const verdict = silent ? "SILENT" : last.verdict || "–";
      return el(
        "article",
        { class: `tile verdict-${last.verdict}${silent ? " silent" : ""}`, dataset: { camera: tile.camera, verdict, online: String(tile.online) } },
        el("h2", {}, tile.camera, el("small", {}, tile.station)),
        el("div", { class: `verdict ${verdict}` }, silent ? "CAMERA SILENT" : verdict),
        tileImage(tile),
        el(
          "dl",
          { class: "facts" },
          el("dt", {}, "part"), el("dd", { class: "part" }, last.part_id || "–"),
          el("dt", {}, "score"), el("dd", {}, last.score !== undefined ? last.score.toFixed(3) : "–"),
          el("dt", {}, "frames/s"), el("dd", { class: "fps" }, tile.fps.toFixed(1)),
          el("dt", {}, "last frame"), el("dd", { class: "age" }, ageS === null ? "–" : `${ageS.toFixed(1)} s ago${silent ? ` (timeout ${cameraTimeoutS} s)` : ""}`),
          el("dt", {}, "model"), el("dd", {}, last.model || "–"),
        ),
      );
    }),
  );
}

// Alarms -------------------------------------------------------------------------------------------

// The page holds the newest alarms only (a bad hour on a fast line raises thousands); older ones are in
// the store and the lookup.
const SHOWN_ALARMS = 200;
const KEPT_ALARMS = 1000;

function updateAlarmBadge(flash = false) {
  const open = [...state.alarms.values()].filter((a) => !a.ack).length;
  const badge = document.getElementById("alarm-count");
  badge.textContent = open;
  badge.hidden = open === 0;
  if (flash) {
    badge.classList.remove("flash");
    void badge.offsetWidth; // restart the animation
    badge.classList.add("flash");
  }
}

function renderAlarms() {
  const onlyOpen = document.getElementById("only-open").checked;
  const alarms = [...state.alarms.values()]
    .filter((a) => !onlyOpen || !a.ack)
    .sort((a, b) => b.t_ns - a.t_ns)
    .slice(0, SHOWN_ALARMS);
  prune(alarmImages, new Set(alarms.map((alarm) => alarm.result_id)));
  document.getElementById("alarms").replaceChildren(...alarms.map(alarmRow));
  document.getElementById("ack-selected").disabled = !state.user || state.selected.size === 0;
  updateAlarmBadge();
}

function alarmRow(alarm) {
  const part = alarm.kind === "ng_part" ? alarm.detail : null;
  const box = el("input", {
    type: "checkbox",
    "aria-label": `select ${alarm.title}`,
    disabled: Boolean(alarm.ack) || !state.user,
    checked: state.selected.has(alarm.id),
    onchange: (event) => {
      event.target.checked ? state.selected.add(alarm.id) : state.selected.delete(alarm.id);
      document.getElementById("ack-selected").disabled = state.selected.size === 0;
    },
  });
  const facts = part
    ? `score ${part.score.toFixed(3)} · ${defectText(part)} · part ${part.part_id || "–"}`
    : alarm.kind === "camera_silent"
      ? `last result ${clock(alarm.detail.last_capture_ns)}`
      : "";
  return el(
    "li",
    { class: `alarm kind-${alarm.kind}${alarm.ack ? " acked" : ""}${alarm.fresh ? " new" : ""}`, dataset: { id: alarm.id, shownMs: alarm.shownMs || "" } },
    el("label", { class: "check" }, box),
    el("div", { class: "thumb" }, part ? cachedImage(alarmImages, part) : ""),
    el("div", {}, el("div", { class: "title" }, alarm.title), el("div", { class: "meta" }, `${stamp(alarm.t_ns)} · ${alarm.camera}${facts ? " · " + facts : ""}`)),
    alarm.ack
      ? el("div", { class: "state acked-by" }, `✔ ${alarm.ack.by} ${clock(alarm.ack.t_ns)}`, alarm.ack.note ? el("div", { class: "meta" }, alarm.ack.note) : "")
      : el("div", { class: "state open" }, "OPEN"),
  );
}

async function acknowledgeSelected() {
  const ids = [...state.selected];
  const note = document.getElementById("ack-note").value;
  try {
    const done = await api("/api/alarms/ack", { json: { ids, note } });
    applyAck(done);
    document.getElementById("ack-note").value = "";
  } catch (error) {
    toast(`Not acknowledged: ${error.message}`);
  }
}

function applyAck(event) {
  for (const id of event.ids) {
    const alarm = state.alarms.get(id);
    if (alarm) alarm.ack = { by: event.by, t_ns: event.t_ns, note: event.note };
    state.selected.delete(id);
  }
  renderAlarms();
}

// A new alarm: a short beep unless muted, and the badge flashes.
let audio = null;
function beep() {
  if (state.muted) return;
  try {
    audio = audio || new AudioContext();
    const osc = audio.createOscillator();
    const gain = audio.createGain();
    osc.frequency.value = 880;
    gain.gain.value = 0.2;
    osc.connect(gain).connect(audio.destination);
    osc.start();
    osc.stop(audio.currentTime + 0.25);
  } catch (error) {
    // No audio device: the flashing badge is the cue.
  }
}

function setMuted(muted) {
  state.muted = muted;
  localStorage.setItem("edgeinspect.muted", muted ? "yes" : "no");
  const button = document.getElementById("mute");
  button.setAttribute("aria-pressed", String(muted));
  button.textContent = muted ? "Sound muted" : "Sound on";
}

// REVIEW queue -------------------------------------------------------------------------------------

function renderReview() {
  const parts = [...state.review.values()].sort((a, b) => b.t_capture_ns - a.t_capture_ns);
  const count = document.getElementById("review-count");
  count.textContent = parts.length;
  count.hidden = parts.length === 0;
  document.getElementById("review-hint").textContent = state.user
    ? "Judge each part: your label trains the next model."
    : "Log in to judge parts; your label trains the next model.";
  document.getElementById("review").replaceChildren(...parts.map(reviewCard));
}

function reviewCard(part) {
  const judge = (label) => async () => {
    try {
      await api(`/api/review/${encodeURIComponent(part.result_id)}/label`, { json: { label } });
      state.review.delete(part.result_id);
      renderReview();
      toast(`${part.part_id || part.result_id}: labelled ${label}`);
    } catch (error) {
      toast(`Not labelled: ${error.message}`);
    }
  };
  return el(
    "article",
    { class: "card verdict-REVIEW", dataset: { resultId: part.result_id, part: part.part_id || "" } },
    el("div", { class: "images" }, partImage(part), partImage(part, true)),
    el("div", { class: "title" }, `${part.camera} · part ${part.part_id || "–"}`),
    el("div", { class: "meta" }, `${stamp(part.t_capture_ns)} · score ${part.score.toFixed(3)} · ${defectText(part)}`),
    el(
      "div",
      { class: "judge" },
      el("button", { class: "ok", disabled: !state.user, onclick: judge("OK"), "aria-label": `part ${part.part_id} is OK` }, "OK"),
      el("button", { class: "ng", disabled: !state.user, onclick: judge("NG"), "aria-label": `part ${part.part_id} is NG` }, "NG"),
    ),
  );
}

// Shift view ---------------------------------------------------------------------------------------

const COLOURS = ["#60a5fa", "#f472b6", "#34d399", "#fbbf24", "#a78bfa", "#f87171", "#22d3ee", "#e5e7eb"];

async function loadShift(query = "") {
  const root = document.getElementById("shift");
  try {
    const view = await api(`/api/shift${query}`);
    const select = document.getElementById("shift-name");
    if (!select.options.length) select.replaceChildren(...view.shifts.map((name) => el("option", { value: name }, name)));
    select.value = view.shift;
    document.getElementById("shift-date").value = view.date;
    root.replaceChildren(shiftView(view));
  } catch (error) {
    root.replaceChildren(el("p", { class: "error" }, `Shift view unavailable: ${error.message}`));
  }
}

function shiftView(view) {
  const totals = view.report.totals;
  const v = totals.verdicts;
  const model = view.model_in_service;
  const kpi = (name, value, cls = "") => el("div", { class: `kpi ${cls}` }, el("div", { class: "value" }, value), el("div", { class: "name" }, name));
  const cameras = Object.entries(view.report.cameras);
  return el(
    "div",
    {},
    el("p", { class: "hint" }, `${view.report.line} · shift ${view.shift} · ${stamp(view.start_ns)} – ${stamp(view.end_ns)}`),
    el(
      "div",
      { class: "kpis" },
      kpi("inspected", totals.inspected),
      kpi("yield", percent(totals.yield), "ok"),
      kpi("NG", v.NG, "ng"),
      kpi("REVIEW rate", percent(totals.review_rate), "review"),
      kpi("first-pass yield", percent(totals.first_pass_yield)),
      kpi(model ? `model in service: ${model.name}` : "model in service", model ? model.version : "–"),
    ),
    el(
      "div",
      { class: "columns" },
      el("div", { class: "panel" }, el("h3", {}, "NG rate per camera"), ngChart(view), legend(Object.keys(view.series))),
      el(
        "div",
        { class: "panel" },
        el("h3", {}, "By verdict and defect class"),
        el(
          "table",
          { class: "table" },
          el("tbody", {},
            ...["OK", "NG", "REVIEW"].map((name) => el("tr", {}, el("th", {}, name), el("td", {}, v[name]))),
            ...Object.entries(totals.defect_classes).map(([cls, n]) => el("tr", {}, el("th", {}, `defect: ${cls}`), el("td", {}, n))),
          ),
        ),
        el("h3", {}, "Models used"),
        el("ul", {}, ...totals.models.map((m) => el("li", {}, `${m.name} ${m.version}: ${m.results}`))),
      ),
    ),
    el(
      "div",
      { class: "panel" },
      el("h3", {}, "Per camera"),
      el(
        "table",
        { class: "table" },
        el("thead", {}, el("tr", {}, ...["camera", "inspected", "OK", "NG", "REVIEW", "yield", "REVIEW rate"].map((h) => el("th", {}, h)))),
        el("tbody", {}, ...cameras.map(([camera, s]) => el("tr", {},
          el("td", {}, camera), el("td", {}, s.inspected), el("td", {}, s.verdicts.OK), el("td", {}, s.verdicts.NG),
          el("td", {}, s.verdicts.REVIEW), el("td", {}, percent(s.yield)), el("td", {}, percent(s.review_rate))))),
      ),
    ),
  );
}

// NG rate over the shift, one line per camera, as inline SVG (no chart library to load).
function ngChart(view) {
  const svgNs = "http://www.w3.org/2000/svg";
  const width = 800, height = 220, left = 40, bottom = 24;
  const svg = document.createElementNS(svgNs, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("class", "chart");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", "NG rate per camera over the shift");
  const add = (tag, attrs, text) => {
    const node = document.createElementNS(svgNs, tag);
    Object.entries(attrs).forEach(([k, v]) => node.setAttribute(k, v));
    if (text !== undefined) node.textContent = text;
    svg.append(node);
    return node;
  };
  const cameras = Object.entries(view.series);
  const peak = Math.max(0.05, ...cameras.flatMap(([, points]) => points.map((p) => p.ng_rate)));
  const x = (t) => left + ((t - view.start_ns) / (view.end_ns - view.start_ns)) * (width - left - 8);
  const y = (rate) => height - bottom - (rate / peak) * (height - bottom - 10);
  add("line", { x1: left, y1: height - bottom, x2: width, y2: height - bottom, class: "axis" });
  add("line", { x1: left, y1: 10, x2: left, y2: height - bottom, class: "axis" });
  add("text", { x: 2, y: 16 }, `${Math.round(peak * 100)}%`);
  add("text", { x: 2, y: height - bottom }, "0%");
  for (let i = 0; i <= 4; i++) {
    const t = view.start_ns + (i / 4) * (view.end_ns - view.start_ns);
    add("text", { x: x(t) - 16, y: height - 6 }, clock(t).slice(0, 5));
  }
  cameras.forEach(([, points], i) => {
    const centre = (p) => p.t_ns + view.bucket_ns / 2;
    add("polyline", { points: points.map((p) => `${x(centre(p))},${y(p.ng_rate)}`).join(" "), fill: "none", stroke: COLOURS[i % COLOURS.length], "stroke-width": 3 });
    points.forEach((p) => add("circle", { cx: x(centre(p)), cy: y(p.ng_rate), r: 4, fill: COLOURS[i % COLOURS.length] }));
  });
  return svg;
}

function legend(cameras) {
  return el("div", { class: "legend" }, ...cameras.map((camera, i) => el("span", {}, el("i", { style: `background:${COLOURS[i % COLOURS.length]}` }), camera)));
}

// Part lookup --------------------------------------------------------------------------------------

async function lookup(event) {
  event.preventDefault();
  const params = new URLSearchParams();
  const part = document.getElementById("lookup-part").value.trim();
  const since = document.getElementById("lookup-since").value;
  const until = document.getElementById("lookup-until").value;
  if (part) params.set("part_id", part);
  if (since) params.set("since", since);
  if (until) params.set("until", until);
  const root = document.getElementById("lookup");
  try {
    const found = await api(`/api/parts?${params}`);
    root.replaceChildren(...(found.results.length ? found.results.map(lookupCard) : [el("p", { class: "empty" }, "No inspection found.")]));
  } catch (error) {
    root.replaceChildren(el("p", { class: "error" }, error.message));
  }
}

function lookupCard(part) {
  return el(
    "article",
    { class: `card verdict-${part.verdict}`, dataset: { resultId: part.result_id } },
    partImage(part),
    el("div", { class: "title" }, `${part.verdict} · ${part.camera} · part ${part.part_id || "–"}`),
    el("div", { class: "meta" }, `${stamp(part.t_capture_ns)} · score ${part.score.toFixed(3)} · ${defectText(part)} · ${part.model}`),
    part.label ? el("div", { class: "label-done" }, `labelled ${part.label.label} by ${part.label.by}`) : "",
  );
}

// Audit (engineers) --------------------------------------------------------------------------------

async function loadAudit() {
  try {
    const { audit } = await api("/api/audit");
    document.querySelector("#audit tbody").replaceChildren(
      ...audit.map((entry) => el("tr", {}, el("td", {}, stamp(entry.t_ns)), el("td", {}, entry.who), el("td", {}, entry.role), el("td", {}, entry.action), el("td", {}, entry.target), el("td", {}, JSON.stringify(entry.detail)))),
    );
  } catch (error) {
    toast(error.message);
  }
}

// ---- login ----------------------------------------------------------------------------------------

function renderUser() {
  const button = document.getElementById("user-button");
  button.textContent = state.user ? `${state.user.name} · Log out` : "Log in";
  button.hidden = !state.user && body.dataset.canLogIn !== "yes";
  document.getElementById("audit-tab").hidden = !(state.user && state.user.role === "engineer");
  renderAlarms();
  renderReview();
}

async function userButton() {
  if (!state.user) {
    document.getElementById("login-error").hidden = true;
    document.getElementById("login-dialog").showModal();
    return;
  }
  if (body.dataset.proxy === "yes") return; // the proxy decides who is logged in
  await api("/api/logout", { json: {} });
  state.user = null;
  state.selected.clear();
  renderUser();
}

async function logIn(event) {
  event.preventDefault();
  const name = document.getElementById("login-name").value;
  const password = document.getElementById("login-password").value;
  try {
    state.user = await api("/api/login", { json: { name, password } });
    document.getElementById("login-password").value = "";
    document.getElementById("login-dialog").close();
    renderUser();
  } catch (error) {
    const node = document.getElementById("login-error");
    node.textContent = error.message;
    node.hidden = false;
  }
}

// ---- live stream ----------------------------------------------------------------------------------

async function reloadLists() {
  const [alarms, review] = await Promise.all([api("/api/alarms"), api("/api/review")]);
  state.alarms = new Map(alarms.alarms.map((a) => [a.id, a]));
  state.review = new Map(review.parts.map((p) => [p.result_id, p]));
  renderAlarms();
  renderReview();
}

function connect() {
  const source = new EventSource("/api/events");
  const indicator = document.getElementById("connection");
  source.onopen = () => {
    indicator.classList.add("live");
    reloadLists().catch((error) => toast(`Could not load the lists: ${error.message}`));
  };
  source.onerror = () => indicator.classList.remove("live"); // EventSource reconnects by itself
  source.addEventListener("tiles", (event) => {
    const data = JSON.parse(event.data);
    state.serverOffsetMs = data.now_ns / 1e6 - Date.now();
    state.tiles = data.tiles;
    renderTiles();
  });
  source.addEventListener("alarm", (event) => {
    const alarm = JSON.parse(event.data);
    if (state.alarms.has(alarm.id)) return;
    alarm.fresh = true;
    setTimeout(() => (alarm.fresh = false), 2000);
    alarm.shownMs = Date.now() + state.serverOffsetMs; // when it reached the page, on the server's clock
    state.alarms.set(alarm.id, alarm);
    if (state.alarms.size > KEPT_ALARMS) {
      const oldest = [...state.alarms.values()].sort((a, b) => a.t_ns - b.t_ns);
      oldest.slice(0, state.alarms.size - KEPT_ALARMS).forEach((old) => state.alarms.delete(old.id));
    }
    renderAlarms();
    updateAlarmBadge(true);
    beep();
  });
  source.addEventListener("ack", (event) => applyAck(JSON.parse(event.data)));
  source.addEventListener("review", (event) => {
    const part = JSON.parse(event.data);
    state.review.set(part.result_id, part);
    renderReview();
  });
  source.addEventListener("label", (event) => {
    state.review.delete(JSON.parse(event.data).result_id);
    renderReview();
  });
}

// ---- start ----------------------------------------------------------------------------------------

document.querySelectorAll("nav [role=tab]").forEach((tab) => tab.addEventListener("click", () => showView(tab.dataset.view)));
document.getElementById("only-open").addEventListener("change", renderAlarms);
document.getElementById("ack-selected").addEventListener("click", acknowledgeSelected);
document.getElementById("mute").addEventListener("click", () => setMuted(!state.muted));
document.getElementById("user-button").addEventListener("click", userButton);
document.getElementById("login-form").addEventListener("submit", logIn);
document.getElementById("login-cancel").addEventListener("click", () => document.getElementById("login-dialog").close());
document.getElementById("shift-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const name = document.getElementById("shift-name").value;
  const date = document.getElementById("shift-date").value;
  loadShift(`?shift=${encodeURIComponent(name)}&date=${encodeURIComponent(date)}`);
});
document.getElementById("shift-now").addEventListener("click", () => loadShift());
document.getElementById("lookup-form").addEventListener("submit", lookup);
setInterval(renderTiles, 1000); // ages tick between events
setMuted(state.muted);
api("/api/me").then((me) => {
  state.user = me.user;
  renderUser();
});
connect();
