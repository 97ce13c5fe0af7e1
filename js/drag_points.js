// DragFusion "Drag Points" node: a canvas for handle -> target pairs and a mask brush.
//
// State lives in two STRING widgets the backend reads (both hidden on the node):
//   points: {"version":1,"width":W,"height":H,"pairs":[{"handle":[x,y],"target":[x,y]}]}  (image pixels)
//   mask:   name of the painted mask PNG in ComfyUI's input folder ("dragfusion_masks/mask_<hash>.png"), or ""
// The Live switch (toolbar; node property "dragfusion_live", saved with the workflow) queues the workflow after
// each edit and draws its result in the canvas (drag_points_live.js).
// The canvas is a DOM widget (drawn in its own <canvas>, never on the graph canvas), so it works in the
// classic LiteGraph renderer and in the Vue ("Nodes 2.0") node renderer alike.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { LiveRunner, WarpPreview, downstreamDepths } from "./drag_points_live.js";

const NODE_TYPE = "DragFusionDragPoints";
const EXTENSION = "DragFusion.DragPoints";
const MASK_SUBFOLDER = "dragfusion_masks";
const HANDLE_COLOR = "#e62828";
const TARGET_COLOR = "#285ae6";
const MASK_TINT = "rgba(255, 200, 0, 0.45)";
const HIT_RADIUS = 9; // layout px
const POINT_RADIUS = 5;
const MIN_CANVAS_HEIGHT = 240;

function el(tag, props = {}, children = []) {
  const e = document.createElement(tag);
  const { style, ...rest } = props;
  Object.assign(e, rest);
  if (style) Object.assign(e.style, style);
  for (const c of children) e.append(c);
  return e;
}

function button(label, title, onClick) {
  const b = el("button", {
    textContent: label, title, type: "button",
    style: {
      font: "11px sans-serif", padding: "2px 6px", margin: "0", cursor: "pointer",
      background: "#333", color: "#ddd", border: "1px solid #555", borderRadius: "4px",
    },
  });
  b.addEventListener("click", (e) => { e.stopPropagation(); onClick(e); });
  return b;
}

function setActive(b, on) {
  b.style.background = on ? "#4a6fa5" : "#333";
  b.style.color = on ? "#fff" : "#ddd";
}

/** "sub/name.png [input]" -> {filename, subfolder, type} for /view. */
export function parseInputName(value) {
  let name = String(value ?? "").trim();
  let type = "input";
  const m = name.match(/^(.*?)\s*\[(input|output|temp)\]$/);
  if (m) { name = m[1]; type = m[2]; }
  const slash = name.lastIndexOf("/");
  return slash >= 0
    ? { filename: name.slice(slash + 1), subfolder: name.slice(0, slash), type }
    : { filename: name, subfolder: "", type };
}

function viewURL({ filename, subfolder, type }) {
  const q = new URLSearchParams({ filename, type: type || "input", subfolder: subfolder || "" });
  return api.apiURL(`/view?${q.toString()}`);
}

function fnv1a(bytes) {
  let h = 0x811c9dc5;
  for (let i = 0; i < bytes.length; i++) { h ^= bytes[i]; h = Math.imul(h, 0x01000193) >>> 0; }
  return h.toString(16).padStart(8, "0");
}

/** Ids (as strings) of every node fed, directly or not, by ``node``'s outputs. */
function downstreamIds(node) {
  return new Set(downstreamDepths(node).keys());
}

/** A grey-level result (a mask such as AutoMask's) becomes a cyan tint of its bright parts; else null. */
function maskLikeTint(img) {
  const w = img.naturalWidth, h = img.naturalHeight;
  if (!w || !h) return null;
  const c = el("canvas", { width: w, height: h });
  const ctx = c.getContext("2d");
  ctx.drawImage(img, 0, 0);
  const d = ctx.getImageData(0, 0, w, h);
  const p = d.data;
  const step = Math.max(4, Math.floor(p.length / 4 / 4096) * 4);
  for (let i = 0; i < p.length; i += step) {
    if (Math.abs(p[i] - p[i + 1]) > 6 || Math.abs(p[i + 1] - p[i + 2]) > 6) return null;
  }
  for (let i = 0; i < p.length; i += 4) {
    const v = p[i];
    p[i] = 0; p[i + 1] = 200; p[i + 2] = 255; p[i + 3] = Math.round(v * 0.8);
  }
  ctx.putImageData(d, 0, 0);
  return c;
}

function hideWidget(w) {
  // 1.58: `hidden` is the public facade; older frontends honour the legacy computeSize trick.
  w.hidden = true;
  w.options = w.options ?? {};
  w.options.hidden = true;
  w.computeSize = () => [0, -4];
}

