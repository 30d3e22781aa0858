// The Spatial-SAM prompt tool of the viewer: a click on the image in a 2D panel adds a positive
// point at the voxel under the mouse, shift+click a negative one; each prompt is sent to the
// bridge's live session (started on the first click) and propagated through z. Masks appear in a
// live segmentation layer; the bridge's event stream names the chunks that changed and only those
// are fetched again (live_worker.ts). Prompts are kept as points of a local annotation layer, so
// they are part of the URL state and a shared link replays them.
import { ChunkState } from "neuroglancer/unstable/chunk_manager/base.js";
import { ChunkSource } from "neuroglancer/unstable/chunk_manager/frontend.js";
import { AnnotationType, type Point } from "neuroglancer/unstable/annotation/index.js";
import { makeLayer, type ManagedUserLayer } from "neuroglancer/unstable/layer/index.js";
import { registerActionListener } from "neuroglancer/unstable/util/event_action_map.js";
import type { Viewer } from "neuroglancer/unstable/viewer.js";
import { CLIENT_ID_HEADER, SESSIONS_API_PATH, type LiveChangeEvent } from "#src/bridge_api.ts";
import { INVALIDATE_CHUNKS_RPC, type InvalidateChunksMessage } from "#layer/live_refresh.ts";
import { SCHEME } from "#layer/spatialsam_url.ts";

export const PROMPTS_LAYER = "spatial-sam prompts";
export const LIVE_LAYER = "spatial-sam live";
const POSITIVE_ACTION = "spatialsam-prompt-positive";
const NEGATIVE_ACTION = "spatialsam-prompt-negative";

/**
 * When a chunk is downloaded again, Neuroglancer 2.40.1 puts the new chunk in the source's map
 * without freeing the old one's textures (it never replaces a chunk otherwise). Free them here.
 */
function freeReplacedChunks(): void {
  const addChunk = ChunkSource.prototype.addChunk;
  ChunkSource.prototype.addChunk = function (this: ChunkSource, key, chunk) {
    const old = this.chunks.get(key);
    if (old !== undefined && old !== chunk && old.state === ChunkState.GPU_MEMORY) old.freeGPUMemory(this.gl);
    addChunk.call(this, key, chunk);
  };
}

interface Session {
  sessionId: string;
  liveVolumeId: string;
  scaleKey: string;
  source: string;
  box: { offsetZyx: number[]; shapeZyx: number[] };
}

interface Prompt {
  objectId: string;
  label: "positive" | "negative";
  /** Volume voxel coordinates (x, y, z), continuous. */
  point: [number, number, number];
}

/** What the page exposes as `window.spatialSam` (used by the browser test and handy in a console). */
export interface LiveToolDebug {
  session: Session | undefined;
  /** Requests in flight or queued. */
  pending: number;
  /** The newest generation the event stream announced, and the newest a request answered. */
  generation: number;
  answered: number;
  events: LiveChangeEvent[];
  objectId: string;
  errors: string[];
  /** The bridge volume id of the last accepted result (`spatialsam://<id>`). */
  accepted?: string;
}

function tabId(): string {
  // One id per tab (sessionStorage is per tab), so the bridge rate-limits each tab on its own.
  let id = sessionStorage.getItem("spatialsam-client-id");
  if (id === null) {
    id = Array.from(crypto.getRandomValues(new Uint8Array(12)), (b) => b.toString(16).padStart(2, "0")).join("");
    sessionStorage.setItem("spatialsam-client-id", id);
  }
  return id;
}

/** The bridge volume id of a layer opened as `spatialsam://<id>` (undefined for other sources). */
function spatialsamId(layer: ManagedUserLayer): string | undefined {
  const json = layer.toJSON() as { source?: unknown } | undefined;
  const src = json?.source;
  const url = typeof src === "string" ? src : Array.isArray(src) ? undefined : (src as { url?: unknown } | undefined)?.url;
  const prefix = `${SCHEME}://`;
  return typeof url === "string" && url.startsWith(prefix) ? url.slice(prefix.length).replace(/\/+$/, "") : undefined;
}

export class LiveTool {
  readonly debug: LiveToolDebug = { session: undefined, pending: 0, generation: 0, answered: 0, events: [], objectId: "1", errors: [] };
  readonly #viewer: Viewer;
  readonly #clientId = tabId();
  #tail: Promise<unknown> = Promise.resolve();
  #events: EventSource | undefined;
  /** Changed chunks not yet sent to the worker (a propagation announces every slice). */
  #stale = new Set<string>();
  #flush: ReturnType<typeof setTimeout> | undefined;
  #panel: HTMLElement;
  #objectList: HTMLElement;
  #status: HTMLElement;
  #objectLabel: HTMLElement;
  #enabled: HTMLInputElement;
  #reach: HTMLInputElement;

