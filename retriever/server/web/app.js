// The retriever page. Every search goes to /api/search; results are built with textContent and
// text nodes, never innerHTML, because file names, captions and passages are the user's data.
// Every choice (words or item, what to show, how to match, each filter, the tag, the sort)
// lives in the URL, so a search can be bookmarked, shared, reloaded and gone back to.
"use strict";

const $ = (id) => document.getElementById(id);
const FILTERS = ["in", "after", "before", "min_score", "tag"]; // input ids = API parameter names
// choices with a default the URL leaves out: id -> default (sort stays on the page, match goes
// to the API)
const CHOICES = { target: "images", match: "hybrid", sort: "score" };
const SECTIONS = { images: "Photos and video frames", texts: "Passages (and photos found by their captions or words)" };
const GROUPS = ["images", "texts"];
const KIND_GROUP = { image: "images", video: "images", text: "texts", "image-text": "texts" };
let lastItem = null; // the item a "more like this" search started from, shown highlighted
let results = []; // the last answer, as the API ordered it
let shown = []; // the results on the page, in order: the large view steps through them
let viewing = -1; // index in `shown` of the result in the large view
const selected = new Map(); // item id -> result, kept across searches until cleared

// The API's parameters for the page's choices (`sort` is the page's own).
function controls(extra) {
  const values = new URLSearchParams(extra);
  values.set("target", $("target").value || CHOICES.target);
  values.set("k", $("k").value || "20");
  if ($("match").value && $("match").value !== CHOICES.match) values.set("match", $("match").value);
  for (const name of FILTERS) if ($(name).value.trim()) values.set(name, $(name).value.trim());
  return values;
}

