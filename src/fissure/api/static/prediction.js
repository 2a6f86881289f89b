/* One prediction: the image with its layers (mask, boxes, heatmap), the answer, and the feedback
   form: right or wrong, the right label, or the mask corrected with a brush and an eraser.

   The mask is edited on a canvas at the image's own size, so the corrected mask is pixel for
   pixel the image's: it is sent as an 8-bit grayscale PNG of 0 and 255 (encoded here, since a
   canvas only exports RGBA), the same form as the segmenter's own mask_png. */
"use strict";

(function () {
  const F = window.Fissure;
  const {el} = F;
  const $ = (id) => document.getElementById(id);
  const id = $("pid").dataset.id;
  const fromQueue = new URLSearchParams(location.search).get("queue");  // null unless opened from the queue

  const stage = $("stage");
  const photo = $("photo");
  const maskCanvas = $("mask");
  const heatCanvas = $("heat");
  const boxesSvg = $("boxes");
  const cursor = $("brush-cursor");
  const ctx = maskCanvas.getContext("2d", {willReadFrequently: true});
  const MASK_COLOR = [255, 59, 48];

  let P = null;          // the prediction
  let W = 0, H = 0;      // the image's size
  let verdict = null;    // "correct" | "wrong" | null
  let tool = "brush";
  let modelMask = null;  // ImageData of the model's mask, as drawn
  let edited = false;
  let undo = [];
  let undoDepth = 20;

  // ------------------------------------------------------------------ loading
  async function load() {
    try {
      P = await F.api(`/predictions/${encodeURIComponent(id)}`);
    } catch (err) {
      $("loading").textContent = err.status === 404 ? "There is no prediction with this id."
        : "The prediction could not be loaded.";
      F.report(err);
      return;
    }
    [H, W] = P.image_size;
    for (const c of [maskCanvas, heatCanvas]) { c.width = W; c.height = H; }
    boxesSvg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    boxesSvg.setAttribute("preserveAspectRatio", "none");
    // about 200 MB of undo snapshots at most, whatever the image's size
    undoDepth = Math.max(1, Math.min(20, Math.floor(200e6 / (W * H * 4))));

    try {
      photo.src = await F.imageUrl(P.links.image);
      await photo.decode();
    } catch (err) {
      F.report(err);
    }
    $("loading").hidden = true;
    $("view").hidden = false;
    fit();
    renderResult();
    renderMeta();
    renderGiven();
    const segment = P.task === "segment";
    $("mask-controls").hidden = !segment;
    $("boxes-controls").hidden = !segment;
    $("mask-fix").hidden = !segment;
    maskCanvas.hidden = !segment;
    stage.classList.toggle("editable", segment);
    if (segment) {
      $("show-boxes").checked = (P.output.boxes || []).length <= 25;  // dozens of boxes hide the image
      drawBoxes();
      await loadMask();
    }
    if (P.links.heatmap) {
      $("heat-controls").hidden = false;
      $("show-heat").checked = !segment;  // a classifier has nothing else to lay over the image
      await loadHeatmap();
      showHeat();
    }
    document.title = `${F.summary(P)} · fissure`;
    $("view").dataset.ready = "1";  // every layer drawn (what a browser test waits for)
  }

  /** Size the stage to the image's aspect, as large as the column and the window allow. */
  function fit() {
    if (!W) return;
    const card = getComputedStyle(stage.parentElement);
    const maxW = stage.parentElement.clientWidth - parseFloat(card.paddingLeft) - parseFloat(card.paddingRight);
    const maxH = Math.max(260, window.innerHeight * 0.74);
    const s = Math.min(maxW / W, maxH / H);
    stage.style.width = `${Math.floor(W * s)}px`;
    stage.style.height = `${Math.floor(H * s)}px`;
    stage.classList.toggle("pixelated", s >= 3);  // a small image enlarged: show its pixels, not a blur
  }
  window.addEventListener("resize", fit);

  async function grayPixels(link) {
    const img = new Image();
    img.src = await F.imageUrl(link);
    await img.decode();
    const tmp = document.createElement("canvas");
    tmp.width = W;
    tmp.height = H;
    const t = tmp.getContext("2d", {willReadFrequently: true});
    t.drawImage(img, 0, 0, W, H);
    return t.getImageData(0, 0, W, H).data;
  }

  async function loadMask() {
    modelMask = ctx.createImageData(W, H);
    if (P.links.mask) {
      try {
        const src = await grayPixels(P.links.mask);
        const out = modelMask.data;
        for (let i = 0; i < src.length; i += 4) {
          if (src[i] >= 128) {
            out[i] = MASK_COLOR[0]; out[i + 1] = MASK_COLOR[1]; out[i + 2] = MASK_COLOR[2]; out[i + 3] = 255;
          }
        }
      } catch (err) {
        F.report(err);
      }
    }
    ctx.putImageData(modelMask, 0, 0);
    showMask();
  }

  // A perceptual dark-to-bright ramp (inferno-like) for the heatmap's 0..255.
  const RAMP = [[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66], [245, 125, 21],
                [250, 193, 39], [252, 255, 164]];
  function ramp(v) {
    const x = (v / 255) * (RAMP.length - 1);
    const i = Math.min(RAMP.length - 2, Math.floor(x));
    const f = x - i;
    return RAMP[i].map((c, k) => Math.round(c + f * (RAMP[i + 1][k] - c)));
  }

  async function loadHeatmap() {
    try {
      const src = await grayPixels(P.links.heatmap);
      const hctx = heatCanvas.getContext("2d");
      const out = hctx.createImageData(W, H);
      const lut = Array.from({length: 256}, (_, v) => ramp(v));
      // alpha grows faster than the value: where the model hardly looked, the image shows through
      const alpha = Array.from({length: 256}, (_, v) => Math.round(255 * (v / 255) ** 1.5));
      for (let i = 0; i < src.length; i += 4) {
        const [r, g, b] = lut[src[i]];
        out.data[i] = r; out.data[i + 1] = g; out.data[i + 2] = b; out.data[i + 3] = alpha[src[i]];
      }
      hctx.putImageData(out, 0, 0);
    } catch (err) {
      F.report(err);
    }
  }

  // ------------------------------------------------------------------ what the model said
  function bar(name, p, top) {
    const fill = el("span", {class: "fill"});
    fill.style.width = F.pct(p);
    return el("div", {class: `prob${top ? " lead" : ""}`},
      el("span", {class: "prob-name"}, name), el("span", {class: "track", "aria-hidden": "true"}, fill),
      el("span", {class: "prob-val"}, F.pct(p)));
  }

  function renderResult() {
    const out = P.output || {};
    const box = $("result");
    box.replaceChildren();
    if (P.task === "segment") {
      const boxes = out.boxes || [];
      box.append(
        el("p", {class: "big"}, el("strong", {id: "crack-ratio"}, F.pct(out.crack_ratio || 0, 2)), " crack area"),
        el("p", {class: "muted"}, `${boxes.length} crack ${boxes.length === 1 ? "region" : "regions"}` +
          (boxes.length > 8 ? " (the 8 largest below)" : "")));
      if (boxes.length) {
        box.append(el("ol", {class: "box-list"}, boxes.slice(0, 8).map((b, i) => {
          const [x0, y0, x1, y1] = b.box;
          return el("li", {tabindex: 0, "data-box": i, onmouseenter: () => highlight(i), onmouseleave: () => highlight(-1),
                           onfocus: () => highlight(i), onblur: () => highlight(-1)},
            `x ${x0}–${x1}, y ${y0}–${y1} · ${b.area} px`);
        })));
      }
    } else {
      const probs = out.probabilities || {};
      box.append(el("p", {class: "big"}, el("strong", {id: "label"}, out.label), " ",
                    el("span", {class: "conf"}, `${F.pct(out.score || 0)} confidence`)));
      box.append(el("div", {class: "probs"},
        Object.entries(probs).sort((a, b) => b[1] - a[1]).map(([name, p]) => bar(name, p, name === out.label))));
      renderLabelChoices(Object.keys(probs).length ? Object.keys(probs) : [out.label]);
    }
    if (P.flag) box.append(el("p", {class: "badge flag"}, `flagged: ${P.flag}`));
  }

  function renderMeta() {
    const mlflow = document.body.dataset.mlflow;
    const model = encodeURIComponent(P.model_name);
    const rows = [
      ["Model", P.model_name],
      ["Version", mlflow ? el("a", {href: `${mlflow}/#/models/${model}/versions/${encodeURIComponent(P.model_version)}`,
                                    target: "_blank", rel: "noopener noreferrer"}, P.model_version) : P.model_version],
      ["MLflow run", P.mlflow_run_id ? (mlflow ? el("a", {href: `${mlflow}/#/runs/${encodeURIComponent(P.mlflow_run_id)}`,
                                                         target: "_blank", rel: "noopener noreferrer"}, P.mlflow_run_id.slice(0, 12))
                                                : el("code", {}, P.mlflow_run_id.slice(0, 12))) : "—"],
      ["Uncertainty", P.uncertainty.toFixed(3)],
      ["Latency", `${Math.round(P.latency_ms)} ms`],
      ["When", F.when(P.created_at)],
      ["Image", `${W} × ${H} · `, el("code", {title: P.image_sha256}, P.image_sha256.slice(0, 10))],
    ];
    const expl = P.output && P.output.explanation;
    if (expl && expl.method) rows.push(["Explanation", expl.method]);
    $("meta").replaceChildren(...rows.flatMap(([k, ...v]) => [el("dt", {}, k), el("dd", {}, ...v)]));
  }

  function renderGiven() {
    const fb = (P.feedback || []).slice().sort((a, b) => (a.updated_at < b.updated_at ? 1 : -1));
    $("given-empty").hidden = fb.length > 0;
    $("given").replaceChildren(...fb.map((f) => el("li", {},
      el("span", {class: `badge ${f.verdict}`}, f.verdict === "correct" ? "✓ right" : "✗ wrong"),
      el("strong", {}, ` ${f.user}`),
      f.label ? ` · label ${f.label}` : "",
      f.mask_sha256 ? " · mask corrected" : "",
      el("span", {class: "muted"}, ` · ${F.when(f.updated_at)}`),
      f.note ? el("p", {class: "note"}, f.note) : "")));
  }

  // ------------------------------------------------------------------ layers
  function showMask() {
    const on = $("show-mask").checked;
    const opacity = $("mask-opacity").value;
    maskCanvas.style.opacity = on ? opacity / 100 : 0;
    $("mask-opacity-out").value = `${opacity}%`;
  }

  function showHeat() {
    heatCanvas.hidden = !$("show-heat").checked;
    heatCanvas.style.opacity = $("heat-opacity").value / 100;
    $("heat-opacity-out").value = `${$("heat-opacity").value}%`;
  }

  function drawBoxes() {
    boxesSvg.replaceChildren(...(P.output.boxes || []).map((b, i) => {
      const [x0, y0, x1, y1] = b.box;
      const r = document.createElementNS("http://www.w3.org/2000/svg", "rect");
      for (const [k, v] of Object.entries({x: x0, y: y0, width: x1 - x0, height: y1 - y0, "data-box": i})) r.setAttribute(k, v);
      return r;
    }));
    showBoxes();
  }

  function showBoxes() {
    boxesSvg.toggleAttribute("hidden", !$("show-boxes").checked);  // an <svg> has no .hidden property
  }

  function highlight(i) {
    boxesSvg.querySelectorAll("rect").forEach((r) => r.classList.toggle("hot", Number(r.dataset.box) === i));
  }

  $("show-mask").addEventListener("change", showMask);
  $("mask-opacity").addEventListener("input", showMask);
  $("show-boxes").addEventListener("change", showBoxes);
  $("show-heat").addEventListener("change", showHeat);
  $("heat-opacity").addEventListener("input", showHeat);

  // ------------------------------------------------------------------ verdict and label
  function setVerdict(v) {
    verdict = v;
    $("verdict-correct").setAttribute("aria-pressed", String(v === "correct"));
    $("verdict-wrong").setAttribute("aria-pressed", String(v === "wrong"));
    if (P && P.task !== "segment") $("label-fix").hidden = v !== "wrong";
  }

  function renderLabelChoices(classes) {
    // the right label of a wrong prediction is any class but the predicted one (the API refuses that)
    const others = classes.filter((c) => c !== P.output.label);
    $("label-choices").replaceChildren(...others.map((c, i) => el("label", {class: "choice"},
      el("input", {type: "radio", name: "label", value: c, checked: others.length === 1}),
      el("span", {}, c), i < 9 ? el("kbd", {}, String(i + 1)) : "")));
  }

  function chosenLabel() {
    const r = document.querySelector('input[name="label"]:checked');
    return r ? r.value : null;
  }

  function markWrong() {
    setVerdict("wrong");
    const first = P.task === "segment" ? $(tool === "brush" ? "tool-brush" : "tool-eraser")
      : document.querySelector('input[name="label"]:checked') || document.querySelector('input[name="label"]');
    if (first) first.focus();
  }

  $("verdict-correct").addEventListener("click", () => { setVerdict("correct"); save(); });
  $("verdict-wrong").addEventListener("click", markWrong);

  // ------------------------------------------------------------------ the mask editor
  function setTool(t) {
    tool = t;
    $("tool-brush").setAttribute("aria-pressed", String(t === "brush"));
    $("tool-eraser").setAttribute("aria-pressed", String(t === "eraser"));
    cursor.classList.toggle("eraser", t === "eraser");
  }

  function brushSize() { return Number($("brush-size").value); }

  function setBrushSize(v) {
    const s = $("brush-size");
    s.value = Math.max(Number(s.min), Math.min(Number(s.max), v));
    $("brush-size-out").value = `${s.value} px`;
    cursor.style.width = cursor.style.height = `${s.value}px`;
  }

  function pushUndo() {
    undo.push(ctx.getImageData(0, 0, W, H));
    if (undo.length > undoDepth) undo.shift();
    $("undo").disabled = false;
  }

  function markEdited(value = true) {
    edited = value;
    $("mask-state").textContent = edited ? "Mask corrected: it is sent with your feedback."
      : "Draw on the image: the brush adds crack, the eraser removes it.";
    stage.classList.toggle("edited", edited);
    if (edited && verdict !== "wrong") setVerdict("wrong");
  }

  function toImage(e) {
    const r = maskCanvas.getBoundingClientRect();
    return [(e.clientX - r.left) * W / r.width, (e.clientY - r.top) * H / r.height];
  }

  function stroke(a, b) {
    const r = maskCanvas.getBoundingClientRect();
    const width = brushSize() * W / r.width;  // the slider is in screen pixels
    ctx.save();
    ctx.globalCompositeOperation = tool === "eraser" ? "destination-out" : "source-over";
    ctx.strokeStyle = ctx.fillStyle = `rgb(${MASK_COLOR.join(",")})`;
    ctx.lineWidth = width;
    ctx.lineCap = ctx.lineJoin = "round";
    ctx.beginPath();
    ctx.moveTo(a[0], a[1]);
    ctx.lineTo(b[0], b[1]);
    ctx.stroke();
    ctx.beginPath();  // a click without a move still paints a dot
    ctx.arc(b[0], b[1], width / 2, 0, 2 * Math.PI);
    ctx.fill();
    ctx.restore();
  }

  let last = null;
  maskCanvas.addEventListener("pointerdown", (e) => {
    if (P.task !== "segment" || e.button !== 0) return;
    e.preventDefault();
    maskCanvas.setPointerCapture(e.pointerId);
    if (!$("show-mask").checked) { $("show-mask").checked = true; showMask(); }
    pushUndo();
    last = toImage(e);
    stroke(last, last);
    markEdited();
  });
  maskCanvas.addEventListener("pointermove", (e) => {
    const r = stage.getBoundingClientRect();
    cursor.style.left = `${e.clientX - r.left}px`;
    cursor.style.top = `${e.clientY - r.top}px`;
    if (!last) return;
    const p = toImage(e);
    stroke(last, p);
    last = p;
  });
  for (const type of ["pointerup", "pointercancel"]) maskCanvas.addEventListener(type, () => { last = null; });
  maskCanvas.addEventListener("pointerenter", () => { cursor.hidden = P.task !== "segment"; });
  maskCanvas.addEventListener("pointerleave", () => { cursor.hidden = true; });

  $("tool-brush").addEventListener("click", () => setTool("brush"));
  $("tool-eraser").addEventListener("click", () => setTool("eraser"));
  $("brush-size").addEventListener("input", () => setBrushSize(brushSize()));
  $("undo").addEventListener("click", undoStroke);
  $("reset-mask").addEventListener("click", () => {
    pushUndo();
    ctx.putImageData(modelMask, 0, 0);
    markEdited(false);
  });
  $("clear-mask").addEventListener("click", () => {
    pushUndo();
    ctx.clearRect(0, 0, W, H);
    markEdited();
  });

  function undoStroke() {
    const snap = undo.pop();
    if (snap) ctx.putImageData(snap, 0, 0);
    $("undo").disabled = undo.length === 0;
    if (!undo.length) markEdited(false);
  }

  // ------------------------------------------------------------------ the PNG of the mask
  const CRC = new Uint32Array(256).map((_, n) => {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    return c >>> 0;
  });

  function crc32(bytes) {
    let c = 0xffffffff;
    for (const b of bytes) c = CRC[(c ^ b) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  }

  function chunk(type, data) {
    const out = new Uint8Array(12 + data.length);
    const view = new DataView(out.buffer);
    view.setUint32(0, data.length);
    out.set(new TextEncoder().encode(type), 4);
    out.set(data, 8);
    view.setUint32(8 + data.length, crc32(out.subarray(4, 8 + data.length)));
    return out;
  }

  /** The mask as it stands: an 8-bit grayscale PNG of the image's size, 255 = crack, 0 = not. */
  async function maskPng() {
    const rgba = ctx.getImageData(0, 0, W, H).data;
    const raw = new Uint8Array((W + 1) * H);  // each row: filter byte 0, then W pixels
    for (let y = 0; y < H; y++) {
      for (let x = 0; x < W; x++) raw[y * (W + 1) + 1 + x] = rgba[(y * W + x) * 4 + 3] >= 128 ? 255 : 0;
    }
    const zlib = new Uint8Array(await new Response(
      new Blob([raw]).stream().pipeThrough(new CompressionStream("deflate"))).arrayBuffer());
    const ihdr = new Uint8Array(13);
    const v = new DataView(ihdr.buffer);
    v.setUint32(0, W);
    v.setUint32(4, H);
    ihdr.set([8, 0, 0, 0, 0], 8);  // 8-bit, grayscale, deflate, no filter method, no interlace
    const signature = new Uint8Array([137, 80, 78, 71, 13, 10, 26, 10]);
    return new Blob([signature, chunk("IHDR", ihdr), chunk("IDAT", zlib), chunk("IEND", new Uint8Array(0))],
                    {type: "image/png"});
  }

  // ------------------------------------------------------------------ saving
  let saving = false;
  async function save() {
    if (saving || !P) return;
    if (!verdict) {
      if (edited) setVerdict("wrong");
      else {
        F.notify("Say first whether the prediction is right (C) or wrong (W).", "error");
        $("verdict-correct").focus();
        return;
      }
    }
    const body = new FormData();
    body.append("verdict", verdict);
    const note = $("note").value.trim();
    if (note) body.append("note", note);
    if (verdict === "wrong" && P.task !== "segment" && chosenLabel()) body.append("label", chosenLabel());
    if (verdict === "wrong" && P.task === "segment" && edited) body.append("mask", await maskPng(), "mask.png");
    saving = true;
    $("save").disabled = true;
    $("save-state").textContent = "Saving…";
    try {
      const fb = await F.api(`/predictions/${encodeURIComponent(id)}/feedback`, {method: "POST", body});
      P.feedback = (P.feedback || []).filter((f) => f.id !== fb.id).concat([fb]);
      renderGiven();
      $("save-state").textContent = `Saved ✓ ${new Date().toLocaleTimeString()}`;
      F.clearErrors();
      F.notify(verdict === "correct" ? "Saved: the prediction is right." : "Saved: your correction is stored.", "ok");
      if (fromQueue !== null) await next();
    } catch (err) {
      $("save-state").textContent = "Not saved.";
      F.report(err);
    } finally {
      saving = false;
      $("save").disabled = false;
    }
  }

  $("feedback-form").addEventListener("submit", (e) => { e.preventDefault(); save(); });

  /** The next prediction nobody judged, least certain first (the queue's model when opened from it). */
  async function next() {
    const model = fromQueue || "";
    try {
      const q = await F.api(`/review-queue?limit=5${model ? `&model=${encodeURIComponent(model)}` : ""}`);
      const item = q.items.find((p) => p.id !== id);
      if (!item) { F.notify("The review queue is empty: everything has been judged.", "ok"); return; }
      location.assign(`${F.BASE}/p/${encodeURIComponent(item.id)}?queue=${encodeURIComponent(model)}`);
    } catch (err) {
      F.report(err);
    }
  }
  $("next").addEventListener("click", next);

  // ------------------------------------------------------------------ keyboard
  const keys = {
    c: () => { setVerdict("correct"); save(); },
    w: markWrong,
    n: next,
    m: () => { $("show-mask").checked = !$("show-mask").checked; showMask(); },
    h: () => { if (!P.links.heatmap) return false; $("show-heat").checked = !$("show-heat").checked; showHeat(); },
    b: () => setTool("brush"),
    e: () => setTool("eraser"),
    "[": () => setBrushSize(brushSize() - 4),
    "]": () => setBrushSize(brushSize() + 4),
    "Ctrl+z": (e) => (F.isTyping(e.target) || P.task !== "segment" ? false : undoStroke()),
    "Ctrl+Enter": () => save(),
  };
  for (let i = 1; i <= 9; i++) {
    keys[String(i)] = () => {
      const r = document.querySelectorAll('input[name="label"]')[i - 1];
      if (!r) return false;
      r.checked = true;
      setVerdict("wrong");
      r.focus();
    };
  }
  // nothing to act on until the prediction is loaded
  F.shortcuts(Object.fromEntries(Object.entries(keys).map(([k, f]) => [k, (e) => (P ? f(e) : false)])));

  setBrushSize(brushSize());
  setTool("brush");
  load();
  document.addEventListener("fissure:token", () => { if (!P) load(); });
})();
