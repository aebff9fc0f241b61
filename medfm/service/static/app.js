// The similar-case search page: a study or a finding in, the most similar indexed cases out.
// Every request carries the access token in the Authorization header (kept in sessionStorage,
// so it goes when the tab closes); thumbnails are fetched the same way and shown as blob URLs,
// since an <img src> cannot send a header. Text from the server is set with textContent only.
"use strict";

const TOKEN_KEY = "medfm.token";
const $ = (selector) => document.querySelector(selector);
let thumbnailUrls = []; // object URLs of the shown thumbnails, revoked when results are replaced

class AuthError extends Error {}

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (token()) headers.set("Authorization", `Bearer ${token()}`);
  const response = await fetch(path, { ...options, headers, cache: "no-store" });
  if (response.status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    askForToken(token() ? "That token was refused." : "");
    throw new AuthError("access token needed");
  }
  if (!response.ok) throw new Error(await errorText(response));
  return response;
}

async function errorText(response) {
  try {
    const body = await response.json();
    if (typeof body.detail === "string") return body.detail;
    if (Array.isArray(body.detail)) return body.detail.map((d) => `${d.loc.at(-1)}: ${d.msg}`).join("; ");
  } catch {
    // not JSON: fall through to the status text
  }
  return `${response.status} ${response.statusText}`;
}

function askForToken(message) {
  $("#search").hidden = true;
  $("#forget-token").hidden = true;
  $("#token-form").hidden = false;
  $("#token-error").textContent = message || "";
  $("#token").focus();
}

async function start() {
  let version;
  try {
    version = await (await api("/api/version")).json();
  } catch (err) {
    if (!(err instanceof AuthError)) showStatus(err.message, true);
    return;
  }
  $("#token-form").hidden = true;
  $("#search").hidden = false;
  $("#forget-token").hidden = !token();
  $("#about").textContent = `medfm ${version.medfm} · ${version.cases} cases · model ${version.model}`;
  fillSelect($("#file-modality"), version.query_modalities.filter((m) => m !== "report"));
  fillSelect($("#filter-modality"), version.case_modalities);
}

function fillSelect(select, values) {
  select.length = 1; // keep the first, empty choice
  for (const value of values) select.add(new Option(value.toUpperCase(), value));
}

function showStatus(text, isError = false) {
  $("#status").textContent = text;
  $("#status").classList.toggle("error", isError);
}

async function search(form, what) {
  form.set("k", $("#k").value || "12");
  if ($("#filter-modality").value) form.set("filter_modality", $("#filter-modality").value);
  showStatus(`Searching with ${what}…`);
  try {
    const body = await (await api("/api/search", { method: "POST", body: form })).json();
    showResults(body, what);
  } catch (err) {
    if (!(err instanceof AuthError)) showStatus(err.message, true);
  }
}

function searchFile(file) {
  if (!file) return;
  const form = new FormData();
  form.set("file", file);
  if ($("#file-modality").value) form.set("modality", $("#file-modality").value);
  search(form, file.name);
}

function searchText(text) {
  if (!text.trim()) return;
  const form = new FormData();
  form.set("text", text);
  search(form, `“${text}”`);
}

function showResults(body, what) {
  for (const url of thumbnailUrls) URL.revokeObjectURL(url);
  thumbnailUrls = [];
  const list = $("#results");
  list.replaceChildren(...body.results.map(resultCard));
  const count = body.results.length;
  showStatus(`${count} similar case${count === 1 ? "" : "s"} for ${what} (${body.query.modality} query).`);
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function resultCard(hit) {
  const item = element("li");
  const card = element("button", "card");
  card.type = "button";
  card.dataset.caseId = hit.id;
  card.setAttribute("aria-label", `Open case ${hit.study_id}, ${hit.modality}, similarity ${hit.score.toFixed(3)}`);
  const image = element("img", "thumb");
  image.alt = `${hit.modality} thumbnail`;
  if (hit.thumbnail_url) showThumbnail(image, hit.thumbnail_url);
  else image.classList.add("missing");
  const head = element("div", "card-head");
  head.append(element("span", "modality", hit.modality), element("span", "score", hit.score.toFixed(3)));
  head.lastChild.title = "cosine similarity";
  card.append(image, head, element("span", "where", [hit.site, hit.device, hit.date].filter(Boolean).join(" · ")),
    chips(hit.finding_labels), element("p", "excerpt", hit.excerpt));
  card.addEventListener("click", () => openCase(hit.id));
  item.append(card);
  return item;
}

function chips(labels) {
  const list = element("ul", "chips");
  for (const label of labels) list.append(element("li", "", label.replaceAll("_", " ")));
  return list;
}

async function showThumbnail(image, url) {
  try {
    const blob = await (await api(url)).blob();
    const objectUrl = URL.createObjectURL(blob);
    thumbnailUrls.push(objectUrl);
    image.src = objectUrl;
  } catch {
    image.classList.add("missing");
  }
}

async function openCase(id) {
  let found;
  try {
    found = await (await api(`/api/cases/${encodeURIComponent(id)}`)).json();
  } catch (err) {
    if (!(err instanceof AuthError)) showStatus(err.message, true);
    return;
  }
  $("#case-title").textContent = `${found.modality.toUpperCase()} · study ${found.study_id}`;
  const meta = $("#case-meta");
  meta.replaceChildren();
  for (const [name, value] of [["Site", found.site], ["Device", found.device], ["Date", found.date]]) {
    meta.append(element("dt", "", name), element("dd", "", value || "—"));
  }
  $("#case-labels").replaceChildren(...chips(found.finding_labels).children);
  $("#case-report").textContent = found.report || "No report.";
  const image = $("#case-image");
  image.removeAttribute("src");
  image.alt = `${found.modality} image of study ${found.study_id}`;
  if (found.thumbnail_url) showThumbnail(image, found.thumbnail_url);
  $("#case").showModal();
}

function wireDropZone() {
  const zone = $("#drop");
  const input = $("#file");
  zone.addEventListener("click", (event) => {
    if (event.target.tagName !== "LABEL") input.click();
  });
  zone.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      input.click();
    }
  });
  for (const name of ["dragenter", "dragover"]) {
    zone.addEventListener(name, (event) => {
      event.preventDefault();
      zone.classList.add("over");
    });
  }
  for (const name of ["dragleave", "drop"]) zone.addEventListener(name, () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    searchFile(event.dataTransfer.files[0]);
  });
  input.addEventListener("change", () => {
    searchFile(input.files[0]);
    input.value = ""; // choosing the same file again searches again
  });
}

document.addEventListener("DOMContentLoaded", () => {
  $("#token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("#token").value.trim());
    $("#token").value = "";
    start();
  });
  $("#forget-token").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    $("#results").replaceChildren();
    showStatus("");
    askForToken("");
  });
  $("#text-form").addEventListener("submit", (event) => {
    event.preventDefault();
    searchText($("#text").value);
  });
  $("#case-close").addEventListener("click", () => $("#case").close());
  wireDropZone();
  start();
});