class DragCanvas {
  constructor(node) {
    this.node = node;
    this.imageW = node.widgets.find((w) => w.name === "image");
    this.pointsW = node.widgets.find((w) => w.name === "points");
    this.maskW = node.widgets.find((w) => w.name === "mask");
    hideWidget(this.pointsW);
    hideWidget(this.maskW);

    this.img = null;          // loaded HTMLImageElement
    this.imgKey = null;       // widget value it was loaded for
    this.iw = 0; this.ih = 0; // natural size
    this.pairs = [];          // [{handle:[x,y], target:[x,y]}]
    this.pending = null;      // [x,y] handle waiting for its target
    this.pointsKey = null;    // points JSON last parsed or written
    this.mode = "points";
    this.erase = false;
    this.brush = 16;          // radius in image pixels
    this.mask = null;         // canvas of the image's size; alpha = mask
    this.tint = null;
    this.maskKey = null;      // mask widget value last loaded or written
    this.maskLoading = null;
    this.upload = Promise.resolve();
    this.uploadTimer = null;
    this.hover = null;        // {pair, which}
    this.drag = null;         // {pair, which} or {paint: true, erase}
    this.cursor = null;       // layout coords of the pointer
    this.overlay = null;      // {img, from}
    this.showOverlay = true;
    this.uploads = 0;         // mask uploads done (tests read it)
    this.liveOn = !!node.properties?.dragfusion_live;
    this.liveStatus = "";
    this.live = new LiveRunner(this);
    this.warpPreview = null;  // WarpPreview of this.img
    this.warp = null;         // warped image drawn in place of the image until the live result arrives
    this.warpLatency = [];    // ms from a pointer move to the warped frame drawn in the canvas (tests read it)

    this.buildDOM();
    const opts = {
      serialize: false,
      hideOnZoom: false,
      getMinHeight: () => MIN_CANVAS_HEIGHT + 60,
      getValue: () => undefined,
      setValue: () => {},
    };
    this.widget = node.addDOMWidget("drag_canvas", "dragfusion_canvas", this.root, opts);
    this.widget.serialize = false;

    // The mask PNG must be uploaded before the prompt is built.
    const self = this;
    this.maskW.serializeValue = async () => { await self.flushMask(); return self.maskW.value ?? ""; };

    this.timer = setInterval(() => this.sync(), 300);
    this.onExecuted = (e) => this.handleExecuted(e.detail);
    api.addEventListener("executed", this.onExecuted);
    this.sync();
  }

  dispose() {
    clearInterval(this.timer);
    api.removeEventListener("executed", this.onExecuted);
    this.live.dispose();
    this.resizeObserver?.disconnect();
  }

  // ---------------------------------------------------------------- DOM
  buildDOM() {
    this.canvas = el("canvas", {
      tabIndex: 0,
      style: { width: "100%", height: "100%", display: "block", outline: "none", cursor: "crosshair", touchAction: "none" },
    });
    this.canvas.dataset.dragfusion = "canvas";
    this.box = el("div", {
      style: { flex: "1 1 auto", minHeight: `${MIN_CANVAS_HEIGHT}px`, position: "relative", background: "#1b1b1b", borderRadius: "4px", overflow: "hidden" },
    }, [this.canvas]);

    this.btnPoints = button("Points", "Click a handle, then its target. Drag a point to move it; right-click or Delete removes the hovered pair.", () => this.setMode("points"));
    this.btnMask = button("Mask", "Paint the editable region (left button); erase with Erase or the right button.", () => this.setMode("mask"));
    this.btnErase = button("Erase", "Toggle: the left button erases the mask instead of painting.", () => { this.erase = !this.erase; this.refreshToolbar(); });
    this.size = el("input", { type: "range", min: 1, max: 128, value: this.brush, title: "Brush radius in image pixels", style: { width: "70px" } });
    this.size.addEventListener("input", () => { this.brush = Number(this.size.value); this.refreshToolbar(); this.draw(); });
    this.sizeLabel = el("span", { style: { font: "11px sans-serif", color: "#aaa", minWidth: "24px" } });
    this.btnUpload = button("Upload", "Upload an image into ComfyUI's input folder and use it (or drop an image file here).", () => this.pickFile());
    this.btnClear = button("Clear points", "Remove every handle -> target pair.", () => this.clearPoints());
    this.btnClearMask = button("Clear mask", "Erase the whole mask.", () => this.clearMask());
    this.btnLive = button("Live", "Live: about 0.3 s after you release a point, add a pair or finish a brush stroke, queue the "
      + "workflow by itself and draw its result here (a newer edit cancels the older run; only what the edit touches runs "
      + "again, the inversion comes from ComfyUI's cache). While you drag a point, a quick warp of the image previews the "
      + "move. Off by default; saved with the workflow.", () => this.setLive(!this.liveOn));
    this.btnLive.dataset.dragfusion = "live";
    this.btnOverlay = button("Result", "Show or hide the last result (AutoMask or preview image) of a node downstream.", () => { this.showOverlay = !this.showOverlay; this.refreshToolbar(); this.draw(); });
    this.status = el("div", { style: { font: "11px sans-serif", color: "#aaa", padding: "2px 2px 0", whiteSpace: "nowrap", overflow: "hidden", textOverflow: "ellipsis" } });
    this.status.dataset.dragfusion = "status";
    const bar = el("div", { style: { display: "flex", flexWrap: "wrap", gap: "4px", alignItems: "center", padding: "2px 0 4px" } },
      [this.btnUpload, this.btnPoints, this.btnMask, this.btnErase, this.size, this.sizeLabel, this.btnClear, this.btnClearMask, this.btnLive, this.btnOverlay]);
    this.root = el("div", {
      style: { display: "flex", flexDirection: "column", width: "100%", height: "100%", minHeight: `${MIN_CANVAS_HEIGHT + 60}px`, boxSizing: "border-box" },
    }, [bar, this.box, this.status]);
    this.root.dataset.dragfusion = "root";

    const c = this.canvas;
    c.addEventListener("pointerdown", (e) => this.onPointerDown(e));
    c.addEventListener("pointermove", (e) => this.onPointerMove(e));
    c.addEventListener("pointerup", (e) => this.onPointerUp(e));
    c.addEventListener("pointercancel", (e) => this.onPointerUp(e));
    c.addEventListener("pointerleave", () => { if (!this.drag) { this.hover = null; this.cursor = null; this.draw(); } });
    c.addEventListener("pointerenter", () => c.focus({ preventScroll: true }));
    c.addEventListener("contextmenu", (e) => this.onContextMenu(e));
    c.addEventListener("keydown", (e) => this.onKeyDown(e));
    for (const t of ["dragover", "drop"]) this.root.addEventListener(t, (e) => this.onDrop(e));
    this.resizeObserver = new ResizeObserver(() => this.draw());
    this.resizeObserver.observe(this.box);
    this.refreshToolbar();
  }

