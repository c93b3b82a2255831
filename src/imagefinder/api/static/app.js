// ImageFinder's page: search by dropping, pasting, choosing or linking an image; browse the
// collection; look at one image and its nearest neighbours. It uses only the public JSON API.
"use strict";

const $ = (id) => document.getElementById(id);
const PAGE_SIZE = 48;

// The API's one error shape, {"error": {"code", "message"}}, becomes an Error with that message.
async function api(path, options = {}) {
  const response = await fetch(path, options);
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    const message = body && body.error ? body.error.message : `HTTP ${response.status}`;
    throw new Error(message);
  }
  return body;
}

// Ids may contain slashes (folder paths): encode each segment, keep the slashes.
const imagePath = (id) => "/images/" + encodeURIComponent(id).replace(/%2F/g, "/");

function showOnly(view) {
  for (const name of ["search", "browse", "detail"]) $("view-" + name).hidden = name !== view;
}

function setStatus(text, busy) {
  $("status").textContent = text;
  $("results").setAttribute("aria-busy", busy ? "true" : "false");
}

function showError(message) {
  const box = $("error");
  box.textContent = message || "";
  box.hidden = !message;
}

function card(result, withScore) {
  const item = document.createElement("li");
  item.className = "card";
  item.dataset.id = result.id;
  const link = document.createElement("a");
  link.href = "#/image/" + encodeURIComponent(result.id);
  const image = document.createElement("img");
  image.src = result.thumbnail_url;
  image.alt = "Image " + result.id;
  image.loading = "lazy";
  image.addEventListener("error", () => { if (image.src !== location.origin + result.file_url) image.src = result.file_url; }, { once: true });
  link.append(image);
  const id = document.createElement("div");
  id.className = "id";
  id.textContent = result.id;
  item.append(link, id);
  if (withScore) {
    item.dataset.score = String(result.score);
    const score = document.createElement("div");
    score.className = "score";
    const percent = Math.max(0, Math.min(100, Math.round(result.score * 100)));
    score.textContent = `${result.score.toFixed(3)} (${percent}%)`;
    if (result.is_copy) {
      const badge = document.createElement("span");
      badge.className = "copy";
      badge.textContent = "copy";
      badge.title = "Scores above this collection's copy threshold: very likely the same photo";
      score.append(badge);
    }
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.setAttribute("role", "meter");
    bar.setAttribute("aria-valuemin", "0");
    bar.setAttribute("aria-valuemax", "100");
    bar.setAttribute("aria-valuenow", String(percent));
    bar.setAttribute("aria-label", "similarity");
    const fill = document.createElement("span");
    fill.style.width = percent + "%";
    bar.append(fill);
    const again = document.createElement("button");
    again.type = "button";
    again.className = "again";
    again.textContent = "Search from this";
    again.setAttribute("aria-label", "Search for images like " + result.id);
    again.addEventListener("click", () => searchById(result.id));
    item.append(score, bar, again);
  }
  return item;
}

function render(results, list) {
  list.replaceChildren(...results.map((result) => card(result, true)));
}

function showQuery(src, caption) {
  $("query").hidden = false;
  $("query-image").src = src;
  $("query-caption").textContent = caption;
}

async function runSearch(request) {
  showOnly("search");
  showError("");
  setStatus("Searching…", true);
  try {
    const k = $("k-input").value;
    const body = await api(`/search?k=${encodeURIComponent(k)}`, request);
    render(body.results, $("results"));
    $("results-title").hidden = body.results.length === 0;
    $("empty").hidden = body.results.length !== 0;
    setStatus(`${body.results.length} results in ${Math.round(body.took_ms)} ms`, false);
  } catch (error) {
    $("results").replaceChildren();
    $("results-title").hidden = true;
    $("empty").hidden = true;
    setStatus("", false);
    showError(error.message);
  }
}

function searchByFile(file) {
  if (!file) return;
  showQuery(URL.createObjectURL(file), file.name || "pasted image");
  const form = new FormData();
  form.append("file", file, file.name || "pasted-image");
  return runSearch({ method: "POST", body: form });
}

function searchByUrl(url) {
  showQuery(url, url);
  return runSearch({ method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ url }) });
}

