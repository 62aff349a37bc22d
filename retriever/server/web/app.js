// The retriever page. Every search goes to /api/search; results are built with textContent,
// never innerHTML, because file names, captions and passages are the user's data.
// The search (words or item, and every filter) lives in the URL, so a search can be
// bookmarked, shared, reloaded and gone back to.
"use strict";

const $ = (id) => document.getElementById(id);
const FILTERS = ["in", "after", "before", "min_score"]; // input ids = API parameter names
const SECTIONS = { images: "Photos", texts: "Passages (and photos found by their captions)" };
let lastItem = null; // the item a "more like this" search started from, shown highlighted
let shown = []; // the results on the page, in order: the large view steps through them
let viewing = -1; // index in `shown` of the result in the large view

function controls(extra) {
  const values = new URLSearchParams(extra);
  values.set("target", $("target").value);
  values.set("k", $("k").value || "20");
  for (const name of FILTERS) if ($(name).value.trim()) values.set(name, $(name).value.trim());
  return values;
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

async function run(label, request, item = null) {
  setStatus(`Searching ${label}…`);
  try {
    const response = await request;
    const body = await response.json();
    if (!response.ok) throw new Error(body.error || response.statusText);
    lastItem = item;
    show(body.results);
    const count = body.results.length;
    setStatus(count ? `${count} result${count === 1 ? "" : "s"} for ${label}` : `No results for ${label}: loosen a filter?`);
  } catch (error) {
    setStatus(error.message, true);
  }
}

function remember(query, replace) {
  const url = `?${query}`;
  if (location.search === url) return;
  if (replace) history.replaceState(null, "", url);
  else history.pushState(null, "", url);
}

function searchText(text, replace = false) {
  const query = controls({ text });
  remember(query, replace);
  run(`“${text}”`, fetch(`/api/search?${query}`), null);
}

function searchItem(result, replace = false) {
  const query = controls({ item: result.id });
  remember(query, replace);
  run(`more like ${where(result)}`, fetch(`/api/search?${query}`), result.id);
}

function searchImage(file) {
  const form = new FormData();
  form.append("image", file);
  for (const [key, value] of controls({})) form.append(key, value);
  run(`the image ${file.name}`, fetch("/api/search", { method: "POST", body: form }), null);
}

function where(result) {
  const name = result.path.split("/").pop();
  if (result.time !== null && result.time !== undefined) return `${name} @ ${clock(result.time)}`;
  return result.kind === "text" ? `${name} #${result.position}` : name;
}

// 83 -> "01:23" (a video frame's moment; its file URL ends in #t=83 and plays from there)
function clock(seconds) {
  const whole = Math.floor(seconds);
  const hours = Math.floor(whole / 3600);
  const pad = (n) => String(n).padStart(2, "0");
  return (hours ? `${hours}:` : "") + `${pad(Math.floor((whole % 3600) / 60))}:${pad(whole % 60)}`;
}

function day(seconds) {
  return seconds === null || seconds === undefined ? "" : new Date(seconds * 1000).toLocaleDateString(
    undefined, { year: "numeric", month: "short", day: "numeric" });
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = text;
  return node;
}

function card(result, index) {
  const article = element("article", `result ${result.kind}`);
  article.dataset.id = result.id;
  article.dataset.path = result.path;
  if (result.id === lastItem) article.classList.add("query");
  const open = element("button", "open");
  open.type = "button";
  open.title = `${result.path} (Enter: large view)`;
  if (result.thumbnail) {  // images, their OCR words, and video frames
    const img = element("img");
    img.src = result.thumbnail;
    img.alt = result.caption || where(result);
    img.loading = "lazy";
    open.append(img);
  } else {
    open.append(element("p", "passage", result.passage));
  }
  open.addEventListener("click", () => view(index));
  const meta = element("div", "meta");
  if (result.score !== null) meta.append(element("span", "score", result.score.toFixed(3)));
  const link = element("a", "where", where(result));
  link.href = result.file;
  link.target = "_blank";
  link.rel = "noopener";
  link.title = `Open ${result.path}`;
  const more = element("button", "more", "more like this");
  more.type = "button";
  more.addEventListener("click", () => searchItem(result));
  meta.append(link, more);
  article.append(open, meta);
  if (result.caption) article.append(element("p", "caption", result.caption));
  if (result.tags && result.tags.length) {
    article.append(element("p", "tags", result.tags.map((t) => `#${t}`).join(" ")));
  }
  return article;
}

// One grid, or (results from both sections: `all`) a heading and a grid per section.
function show(results, heading = null) {
  const sections = new Set(results.map((r) => r.section || "images"));
  const blocks = [];
  shown = [];
  for (const [section, title] of Object.entries(SECTIONS)) {
    const rows = results.filter((r) => (r.section || "images") === section);
    if (!rows.length) continue;
    const grid = element("div", "grid");
    grid.dataset.section = section;
    for (const r of rows) grid.append(card(r, shown.push(r) - 1));
    if (heading || sections.size > 1) blocks.push(element("h2", "section", heading || title));
    blocks.push(grid);
  }
  $("results").replaceChildren(...blocks);
}

function view(index) {
  const result = shown[index];
  if (!result) return;
  viewing = index;
  const image = $("viewer-image");
  image.hidden = !result.thumbnail;
  image.onerror = () => { if (image.src !== location.origin + result.thumbnail) image.src = result.thumbnail; };
  if (result.thumbnail) {  // the file itself when the browser can show it, else the thumbnail
    image.src = result.kind === "image" ? result.file : result.thumbnail;
    image.alt = result.caption || where(result);
  }
  $("viewer-passage").hidden = !result.passage;
  $("viewer-passage").textContent = result.passage || "";
  $("viewer-path").textContent = result.time !== null && result.time !== undefined
    ? `${result.path} @ ${clock(result.time)}` : result.path;
  $("viewer-caption").textContent = result.caption || "";
  $("viewer-date").textContent = day(result.taken_at) +
    (result.score !== null ? ` · score ${result.score.toFixed(3)}` : "");
  $("viewer-open").href = result.file;
  $("viewer-download").href = result.file;
  $("viewer-download").download = result.path.split("/").pop();
  if (!$("viewer").open) $("viewer").showModal();
}

function step(delta) {
  if (viewing >= 0) view(Math.max(0, Math.min(shown.length - 1, viewing + delta)));
}

function moveFocus(delta) {
  const cards = [...document.querySelectorAll("#results .open")];
  const at = cards.indexOf(document.activeElement);
  const next = cards[at < 0 ? 0 : Math.max(0, Math.min(cards.length - 1, at + delta))];
  if (next) next.focus();
}

function watchKeys() {
  document.addEventListener("keydown", (e) => {
    const typing = ["INPUT", "SELECT", "TEXTAREA"].includes(document.activeElement.tagName);
    if ($("viewer").open) {
      if (e.key === "ArrowRight") step(1);
      else if (e.key === "ArrowLeft") step(-1);
      return; // Esc closes the dialog by itself
    }
    if (e.key === "/" && !typing) { e.preventDefault(); $("text").focus(); }
    else if (!typing && (e.key === "ArrowRight" || e.key === "ArrowDown")) { e.preventDefault(); moveFocus(1); }
    else if (!typing && (e.key === "ArrowLeft" || e.key === "ArrowUp")) { e.preventDefault(); moveFocus(-1); }
  });
  $("viewer-prev").addEventListener("click", () => step(-1));
  $("viewer-next").addEventListener("click", () => step(1));
  $("viewer-close").addEventListener("click", () => $("viewer").close());
  $("viewer-more").addEventListener("click", () => {
    const result = shown[viewing];
    $("viewer").close();
    searchItem(result);
  });
  $("viewer").addEventListener("close", () => {
    const cards = document.querySelectorAll("#results .open");
    if (cards[viewing]) cards[viewing].focus();
  });
}

async function showInfo() {
  try {
    const info = await (await fetch("/api/info")).json();
    const model = info.model ? `${info.model.name} (${info.model.pretrained})` : "no model";
    $("info").textContent =
      `${info.images} images, ${info.texts} passages in ${info.files} files · ${model}`;
  } catch (error) {
    $("info").textContent = "the server is not answering";
  }
}

// Before any search: the newest photos, so the page is never empty.
async function showRecent() {
  try {
    const body = await (await fetch("/api/recent?k=24")).json();
    lastItem = null;
    show(body.results, "Recent photos");
  } catch (error) {
    setStatus("the server is not answering", true);
  }
}

function watchDrops() {
  let depth = 0; // dragenter/dragleave fire for every child element crossed
  const overlay = (on) => { $("drop").hidden = !on; };
  document.addEventListener("dragenter", (e) => { e.preventDefault(); depth += 1; overlay(true); });
  document.addEventListener("dragleave", () => { depth -= 1; if (depth <= 0) overlay(false); });
  document.addEventListener("dragover", (e) => e.preventDefault());
  document.addEventListener("drop", (e) => {
    e.preventDefault();
    depth = 0;
    overlay(false);
    const file = e.dataTransfer && e.dataTransfer.files[0];
    if (file) searchImage(file);
  });
}

// The page as the URL says: a bookmarked or shared search, or back/forward.
function fromUrl() {
  const initial = new URLSearchParams(location.search);
  $("target").value = initial.get("target") || "images";
  $("k").value = initial.get("k") || "20";
  for (const name of FILTERS) $(name).value = initial.get(name) || "";
  $("text").value = initial.get("text") || "";
  if (initial.get("text")) searchText(initial.get("text"), true);
  else if (initial.get("item")) {
    searchItem({ id: Number(initial.get("item")), path: `item ${initial.get("item")}`, kind: "image" }, true);
  } else showRecent();
}

function rerun() {  // a changed filter or target applies to the search on the page
  const text = $("text").value.trim();
  const item = new URLSearchParams(location.search).get("item");
  if (text) searchText(text);
  else if (item) searchItem({ id: Number(item), path: `item ${item}`, kind: "image" });
}

function start() {
  $("search").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = $("text").value.trim();
    if (text) searchText(text);
  });
  for (const id of ["target", "after", "before"]) $(id).addEventListener("change", rerun);
  $("clear").addEventListener("click", () => {
    for (const name of FILTERS) $(name).value = "";
    rerun();
  });
  $("image").addEventListener("change", () => {
    if ($("image").files[0]) searchImage($("image").files[0]);
    $("image").value = ""; // the same file chosen again searches again
  });
  window.addEventListener("popstate", fromUrl);
  watchDrops();
  watchKeys();
  showInfo();
  fromUrl();
}

start();