  refreshToolbar() {
    setActive(this.btnPoints, this.mode === "points");
    setActive(this.btnMask, this.mode === "mask");
    setActive(this.btnErase, this.erase);
    this.btnErase.style.display = this.size.style.display = this.sizeLabel.style.display = this.mode === "mask" ? "" : "none";
    this.sizeLabel.textContent = `${this.brush}px`;
    this.btnOverlay.style.display = this.overlay ? "" : "none";
    setActive(this.btnOverlay, this.showOverlay);
    setActive(this.btnLive, this.liveOn);
    this.canvas.style.cursor = this.mode === "mask" ? "none" : "crosshair";
    const n = this.pairs.length;
    const hint = !this.img ? "choose or upload an image"
      : this.mode === "mask" ? (this.erase ? "erasing mask" : "painting mask (right button erases)")
      : this.pending ? "click the target of the new pair (Esc cancels)" : "click a handle";
    const live = this.liveOn && this.liveStatus ? ` · ${this.liveStatus}` : "";
    this.status.textContent = `${n} pair${n === 1 ? "" : "s"}${this.mask ? " · mask" : ""}${this.img ? ` · ${this.iw}×${this.ih}` : ""} · ${hint}${live}`;
    this.status.title = this.status.textContent;
  }

  // ---------------------------------------------------------------- live
  setLive(on) {
    this.liveOn = !!on;
    this.node.properties = this.node.properties ?? {};
    this.node.properties.dragfusion_live = this.liveOn;
    this.liveStatus = this.liveOn ? "live: on" : "";
    if (this.liveOn) this.liveEdit();
    else { this.live.stop(); this.warp = null; }
    this.refreshToolbar();
    this.draw();
  }

  /** An edit of points or mask: with Live on, (re)queue the workflow. */
  liveEdit() {
    if (this.liveOn && this.img) this.live.changed();
  }

  setLiveStatus(text, isError = false) {
    this.liveStatus = text;
    this.status.style.color = isError ? "#f88" : "#aaa";
    this.refreshToolbar();
  }

  /** The live run failed or was cancelled: drop the drag preview, the canvas shows the image and the points. */
  liveFailed() {
    this.warp = null;
    this.draw();
  }

  /** Warp the image by the current pairs and draw it now; records the latency from ``t0`` (an event's timeStamp). */
  warpNow(t0) {
    if (!this.img) return;
    if (!this.warpPreview || this.warpPreview.img !== this.img) {
      this.warpPreview = new WarpPreview(this.img);
      this.warpPreview.img = this.img;
    }
    this.warp = this.warpPreview.update(this.pairs);
    if (this.frame) { cancelAnimationFrame(this.frame); this.frame = null; }
    this.render();
    const drawn = performance.now() - t0;
    requestAnimationFrame(() => {
      this.warpLatency.push({ drawn, frame: performance.now() - t0 });
      if (this.warpLatency.length > 500) this.warpLatency.shift();
    });
  }

