/* History: GET /predictions with the page's filters (the form is a plain GET form, so a filtered
   view is a link), thumbnails, which model version answered, the verdict; and the export. */
"use strict";

(function () {
  const F = window.Fissure;
  const {el} = F;
  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);
  const PAGE_SIZE = 20;
  const page = Math.max(1, parseInt(params.get("page") || "1", 10) || 1);

  /** A date field (local calendar day) as the UTC instant the API filters on. */
  function dayStart(value, plusDays = 0) {
    const d = new Date(`${value}T00:00:00`);
    if (isNaN(d)) return null;
    d.setDate(d.getDate() + plusDays);
    return d.toISOString();
  }

  function query() {
    const q = new URLSearchParams({page: String(page), page_size: String(PAGE_SIZE)});
    for (const key of ["model", "version", "verdict"]) if (params.get(key)) q.set(key, params.get(key));
    if (params.get("since") && dayStart(params.get("since"))) q.set("since", dayStart(params.get("since")));
    if (params.get("until") && dayStart(params.get("until"))) q.set("until", dayStart(params.get("until"), 1));  // the whole day
    return q;
  }

  function pageLink(n) {
    const q = new URLSearchParams(params);
    q.set("page", String(n));
    return `${F.BASE}/history?${q}`;
  }

  function row(p) {
    const href = `${F.BASE}/p/${encodeURIComponent(p.id)}`;
    return el("tr", {},
      el("td", {}, el("a", {href, tabindex: -1, "aria-hidden": "true"}, F.thumbnail(p, 56))),
      el("td", {}, el("time", {datetime: p.created_at}, F.when(p.created_at))),
      el("td", {}, p.model_name),
      el("td", {}, el("span", {class: "version"}, `v${p.model_version}`)),
      el("td", {}, el("a", {href}, F.summary(p)), p.flag ? el("span", {class: "badge flag"}, p.flag) : ""),
      el("td", {class: "num"}, p.uncertainty.toFixed(3)),
      el("td", {}, F.verdictBadge(p)));
  }

  async function load() {
    $("summary").textContent = "Loading…";
    let data;
    try {
      data = await F.api(`/predictions?${query()}`);
    } catch (err) {
      $("summary").textContent = "The history could not be loaded.";
      F.report(err);
      return;
    }
    const pages = Math.max(1, Math.ceil(data.total / data.page_size));
    $("summary").textContent = data.total
      ? `${data.total} prediction${data.total === 1 ? "" : "s"}, newest first.`
      : "No prediction matches these filters.";
    $("rows").replaceChildren(...data.items.map(row));
    $("table").hidden = data.items.length === 0;
    $("page-info").textContent = data.total ? `Page ${data.page} of ${pages}` : "";
    $("prev").hidden = data.page <= 1;
    $("prev").href = pageLink(data.page - 1);
    $("next-page").hidden = data.page >= pages;
    $("next-page").href = pageLink(data.page + 1);
  }

  $("export").addEventListener("click", async () => {
    const button = $("export");
    button.disabled = true;
    try {
      const res = await F.api("/feedback/export", {as: "response"});
      const name = (/filename="?([^";]+)"?/.exec(res.headers.get("Content-Disposition") || "") || [])[1]
        || "fissure-feedback.zip";
      const url = URL.createObjectURL(await res.blob());
      const a = el("a", {href: url, download: name});
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    } catch (err) {
      F.report(err);
    } finally {
      button.disabled = false;
    }
  });

  load();
  document.addEventListener("fissure:token", load);
})();