  constructor(viewer: Viewer) {
    this.#viewer = viewer;
    freeReplacedChunks();
    this.#panel = document.createElement("div");
    this.#panel.className = "spatialsam-panel";
    this.#panel.style.cssText =
      "position:absolute;right:8px;bottom:8px;z-index:100;background:rgba(20,20,20,0.85);color:#eee;font:12px sans-serif;padding:6px 8px;border:1px solid #555;border-radius:4px;min-width:170px";
    this.#panel.innerHTML = `
      <div style="font-weight:bold;margin-bottom:4px">Spatial-SAM</div>
      <label title="click: positive point, shift+click: negative point (2D panels)"><input type="checkbox" data-role="enabled" checked> click to prompt</label>
      <div style="margin:4px 0">object <span data-role="object">1</span> <button data-role="new-object">new object</button></div>
      <label title="slices each way a click propagates (empty: to the volume's edges); the button always goes to the edges">reach <input data-role="reach" type="number" min="1" placeholder="all" style="width:4em"></label>
      <button data-role="propagate">propagate</button>
      <button data-role="accept" title="save the live volume on the server as a precomputed volume">accept</button>
      <table data-role="objects" style="margin-top:4px;border-collapse:collapse"></table>
      <div data-role="status" style="margin-top:4px;color:#aaa"></div>`;
    const q = <T extends HTMLElement>(role: string) => this.#panel.querySelector(`[data-role="${role}"]`) as T;
    this.#enabled = q<HTMLInputElement>("enabled");
    this.#reach = q<HTMLInputElement>("reach");
    // Kept per browser (not per link): how far a click propagates is the user's habit, not data.
    this.#reach.value = localStorage.getItem("spatialsam-reach") ?? "";
    this.#reach.addEventListener("change", () => localStorage.setItem("spatialsam-reach", this.#reach.value));
    this.#objectLabel = q("object");
    this.#objectList = q("objects");
    this.#status = q("status");
    q("new-object").addEventListener("click", () => this.#setObject(String(this.#nextObjectId())));
    q("propagate").addEventListener("click", () => void this.#run("propagate", () => this.#propagate(undefined)));
    q("accept").addEventListener("click", () => void this.#run("accept", () => this.#accept()));
    viewer.element.appendChild(this.#panel);
    // Plain click / shift+click in the 2D panels; dragging still pans (mousedown) and rotates.
    viewer.inputEventBindings.sliceView.set("at:click0", { action: POSITIVE_ACTION, stopPropagation: false });
    viewer.inputEventBindings.sliceView.set("at:shift+click0", { action: NEGATIVE_ACTION, stopPropagation: false });
    registerActionListener(viewer.element, POSITIVE_ACTION, () => this.#onClick("positive"));
    registerActionListener(viewer.element, NEGATIVE_ACTION, () => this.#onClick("negative"));
  }

  #setObject(id: string): void {
    this.debug.objectId = id;
    this.#objectLabel.textContent = id;
  }

  #nextObjectId(): bigint {
    let max = 0n;
    for (const p of this.#prompts()) if (BigInt(p.objectId) > max) max = BigInt(p.objectId);
    return max + 1n;
  }

  #onClick(label: "positive" | "negative"): void {
    if (!this.#enabled.checked) return;
    const mouse = this.#viewer.mouseState;
    mouse.updateUnconditionally();
    if (!mouse.active) return;
    const p = mouse.position;
    const prompt: Prompt = { objectId: this.debug.objectId, label, point: [p[0]!, p[1]!, Math.floor(p[2]!)] };
    void this.#run("prompt", async () => {
      await this.#addPromptAnnotation(prompt);
      await this.#sendPrompts(prompt.objectId, prompt.point[2], [prompt]);
      await this.#propagate(this.#clickReach());
    });
  }

  /** Runs request groups one after another; errors go to the panel and to `debug.errors`. */
  #run(what: string, fn: () => Promise<void>): Promise<void> {
    this.debug.pending++;
    this.#status.textContent = `${what}...`;
    const run = this.#tail.then(fn).then(
      () => {
        this.#status.textContent = `generation ${this.debug.generation}${this.debug.accepted === undefined ? "" : `, saved as ${this.debug.accepted}`}`;
      },
      (e: unknown) => {
        const msg = e instanceof Error ? e.message : String(e);
        this.debug.errors.push(msg);
        this.#status.textContent = msg;
        console.error("Spatial-SAM:", e);
      },
    );
    this.#tail = run.finally(() => this.debug.pending--);
    return run;
  }

  async #api<T>(method: string, path: string, body?: unknown): Promise<T> {
    const res = await fetch(new URL(path, window.location.href), {
      method,
      headers: { "Content-Type": "application/json", [CLIENT_ID_HEADER]: this.#clientId },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });
    const text = await res.text();
    const json: unknown = text === "" ? {} : JSON.parse(text);
    if (!res.ok) {
      const e = json as { field?: string; message?: string };
      throw new Error(`${method} ${path}: HTTP ${res.status}${e.message ? `: ${e.message}` : ""}`);
    }
    return json as T;
  }

  /** A request whose answer carries the live volume's generation after it. */
  async #answered(method: string, path: string, body?: unknown): Promise<void> {
    const r = await this.#api<{ generation: number }>(method, path, body);
    this.debug.answered = Math.max(this.debug.answered, r.generation);
  }

  /** The image the session segments: the first image layer opened from the bridge. */
  #imageVolumeId(): string {
    for (const l of this.#viewer.layerManager.managedLayers) {
      const id = spatialsamId(l);
      if (id !== undefined && (l.toJSON() as { type?: string }).type === "image") return id;
    }
    throw new Error(`no image layer with a ${SCHEME}:// source to segment`);
  }