function pageUrl(query) {
  const values = new URLSearchParams(query);
  if ($("sort").value !== CHOICES.sort) values.set("sort", $("sort").value);
  return `?${values}`;
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

// Answers can come back in another order than their searches started (a choice changed, then
// a click at once): only the last search started may fill the page.
let latest = 0;

async function run(label, request, item = null) {
  const mine = ++latest;
  setStatus(`Searching ${label}…`);
  try {
    const response = await request;
    const body = await response.json();
    if (mine !== latest) return;
    if (!response.ok) throw new Error(body.error || response.statusText);
    lastItem = item;
    results = body.results;
    show();
    const count = body.results.length;
    setStatus(count ? `${count} result${count === 1 ? "" : "s"} for ${label}` : `No results for ${label}: loosen a filter?`);
  } catch (error) {
    if (mine === latest) setStatus(error.message, true);
  }
}

function remember(query, replace) {
  const url = pageUrl(query);
  if (location.search === url) return;
  if (replace) history.replaceState(null, "", url);
  else history.pushState(null, "", url);
}

function searchText(text, replace = false) {
  const query = controls({ text });
  remember(query, replace);
  showQuery(null, `“${text}”`);
  run(`“${text}”`, fetch(`/api/search?${query}`), null);
}

function searchItem(result, replace = false) {
  const query = controls({ item: result.id });
  remember(query, replace);
  showQuery(`/api/items/${result.id}/thumbnail`, `more like ${where(result)}`);
  run(`more like ${where(result)}`, fetch(`/api/search?${query}`), result.id);
}

function searchImage(file) {
  $("text").value = ""; // the image is the query now; the URL keeps the other choices
  remember(controls({}), false);
  const form = new FormData();
  form.append("image", file);
  for (const [key, value] of controls({})) form.append(key, value);
  showQuery(URL.createObjectURL(file), `the image ${file.name}`);
  run(`the image ${file.name}`, fetch("/api/search", { method: "POST", body: form }), null);
}

// The query image above the results (an upload, or the item "more like this" started from).
function showQuery(src, label) {
  const image = $("query-image");
  if (image.src.startsWith("blob:")) URL.revokeObjectURL(image.src);
  $("query").hidden = !src;
  image.onerror = () => { $("query").hidden = true; }; // a passage has no picture
  if (src) image.src = src;
  else image.removeAttribute("src");
  $("query-label").textContent = src ? `Searching by ${label}` : "";
}

function fileName(result) {
  return result.path.split("/").pop();
}

// Where in its file a hit is: a page, a section, a video's moment, a passage's number.
function place(result) {
  if (result.page !== null && result.page !== undefined) return `p. ${result.page}`;
  if (result.section) return `§ ${result.section}`;
  if (result.time !== null && result.time !== undefined) return `@ ${clock(result.time)}`;
  return result.kind === "text" ? `#${result.position}` : "";
}

function where(result) {
  return [fileName(result), place(result)].filter(Boolean).join(" ");
}

// The results' group: what kind of vector matched (a photo found by its caption is a text hit).
function group(result) {
  return GROUPS.includes(result.found_in) ? result.found_in : KIND_GROUP[result.kind] || "images";
}

// The file link: a PDF opens at the hit's page (the API's file URL already carries a video's
// #t=SECONDS).
function fileLink(result) {
  const isPdf = /\.pdf$/i.test(result.path);
  return isPdf && result.page ? `${result.file.split("#")[0]}#page=${result.page}` : result.file;
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

// The snippet with its matched words in <mark>: text nodes only. `marks` are [start, end)
// offsets into `snippet`; ones out of order or out of range are skipped.
function marked(className, snippet, marks) {
  const node = element("p", className);
  let at = 0;
  for (const [start, end] of marks || []) {
    if (!(Number.isInteger(start) && Number.isInteger(end)) || start < at || end <= start || end > snippet.length) continue;
    node.append(document.createTextNode(snippet.slice(at, start)), element("mark", null, snippet.slice(start, end)));
    at = end;
  }
  node.append(document.createTextNode(snippet.slice(at)));
  return node;
}

function picture(result) {
  const img = element("img");
  img.src = result.thumbnail;
  img.alt = result.caption || where(result);
  img.loading = "lazy";
  return img;
}

// A video frame's card plays the video in place, from the frame's moment.
function player(result, holder) {
  const play = element("button", "play", `▶ play from ${clock(result.time)}`);
  play.type = "button";
  play.addEventListener("click", () => {
    const video = element("video", "inline");
    video.controls = true;
    video.autoplay = true;
    video.src = result.file; // …/file#t=SECONDS: the browser starts there
    video.addEventListener("loadedmetadata", () => {
      if (Math.abs(video.currentTime - result.time) > 0.5) video.currentTime = result.time;
    }, { once: true });
    holder.replaceChildren(video);
    video.play().catch(() => {}); // a refused autoplay leaves the controls to the user
  });
  return play;
}

function cardBody(result, index) {
  const open = element("button", "open");
  open.type = "button";
  open.title = `${result.path} (Enter: large view)`;
  if (result.thumbnail) open.append(picture(result));  // images, their OCR words, video frames
  else if (result.snippet) open.append(marked("passage", result.snippet, result.marks));
  else open.append(element("p", "passage", result.passage));
  open.addEventListener("click", () => view(index));
  const holder = element("div", "holder");
  holder.append(open);
  return holder;
}

function pick(result) {
  const box = element("input", "pick");
  box.type = "checkbox";
  box.checked = selected.has(result.id);
  box.setAttribute("aria-label", `select ${fileName(result)}`);
  box.addEventListener("change", () => {
    if (box.checked) selected.set(result.id, result);
    else selected.delete(result.id);
    showSelection();
  });
  return box;
}

function meta(result) {
  const row = element("div", "meta");
  row.append(pick(result));
  if (result.score !== null && result.score !== undefined) row.append(element("span", "score", result.score.toFixed(3)));
  const spot = place(result);
  if (spot) row.append(element("span", "place", spot));
  const more = element("button", "more", "more like this");
  more.type = "button";
  more.addEventListener("click", () => searchItem(result));
  row.append(more);
  return row;
}

function nameLink(result) {
  const link = element("a", "name", fileName(result));
  link.href = fileLink(result);
  link.target = "_blank";
  link.rel = "noopener";
  link.title = `Open ${result.path}`;
  return link;
}

function tagList(result) {
  const list = element("p", "tags");
  for (const tag of result.tags) {
    const chip = element("button", "tag", `#${tag}`);
    chip.type = "button";
    chip.title = `only results tagged ${tag}`;
    chip.addEventListener("click", () => { chooseTag(tag); rerun(); });
    list.append(chip);
  }
  return list;
}

function card(result, index) {
  const article = element("article", `result ${result.kind}`);
  article.dataset.id = result.id;
  article.dataset.path = result.path;
  if (result.id === lastItem) article.classList.add("query");
  const body = cardBody(result, index);
  article.append(body, meta(result), nameLink(result));
  if (result.kind === "video" && result.time !== null && result.time !== undefined) {
    article.append(player(result, body));
  }
  if (result.thumbnail && result.snippet) article.append(marked("snippet", result.snippet, result.marks));
  if (result.caption && !(result.thumbnail && result.snippet)) article.append(element("p", "caption", result.caption));
  if (result.tags && result.tags.length) article.append(tagList(result));
  return article;
}

// Newest first (EXIF date, else the file's time); undated ones last. Stable: ties keep rank.
function sorted(rows) {
  if ($("sort").value !== "date") return rows;
  const when = (r) => (r.taken_at === null || r.taken_at === undefined ? -Infinity : r.taken_at);
  return [...rows].sort((a, b) => when(b) - when(a));
}

// One grid, or (results from both groups: `all`) a heading and a grid per group.
function show(heading = null) {
  const groups = new Set(results.map(group));
  const blocks = [];
  shown = [];
  for (const [name, title] of Object.entries(SECTIONS)) {
    const rows = sorted(results.filter((r) => group(r) === name));
    if (!rows.length) continue;
    const grid = element("div", "grid");
    grid.dataset.section = name;
    for (const r of rows) grid.append(card(r, shown.push(r) - 1));
    if (heading || groups.size > 1) blocks.push(element("h2", "section", heading || title));
    blocks.push(grid);
  }
  $("results").replaceChildren(...blocks);
}

function showSelection() {
  $("selection").hidden = selected.size === 0;
  $("selected-count").textContent = `${selected.size} selected`;
  for (const box of document.querySelectorAll("#results .pick")) {
    box.checked = selected.has(Number(box.closest(".result").dataset.id));
  }
}

async function copyPaths() {
  const paths = [...new Set([...selected.values()].map((r) => r.path))];
  try {
    await navigator.clipboard.writeText(paths.join("\n"));
    setStatus(`Copied ${paths.length} path${paths.length === 1 ? "" : "s"}`);
  } catch (error) {
    setStatus(`Could not copy (${error.message}): the paths are ${paths.join(", ")}`, true);
  }
}

async function downloadZip() {
  setStatus(`Packing ${selected.size} files…`);
  try {
    const response = await fetch("/api/download", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ ids: [...selected.keys()] }),
    });
    if (!response.ok) throw new Error((await response.json()).error || response.statusText);
    const link = element("a");
    link.href = URL.createObjectURL(await response.blob());
    link.download = "retriever-files.zip";
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 60_000);
    setStatus(`Downloaded ${selected.size} selected as retriever-files.zip`);
  } catch (error) {
    setStatus(error.message, true);
  }
}

