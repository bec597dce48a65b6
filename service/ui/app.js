// The relevance workbench: search the served model with explanations, compare it with the shadow or canary model,
// grade hits. Plain JavaScript against the service's own routes (/rank, /ui/api/*); the page's state is its URL.
"use strict";

const $ = (selector) => document.querySelector(selector);
const MODALITIES = ["image", "text", "attributes"];
let status = null;
let selected = null;  // the card a key grades

function parseFilters(text) {
  // "glass:coupe,highball; colour:pink" -> {glass: ["coupe", "highball"], colour: ["pink"]}
  const filters = {};
  for (const part of text.split(";")) {
    const [name, values] = part.split(":").map((s) => (s || "").trim());
    if (name && values) filters[name] = values.split(",").map((v) => v.trim()).filter(Boolean);
  }
  return Object.keys(filters).length ? filters : null;
}

async function post(path, body) {
  const response = await fetch(path, {method: "POST", headers: {"content-type": "application/json"}, body: JSON.stringify(body)});
  const answer = await response.json();
  if (!response.ok) throw new Error(answer.error || response.statusText);
  return answer;
}

function bar(label, value, scale, kind, text) {
  const width = Math.max(0, Math.min(100, (Math.abs(value) / scale) * 100));
  const negative = value < 0 ? " negative" : "";
  return `<span>${label}</span><span class="bar ${kind}${negative}" data-kind="${kind}" data-label="${label}"><span style="width:${width}%"></span></span><span>${text}</span>`;
}

function explanationBars(why, score) {
  const rows = [];
  for (const [source, rank] of Object.entries(why.sources || {})) {
    rows.push(bar(source, rank ? 1 / rank : 0, 1, "source", rank ? `#${rank}` : "—"));
  }
  for (const [name, value] of Object.entries(why.evidence || {})) {
    const label = name === why.prior_evidence ? `${name} (prior)` : name;
    rows.push(bar(label, value, name === "rrf" ? 2 : 1, "evidence", value.toFixed(3)));
  }
  if (why.prior !== undefined) {  // a ranker that is not prior + residual is explained without them
    const scale = Math.max(Math.abs(why.prior), Math.abs(why.residual), 1e-6);
    rows.push(bar("prior term", why.prior, scale, "prior", why.prior.toFixed(3)));
    rows.push(bar("residual", why.residual, scale, "residual", why.residual.toFixed(3)));
  }
  if (why.attention) {
    for (const modality of MODALITIES) {
      const heads = why.attention[modality];
      const mean = heads.reduce((a, b) => a + b, 0) / heads.length;
      const label = why.modalities[modality] ? modality : `${modality} (none)`;
      rows.push(bar(label, mean, 1, "attention", mean.toFixed(2)));
    }
  }
  return `<div class="bars" title="score ${score.toFixed(4)} = prior + residual">${rows.join("")}</div>`;
}

function card(hit, query, moved) {
  const item = document.createElement("li");
  item.className = "card";
  item.dataset.id = hit.id;
  item.tabIndex = 0;
  const attributes = Object.entries(hit.attributes || {}).map(([k, v]) => `${k}: ${v}`).join(" · ");
  const grades = status && status.judging
    ? `<div class="grades">grade ${[0, 1, 2, 3].map((g) => `<button type="button" data-grade="${g}">${g}</button>`).join("")}</div>`
    : "";
  item.innerHTML = `
    <img alt="" src="/ui/images/${encodeURIComponent(hit.id)}" onerror="this.remove()">
    <div class="body">
      <span class="score">${hit.score.toFixed(4)}</span>
      <div class="title">${hit.rank}. ${escapeHtml(hit.title || hit.id)}${moved || ""}</div>
      <div class="attrs">${escapeHtml(hit.id)} · ${escapeHtml(attributes)}</div>
      ${hit.explanation ? explanationBars(hit.explanation, hit.score) : ""}
      ${grades}
    </div>`;
  item.addEventListener("click", (event) => {
    select(item);
    const grade = event.target.dataset && event.target.dataset.grade;
    if (grade !== undefined) give(query, item, Number(grade));
  });
  return item;
}

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"})[c]);
}

