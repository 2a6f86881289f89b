/* fissure web UI: what every page shares (the token, API calls and their errors, messages,
   small DOM and formatting helpers). Plain JavaScript, no build step, no third-party code. */
"use strict";

window.Fissure = (function () {
  const BASE = document.body.dataset.base || "";
  const TOKEN_KEY = "fissure.token";

  // ------------------------------------------------------------------ DOM helpers
  /** el("a", {href: "/x", class: "c"}, "text", child): elements built without innerHTML. */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  // ------------------------------------------------------------------ token
  function token() {
    try { return localStorage.getItem(TOKEN_KEY) || ""; } catch (e) { return ""; }
  }

  function setToken(value) {
    try {
      if (value) localStorage.setItem(TOKEN_KEY, value); else localStorage.removeItem(TOKEN_KEY);
    } catch (e) { /* storage switched off: the token lasts as long as the page */ }
  }

  // ------------------------------------------------------------------ messages
  const messages = document.getElementById("messages");

  /** Show a message at the top; errors stay until closed or replaced, the rest fade. */
  function notify(text, kind = "info") {
    const box = el("div", {class: `message ${kind}`, role: kind === "error" ? "alert" : "status"},
      el("span", {}, text),
      el("button", {type: "button", class: "close", "aria-label": "Dismiss", onclick: () => box.remove()}, "×"));
    if (kind === "error") messages.querySelectorAll(".message.error").forEach((m) => m.remove());
    messages.append(box);
    if (kind !== "error") setTimeout(() => box.remove(), 6000);
    return box;
  }

  function clearErrors() {
    messages.querySelectorAll(".message.error").forEach((m) => m.remove());
  }

  // ------------------------------------------------------------------ API calls
  class ApiError extends Error {
    constructor(status, message, detail) {
      super(message);
      this.status = status;
      this.detail = detail;
    }
  }

  /** A person's sentence for each failure, with the server's own one line kept. */
  function explain(status, detail, retryAfter) {
    const said = detail ? ` (${detail})` : "";
    switch (status) {
      case 0: return "The fissure API cannot be reached: is `fissure api` running? Check the network and try again.";
      case 401: return "Your token is missing, wrong or expired: paste a valid one in the API token field " +
        "(`fissure token create --role annotator`)." + said;
      case 403: return "Your token's role may not do this (judging needs an annotator token, retraining an admin one)." + said;
      case 404: return "Not found." + said;
      case 413: return "That file is too large for the server." + said;
      case 415: return "That file is not an image fissure can read: use JPEG, PNG, BMP, TIFF or WebP." + said;
      case 429: return `Too many requests with this token: try again in ${retryAfter || "a few"} seconds.`;
      case 502: case 503: case 504:
        return "The model server is down or unreachable: start it (`make up` or `fissure serve`), then try again." + said;
      default: return (detail || `The server answered ${status}.`);
    }
  }

  /** A link from the API (absolute, or a path under the app) as a URL this page can fetch. */
  function resolve(url) {
    if (/^[a-z]+:/i.test(url)) return url;
    if (BASE && url.startsWith(BASE + "/")) return url;
    return BASE + url;
  }

  /** Call the API with the stored token; `as`: "json" (default), "blob" or "response". */
  async function api(path, {method = "GET", body, as = "json"} = {}) {
    const headers = new Headers();
    const t = token();
    if (t) headers.set("Authorization", `Bearer ${t}`);
    if (as === "json") headers.set("Accept", "application/json");
    let res;
    try {
      res = await fetch(resolve(path), {method, body, headers, cache: "no-store"});
    } catch (e) {
      throw new ApiError(0, explain(0));
    }
    if (!res.ok) {
      let detail = "";
      try {
        const data = await res.json();
        detail = data.error || (typeof data.detail === "string" ? data.detail : "");
      } catch (e) { /* not JSON: a proxy's page, keep the status alone */ }
      const err = new ApiError(res.status, explain(res.status, detail, res.headers.get("Retry-After")), detail);
      if (res.status === 401 || res.status === 403) markToken(false, res.status);
      throw err;
    }
    if (as === "json") return res.json();
    if (as === "blob") return res.blob();
    return res;
  }

  /** The error as a message; 401/403 also put the focus on the token field. */
  function report(err) {
    notify(err.message || String(err), "error");
    if (err.status === 401) document.getElementById("token").focus();
  }

  const blobs = new Map();
  /** An object URL for an image the API serves behind the token (an <img src> cannot send it). */
  function imageUrl(link) {
    if (!blobs.has(link)) {
      const p = api(link, {as: "blob"}).then((blob) => URL.createObjectURL(blob));
      p.catch(() => blobs.delete(link));
      blobs.set(link, p);
    }
    return blobs.get(link);
  }

  // ------------------------------------------------------------------ formatting
  const pct = (x, digits = 1) => `${(100 * x).toFixed(digits)}%`;
  const when = (iso) => {
    const d = new Date(iso);
    return isNaN(d) ? iso : d.toLocaleString(undefined, {dateStyle: "medium", timeStyle: "short"});
  };

  /** One line saying what the model answered. */
  function summary(p) {
    const out = p.output || {};
    if (p.task === "segment") {
      const n = (out.boxes || []).length;
      return `${pct(out.crack_ratio || 0, 2)} crack area, ${n} ${n === 1 ? "region" : "regions"}`;
    }
    return `${out.label} · ${pct(out.score || 0)}`;
  }

  /** The latest verdict on a prediction, or null. */
  function verdictOf(p) {
    const fb = (p.feedback || []).slice().sort((a, b) => (a.updated_at < b.updated_at ? 1 : -1));
    return fb.length ? fb[0].verdict : null;
  }

  function verdictBadge(p) {
    const v = verdictOf(p);
    return el("span", {class: `badge ${v || "none"}`}, v ? (v === "correct" ? "✓ right" : "✗ wrong") : "not judged");
  }

  /** A thumbnail <img> filled in once its bytes arrive (the overlay when there is one). */
  function thumbnail(p, size = 72) {
    const img = el("img", {class: "thumb", alt: `Image of prediction ${p.id.slice(0, 8)}`, width: size, height: size});
    const link = (p.links && (p.links.overlay || p.links.image)) || null;
    if (link) imageUrl(link).then((u) => { img.src = u; }, () => { img.alt = "image unavailable"; });
    return img;
  }

  // ------------------------------------------------------------------ keyboard
  const TEXT_INPUTS = new Set(["text", "password", "search", "email", "number", "url", "tel", "date"]);
  /** Whether keys typed now belong to a field (text, a select's type-ahead) rather than to shortcuts. */
  function isTyping(target) {
    if (!(target instanceof Element)) return false;
    if (target.closest("textarea, select, [contenteditable]")) return true;
    return target.tagName === "INPUT" && TEXT_INPUTS.has(target.type);
  }

  /** Single-key shortcuts, off while typing in a field (Ctrl/Meta+key ones work everywhere). */
  function shortcuts(map) {
    document.addEventListener("keydown", (e) => {
      const key = (e.ctrlKey || e.metaKey ? "Ctrl+" : "") + (e.key.length === 1 ? e.key.toLowerCase() : e.key);
      const typing = isTyping(e.target);
      if (e.altKey || !(key in map)) return;
      if (typing && !key.startsWith("Ctrl+")) return;
      if (map[key](e) !== false) e.preventDefault();
    });
  }

  // ------------------------------------------------------------------ the token field
  const tokenInput = document.getElementById("token");
  const tokenState = document.getElementById("token-state");

  function markToken(ok, status) {
    tokenState.className = "token-state " + (ok === true ? "ok" : ok === false ? "bad" : "");
    if (ok === true) tokenState.textContent = "✓ accepted";
    else if (ok === false) tokenState.textContent = status === 403 ? "role too low" : "✗ refused";
    else tokenState.textContent = token() ? "saved" : "none set";
  }

  tokenInput.value = token();
  markToken(null);
  document.getElementById("token-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    setToken(tokenInput.value.trim());
    tokenInput.value = token();
    if (!token()) { markToken(null); return; }
    try {
      await api("/predictions?page_size=1");
      markToken(true);
      clearErrors();
      notify("Token saved in this browser.", "ok");
      document.dispatchEvent(new CustomEvent("fissure:token"));
    } catch (err) {
      report(err);
    }
  });
  document.getElementById("token-clear").addEventListener("click", () => {
    setToken("");
    tokenInput.value = "";
    markToken(null);
    tokenInput.focus();
  });

  return {BASE, el, api, ApiError, report, notify, clearErrors, imageUrl, resolve, pct, when, summary,
          verdictOf, verdictBadge, thumbnail, shortcuts, isTyping, token};
})();
