// DragFusion "Drag Points" Live mode: queue the workflow by itself after each edit, show its result on the
// canvas, and a quick pixel warp of the image while a point is being dragged.
//
// Imported by drag_points.js (it registers no extension of its own). The queueing goes through the same
// HTTP API as the Run button (POST /prompt), with `partial_execution_targets` set to the preview outputs fed
// by the canvas, so a live run never writes to the output folder. Live prompts carry a client id of their own,
// with their own websocket (/ws?clientId=...): their progress and errors reach the canvas only, so an
// intermediate edit that cannot run (say, the last pair removed) does not open the frontend's error dialog over
// the graph. A newer edit deletes the older prompt from the queue (POST /queue {"delete"}) or interrupts it
// while it runs (POST /interrupt {"prompt_id"}); results are matched to prompts by id and only the newest
// edit's are drawn.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

export const LIVE_DEBOUNCE_MS = 300;
const WARP_MAX_SIDE = 512;        // working resolution of the drag preview
const SAVE_NODES = new Set(["SaveImage", "SaveAnimatedWEBP", "SaveAnimatedPNG"]);
const EVENTS = new Set(["execution_start", "execution_cached", "executed", "execution_success", "execution_error",
  "execution_interrupted"]);

function graphLink(graph, id) {
  if (graph.getLink) return graph.getLink(id);
  const links = graph.links;
  return links?.get ? links.get(id) : links?.[id];
}

/** {id (string) -> {depth: longest path length from ``node``, node}} for every node its outputs feed. */
export function downstreamDepths(node) {
  const graph = node.graph;
  const found = new Map();
  const visit = (n, d) => {
    for (const out of n.outputs ?? []) {
      for (const lid of out.links ?? []) {
        const link = graph && graphLink(graph, lid);
        if (!link) continue;
        const key = String(link.target_id);
        if ((found.get(key)?.depth ?? -1) >= d + 1) continue;
        const next = graph.getNodeById(link.target_id);
        found.set(key, { depth: d + 1, node: next });
        if (next && d < 200) visit(next, d + 1);
      }
    }
  };
  visit(node, 0);
  return found;
}

function isOutputNode(n) {
  const def = n?.constructor?.nodeData;
  if (def && "output_node" in def) return !!def.output_node;
  return /Preview|Save/.test(n?.comfyClass ?? n?.type ?? "");
}

/**
 * Inverse pixel warp of ``src`` (ImageData) by the pairs' movements, into ``dst`` (ImageData of the same size):
 * an output pixel p samples the source at p - sum_i w_i(p) (target_i - handle_i), w_i a Gaussian around
 * target_i whose width grows with the movement, so the handle's neighbourhood lands on the target.
 * ``pairs`` in source pixels. Returns dst.
 */
export function warpImage(src, dst, pairs) {
  const w = src.width, h = src.height, s = src.data, o = dst.data;
  o.set(s);
  const moves = pairs.map((p) => {
    const dx = p.target[0] - p.handle[0], dy = p.target[1] - p.handle[1];
    const sigma = Math.max(6, 0.06 * Math.max(w, h), 0.5 * Math.hypot(dx, dy));
    return { tx: p.target[0], ty: p.target[1], dx, dy, k: -1 / (2 * sigma * sigma), r: 3 * sigma };
  }).filter((m) => m.dx || m.dy);
  if (!moves.length) return dst;
  let x0 = w, y0 = h, x1 = 0, y1 = 0;
  for (const m of moves) {
    x0 = Math.min(x0, m.tx - m.r); y0 = Math.min(y0, m.ty - m.r);
    x1 = Math.max(x1, m.tx + m.r); y1 = Math.max(y1, m.ty + m.r);
  }
  x0 = Math.max(0, Math.floor(x0)); y0 = Math.max(0, Math.floor(y0));
  x1 = Math.min(w - 1, Math.ceil(x1)); y1 = Math.min(h - 1, Math.ceil(y1));
  for (let y = y0; y <= y1; y++) {
    for (let x = x0; x <= x1; x++) {
      let ox = 0, oy = 0;
      for (const m of moves) {
        const ex = x - m.tx, ey = y - m.ty;
        const d2 = ex * ex + ey * ey;
        if (d2 > m.r * m.r) continue;
        const wgt = Math.exp(d2 * m.k);
        ox += wgt * m.dx; oy += wgt * m.dy;
      }
      if (!ox && !oy) continue;
      const sx = Math.min(w - 1, Math.max(0, Math.round(x - ox)));
      const sy = Math.min(h - 1, Math.max(0, Math.round(y - oy)));
      const i = (y * w + x) * 4, j = (sy * w + sx) * 4;
      o[i] = s[j]; o[i + 1] = s[j + 1]; o[i + 2] = s[j + 2]; o[i + 3] = s[j + 3];
    }
  }
  return dst;
}