function select(item) {
  if (selected) selected.classList.remove("selected");
  selected = item;
  item.classList.add("selected");
}

async function give(query, item, grade) {
  try {
    const counts = await post("/ui/api/judgments", {query, item_id: item.dataset.id, grade});
    for (const button of item.querySelectorAll(".grades button")) button.classList.toggle("given", Number(button.dataset.grade) === grade);
    item.dataset.grade = String(grade);
    status.judged_queries = counts.judged_queries;
    status.judgments = counts.judgments;
    showStatus();
  } catch (error) {
    message(error.message, true);
  }
}

document.addEventListener("keydown", (event) => {
  if (!selected || event.target.tagName === "INPUT" || !/^[0-3]$/.test(event.key)) return;
  give($("#query").value.trim(), selected, Number(event.key));
});

function message(text, error = false) {
  $("#message").textContent = text;
  $("#message").className = error ? "error" : "";
}

function showStatus() {
  const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;
  const judged = status.judging
    ? ` · ${plural(status.judged_queries, "query")} judged (${plural(status.judgments, "grade")})`.replace("querys", "queries")
    : " · grading off (RANK_JUDGMENTS_FILE)";
  $("#status").textContent = `model ${status.model_version} · ${status.items} items${judged}`;
}

function movedMark(id, position, otherIds) {
  const there = otherIds.indexOf(id);
  if (there < 0) return `<span class="moved new" data-moved="new">new</span>`;
  const delta = there - position;  // > 0: ranked higher here than there
  if (delta > 0) return `<span class="moved up" data-moved="up">▲${delta}</span>`;
  if (delta < 0) return `<span class="moved down" data-moved="down">▼${-delta}</span>`;
  return "";
}

function render(column, title, answer, query, otherIds) {
  $(`#${column}-title`).textContent = title;
  const list = $(`#${column} .results`);
  list.replaceChildren(...answer.results.map((hit, i) => card(hit, query, otherIds ? movedMark(hit.id, i, otherIds) : "")));
}

async function search() {
  const query = $("#query").value.trim();
  const filters = parseFilters($("#filters").value);
  const compare = $("#compare").value;
  const k = Number($("#k").value) || 10;
  const params = new URLSearchParams({q: query});
  if ($("#filters").value.trim()) params.set("filters", $("#filters").value.trim());
  if (compare) params.set("compare", compare);
  if (k !== 10) params.set("k", String(k));
  history.replaceState(null, "", `/ui?${params}`);
  if (!query) return;
  message("");
  $("#agreement").textContent = "";
  try {
    const served = await post("/rank", {query, top_k: k, filters, explain: true});
    let other = null;
    if (compare) {
      other = await post("/ui/api/compare", {query, top_k: k, filters, against: compare});
      const figures = other.agreement;
      $("#agreement").textContent = `overlap@10 ${figures.overlap_at_10.toFixed(2)} · RBO ${figures.rbo.toFixed(3)}`;
    }
    const otherIds = other ? other.results.map((hit) => hit.id) : null;
    render("served", `serving: model ${served.model_version}`, served, query, otherIds);
    $("#other").hidden = !other;
    if (other) render("other", `${compare}: model ${other.model_version}`, other, query, served.results.map((hit) => hit.id));
  } catch (error) {
    message(error.message, true);
  }
}

async function start() {
  status = await (await fetch("/ui/api/status")).json();
  showStatus();
  for (const option of $("#compare").options) option.disabled = option.value !== "" && !status.compare.includes(option.value);
  const params = new URLSearchParams(location.search);
  $("#query").value = params.get("q") || "";
  $("#filters").value = params.get("filters") || "";
  $("#compare").value = params.get("compare") || "";
  $("#k").value = params.get("k") || "10";
  $("#search").addEventListener("submit", (event) => { event.preventDefault(); search(); });
  if ($("#query").value) await search();
  document.body.dataset.ready = "true";
}

start();