  /** Core Load Image nodes that loaded the canvas's previous image for the same consumers follow it to ``key``. */
  followImage(prev, key) {
    const graph = this.node.graph;
    if (!graph || !prev || prev === key) return;
    const mine = downstreamIds(this.node);
    for (const n of graph._nodes ?? graph.nodes ?? []) {
      if ((n.comfyClass ?? n.type) !== "LoadImage" || n === this.node) continue;
      const w = n.widgets?.find((x) => x.name === "image");
      if (!w || String(w.value ?? "") !== prev) continue;
      if (![...downstreamIds(n)].some((id) => mine.has(id))) continue;
      const values = w.options?.values;
      if (Array.isArray(values) && !values.includes(key)) values.push(key);
      w.value = key;
      w.callback?.(key);
      n.setDirtyCanvas?.(true, true);
    }
  }

  setMode(mode) {
    this.mode = mode;
    this.pending = null;
    this.refreshToolbar();
    this.draw();
  }

  // ---------------------------------------------------------------- widget state
  /** Pick up widget values changed from outside (workflow load, combo change, undo). */
  sync() {
    const imageKey = String(this.imageW?.value ?? "");
    if (imageKey !== this.imgKey) this.loadImage(imageKey);
    const pv = String(this.pointsW?.value ?? "");
    if (pv !== this.pointsKey) this.readPoints(pv);
    const mv = String(this.maskW?.value ?? "");
    if (mv !== this.maskKey && !this.maskLoading) this.loadMask(mv);
    const lv = !!this.node.properties?.dragfusion_live;
    if (lv !== this.liveOn) { this.liveOn = lv; if (!lv) this.live.stop(); this.refreshToolbar(); }
  }

  loadImage(key) {
    this.followImage(this.imgKey, key);
    this.imgKey = key;
    if (!key) { this.img = null; this.draw(); return; }
    const img = new Image();
    img.onload = () => {
      if (this.imgKey !== key) return;
      this.img = img;
      this.iw = img.naturalWidth; this.ih = img.naturalHeight;
      this.overlay = null;
      this.warp = null;
      this.checkSizes();
      this.refreshToolbar();
      this.draw();
    };
    img.onerror = () => { if (this.imgKey === key) { this.img = null; this.iw = this.ih = 0; this.refreshToolbar(); this.draw(); } };
    img.src = viewURL(parseInputName(key));
  }

  /** Points or a mask made for an image of another size no longer apply: drop them. */
  checkSizes() {
    if (!this.img) return;
    let data = null;
    try { data = JSON.parse(this.pointsW.value || "null"); } catch { data = null; }
    if (this.pairs.length && data && (data.width !== this.iw || data.height !== this.ih)) {
      this.pairs = []; this.pending = null;
      this.writePoints();
    } else if (!this.pairs.length && data && (data.width !== this.iw || data.height !== this.ih)) {
      this.writePoints();
    }
    if (this.mask && (this.mask.width !== this.iw || this.mask.height !== this.ih)) this.clearMask();
  }

  readPoints(text) {
    this.pointsKey = text;
    let data = null;
    try { data = JSON.parse(text); } catch { data = null; }
    const pairs = [];
    for (const p of data?.pairs ?? []) {
      const ok = (xy) => Array.isArray(xy) && xy.length === 2 && xy.every(Number.isFinite);
      if (p && ok(p.handle) && ok(p.target)) pairs.push({ handle: [...p.handle], target: [...p.target] });
    }
    this.pairs = pairs;
    this.pending = null;
    this.refreshToolbar();
    this.draw();
  }

  writePoints() {
    const text = JSON.stringify({ version: 1, width: this.iw, height: this.ih, pairs: this.pairs });
    this.pointsKey = text;
    this.pointsW.value = text;
    this.pointsW.callback?.(text);
    this.changed();
    this.liveEdit();
  }

  changed() {
    this.refreshToolbar();
    this.draw();
    this.node.setDirtyCanvas?.(true, true);
    this.node.graph?.setDirtyCanvas?.(true, true);
    app.graph?.change?.();
  }

  ensureMask() {
    if (!this.img) return null;
    if (!this.mask || this.mask.width !== this.iw || this.mask.height !== this.ih) {
      this.mask = el("canvas", { width: this.iw, height: this.ih });
      this.tint = el("canvas", { width: this.iw, height: this.ih });
    }
    return this.mask;
  }

  loadMask(value) {
    this.maskKey = value;
    if (!value) { this.mask = null; this.tint = null; this.refreshToolbar(); this.draw(); return; }
    const img = new Image();
    this.maskLoading = new Promise((resolve) => {
      img.onload = () => {
        if (this.maskKey === value) {
          const m = el("canvas", { width: img.naturalWidth, height: img.naturalHeight });
          const ctx = m.getContext("2d");
          ctx.drawImage(img, 0, 0);
          // A mask without transparency (grey levels): use its brightness as alpha.
          const d = ctx.getImageData(0, 0, m.width, m.height);
          let opaque = true;
          for (let i = 3; i < d.data.length; i += 4) if (d.data[i] !== 255) { opaque = false; break; }
          if (opaque) {
            for (let i = 0; i < d.data.length; i += 4) {
              const v = (d.data[i] + d.data[i + 1] + d.data[i + 2]) / 3;
              d.data[i] = d.data[i + 1] = d.data[i + 2] = 255; d.data[i + 3] = v;
            }
            ctx.putImageData(d, 0, 0);
          }
          this.mask = m;
          this.tint = el("canvas", { width: m.width, height: m.height });
          this.updateTint();
          this.refreshToolbar();
          this.draw();
        }
        resolve();
      };
      img.onerror = () => { resolve(); };
    }).finally(() => { this.maskLoading = null; });
    img.src = viewURL(parseInputName(value));
  }