/** The drag preview: the image at a working size, warped by the current pairs on demand. */
export class WarpPreview {
  constructor(img) {
    const k = Math.min(1, WARP_MAX_SIDE / Math.max(img.naturalWidth, img.naturalHeight));
    this.k = k;
    this.w = Math.max(1, Math.round(img.naturalWidth * k));
    this.h = Math.max(1, Math.round(img.naturalHeight * k));
    this.canvas = document.createElement("canvas");
    this.canvas.width = this.w; this.canvas.height = this.h;
    this.ctx = this.canvas.getContext("2d", { willReadFrequently: true });
    this.ctx.drawImage(img, 0, 0, this.w, this.h);
    this.src = this.ctx.getImageData(0, 0, this.w, this.h);
    this.dst = this.ctx.createImageData(this.w, this.h);
  }

  /** Warp by ``pairs`` (image pixels); -> the canvas to draw in place of the image. */
  update(pairs) {
    const k = this.k;
    const scaled = pairs.map((p) => ({
      handle: [(p.handle[0] + 0.5) * k, (p.handle[1] + 0.5) * k],
      target: [(p.target[0] + 0.5) * k, (p.target[1] + 0.5) * k],
    }));
    warpImage(this.src, this.dst, scaled);
    this.ctx.putImageData(this.dst, 0, 0);
    return this.canvas;
  }
}

/**
 * Queues the workflow after each edit of one canvas (debounced), cancels the older prompt, and tells the canvas
 * which results belong to the newest edit. ``canvas`` is the DragCanvas (for its node and its status line).
 */
export class LiveRunner {
  constructor(canvas) {
    this.canvas = canvas;
    this.gen = 0;             // edits seen; a prompt belongs to the edit count it was queued for
    this.timer = null;
    this.prompts = new Map(); // prompt_id -> {gen, t0, state: "queued"|"running"|"done"|"error"|"cancelled", best}
    this.running = null;      // prompt id the server says is executing
    this.stats = { queued: 0, cancelled: 0, results: 0, errors: 0, stale: 0 };
    this.early = new Map();   // prompt_id -> events that came before POST /prompt answered (replayed then)
    this.clientId = `dragfusion-live-${Math.random().toString(36).slice(2)}${Date.now().toString(36)}`;
    this.socket = null;
  }

  dispose() {
    clearTimeout(this.timer);
    this.disconnect();
  }

  /** The live prompts' own websocket (opened on first use, reopened if it closed). */
  connect() {
    if (this.socket && this.socket.readyState <= 1) {
      return this.socket.readyState === 1 ? Promise.resolve() : this.opening;
    }
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const host = api.api_host ?? location.host;
    const base = api.api_base ?? "";
    const ws = new WebSocket(`${proto}//${host}${base}/ws?clientId=${encodeURIComponent(this.clientId)}`);
    ws.binaryType = "arraybuffer";
    this.socket = ws;
    ws.addEventListener("message", (e) => {
      if (typeof e.data !== "string") return; // binary previews
      let msg = null;
      try { msg = JSON.parse(e.data); } catch { return; }
      if (msg && EVENTS.has(msg.type)) this.handleEvent(msg.type, msg.data);
    });
    this.opening = new Promise((resolve, reject) => {
      ws.addEventListener("open", () => resolve(), { once: true });
      ws.addEventListener("error", () => reject(new Error("the live websocket did not open")), { once: true });
    });
    return this.opening;
  }

  disconnect() {
    try { this.socket?.close(); } catch { /* closed */ }
    this.socket = null;
  }

  latest() {
    for (const [id, p] of this.prompts) if (p.gen === this.gen) return [id, p];
    return [null, null];
  }

  /** An edit happened: cancel what runs for the older state, queue the new one after the debounce. */
  changed() {
    this.gen += 1;
    this.cancelOlder();
    clearTimeout(this.timer);
    this.timer = setTimeout(() => { this.timer = null; this.fire(); }, LIVE_DEBOUNCE_MS);
    this.canvas.setLiveStatus("live: edit noted");
  }

  stop() {
    this.gen += 1;
    clearTimeout(this.timer);
    this.timer = null;
    this.cancelOlder();
    this.disconnect();
  }

