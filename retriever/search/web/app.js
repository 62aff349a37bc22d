// The retriever page. Every search goes to /api/search; results are built with textContent,
// never innerHTML, because file names, captions and passages are the user's data.
"use strict";

const $ = (id) => document.getElementById(id);
let lastItem = null; // the item a "more like this" search started from, shown highlighted

function controls(extra) {
  const values = new URLSearchParams(extra);
  values.set("target", $("target").value);
  values.set("k", $("k").value || "20");
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
    setStatus(`${body.results.length} results for ${label}`);
  } catch (error) {
    setStatus(error.message, true);
  }
}

function searchText(text) {
  const query = controls({ text });
  history.replaceState(null, "", `?${query}`);
  run(`“${text}”`, fetch(`/api/search?${query}`), null);
}

function searchItem(result) {
  const query = controls({ item: result.id });
  history.replaceState(null, "", `?${query}`);
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
  return result.kind === "text" ? `${name} #${result.position}` : name;
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = text;
  return node;
}

function card(result) {
  const article = element("article", `result ${result.kind}`);
  article.dataset.id = result.id;
  article.dataset.path = result.path;
  if (result.id === lastItem) article.classList.add("query");
  const more = element("button", "more");
  more.type = "button";
  more.title = "Find more like this";
  if (result.kind === "image") {
    const img = element("img");
    img.src = result.thumbnail;
    img.alt = result.caption || where(result);
    img.loading = "lazy";
    more.append(img);
  } else {
    more.append(element("p", "passage", result.passage));
  }
  more.addEventListener("click", () => searchItem(result));
  const meta = element("div", "meta");
  meta.append(element("span", "score", result.score.toFixed(3)));
  const link = element("a", "where", where(result));
  link.href = result.file;
  link.target = "_blank";
  link.rel = "noopener";
  link.title = result.path;
  meta.append(link);
  article.append(more, meta);
  if (result.caption) article.append(element("p", "caption", result.caption));
  return article;
}

function show(results) {
  $("results").replaceChildren(...results.map(card));
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

function start() {
  $("search").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = $("text").value.trim();
    if (text) searchText(text);
  });
  $("image").addEventListener("change", () => {
    if ($("image").files[0]) searchImage($("image").files[0]);
    $("image").value = ""; // the same file chosen again searches again
  });
  watchDrops();
  showInfo();
  const initial = new URLSearchParams(location.search); // a reloaded or shared search
  if (initial.get("target")) $("target").value = initial.get("target");
  if (initial.get("k")) $("k").value = initial.get("k");
  if (initial.get("text")) {
    $("text").value = initial.get("text");
    searchText(initial.get("text"));
  } else if (initial.get("item")) {
    searchItem({ id: Number(initial.get("item")), path: `item ${initial.get("item")}`, kind: "image" });
  }
}

start();
