/* The review queue: GET /review-queue, least certain first; each item opens in queue mode, where
   saving a verdict moves on to the next one. */
"use strict";

(function () {
  const F = window.Fissure;
  const {el} = F;
  const $ = (id) => document.getElementById(id);
  const model = new URLSearchParams(location.search).get("model") || "";

  const open = (p) => `${F.BASE}/p/${encodeURIComponent(p.id)}?queue=${encodeURIComponent(model)}`;

  async function load() {
    $("summary").textContent = "Loading…";
    let data;
    try {
      data = await F.api(`/review-queue?limit=50${model ? `&model=${encodeURIComponent(model)}` : ""}`);
    } catch (err) {
      $("summary").textContent = "The queue could not be loaded.";
      F.report(err);
      return;
    }
    const items = data.items;
    $("summary").textContent = items.length
      ? `${items.length} waiting${items.length === 50 ? " (the first 50 shown)" : ""}.`
      : "Nothing to review: every prediction has a verdict.";
    $("start").hidden = items.length === 0;
    if (items.length) $("start").href = open(items[0]);
    $("queue").replaceChildren(...items.map((p) => el("li", {class: "card result"},
      F.thumbnail(p, 72),
      el("div", {class: "result-text"},
        el("a", {href: open(p), class: "name"}, F.summary(p)),
        el("span", {class: "muted"}, `${p.model_name} v${p.model_version} · uncertainty ${p.uncertainty.toFixed(3)} · ${F.when(p.created_at)}`)))));
  }

  load();
  document.addEventListener("fissure:token", load);
})();
