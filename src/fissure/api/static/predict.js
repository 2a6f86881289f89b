/* The predict page: choose, drop or paste images, send each to POST /predict, list the answers.
   One image opens its prediction page; several are listed with links. */
"use strict";

(function () {
  const F = window.Fissure;
  const {el} = F;
  const form = document.getElementById("upload-form");
  const input = document.getElementById("file");
  const zone = document.getElementById("dropzone");
  const list = document.getElementById("results");
  const empty = document.getElementById("results-empty");

  // what a failed card says (the message at the top says the rest)
  const SHORT = {0: "API unreachable", 401: "token refused", 403: "role too low", 413: "too large",
                 415: "not an image", 429: "rate limited", 503: "model server down"};

  async function predictOne(file) {
    const body = new FormData();
    body.append("file", file, file.name || "pasted-image");
    body.append("model", form.model.value);
    if (form.explain.checked) body.append("explain", "true");
    return F.api("/predict", {method: "POST", body});
  }

  function pendingCard(file) {
    const preview = el("img", {class: "thumb", alt: "", width: 72, height: 72});
    if (file.type.startsWith("image/")) preview.src = URL.createObjectURL(file);
    const status = el("span", {class: "muted"}, "Predicting…");
    const card = el("li", {class: "card result", "aria-busy": "true"}, preview,
      el("div", {class: "result-text"}, el("strong", {class: "name"}, file.name || "pasted image"), status));
    list.prepend(card);
    empty.hidden = true;
    return {card, status};
  }

  async function upload(files) {
    files = Array.from(files);
    if (!files.length) return;
    F.clearErrors();
    let done = null;
    for (const file of files) {
      const {card, status} = pendingCard(file);
      try {
        const p = await predictOne(file);
        done = p;
        card.removeAttribute("aria-busy");
        status.replaceWith(el("span", {class: "result-line"},
          el("a", {href: `${F.BASE}/p/${encodeURIComponent(p.id)}`}, F.summary(p)),
          el("span", {class: "muted"}, `${p.model_name} v${p.model_version} · ${Math.round(p.latency_ms)} ms`)));
      } catch (err) {
        card.removeAttribute("aria-busy");
        card.classList.add("failed");
        status.replaceWith(el("span", {class: "error-text"}, SHORT[err.status] || `not predicted (${err.status})`));
        F.report(err);
        if (err.status === 0 || err.status === 401 || err.status === 403 || err.status === 503) break;
      }
    }
    input.value = "";
    // one image straight to its page, where it can be judged
    if (files.length === 1 && done) location.assign(`${F.BASE}/p/${encodeURIComponent(done.id)}`);
  }

  input.addEventListener("change", () => upload(input.files));
  form.addEventListener("submit", (e) => { e.preventDefault(); upload(input.files); });

  for (const type of ["dragenter", "dragover"]) {
    zone.addEventListener(type, (e) => { e.preventDefault(); zone.classList.add("over"); });
  }
  for (const type of ["dragleave", "drop"]) {
    zone.addEventListener(type, (e) => { e.preventDefault(); zone.classList.remove("over"); });
  }
  zone.addEventListener("drop", (e) => upload(e.dataTransfer.files));
  document.addEventListener("paste", (e) => {
    const files = Array.from(e.clipboardData.files || []);
    if (files.length) { e.preventDefault(); upload(files); }
  });
})();