function viewMedia(result) {
  const image = $("viewer-image");
  const video = $("viewer-video");
  const playing = result.kind === "video" && result.time !== null && result.time !== undefined;
  video.hidden = !playing;
  if (playing) video.src = result.file;
  else { video.pause(); video.removeAttribute("src"); }
  image.hidden = !result.thumbnail || playing;
  image.onerror = () => { if (image.src !== location.origin + result.thumbnail) image.src = result.thumbnail; };
  if (result.thumbnail && !playing) {  // the file itself when the browser can show it, else the thumbnail
    image.src = result.kind === "image" ? result.file : result.thumbnail;
    image.alt = result.caption || where(result);
  }
  $("viewer-passage").hidden = !result.passage || playing;
  $("viewer-passage").textContent = result.passage || "";
}

function view(index) {
  const result = shown[index];
  if (!result) return;
  viewing = index;
  viewMedia(result);
  const spot = place(result);
  $("viewer-path").textContent = spot ? `${result.path} ${spot}` : result.path;
  $("viewer-caption").textContent = result.caption || "";
  $("viewer-date").textContent = day(result.taken_at) +
    (result.score !== null && result.score !== undefined ? ` · score ${result.score.toFixed(3)}` : "");
  $("viewer-open").href = fileLink(result);
  $("viewer-download").href = result.file.split("#")[0];
  $("viewer-download").download = fileName(result);
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
    $("viewer-video").pause();
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

// The tag menu: every tag in the index, with how many items carry it.
async function loadTags() {
  try {
    const body = await (await fetch("/api/tags")).json();
    for (const { label, count } of body.tags) {
      const option = element("option", null, `${label} (${count})`);
      option.value = label;
      $("tag").append(option);
    }
  } catch (error) {
    setStatus("the tags could not be listed: the tag menu is empty", true);
  }
}

// Select `tag` in the menu, adding it when the index has no such tag (a shared URL's tag).
function chooseTag(tag) {
  if (tag && ![...$("tag").options].some((o) => o.value === tag)) {
    const option = element("option", null, `${tag} (none)`);
    option.value = tag;
    $("tag").append(option);
  }
  $("tag").value = tag;
}

// Before any search: the newest photos, so the page is never empty.
async function showRecent() {
  showQuery(null, "");
  const mine = ++latest;
  try {
    const body = await (await fetch("/api/recent?k=24")).json();
    if (mine !== latest) return; // a search started meanwhile: its answer is the page's
    lastItem = null;
    results = body.results;
    show("Recent photos");
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

// A menu set to what the URL says, or its default when the URL names no such option.
function choose(id, value) {
  $(id).value = value || CHOICES[id];
  if (!$(id).value) $(id).value = CHOICES[id];
}

// The page as the URL says: a bookmarked or shared search, or back/forward.
function fromUrl() {
  const initial = new URLSearchParams(location.search);
  for (const id of Object.keys(CHOICES)) choose(id, initial.get(id));
  $("k").value = initial.get("k") || "20";
  for (const name of FILTERS) if (name !== "tag") $(name).value = initial.get(name) || "";
  chooseTag(initial.get("tag") || "");
  $("text").value = initial.get("text") || "";
  if (initial.get("text")) searchText(initial.get("text"), true);
  else if (initial.get("item")) {
    searchItem({ id: Number(initial.get("item")), path: `item ${initial.get("item")}`, kind: "image" }, true);
  } else showRecent();
}

function rerun() {  // a changed filter or choice applies to the search on the page
  const text = $("text").value.trim();
  const item = new URLSearchParams(location.search).get("item");
  if (text) searchText(text);
  else if (item) searchItem({ id: Number(item), path: `item ${item}`, kind: "image" });
}

function resort() {  // the same results, in another order; the URL keeps the choice
  const text = $("text").value.trim();
  const item = new URLSearchParams(location.search).get("item");
  if (text || item) remember(controls(text ? { text } : { item }), true);
  show(lastItem === null && !text && !item ? "Recent photos" : null);
}

function watchControls() {
  $("search").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = $("text").value.trim();
    if (text) searchText(text);
  });
  for (const id of ["target", "match", "tag", "after", "before"]) $(id).addEventListener("change", rerun);
  $("sort").addEventListener("change", resort);
  $("clear").addEventListener("click", () => {
    for (const name of FILTERS) $(name).value = "";
    rerun();
  });
  $("image").addEventListener("change", () => {
    if ($("image").files[0]) searchImage($("image").files[0]);
    $("image").value = ""; // the same file chosen again searches again
  });
  $("copy-paths").addEventListener("click", copyPaths);
  $("download-zip").addEventListener("click", downloadZip);
  $("unselect").addEventListener("click", () => { selected.clear(); showSelection(); });
}

async function start() {
  watchControls();
  window.addEventListener("popstate", fromUrl);
  watchDrops();
  watchKeys();
  showInfo();
  await loadTags(); // before the URL's tag is chosen
  fromUrl();
}

start();
