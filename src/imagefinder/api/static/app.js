// ImageFinder's page: search by dropping, pasting, choosing or linking an image; browse the
// collection; look at one image and its nearest neighbours; review the groups of duplicates and
// remove the copies. It uses only the public JSON API.
"use strict";

const $ = (id) => document.getElementById(id);
const PAGE_SIZE = 48;
const GROUPS_PER_PAGE = 10;
const KEY_ITEM = "imagefinder-api-key";

// The API's one error shape, {"error": {"code", "message"}}, becomes an Error with that message
// (and the HTTP status, so a 401 can ask for a key).
async function api(path, options = {}) {
  const key = sessionStorage.getItem(KEY_ITEM);
  const headers = Object.assign({}, options.headers || {}, key ? { "X-API-Key": key } : {});
  const response = await fetch(path, Object.assign({}, options, { headers }));
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    const message = body && body.error ? body.error.message : `HTTP ${response.status}`;
    throw Object.assign(new Error(message), { status: response.status });
  }
  return body;
}

// A write the server refuses for want of an API key asks for one once, then tries again.
async function withKey(call) {
  try {
    return await call();
  } catch (error) {
    if (error.status !== 401) throw error;
    const key = window.prompt("This server needs an API key:");
    if (!key) throw error;
    sessionStorage.setItem(KEY_ITEM, key);
    return call();
  }
}

// Ids may contain slashes (folder paths): encode each segment, keep the slashes.
const imagePath = (id) => "/images/" + encodeURIComponent(id).replace(/%2F/g, "/");

function showOnly(view) {
  for (const name of ["search", "browse", "detail", "duplicates"]) $("view-" + name).hidden = name !== view;
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
  $("try").hidden = true;
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

function memberCard(member) {
  const item = card(member, false);
  item.classList.toggle("keeper", member.keeper);
  const score = document.createElement("div");
  score.className = "score";
  score.textContent = member.keeper ? "" : `${member.score.toFixed(3)} with the keeper`;
  if (member.keeper) {
    const badge = document.createElement("span");
    badge.className = "keep";
    badge.textContent = "keep";
    score.append(badge);
  }
  const size = document.createElement("div");
  size.className = "muted";
  size.textContent = [member.width && member.height ? `${member.width}×${member.height}` : "",
    member.bytes ? `${Math.round(member.bytes / 1024)} KB` : ""].filter(Boolean).join(" · ");
  item.append(score, size);
  return item;
}

function groupItem(group, page) {
  const item = document.createElement("li");
  item.className = "group";
  item.dataset.keeper = group.keeper;
  const others = group.members.filter((member) => !member.keeper);
  const head = document.createElement("div");
  head.className = "row";
  const title = document.createElement("strong");
  title.textContent = `${group.members.length} images`;
  const remove = document.createElement("button");
  remove.type = "button";
  remove.className = "remove";
  remove.textContent = `Remove the ${others.length} other${others.length === 1 ? "" : "s"}`;
  remove.setAttribute("aria-label", `Remove the copies of ${group.keeper}, keeping it`);
  remove.addEventListener("click", () => removeOthers(others.map((member) => member.id), group.keeper, page));
  head.append(title, remove);
  const members = document.createElement("ol");
  members.className = "grid";
  members.replaceChildren(...group.members.map(memberCard));
  item.append(head, members);
  return item;
}

function duplicatesQuery(page) {
  const params = new URLSearchParams({ keep: $("keep-input").value, offset: String(page * GROUPS_PER_PAGE),
    limit: String(GROUPS_PER_PAGE) });
  const threshold = $("threshold-input").value.trim();
  if (threshold) params.set("threshold", threshold);
  return "/duplicates?" + params.toString();
}

async function showDuplicates(page) {
  showOnly("duplicates");
  $("duplicates-error").hidden = true;
  $("duplicates-info").textContent = "Looking for copies…";
  $("duplicate-groups").setAttribute("aria-busy", "true");
  try {
    const body = await withKey(() => api(duplicatesQuery(page)));
    const summary = body.summary;
    $("duplicate-groups").replaceChildren(...body.groups.map((group) => groupItem(group, page)));
    const last = Math.max(0, Math.ceil(body.total / GROUPS_PER_PAGE) - 1);
    $("duplicates-info").textContent = body.total === 0 ? `No copies found (threshold ${summary.threshold}).` :
      `${summary.groups} groups, ${summary.images_in_groups} images; removing all but the keepers frees ` +
      `${summary.removable_images} images. Threshold ${summary.threshold} (${summary.threshold_source}). ` +
      `Page ${page + 1} of ${last + 1}.`;
    $("prev-groups").hidden = page === 0;
    $("prev-groups").href = `#/duplicates/${page - 1}`;
    $("next-groups").hidden = page >= last;
    $("next-groups").href = `#/duplicates/${page + 1}`;
  } catch (error) {
    $("duplicate-groups").replaceChildren();
    $("duplicates-info").textContent = "";
    $("duplicates-error").textContent = error.message;
    $("duplicates-error").hidden = false;
  } finally {
    $("duplicate-groups").setAttribute("aria-busy", "false");
  }
}

// Nothing is removed without this explicit, confirmed action.
async function removeOthers(ids, keeper, page) {
  if (!window.confirm(`Remove ${ids.length} image(s) from the index, keeping ${keeper}?`)) return;
  try {
    for (const id of ids) await withKey(() => api(imagePath(id), { method: "DELETE" }));
    await showDuplicates(page);
    $("duplicates-info").textContent = `Removed ${ids.length} image(s). ` + $("duplicates-info").textContent;
    loadInfo();
  } catch (error) {
    $("duplicates-error").textContent = error.message;
    $("duplicates-error").hidden = false;
  }
}

function route() {
  const hash = location.hash || "#/";
  if (hash.startsWith("#/duplicates")) return showDuplicates(Number(hash.split("/")[2] || 0) || 0);
  if (hash.startsWith("#/browse")) return showBrowse(Number(hash.split("/")[2] || 0) || 0);
  if (hash.startsWith("#/image/")) return showDetail(decodeURIComponent(hash.slice("#/image/".length)));
  showOnly("search");
}

// Before the first search: a few images of the collection, spread over it, to try with one click.
const TRY_COUNT = 4;

async function offerTries() {
  try {
    const body = await api("/images?offset=0&limit=100");
    if (body.images.length === 0 || !$("query").hidden) return;
    const step = Math.max(1, Math.floor(body.images.length / TRY_COUNT));
    const picked = body.images.filter((_, index) => index % step === 0).slice(0, TRY_COUNT);
    $("try-list").replaceChildren(...picked.map((image) => {
      const item = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.setAttribute("aria-label", `Search for images like ${image.id}`);
      const thumbnail = document.createElement("img");
      thumbnail.src = imagePath(image.id) + "/thumbnail";
      thumbnail.alt = "";
      button.append(thumbnail);
      button.addEventListener("click", () => searchById(image.id));
      item.append(button);
      return item;
    }));
    $("try").hidden = false;
  } catch (error) {
    // Reads may need an API key: then there is simply nothing to offer.
  }
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
  $("duplicates-form").addEventListener("submit", (event) => {
    event.preventDefault();
    if (location.hash === "#/duplicates") showDuplicates(0); else location.hash = "#/duplicates";
  });
  window.addEventListener("hashchange", route);
}

wire();
loadInfo();
route();
offerTries();