  cancelOlder() {
    for (const [id, p] of this.prompts) {
      if (p.gen === this.gen || !["queued", "running"].includes(p.state)) continue;
      const wasRunning = p.state === "running" || this.running === id;
      p.state = "cancelled";
      this.stats.cancelled += 1;
      const post = (route, body) => api.fetchApi(route, {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
      const interrupt = () => post("/interrupt", { prompt_id: id });
      if (wasRunning) {
        interrupt().catch(() => {});
      } else {
        // Out of the queue; if it started meanwhile (its execution_start not here yet), interrupt it.
        post("/queue", { delete: [id] })
          .then(() => api.fetchApi("/queue")).then((r) => r.json())
          .then((q) => { if ((q.queue_running ?? []).some((item) => item[1] === id)) return interrupt(); })
          .catch(() => {});
      }
    }
  }

  /** Output nodes fed by the canvas that show a result without saving a file. */
  targets(output) {
    const ids = [];
    for (const [id, { node: n }] of downstreamDepths(this.canvas.node)) {
      if (!n || !(id in output) || !isOutputNode(n)) continue;
      if (SAVE_NODES.has(n.comfyClass ?? n.type)) continue;
      ids.push(id);
    }
    return ids;
  }

  async fire() {
    const gen = this.gen;
    let body;
    try {
      const p = await app.graphToPrompt();
      if (gen !== this.gen) return; // a newer edit while the prompt was built
      const targets = this.targets(p.output);
      if (!targets.length) {
        this.canvas.setLiveStatus("live: no preview node downstream of the canvas shows a result");
        this.canvas.liveFailed();
        return;
      }
      await this.connect();
      if (gen !== this.gen) return;
      body = {
        client_id: this.clientId,
        prompt: p.output,
        extra_data: { extra_pnginfo: { workflow: p.workflow } },
        partial_execution_targets: targets,
      };
    } catch (e) {
      this.canvas.setLiveStatus(`live: could not build the prompt: ${e?.message ?? e}`, true);
      this.canvas.liveFailed();
      this.stats.errors += 1;
      return;
    }
    let res, out;
    try {
      res = await api.fetchApi("/prompt", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
      out = await res.json();
    } catch (e) {
      this.canvas.setLiveStatus(`live: the server did not take the prompt: ${e?.message ?? e}`, true);
      this.canvas.liveFailed();
      this.stats.errors += 1;
      return;
    }
    if (res.status !== 200 || !out?.prompt_id) {
      const nodeErr = Object.values(out?.node_errors ?? {})[0];
      const why = nodeErr?.errors?.[0]?.details || nodeErr?.errors?.[0]?.message || out?.error?.message || `HTTP ${res.status}`;
      this.canvas.setLiveStatus(`live: the workflow was rejected: ${why}`, true);
      this.canvas.liveFailed();
      this.stats.errors += 1;
      return;
    }
    this.stats.queued += 1;
    this.prompts.set(out.prompt_id, { gen, t0: performance.now(), state: "queued", best: -1, cached: 0 });
    while (this.prompts.size > 50) this.prompts.delete(this.prompts.keys().next().value);
    if (gen === this.gen) this.canvas.setLiveStatus("live: queued");
    // The server may start (even finish) the prompt before its answer reaches us: replay what came meanwhile.
    const early = this.early.get(out.prompt_id) ?? [];
    this.early.delete(out.prompt_id);
    for (const [type, d] of early) this.handleEvent(type, d);
    if (gen !== this.gen) this.cancelOlder();
  }

  handleEvent(type, d) {
    const id = d?.prompt_id;
    const p = id && this.prompts.get(id);
    if (type === "execution_start") this.running = id ?? null;
    if (!p) {
      // Every prompt on this socket is a live one: keep its events until POST /prompt has answered.
      if (id) {
        if (!this.early.has(id)) this.early.set(id, []);
        this.early.get(id).push([type, d]);
        while (this.early.size > 20) this.early.delete(this.early.keys().next().value);
      }
      return;
    }
    const current = p.gen === this.gen;
    if (type === "executed") {
      this.canvas.handleExecuted(d);
    } else if (type === "execution_start") {
      if (p.state === "queued") p.state = "running";
      if (current) this.canvas.setLiveStatus("live: running");
    } else if (type === "execution_cached") {
      p.cached = (d.nodes ?? []).length;
      if (current) this.canvas.setLiveStatus(`live: running (${p.cached} nodes from the cache)`);
    } else if (type === "execution_success") {
      if (this.running === id) this.running = null;
      if (p.state !== "cancelled") p.state = "done";
      if (current) {
        const s = ((performance.now() - p.t0) / 1000).toFixed(1);
        this.canvas.setLiveStatus(`live: result in ${s} s (${p.cached} nodes from the cache)`);
      }
    } else if (type === "execution_error") {
      if (this.running === id) this.running = null;
      p.state = "error";
      this.stats.errors += 1;
      if (current) {
        this.canvas.setLiveStatus(`live: error in ${d.node_type ?? "a node"}: ${d.exception_message ?? ""}`.trim(), true);
        this.canvas.liveFailed();
      }
    } else if (type === "execution_interrupted") {
      if (this.running === id) this.running = null;
      const mine = p.state === "cancelled";
      p.state = "cancelled";
      if (current && !mine) {
        this.canvas.setLiveStatus("live: cancelled");
        this.canvas.liveFailed();
      }
    }
  }

  /** Is ``promptId`` a live prompt? null: not one of ours; false: an older edit's (stale; counted); true: the newest. */
  accept(promptId) {
    const p = this.prompts.get(promptId);
    if (!p) return null;
    if (p.gen !== this.gen || p.state === "cancelled") { this.stats.stale += 1; return false; }
    return true;
  }

  /**
   * An image of ``promptId`` from a node ``depth`` links below the canvas has loaded: may it replace the shown
   * result? Only if it still is the newest edit's, and from the deepest image node seen for it (the final image).
   */
  take(promptId, depth) {
    const p = this.prompts.get(promptId);
    if (!p || p.gen !== this.gen || p.state === "cancelled") { this.stats.stale += 1; return false; }
    if (depth < p.best) return false;
    p.best = depth;
    this.stats.results += 1;
    return true;
  }
}