  async #ensureSession(): Promise<Session> {
    if (this.debug.session !== undefined) return this.debug.session;
    const s = await this.#api<Session>("POST", SESSIONS_API_PATH, { volumeId: this.#imageVolumeId() });
    this.debug.session = s;
    // A live layer left from a shared link names a session of another time: replace it.
    const old = this.#viewer.layerManager.getLayerByName(LIVE_LAYER);
    if (old !== undefined) this.#viewer.layerManager.removeManagedLayer(old);
    const spec = this.#viewer.layerSpecification;
    spec.add(makeLayer(spec, LIVE_LAYER, { type: "segmentation", source: s.source, selectedAlpha: 0.6 }));
    this.#events = new EventSource(new URL(`${SESSIONS_API_PATH}/${s.sessionId}/events`, window.location.href));
    this.#events.addEventListener("chunks", (e) => this.#onChange(JSON.parse((e as MessageEvent<string>).data) as LiveChangeEvent));
    return s;
  }

  #onChange(e: LiveChangeEvent): void {
    this.debug.events.push(e);
    this.debug.generation = Math.max(this.debug.generation, e.generation);
    this.#renderObjects(e.objects);
    if (e.chunks.length === 0) return;
    for (const c of e.chunks) this.#stale.add(c);
    // Coalesced for a moment, so a chunk changed by several slices in a row is fetched once.
    this.#flush ??= setTimeout(() => {
      this.#flush = undefined;
      const queue = this.#viewer.chunkQueueManager;
      const msg: InvalidateChunksMessage = {
        queue: queue.rpcId!,
        url: `${window.location.origin}/volumes/${e.volumeId}/${e.scaleKey}`,
        chunks: [...this.#stale],
      };
      this.#stale.clear();
      queue.rpc!.invoke(INVALIDATE_CHUNKS_RPC, msg);
    }, 100);
  }

  /** True when no request is pending and every announced change has been handed to the worker. */
  get idle(): boolean {
    return this.debug.pending === 0 && this.#flush === undefined && this.debug.generation >= this.debug.answered;
  }

  #renderObjects(objects: LiveChangeEvent["objects"]): void {
    this.#objectList.replaceChildren(
      ...objects.map((o) => {
        const row = document.createElement("tr");
        row.innerHTML = `<td style="padding-right:6px">${o.objectId}</td><td style="padding-right:6px;text-align:right">${o.voxels}</td><td><button>delete</button></td>`;
        row.querySelector("button")!.addEventListener("click", () => void this.#run("delete", () => this.#deleteObject(o.objectId)));
        row.addEventListener("dblclick", () => this.#setObject(o.objectId));
        return row;
      }),
    );
  }

  async #sendPrompts(objectId: string, z: number, prompts: Prompt[]): Promise<void> {
    const s = await this.#ensureSession();
    await this.#answered("POST", `${SESSIONS_API_PATH}/${s.sessionId}/prompts`, {
      objectId,
      z,
      points: prompts.map((p) => ({ x: p.point[0], y: p.point[1], label: p.label })),
    });
  }

  /** Slices each way a click propagates; undefined: to the volume's edges. */
  #clickReach(): number | undefined {
    const n = Number(this.#reach.value);
    return this.#reach.value !== "" && Number.isInteger(n) && n >= 1 ? n : undefined;
  }

  async #propagate(reach: number | undefined): Promise<void> {
    const s = await this.#ensureSession();
    const maxSlices = reach === undefined ? undefined : Math.min(reach + 1, s.box.shapeZyx[0]!);
    await this.#answered("POST", `${SESSIONS_API_PATH}/${s.sessionId}/propagate`, { direction: "both", ...(maxSlices === undefined ? {} : { maxSlices }) });
  }

  async #accept(): Promise<void> {
    const s = await this.#ensureSession();
    const r = await this.#api<{ volumeId: string }>("POST", `${SESSIONS_API_PATH}/${s.sessionId}/accept`);
    this.debug.accepted = r.volumeId;
  }

  async #deleteObject(objectId: string): Promise<void> {
    const s = await this.#ensureSession();
    await this.#answered("DELETE", `${SESSIONS_API_PATH}/${s.sessionId}/objects/${objectId}`);
    const layer = this.#promptsLayer(false);
    if (layer === undefined) return;
    for (const a of [...layer.localAnnotations]) if (a.description?.slice(1) === objectId) layer.localAnnotations.delete(layer.localAnnotations.getReference(a.id));
  }

  /** The local annotation layer holding the prompts (its state is in the URL). */
  #promptsLayer(create: boolean): { localAnnotations: PromptAnnotations } | undefined {
    let managed = this.#viewer.layerManager.getLayerByName(PROMPTS_LAYER);
    if (managed === undefined) {
      if (!create) return undefined;
      const spec = this.#viewer.layerSpecification;
      managed = makeLayer(spec, PROMPTS_LAYER, { type: "annotation", source: "local://annotations", annotationColor: "#ffff00" });
      spec.add(managed);
    }
    const layer = managed.layer as unknown as { localAnnotations?: PromptAnnotations } | null;
    return layer?.localAnnotations === undefined ? undefined : (layer as { localAnnotations: PromptAnnotations });
  }

  async #addPromptAnnotation(p: Prompt): Promise<void> {
    // A new annotation layer has no annotation source until its (local) data source has loaded.
    let layer = this.#promptsLayer(true);
    for (let i = 0; layer === undefined && i < 250; i++) {
      await new Promise((resolve) => setTimeout(resolve, 20));
      layer = this.#promptsLayer(true);
    }
    if (layer === undefined) throw new Error(`the ${PROMPTS_LAYER} layer did not load`);
    const point: Point = {
      type: AnnotationType.POINT,
      id: "",
      point: Float32Array.of(p.point[0], p.point[1], p.point[2] + 0.5),
      description: `${p.label === "positive" ? "+" : "-"}${p.objectId}`,
      properties: [],
    };
    layer.localAnnotations.add(point);
  }

  #prompts(): Prompt[] {
    const layer = this.#promptsLayer(false);
    if (layer === undefined) return [];
    const out: Prompt[] = [];
    for (const a of layer.localAnnotations) {
      const m = /^([+-])([0-9]{1,20})$/.exec(a.description ?? "");
      if (a.type !== AnnotationType.POINT || m === null) continue;
      const pt = (a as Point).point;
      out.push({ objectId: m[2]!, label: m[1] === "+" ? "positive" : "negative", point: [pt[0]!, pt[1]!, Math.floor(pt[2]!)] });
    }
    return out;
  }

  /** A shared link's prompts: start a session, send them per (object, slice), propagate once. */
  replayPrompts(): Promise<void> {
    const prompts = this.#prompts();
    if (prompts.length === 0) return Promise.resolve();
    this.#setObject(String(this.#nextObjectId() - 1n));
    return this.#run("replay", async () => {
      const groups = new Map<string, Prompt[]>();
      for (const p of prompts) {
        const key = `${p.objectId}|${p.point[2]}`;
        groups.set(key, [...(groups.get(key) ?? []), p]);
      }
      for (const g of groups.values()) await this.#sendPrompts(g[0]!.objectId, g[0]!.point[2], g);
      await this.#propagate(this.#clickReach());
    });
  }
}

/** The local annotation source's API used here (iterable, add, delete). */
interface PromptAnnotations extends Iterable<Point & { description?: string | null }> {
  add(a: Point): void;
  delete(ref: unknown): void;
  getReference(id: string): unknown;
}