  updateTint() {
    if (!this.mask || !this.tint) return;
    const t = this.tint.getContext("2d");
    t.globalCompositeOperation = "source-over";
    t.clearRect(0, 0, this.tint.width, this.tint.height);
    t.fillStyle = MASK_TINT;
    t.fillRect(0, 0, this.tint.width, this.tint.height);
    t.globalCompositeOperation = "destination-in";
    t.drawImage(this.mask, 0, 0);
    t.globalCompositeOperation = "source-over";
  }

  clearPoints() {
    this.pairs = []; this.pending = null; this.hover = null;
    this.writePoints();
  }

  clearMask() {
    clearTimeout(this.uploadTimer);
    this.uploadTimer = null;
    this.mask = null; this.tint = null;
    this.maskKey = "";
    this.maskW.value = "";
    this.maskW.callback?.("");
    this.changed();
    this.liveEdit();
  }

  scheduleUpload() {
    clearTimeout(this.uploadTimer);
    this.uploadTimer = setTimeout(() => { this.uploadTimer = null; this.upload = this.upload.then(() => this.uploadMask()); }, 150);
  }

  /** Wait until the painted mask is on the server (called before queueing). */
  async flushMask() {
    if (this.uploadTimer) {
      clearTimeout(this.uploadTimer);
      this.uploadTimer = null;
      this.upload = this.upload.then(() => this.uploadMask());
    }
    await this.upload;
  }

  async uploadMask() {
    const m = this.mask;
    if (!m) return;
    const data = m.getContext("2d").getImageData(0, 0, m.width, m.height).data;
    let any = false;
    for (let i = 3; i < data.length; i += 4) if (data[i] > 127) { any = true; break; }
    if (!any) { this.clearMask(); return; }
    // A clean binary PNG: white, alpha 255 inside the mask, transparent outside.
    const out = el("canvas", { width: m.width, height: m.height });
    const octx = out.getContext("2d");
    const img = octx.createImageData(m.width, m.height);
    for (let i = 0; i < data.length; i += 4) {
      const on = data[i + 3] > 127 ? 255 : 0;
      img.data[i] = img.data[i + 1] = img.data[i + 2] = 255; img.data[i + 3] = on;
    }
    octx.putImageData(img, 0, 0);
    const blob = await new Promise((resolve) => out.toBlob(resolve, "image/png"));
    const name = `mask_${fnv1a(new Uint8Array(await blob.arrayBuffer()))}_${m.width}x${m.height}.png`;
    const body = new FormData();
    body.append("image", new File([blob], name, { type: "image/png" }));
    body.append("type", "input");
    body.append("subfolder", MASK_SUBFOLDER);
    body.append("overwrite", "true");
    const resp = await api.fetchApi("/upload/image", { method: "POST", body });
    if (resp.status !== 200) {
      console.error(`[${EXTENSION}] mask upload failed: ${resp.status} ${resp.statusText}`);
      return;
    }
    const r = await resp.json();
    const value = r.subfolder ? `${r.subfolder}/${r.name}` : r.name;
    if (this.mask !== m) return; // cleared meanwhile
    this.maskKey = value;
    this.maskW.value = value;
    this.maskW.callback?.(value);
    this.uploads += 1;
    this.changed();
  }

  // ---------------------------------------------------------------- overlay after a run
  handleExecuted(detail) {
    if (!detail?.output?.images?.length) return;
    const id = String(detail.display_node ?? detail.node);
    const down = downstreamDepths(this.node);
    const hit = down.get(id) ?? down.get(String(detail.node));
    if (!hit) return;
    const pid = detail.prompt_id;
    const live = this.live.accept(pid); // null: not a live prompt; false: an older edit's (stale)
    if (live === false) return;
    const source = this.node.graph?.getNodeById(detail.node);
    const from = source?.type ?? source?.comfyClass ?? "";
    const isAutoMask = /automask/i.test(from);
    if (!live && this.overlay && this.overlay.isAutoMask && !isAutoMask && this.overlay.prompt === pid) return;
    const info = detail.output.images[0];
    const img = new Image();
    img.onload = () => {
      // Only results of this image's shape can lie over it (not e.g. a side-by-side comparison).
      if (!this.iw || Math.abs(img.naturalWidth / img.naturalHeight - this.iw / this.ih) > 0.02) return;
      const tint = maskLikeTint(img);
      if (live) {
        // The live result: the newest edit's deepest image node (the workflow's final image), never a mask.
        if (tint || !this.live.take(pid, hit.depth)) return;
        this.overlay = { img, from, isAutoMask: false, prompt: pid, url: img.src, live: true, depth: hit.depth };
        this.warp = null;
      } else {
        this.overlay = { img: tint ?? img, from, isAutoMask, prompt: pid, url: img.src };
      }
      this.showOverlay = true;
      this.refreshToolbar();
      this.draw();
    };
    img.src = viewURL(info) + `&rand=${Math.random()}`;
  }