function searchByText(text) {
  $("query").hidden = true;
  return runSearch({ method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ text }) });
}

function searchById(id) {
  if (location.hash !== "#/") history.pushState(null, "", "#/");
  showQuery(imagePath(id) + "/thumbnail", "More like " + id);
  return runSearch({ method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ id }) });
}

async function showBrowse(page) {
  showOnly("browse");
  const offset = page * PAGE_SIZE;
  try {
    const body = await api(`/images?offset=${offset}&limit=${PAGE_SIZE}`);
    $("browse").replaceChildren(...body.images.map((image) => card(image, false)));
    const last = Math.max(0, Math.ceil(body.total / PAGE_SIZE) - 1);
    $("browse-info").textContent = `${body.total} images, page ${page + 1} of ${last + 1}`;
    $("prev-page").hidden = page === 0;
    $("prev-page").href = `#/browse/${page - 1}`;
    $("next-page").hidden = page >= last;
    $("next-page").href = `#/browse/${page + 1}`;
  } catch (error) {
    $("browse-info").textContent = error.message;
  }
}

async function showDetail(id) {
  showOnly("detail");
  $("detail-title").textContent = id;
  $("neighbours").replaceChildren();
  try {
    const record = await api(imagePath(id));
    const image = $("detail-image");
    image.src = imagePath(id) + "/thumbnail";
    image.alt = "Image " + id;
    $("detail-file").href = imagePath(id) + "/file";
    const rows = [];
    for (const [key, value] of Object.entries(record.payload)) {
      const term = document.createElement("dt");
      term.textContent = key;
      const detail = document.createElement("dd");
      detail.textContent = typeof value === "object" ? JSON.stringify(value) : String(value);
      rows.push(term, detail);
    }
    $("detail-meta").replaceChildren(...rows);
    const near = await api("/search?k=12", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ id }),
    });
    render(near.results, $("neighbours"));
  } catch (error) {
    $("detail-meta").replaceChildren(Object.assign(document.createElement("dd"), { textContent: error.message }));
  }
}

function route() {
  const hash = location.hash || "#/";
  if (hash.startsWith("#/browse")) return showBrowse(Number(hash.split("/")[2] || 0) || 0);
  if (hash.startsWith("#/image/")) return showDetail(decodeURIComponent(hash.slice("#/image/".length)));
  showOnly("search");
}

async function loadInfo() {
  try {
    const health = await api("/health");
    const model = health.model ? `${health.model.name} v${health.model.version}` : "loading…";
    $("collection-info").textContent = `${health.images ?? "?"} images · ${model}`;
    $("text-row").hidden = !health.text_search; // CLIP-family models search by a description
  } catch (error) {
    $("collection-info").textContent = error.message;
  }
}

function wire() {
  const zone = $("drop-zone");
  $("file-input").addEventListener("change", (event) => searchByFile(event.target.files[0]));
  zone.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") { event.preventDefault(); $("file-input").click(); }
  });
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("dragging"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    const file = event.dataTransfer.files[0];
    if (file) return searchByFile(file);
    const url = event.dataTransfer.getData("text/uri-list") || event.dataTransfer.getData("text/plain");
    if (url) return searchByUrl(url.trim());
  });
  $("query-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const url = $("url-input").value.trim();
    if (url) searchByUrl(url);
  });
  $("text-button").addEventListener("click", () => {
    const text = $("text-input").value.trim();
    if (text) searchByText(text);
  });
  $("text-input").addEventListener("keydown", (event) => {
    if (event.key === "Enter") { event.preventDefault(); $("text-button").click(); }
  });
  document.addEventListener("paste", (event) => {
    if (["url-input", "text-input"].includes(document.activeElement.id)) return; // a normal paste
    for (const item of event.clipboardData.items) {
      if (item.kind === "file" && item.type.startsWith("image/")) {
        event.preventDefault();
        return searchByFile(item.getAsFile());
      }
    }
    const text = event.clipboardData.getData("text").trim();
    if (/^https?:\/\//.test(text)) { $("url-input").value = text; searchByUrl(text); }
  });
  window.addEventListener("hashchange", route);
}

wire();
loadInfo();
route();
