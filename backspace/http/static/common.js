// Shared helpers. Everything shown goes through textContent: the agent's output is untrusted.
"use strict";

const KEY_STORAGE = "backspace.apiKey";

function apiKey() {
  try { return sessionStorage.getItem(KEY_STORAGE) || ""; } catch { return ""; }
}

function setApiKey(value) {
  try {
    if (value) sessionStorage.setItem(KEY_STORAGE, value);
    else sessionStorage.removeItem(KEY_STORAGE);
  } catch { /* storage disabled: the key is used for this request only */ }
}

function authHeaders(extra) {
  const headers = Object.assign({}, extra || {});
  const key = apiKey();
  if (key) headers.Authorization = "Bearer " + key;
  return headers;
}

function apiFetch(path, options) {
  const opts = Object.assign({}, options || {});
  opts.headers = authHeaders(opts.headers);
  return fetch(path, opts);
}

// The `detail` of a JSON error, or the status line.
async function errorDetail(response) {
  try {
    const body = await response.json();
    if (body && typeof body.detail === "string") return body.detail;
  } catch { /* not JSON */ }
  return "HTTP " + response.status + " " + response.statusText;
}

// el("a", {href: url, class: "x"}, "text", child): attributes are set as attributes, children
// are text nodes or elements; nothing is ever parsed as HTML.
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// Only http(s) links are made clickable (a `javascript:` URL from a run never is).
function safeUrl(url) {
  if (typeof url !== "string" || !url) return null;
  try {
    const parsed = new URL(String(url), location.href);
    return parsed.protocol === "http:" || parsed.protocol === "https:" ? parsed.href : null;
  } catch { return null; }
}

function formatDuration(ms) {
  if (ms === null || ms === undefined) return "–";
  const s = ms / 1000;
  if (s < 60) return s.toFixed(1) + " s";
  const m = Math.floor(s / 60);
  return m + " min " + Math.round(s - m * 60) + " s";
}

function formatCost(usd) {
  if (usd === null || usd === undefined) return "–";
  return "$" + Number(usd).toFixed(usd < 1 ? 4 : 2);
}

function formatTime(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  return isNaN(date) ? String(iso) : date.toLocaleString();
}

function shortRepo(url) {
  const text = String(url || "");
  const match = text.match(/^https?:\/\/[^/]+\/(.+?)(?:\.git)?\/?$/);
  return match ? match[1] : text;
}