  // ---------------------------------------------------------------- geometry
  layout() {
    const cw = this.canvas.clientWidth, ch = this.canvas.clientHeight;
    if (!this.img || !cw || !ch) return { cw, ch, s: 1, ox: 0, oy: 0 };
    const s = Math.min(cw / this.iw, ch / this.ih);
    return { cw, ch, s, ox: (cw - this.iw * s) / 2, oy: (ch - this.ih * s) / 2 };
  }

  /** Pointer event -> layout coords (zoom-independent) and continuous image coords. */
  eventPos(e) {
    const rect = this.canvas.getBoundingClientRect();
    const L = this.layout();
    const kx = rect.width ? L.cw / rect.width : 1;
    const ky = rect.height ? L.ch / rect.height : 1;
    const lx = (e.clientX - rect.left) * kx, ly = (e.clientY - rect.top) * ky;
    return { lx, ly, u: (lx - L.ox) / L.s, v: (ly - L.oy) / L.s, L };
  }

  toLayout([x, y], L) { return [(x + 0.5) * L.s + L.ox, (y + 0.5) * L.s + L.oy]; }

  pixel(u, v) {
    return [Math.min(this.iw - 1, Math.max(0, Math.floor(u))), Math.min(this.ih - 1, Math.max(0, Math.floor(v)))];
  }

  inside(u, v) { return u >= 0 && v >= 0 && u < this.iw && v < this.ih; }

  hit(lx, ly, L) {
    let best = null, bestD = HIT_RADIUS;
    this.pairs.forEach((p, i) => {
      for (const which of ["target", "handle"]) {
        const [px, py] = this.toLayout(p[which], L);
        const d = Math.hypot(px - lx, py - ly);
        if (d <= bestD) { best = { pair: i, which }; bestD = d; }
      }
    });
    if (best) return best;
    // Near the arrow's shaft: hover the pair (no point to drag).
    this.pairs.forEach((p, i) => {
      const [ax, ay] = this.toLayout(p.handle, L), [bx, by] = this.toLayout(p.target, L);
      const dx = bx - ax, dy = by - ay, len2 = dx * dx + dy * dy || 1;
      const t = Math.max(0, Math.min(1, ((lx - ax) * dx + (ly - ay) * dy) / len2));
      const d = Math.hypot(ax + t * dx - lx, ay + t * dy - ly);
      if (d <= bestD / 2) { best = { pair: i, which: null }; bestD = d * 2; }
    });
    return best;
  }

  // ---------------------------------------------------------------- input
  onPointerDown(e) {
    e.stopPropagation();
    if (!this.img) return;
    const { lx, ly, u, v, L } = this.eventPos(e);
    this.cursor = [lx, ly];
    if (this.mode === "mask") {
      if (e.button !== 0 && e.button !== 2) return;
      e.preventDefault();
      this.drag = { paint: true, erase: this.erase || e.button === 2, last: [u, v] };
      this.canvas.setPointerCapture?.(e.pointerId);
      this.paint(u, v, u, v, this.drag.erase);
      return;
    }
    if (e.button !== 0) return;
    e.preventDefault();
    const h = this.hit(lx, ly, L);
    if (h && h.which) {
      this.drag = { pair: h.pair, which: h.which, moved: false };
      this.canvas.setPointerCapture?.(e.pointerId);
      return;
    }
    if (!this.inside(u, v)) return;
    const p = this.pixel(u, v);
    if (!this.pending) {
      this.pending = p;
      this.refreshToolbar();
      this.draw();
    } else {
      if (p[0] === this.pending[0] && p[1] === this.pending[1]) return; // target must differ
      this.pairs.push({ handle: this.pending, target: p });
      this.pending = null;
      if (this.liveOn) this.warpNow(e.timeStamp);
      this.writePoints();
    }
  }

  onPointerMove(e) {
    e.stopPropagation();
    if (!this.img) return;
    const { lx, ly, u, v, L } = this.eventPos(e);
    this.cursor = [lx, ly];
    if (this.drag?.paint) {
      const [pu, pv] = this.drag.last;
      this.paint(pu, pv, u, v, this.drag.erase);
      this.drag.last = [u, v];
      return;
    }
    if (this.drag) {
      const p = this.pairs[this.drag.pair];
      if (p) { p[this.drag.which] = this.pixel(u, v); this.drag.moved = true; }
      if (this.liveOn && p) this.warpNow(e.timeStamp);
      else this.draw();
      return;
    }
    if (this.mode === "points") {
      const h = this.hit(lx, ly, L);
      const changed = JSON.stringify(h) !== JSON.stringify(this.hover);
      this.hover = h;
      this.canvas.style.cursor = h?.which ? "move" : "crosshair";
      if (changed || this.pending) this.draw();
    } else {
      this.draw();
    }
  }

