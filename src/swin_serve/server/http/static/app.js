// The try-the-model page. Plain JS, no dependencies; it calls only the public API:
// GET /v1/models (the index), GET /v1/models/{name} (the card), and that model's
// POST /v1/models/{name}/classify and /features. When the server checks API keys (a 401), it
// asks for one, keeps it in sessionStorage (this tab only) and sends it as a Bearer token.
"use strict";

(() => {
  const STAGES = ["stage1", "stage2", "stage3", "stage4"];
  const TOP_K = 5;
  const FEATURES_QUERY = "?" + STAGES.map((s) => "stages=" + s).join("&") + "&pool=none";
  // "inferno"-like colour stops, low to high; the CSS legend uses the same ones.
  const RAMP = [
    [0, 0, 4],
    [87, 16, 110],
    [188, 55, 84],
    [249, 142, 9],
    [252, 255, 164],
  ];

  const $ = (id) => document.getElementById(id);
  const ui = {
    summary: $("model-summary"),
    picker: $("model-picker"),
    select: $("model-select"),
    banner: $("random-banner"),
    advice: $("random-advice"),
    card: $("model-card"),
    drop: $("drop-zone"),
    input: $("file-input"),
    preview: $("preview"),
    hint: $("drop-hint"),
    status: $("status"),
    error: $("error"),
    errorText: $("error-text"),
    errorDetail: $("error-detail"),
    predictions: $("predictions"),
    predEmpty: $("pred-empty"),
    timing: document.querySelector("#timing tbody"),
    opacity: $("opacity"),
    keyForm: $("key-form"),
    keyTitle: $("key-title"),
    keyInput: $("key-input"),
    canvases: Object.fromEntries(
      STAGES.map((s) => [s, document.querySelector(`canvas[data-stage="${s}"]`)]),
    ),
  };

  let model = null; // the chosen model's card, once loaded
  let seq = 0; // only the latest upload may draw its results
  let shown = null; // {bitmap, maps} of the results on screen, for opacity changes
  let previewUrl = null;

  // ---- API calls --------------------------------------------------------------------------

  class ApiFailure extends Error {
    constructor(status, code, detail, timing) {
      super(detail);
      this.status = status;
      this.code = code;
      this.timing = timing;
    }
  }

  /** `decode;dur=1.2, batch;desc="2"` -> {decode: {dur: 1.2}, batch: {desc: "2"}} */
  function parseServerTiming(header) {
    const out = {};
    for (const entry of (header || "").split(",")) {
      const [name, ...params] = entry.trim().split(";");
      if (!name) continue;
      const metric = {};
      for (const p of params) {
        const [k, v = ""] = p.trim().split("=");
        metric[k] = k === "dur" ? Number(v) : v.replace(/^"|"$/g, "");
      }
      out[name] = metric;
    }
    return out;
  }

  // ---- API key ----------------------------------------------------------------------------

  const KEY_ITEM = "swin-api-key";

  function storedKey() {
    try {
      return sessionStorage.getItem(KEY_ITEM) || "";
    } catch {
      return ""; // storage disabled: the page works without keys
    }
  }

  function storeKey(key) {
    try {
      if (key) sessionStorage.setItem(KEY_ITEM, key);
      else sessionStorage.removeItem(KEY_ITEM);
    } catch {
      // storage disabled: nothing to keep
    }
  }

  /** Ask for a key; a stored key that earned the 401 is dropped. */
  function askForKey() {
    const rejected = storedKey() !== "";
    storeKey("");
    ui.keyTitle.textContent = rejected
      ? "The server did not accept this API key. Please enter another."
      : "This server needs an API key.";
    ui.keyForm.hidden = false;
    ui.keyInput.focus();
  }

  async function callApi(url, init) {
    const started = performance.now();
    const key = storedKey();
    const headers = new Headers((init && init.headers) || {});
    if (key) headers.set("Authorization", "Bearer " + key);
    let resp;
    try {
      resp = await fetch(url, { ...init, headers });
    } catch (err) {
      throw new ApiFailure(0, "network", String(err), null);
    }
    const timing = parseServerTiming(resp.headers.get("Server-Timing"));
    timing.roundTrip = performance.now() - started;
    if (!resp.ok) {
      let code = "";
      let detail = resp.statusText;
      try {
        const body = await resp.json();
        code = body.error.code;
        detail = body.error.message;
      } catch {
        // not our JSON error shape (a proxy's page, say): the status alone decides
      }
      throw new ApiFailure(resp.status, code, detail, timing);
    }
    try {
      return { body: await resp.json(), timing };
    } catch (err) {
      throw new ApiFailure(resp.status, "bad_response", String(err), timing);
    }
  }

  /** What went wrong, for a person rather than a program. */
  function plainWords(err) {
    const byCode = {
      unsupported_media_type:
        "This file type is not supported. Please choose a JPEG, PNG, WebP, GIF or BMP image.",
      payload_too_large: "This file is too large for the server. Please choose a smaller image.",
      image_too_large:
        "This image has too many pixels for the server. Please choose a smaller image.",
      too_many_images: "Too many images at once. Please send one image.",
      invalid_image:
        "This file could not be read as an image. It may be damaged or incomplete.",
      bad_request: "The server could not read the upload. Please choose the file again.",
      unauthenticated: "This server needs an API key. Please enter it above, then try again.",
      overloaded: "The server is busy right now. Please try again in a few seconds.",
      deadline_exceeded: "The server is busy right now. Please try again in a few seconds.",
      not_ready: "The model is still loading. Please try again in a few seconds.",
      draining: "The server is restarting. Please try again in a few seconds.",
      inference_failed: "The model failed on this image. Please try again.",
      bad_response: "The server sent an answer this page could not read. Please try again.",
      network:
        "Could not reach the server. Check that it is still running, then try again." +
        " (A very large file can also cause this.)",
    };
    if (byCode[err.code]) return byCode[err.code];
    const byStatus = {
      400: byCode.invalid_image,
      413: byCode.payload_too_large,
      415: byCode.unsupported_media_type,
      503: byCode.overloaded,
    };
    return (
      byStatus[err.status] ||
      (err.status >= 500
        ? "Something went wrong on the server. Please try again."
        : "The server did not accept this request.")
    );
  }

  // ---- Model card -------------------------------------------------------------------------

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  const modelUrl = (name) => "/v1/models/" + encodeURIComponent(name);

  /** The index, then the card of the default model (or the first ready one). */
  async function loadModels() {
    let index;
    try {
      index = (await callApi("/v1/models")).body;
    } catch (err) {
      ui.summary.textContent = "Could not list the models: " + plainWords(err);
      if (err.status === 401) askForKey();
      return;
    }
    // A name being unloaded may be listed beside its new version: offer each name once.
    const models = index.models.filter((m) => m.state !== "unloading");
    const ready = models.filter((m) => m.state === "ready");
    const chosen = index.default_model || (ready[0] || models[0] || {}).name;
    showPicker(models, chosen);
    if (chosen) await loadModel(chosen);
    else ui.summary.textContent = "This server serves no model.";
  }

  function showPicker(models, chosen) {
    ui.picker.hidden = models.length < 2;
    ui.select.replaceChildren(
      ...models.map((m) => {
        const option = el("option", m.state === "ready" ? m.name : `${m.name} (${m.state})`);
        option.value = m.name;
        option.disabled = m.state !== "ready";
        option.selected = m.name === chosen;
        return option;
      }),
    );
  }

  async function loadModel(name) {
    for (;;) {
      try {
        model = (await callApi(modelUrl(name))).body;
        showModel(model);
        return;
      } catch (err) {
        if (err.status === 503) {
          ui.summary.textContent = `The model ${name} is still loading; retrying…`;
          await sleep(2000);
          continue;
        }
        ui.summary.textContent = "Could not load the model card: " + plainWords(err);
        if (err.status === 401) askForKey();
        return;
      }
    }
  }

  function showModel(m) {
    const w = m.weights;
    const b = m.batching;
    const weights =
      (w.random ? "random (untrained)" : w.source) +
      (w.sha256 ? ` · sha256 ${w.sha256.slice(0, 12)}…` : "");
    const parity = m.parity
      ? m.parity.passed
        ? "passed" +
          (m.parity.batch_sizes ? ` (batch sizes ${m.parity.batch_sizes.join(", ")})` : "")
        : "FAILED"
      : "not recorded";
    ui.summary.textContent =
      `${m.variant} · ${m.precision} on ${m.engine} · ${m.input_size}×${m.input_size} input · ` +
      `${m.num_classes} classes · ${m.provider}`;
    const reduced = m.precision !== m.exported_precision;
    ui.banner.hidden = !w.random;
    // The server's own words, with the export command that works for this model.
    ui.advice.textContent = (m.warning || "").replace(/^.*?meaningless\. /, "");
    const rows = [
      ["Variant", m.variant],
      [
        "Precision",
        `${m.precision} on ${m.engine}` +
          (reduced ? ` (exported ${m.exported_precision})` : "") +
          ` · ${m.precision_reason}`,
      ],
      ["CPU layout", m.layout ? `${m.layout.name}: ${m.layout.reason}` : "not set"],
      ["Input", `${m.input_size}×${m.input_size}, ${m.num_classes} classes`],
      ["Preprocessing", describeTransform(m.preprocess)],
      ["Preprocessing from", m.preprocessing_source || "not recorded (crop_pct 0.875 rule)"],
      ["Provider", m.provider + (m.provider_warning ? ` · ${m.provider_warning}` : "")],
      ["Weights", weights],
      ["Class names", m.labels_source || "not recorded"],
      ["Export parity check", parity],
      [
        "Batching",
        `up to ${b.max_batch_size} images per run, waiting at most ` +
          `${b.max_batch_delay_ms} ms for more`,
      ],
      [
        "Queue",
        `${b.queue_capacity} images; deadline ${b.request_timeout_ms} ms; ` +
          `${b.max_images_per_request} images per request at most`,
      ],
      ["Ready", m.ready ? "yes" : "warming up"],
    ];
    const cls = (k) =>
      (w.random && k === "Weights") ||
      (m.provider_warning && k === "Provider") ||
      (reduced && k === "Precision")
        ? "warn"
        : "";
    ui.card.replaceChildren(...rows.flatMap(([k, v]) => [el("dt", k), el("dd", v, cls(k))]));
  }

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined) node.textContent = text;
    if (className) node.className = className;
    return node;
  }

  // ---- One upload -------------------------------------------------------------------------

  async function handleFile(file) {
    const mine = ++seq;
    ui.error.hidden = true;
    ui.status.textContent = `Running the model on ${file.name}…`;
    showPreview(file);

    const post = (url) => {
      const form = new FormData();
      form.append("file", file, file.name);
      return callApi(url, { method: "POST", body: form });
    };
    // Both at once: the server's batcher may well run them in the same batch.
    const base = modelUrl(ui.select.value || (model && model.name) || "");
    const [cls, feats, bitmap] = await Promise.allSettled([
      post(`${base}/classify?top_k=${TOP_K}`),
      post(`${base}/features${FEATURES_QUERY}`),
      createImageBitmap(file),
    ]);
    const image = bitmap.status === "fulfilled" ? bitmap.value : null;
    if (mine !== seq) {
      if (image) image.close();
      return; // a newer upload owns the page now
    }

    showTiming([
      ["POST /classify", cls],
      ["POST /features", feats],
    ]);
    const failed = [cls, feats].find((r) => r.status === "rejected");
    if (failed) {
      if (image) image.close();
      clearResults();
      showError(failed.reason);
      ui.status.textContent = "";
      if (failed.reason.status === 401) askForKey();
      return;
    }
    try {
      if (shown && shown.bitmap) shown.bitmap.close();
      showPredictions(cls.value.body.results[0].predictions);
      const result = feats.value.body.results[0];
      shown = {
        bitmap: image,
        maps: Object.fromEntries(STAGES.map((s) => [s, channelMean(result[s])])),
      };
      drawHeatmaps();
      ui.status.textContent = `Done: ${file.name}.`;
    } catch (err) {
      clearResults();
      showError(new ApiFailure(0, "bad_response", String(err), null));
      ui.status.textContent = "";
    }
  }

  function showPreview(file) {
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = URL.createObjectURL(file);
    ui.preview.onload = () => {
      ui.preview.hidden = false;
      ui.hint.hidden = true;
    };
    ui.preview.onerror = () => {
      ui.preview.hidden = true;
      ui.hint.hidden = false;
    };
    ui.preview.alt = `Your image: ${file.name}`;
    ui.preview.src = previewUrl;
  }

  function showError(err) {
    ui.errorText.textContent = plainWords(err);
    ui.errorDetail.textContent =
      (err.status ? `HTTP ${err.status}${err.code ? " · " + err.code : ""}: ` : "") + err.message;
    ui.error.hidden = false;
  }

  function clearResults() {
    ui.predictions.replaceChildren();
    ui.predEmpty.hidden = false;
    if (shown && shown.bitmap) shown.bitmap.close();
    shown = null;
    for (const canvas of Object.values(ui.canvases)) {
      canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
      delete canvas.dataset.ready;
    }
  }

  function showPredictions(predictions) {
    ui.predEmpty.hidden = true;
    ui.predictions.replaceChildren(
      ...predictions.map((p) => {
        const pct = p.score * 100;
        const text = pct >= 0.1 ? pct.toFixed(1) + "%" : "<0.1%";
        const li = el("li", undefined, "bar");
        const head = el("div", undefined, "bar-head");
        const label = el("span", p.label, "label");
        label.title = `class ${p.index}`;
        head.append(label, el("span", text, "score"));
        const track = el("div", undefined, "track");
        track.setAttribute("aria-hidden", "true");
        const fill = el("div", undefined, "fill");
        fill.style.width = `${Math.max(pct, 0.5)}%`;
        track.append(fill);
        li.append(head, track);
        return li;
      }),
    );
  }

  function showTiming(rows) {
    const ms = (t, k) => (t && t[k] && Number.isFinite(t[k].dur) ? t[k].dur.toFixed(1) : "–");
    ui.timing.replaceChildren(
      ...rows.map(([name, settled]) => {
        const t =
          settled.status === "fulfilled" ? settled.value.timing : settled.reason.timing;
        const tr = el("tr");
        const status = settled.status === "fulfilled" ? "" : ` (HTTP ${settled.reason.status})`;
        const th = el("th", name + status);
        th.scope = "row";
        tr.append(
          th,
          el("td", ms(t, "decode")),
          el("td", ms(t, "queue")),
          el("td", ms(t, "inference")),
          el("td", t && t.batch ? t.batch.desc : "–"),
          el("td", ms(t, "total")),
          el("td", t ? t.roundTrip.toFixed(1) : "–"),
        );
        return tr;
      }),
    );
  }

  // ---- Heatmaps ---------------------------------------------------------------------------

  /** [C][H][W] nested arrays -> {data: Float32Array(H*W), h, w, c}: the mean over channels. */
  function channelMean(chw) {
    const c = chw.length;
    const h = chw[0].length;
    const w = chw[0][0].length;
    const data = new Float32Array(h * w);
    for (const plane of chw) {
      for (let y = 0; y < h; y++) {
        const row = plane[y];
        for (let x = 0; x < w; x++) data[y * w + x] += row[x];
      }
    }
    for (let i = 0; i < data.length; i++) data[i] /= c;
    return { data, h, w, c };
  }

  function colour(v) {
    const pos = Math.min(Math.max(v, 0), 1) * (RAMP.length - 1);
    const i = Math.min(Math.floor(pos), RAMP.length - 2);
    const f = pos - i;
    return RAMP[i].map((a, k) => Math.round(a + (RAMP[i + 1][k] - a) * f));
  }

  function drawHeatmaps() {
    if (!shown) return;
    const alpha = Number(ui.opacity.value);
    for (const stage of STAGES) {
      drawHeatmap(ui.canvases[stage], stage, shown.maps[stage], shown.bitmap, alpha);
    }
  }

  // Says in words what PreprocessSpec.describe says on the server.
  function describeTransform(pre) {
    if (!pre) return "not recorded";
    const r = pre.resize_shorter;
    const s = pre.crop_size;
    const steps =
      pre.resize_mode === "squash"
        ? `resize to ${r}×${r} (aspect not kept)` + (r !== s ? `, centre crop ${s}` : "")
        : `resize shorter side to ${r}, centre crop ${s}`;
    const nums = (v) => v.map((x) => +x.toFixed(4)).join(", ");
    return `${steps} (${pre.interpolation}), /${pre.scale}, mean (${nums(pre.mean)}), std (${nums(pre.std)})`;
  }

  function drawHeatmap(canvas, stage, map, bitmap, alpha) {
    const ctx = canvas.getContext("2d");
    const size = canvas.width;
    ctx.globalAlpha = 1;
    ctx.fillStyle = "#777";
    ctx.fillRect(0, 0, size, size);
    if (bitmap) {
      // The region the model sees: the centre crop_size of the image resized to resize_shorter
      // (the shorter side when cropping; both sides, aspect not kept, when squashing).
      const pre = (model && model.preprocess) || {};
      const frac = pre.crop_size && pre.resize_shorter ? pre.crop_size / pre.resize_shorter : 0.875;
      const squash = pre.resize_mode === "squash";
      const sw = (squash ? bitmap.width : Math.min(bitmap.width, bitmap.height)) * frac;
      const sh = (squash ? bitmap.height : Math.min(bitmap.width, bitmap.height)) * frac;
      const sx = (bitmap.width - sw) / 2;
      const sy = (bitmap.height - sh) / 2;
      ctx.drawImage(bitmap, sx, sy, sw, sh, 0, 0, size, size);
    }
    let lo = Infinity;
    let hi = -Infinity;
    for (const v of map.data) {
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
    const span = hi - lo || 1;
    const small = document.createElement("canvas");
    small.width = map.w;
    small.height = map.h;
    const sctx = small.getContext("2d");
    const pixels = sctx.createImageData(map.w, map.h);
    map.data.forEach((v, i) => {
      const [r, g, b] = colour((v - lo) / span);
      pixels.data.set([r, g, b, 255], i * 4);
    });
    sctx.putImageData(pixels, 0, 0);
    ctx.globalAlpha = alpha;
    ctx.imageSmoothingEnabled = true;
    ctx.imageSmoothingQuality = "high";
    ctx.drawImage(small, 0, 0, size, size);
    ctx.globalAlpha = 1;
    const n = stage.slice(-1);
    canvas.setAttribute(
      "aria-label",
      `Stage ${n} heatmap: mean of ${map.c} channels on a ${map.w}×${map.h} grid`,
    );
    canvas.nextElementSibling.textContent = `Stage ${n} · ${map.c} ch · ${map.w}×${map.h}`;
    canvas.dataset.ready = "true";
  }

  // ---- Wiring -----------------------------------------------------------------------------

  ui.input.addEventListener("change", () => {
    if (ui.input.files.length) handleFile(ui.input.files[0]);
    ui.input.value = ""; // choosing the same file again still fires "change"
  });
  ui.opacity.addEventListener("input", drawHeatmaps);
  for (const type of ["dragenter", "dragover"]) {
    ui.drop.addEventListener(type, (e) => {
      e.preventDefault();
      ui.drop.classList.add("dragging");
    });
  }
  for (const type of ["dragleave", "drop"]) {
    ui.drop.addEventListener(type, () => ui.drop.classList.remove("dragging"));
  }
  ui.drop.addEventListener("drop", (e) => {
    e.preventDefault();
    const file = e.dataTransfer.files[0];
    if (file) handleFile(file);
  });
  // A file dropped beside the zone must not make the browser navigate away to it.
  for (const type of ["dragover", "drop"]) {
    window.addEventListener(type, (e) => e.preventDefault());
  }

  ui.keyForm.addEventListener("submit", (e) => {
    e.preventDefault();
    storeKey(ui.keyInput.value.trim());
    ui.keyInput.value = "";
    ui.keyForm.hidden = true;
    ui.error.hidden = true;
    ui.summary.textContent = "Loading the model card…";
    loadModels();
  });

  ui.select.addEventListener("change", () => {
    seq++; // an answer still on its way belongs to the model before
    clearResults();
    ui.status.textContent = "";
    loadModel(ui.select.value);
  });

  loadModels();
})();