  onPointerUp(e) {
    e.stopPropagation();
    const d = this.drag;
    this.drag = null;
    try { this.canvas.releasePointerCapture?.(e.pointerId); } catch { /* not captured */ }
    if (!d) return;
    if (d.paint) { this.scheduleUpload(); this.changed(); this.liveEdit(); return; }
    if (d.moved) {
      const p = this.pairs[d.pair];
      if (p && p.handle[0] === p.target[0] && p.handle[1] === p.target[1]) {
        // A pair whose handle and target coincide is invalid: nudge the moved point back by one pixel.
        const q = p[d.which];
        q[0] = q[0] > 0 ? q[0] - 1 : q[0] + 1;
      }
      this.writePoints();
    }
  }

  onContextMenu(e) {
    e.preventDefault();
    e.stopPropagation();
    if (this.mode !== "points") return;
    const { lx, ly, L } = this.eventPos(e);
    const h = this.hit(lx, ly, L);
    if (h) this.removePair(h.pair);
    else if (this.pending) { this.pending = null; this.refreshToolbar(); this.draw(); }
  }

  onKeyDown(e) {
    if (e.key === "Delete" || e.key === "Backspace") {
      e.preventDefault();
      e.stopPropagation();
      if (this.hover && this.mode === "points") this.removePair(this.hover.pair);
    } else if (e.key === "Escape" && this.pending) {
      e.stopPropagation();
      this.pending = null;
      this.refreshToolbar();
      this.draw();
    }
  }

  removePair(i) {
    if (i < 0 || i >= this.pairs.length) return;
    this.pairs.splice(i, 1);
    this.hover = null;
    this.writePoints();
  }

  pickFile() {
    const input = el("input", { type: "file", accept: "image/png,image/jpeg,image/webp,image/gif,image/bmp" });
    input.addEventListener("change", () => { if (input.files?.length) this.uploadImage(input.files[0]); });
    input.click();
  }

  async onDrop(e) {
    const files = [...(e.dataTransfer?.files ?? [])].filter((f) => f.type.startsWith("image/"));
    if (!files.length) return;
    e.preventDefault();
    e.stopPropagation();
    if (e.type === "drop") await this.uploadImage(files[0]);
  }

  async uploadImage(file) {
    const body = new FormData();
    body.append("image", file);
    body.append("type", "input");
    const resp = await api.fetchApi("/upload/image", { method: "POST", body });
    if (resp.status !== 200) return;
    const r = await resp.json();
    const value = r.subfolder ? `${r.subfolder}/${r.name}` : r.name;
    const values = this.imageW.options?.values;
    if (Array.isArray(values) && !values.includes(value)) values.push(value);
    this.imageW.value = value;
    this.imageW.callback?.(value);
    this.sync();
  }

  paint(u0, v0, u1, v1, erase) {
    const m = this.ensureMask();
    if (!m) return;
    const ctx = m.getContext("2d");
    ctx.save();
    ctx.globalCompositeOperation = erase ? "destination-out" : "source-over";
    ctx.strokeStyle = ctx.fillStyle = "#fff";
    ctx.lineCap = ctx.lineJoin = "round";
    ctx.lineWidth = this.brush * 2;
    ctx.beginPath();
    ctx.moveTo(u0, v0);
    ctx.lineTo(u1 + (u0 === u1 && v0 === v1 ? 0.01 : 0), v1);
    ctx.stroke();
    ctx.restore();
    this.updateTint();
    this.draw();
  }

  // ---------------------------------------------------------------- drawing
  draw() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => { this.frame = null; this.render(); });
  }

  render() {
    const c = this.canvas;
    const dpr = window.devicePixelRatio || 1;
    const cw = c.clientWidth, ch = c.clientHeight;
    if (!cw || !ch) return;
    if (c.width !== Math.round(cw * dpr) || c.height !== Math.round(ch * dpr)) {
      c.width = Math.round(cw * dpr); c.height = Math.round(ch * dpr);
    }
    const ctx = c.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, cw, ch);
    if (!this.img) {
      ctx.fillStyle = "#888"; ctx.font = "12px sans-serif"; ctx.textAlign = "center";
      ctx.fillText("choose or upload an image", cw / 2, ch / 2);
      return;
    }
    const L = this.layout();
    const W = this.iw * L.s, H = this.ih * L.s;
    ctx.imageSmoothingEnabled = L.s < 1;
    const warped = this.liveOn && this.warp;
    ctx.drawImage(warped ? this.warp : this.img, L.ox, L.oy, W, H);
    if (this.overlay && this.showOverlay && !warped) {
      ctx.globalAlpha = this.overlay.live ? 1 : 0.6;
      ctx.drawImage(this.overlay.img, L.ox, L.oy, W, H);
      ctx.globalAlpha = 1;
    }
    if (this.tint) ctx.drawImage(this.tint, L.ox, L.oy, W, H);

    this.pairs.forEach((p, i) => {
      const [hx, hy] = this.toLayout(p.handle, L), [tx, ty] = this.toLayout(p.target, L);
      const hovered = this.hover?.pair === i;
      this.arrow(ctx, hx, hy, tx, ty, hovered);
      this.dot(ctx, hx, hy, HANDLE_COLOR, hovered && this.hover.which !== "target");
      this.dot(ctx, tx, ty, TARGET_COLOR, hovered && this.hover.which !== "handle");
      ctx.font = "bold 12px sans-serif"; ctx.textAlign = "left"; ctx.lineWidth = 3;
      ctx.strokeStyle = "#000"; ctx.strokeText(String(i + 1), hx + 7, hy - 7);
      ctx.fillStyle = "#fff"; ctx.fillText(String(i + 1), hx + 7, hy - 7);
    });
    if (this.pending) {
      const [hx, hy] = this.toLayout(this.pending, L);
      this.dot(ctx, hx, hy, HANDLE_COLOR, true);
      if (this.cursor && this.mode === "points") {
        ctx.setLineDash([4, 3]); ctx.strokeStyle = "rgba(255,255,255,0.8)"; ctx.lineWidth = 1.5;
        ctx.beginPath(); ctx.moveTo(hx, hy); ctx.lineTo(this.cursor[0], this.cursor[1]); ctx.stroke();
        ctx.setLineDash([]);
      }
    }
    if (this.mode === "mask" && this.cursor) {
      ctx.strokeStyle = this.erase ? "#f66" : "#ffd000"; ctx.lineWidth = 1.5;
      ctx.beginPath(); ctx.arc(this.cursor[0], this.cursor[1], Math.max(1, this.brush * L.s), 0, Math.PI * 2); ctx.stroke();
    }
  }

  arrow(ctx, x0, y0, x1, y1, hovered) {
    const a = Math.atan2(y1 - y0, x1 - x0);
    const head = 10;
    // End the shaft at the target dot's rim so the head stays visible.
    const len = Math.hypot(x1 - x0, y1 - y0);
    if (len > POINT_RADIUS * 3) { x1 -= (POINT_RADIUS + 1) * Math.cos(a); y1 -= (POINT_RADIUS + 1) * Math.sin(a); }
    for (const [color, width] of [["rgba(0,0,0,0.7)", hovered ? 5 : 4], [hovered ? "#ffd000" : "#fff", hovered ? 3 : 2]]) {
      ctx.strokeStyle = color; ctx.lineWidth = width; ctx.lineCap = "round";
      ctx.beginPath();
      ctx.moveTo(x0, y0); ctx.lineTo(x1, y1);
      ctx.moveTo(x1, y1); ctx.lineTo(x1 - head * Math.cos(a - 0.45), y1 - head * Math.sin(a - 0.45));
      ctx.moveTo(x1, y1); ctx.lineTo(x1 - head * Math.cos(a + 0.45), y1 - head * Math.sin(a + 0.45));
      ctx.stroke();
    }
  }

  dot(ctx, x, y, color, ring) {
    ctx.beginPath(); ctx.arc(x, y, POINT_RADIUS, 0, Math.PI * 2);
    ctx.fillStyle = color; ctx.fill();
    ctx.lineWidth = ring ? 2.5 : 1.5; ctx.strokeStyle = ring ? "#ffd000" : "#000"; ctx.stroke();
  }
}

app.registerExtension({
  name: EXTENSION,
  beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== NODE_TYPE) return;
    // The core Comfy.UploadImage extension turns the image_upload combo into an "upload" widget that also
    // shows the chosen image as a node preview, which would duplicate the canvas. The canvas has its own
    // Upload button (and accepts dropped files), so drop that widget before the node class is built.
    if (nodeData.input?.required?.upload) delete nodeData.input.required.upload;

    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const r = onNodeCreated?.apply(this, arguments);
      this.dragfusion = new DragCanvas(this);
      const [w, h] = this.size ?? [0, 0];
      this.setSize?.([Math.max(w, 380), Math.max(h, 470)]);
      return r;
    };

    const onConfigure = nodeType.prototype.onConfigure;
    nodeType.prototype.onConfigure = function () {
      const r = onConfigure?.apply(this, arguments);
      this.dragfusion?.sync();
      return r;
    };

    const onRemoved = nodeType.prototype.onRemoved;
    nodeType.prototype.onRemoved = function () {
      this.dragfusion?.dispose();
      return onRemoved?.apply(this, arguments);
    };
  },
});
