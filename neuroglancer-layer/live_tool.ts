// The Spatial-SAM prompt tool of the viewer: a click on the image in a 2D panel adds a positive
// point at the voxel under the mouse, shift+click a negative one, ctrl+shift+drag a box; each
// prompt is sent to the bridge's live session (started on the first prompt) and propagated through
// z. "segment view" has the server segment every mitochondrion in the xy panel's view. Masks
// appear in a live segmentation layer; the bridge's event stream names the chunks and objects that
// changed and only those chunks and those objects' meshes are fetched again (live_worker.ts).
// Prompts are kept as annotations of a local annotation layer, so they are part of the URL state
// and a shared link replays them.
import { ChunkState } from "neuroglancer/unstable/chunk_manager/base.js";
import { ChunkSource } from "neuroglancer/unstable/chunk_manager/frontend.js";
import { AnnotationType, type AxisAlignedBoundingBox, type Point } from "neuroglancer/unstable/annotation/index.js";
import { makeLayer, type ManagedUserLayer } from "neuroglancer/unstable/layer/index.js";
import { registerActionListener, type ActionEvent } from "neuroglancer/unstable/util/event_action_map.js";
import { startRelativeMouseDrag } from "neuroglancer/unstable/util/mouse_drag.js";
import { Uint64 } from "neuroglancer/unstable/util/uint64.js";
import type { Viewer } from "neuroglancer/unstable/viewer.js";
import { CLIENT_ID_HEADER, DEFAULT_MAX_SESSION_VOXELS, SEGMENT_VIEW_PATH, SESSIONS_API_PATH, volumePath, type LiveChangeEvent, type LiveProgressEvent } from "#src/bridge_api.ts";
import { INVALIDATE_CHUNKS_RPC, INVALIDATE_MESHES_RPC, type InvalidateChunksMessage, type InvalidateMeshesMessage } from "#layer/live_refresh.ts";
import { inSessionBox, sessionBox } from "#layer/session_box.ts";
import { SCHEME } from "#layer/spatialsam_url.ts";

export const PROMPTS_LAYER = "spatial-sam prompts";
export const LIVE_LAYER = "spatial-sam live";
const POSITIVE_ACTION = "spatialsam-prompt-positive";
const NEGATIVE_ACTION = "spatialsam-prompt-negative";
const BOX_ACTION = "spatialsam-prompt-box";

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
  /** Largest segment-in-view box (voxels). */
  maxSegmentVoxels: number;
  /** The bridge's largest session box (voxels). */
  maxSessionVoxels: number;
}

interface Prompt {
  objectId: string;
  label: "positive" | "negative";
  /** Volume voxel coordinates (x, y, z), continuous. */
  point: [number, number, number];
}

/** A box prompt: half-open voxels on slice z. */
interface BoxPrompt {
  objectId: string;
  z: number;
  box: { x0: number; y0: number; x1: number; y1: number };
}

/** A segment-in-view box (half-open voxels). */
export interface ViewBox {
  x0: number;
  y0: number;
  z0: number;
  x1: number;
  y1: number;
  z1: number;
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
  /** The automatic segmentation's progress events, and the box and answer of the last one. */
  progress: LiveProgressEvent[];
  segmentBox?: ViewBox;
  segmented?: { newObjects: string[]; cancelled: boolean };
  /** Mesh refreshes sent to the worker (objects per message). */
  meshRefreshes: string[][];
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
  readonly debug: LiveToolDebug = { session: undefined, pending: 0, generation: 0, answered: 0, events: [], objectId: "1", errors: [], progress: [], meshRefreshes: [] };
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
  /** Said after each request's status (e.g. that a new session replaced the last one). */
  #note = "";
  /** The bridge's session limit: its default until a session tells the bridge's own. */
  #maxSessionVoxels = DEFAULT_MAX_SESSION_VOXELS;
  #objectLabel: HTMLElement;
  #enabled: HTMLInputElement;
  #reach: HTMLInputElement;
  #depth: HTMLInputElement;
  #segmentButton: HTMLButtonElement;
  /** The running segment-in-view request (aborting it cancels the server's run). */
  #segmenting: AbortController | undefined;
  /** Objects the live layer shows (selected, so the 3D panel meshes them). */
  #shown = new Set<string>();
  #staleMeshes = new Set<string>();
  /** The highest object id seen in the session's object lists. */
  #maxListed = 0n;
  #boxOverlay: HTMLElement;

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
      <div style="margin:4px 0" title="every mitochondrion in the xy panel's view, over this many slices each way of the current one (fewer when the box would exceed the server's voxel limit); again while it runs: cancel">
        <button data-role="segment-view">segment view</button> &plusmn;<input data-role="depth" type="number" min="0" value="8" style="width:3em"> slices</div>
      <div style="color:#aaa">ctrl+shift+drag: box prompt</div>
      <table data-role="objects" style="margin-top:4px;border-collapse:collapse;display:block;max-height:150px;overflow-y:auto"></table>
      <div data-role="status" style="margin-top:4px;color:#aaa"></div>`;
    const q = <T extends HTMLElement>(role: string) => this.#panel.querySelector(`[data-role="${role}"]`) as T;
    this.#enabled = q<HTMLInputElement>("enabled");
    this.#reach = q<HTMLInputElement>("reach");
    // Kept per browser (not per link): how far a click propagates is the user's habit, not data.
    this.#reach.value = localStorage.getItem("spatialsam-reach") ?? "";
    this.#reach.addEventListener("change", () => localStorage.setItem("spatialsam-reach", this.#reach.value));
    this.#depth = q<HTMLInputElement>("depth");
    this.#segmentButton = q<HTMLButtonElement>("segment-view");
    this.#segmentButton.addEventListener("click", () => void this.segmentView());
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
    // ctrl+drag is Neuroglancer's annotate, alt+drag moves annotations: ctrl+shift+drag is free.
    viewer.inputEventBindings.sliceView.set("at:control+shift+mousedown0", { action: BOX_ACTION, stopPropagation: true, preventDefault: true });
    registerActionListener(viewer.element, BOX_ACTION, (e: ActionEvent<MouseEvent>) => this.#onBoxDrag(e.detail));
    this.#boxOverlay = document.createElement("div");
    this.#boxOverlay.style.cssText = "position:fixed;border:1px dashed #ff0;pointer-events:none;display:none;z-index:99";
    document.body.appendChild(this.#boxOverlay);
  }

  /** The voxel position under the mouse (global coordinates), or undefined outside the data. */
  #mouseVoxel(): [number, number, number] | undefined {
    const mouse = this.#viewer.mouseState;
    mouse.updateUnconditionally();
    if (!mouse.active) return undefined;
    const p = mouse.position;
    return [p[0]!, p[1]!, p[2]!];
  }

  /** ctrl+shift+drag: a rectangle on the slice, sent as a box prompt on release. */
  #onBoxDrag(down: MouseEvent): void {
    if (!this.#enabled.checked) return;
    const start = this.#mouseVoxel();
    if (start === undefined) return;
    const [cx, cy] = [down.clientX, down.clientY];
    const overlay = this.#boxOverlay;
    const draw = (e: MouseEvent) => {
      overlay.style.left = `${Math.min(cx, e.clientX)}px`;
      overlay.style.top = `${Math.min(cy, e.clientY)}px`;
      overlay.style.width = `${Math.abs(e.clientX - cx)}px`;
      overlay.style.height = `${Math.abs(e.clientY - cy)}px`;
      overlay.style.display = "block";
    };
    startRelativeMouseDrag(down, (e) => draw(e), () => {
      overlay.style.display = "none";
      const end = this.#mouseVoxel();
      if (end === undefined) return;
      const box = { x0: Math.floor(Math.min(start[0], end[0])), y0: Math.floor(Math.min(start[1], end[1])), x1: Math.ceil(Math.max(start[0], end[0])), y1: Math.ceil(Math.max(start[1], end[1])) };
      // The server needs at least 2 x 2 voxels; a smaller drag is taken for a slip.
      if (box.x1 - box.x0 < 2 || box.y1 - box.y0 < 2) return;
      const prompt: BoxPrompt = { objectId: this.debug.objectId, z: Math.floor(start[2]), box };
      void this.#run("box prompt", async () => {
        await this.#addBoxAnnotation(prompt);
        await this.#sendBox(prompt);
        await this.#propagate(this.#clickReach());
      });
    });
  }

  #setObject(id: string): void {
    this.debug.objectId = id;
    this.#objectLabel.textContent = id;
  }

  #nextObjectId(): bigint {
    // Above the prompted objects and the listed ones (segment-in-view's instances have ids too).
    let max = this.#maxListed;
    for (const p of [...this.#prompts(), ...this.#boxPrompts()]) if (BigInt(p.objectId) > max) max = BigInt(p.objectId);
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
        this.#status.textContent = `generation ${this.debug.generation}${this.debug.accepted === undefined ? "" : `, saved as ${this.debug.accepted}`}${this.#note}`;
        this.#note = "";
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

  /**
   * The live session, started on first use around `at` (a prompt's voxel; default the xy panel's
   * centre) with `startZ` the slice looked at. On a volume over the bridge's session limit the
   * session covers a box (session_box.ts); a prompt outside it closes that session and starts one
   * around the prompt.
   */
  async #ensureSession(at?: readonly [number, number, number]): Promise<Session> {
    const current = this.debug.session;
    if (current !== undefined) {
      if (at === undefined || inSessionBox(current.box, at)) return current;
      this.debug.session = undefined;
      this.#events?.close();
      this.#events = undefined;
      // The next live layer starts with nothing shown.
      this.#shown = new Set();
      await this.#api("DELETE", `${SESSIONS_API_PATH}/${current.sessionId}`).catch(() => undefined);
      // The old session's objects lived in its live volume, which closed with it.
      this.#note = "; a new session around the last prompt (the previous box's objects were dropped: accept before leaving a box to keep them)";
    }
    const volumeId = this.#imageVolumeId();
    const view = this.#viewXy();
    const pos = at ?? (view === undefined ? Array.from(this.#viewer.navigationState.position.value.slice(0, 3)) : [(view.x0 + view.x1) / 2, (view.y0 + view.y1) / 2, view.z]);
    const info = await this.#api<{ scales: { size: number[]; voxel_offset?: number[] }[] }>("GET", `${volumePath(volumeId)}/info`);
    const scale = info.scales[0]!;
    const offset = scale.voxel_offset ?? [0, 0, 0];
    const level = { offsetZyx: [offset[2]!, offset[1]!, offset[0]!], shapeZyx: [scale.size[2]!, scale.size[1]!, scale.size[0]!] };
    const box = sessionBox(level, this.#maxSessionVoxels, [pos[0]!, pos[1]!, pos[2]!], view);
    const [z0, z1] = box === undefined ? [level.offsetZyx[0]!, level.offsetZyx[0]! + level.shapeZyx[0]!] : [box.z0, box.z1];
    const startZ = Math.min(z1 - 1, Math.max(z0, Math.floor(pos[2]!)));
    const s = await this.#api<Session>("POST", SESSIONS_API_PATH, { volumeId, startZ, ...(box === undefined ? {} : { box }) });
    this.#maxSessionVoxels = s.maxSessionVoxels;
    this.debug.session = s;
    // A live layer left from a shared link names a session of another time: replace it.
    const old = this.#viewer.layerManager.getLayerByName(LIVE_LAYER);
    if (old !== undefined) this.#viewer.layerManager.removeManagedLayer(old);
    const spec = this.#viewer.layerSpecification;
    spec.add(makeLayer(spec, LIVE_LAYER, { type: "segmentation", source: s.source, selectedAlpha: 0.6 }));
    this.#events = new EventSource(new URL(`${SESSIONS_API_PATH}/${s.sessionId}/events`, window.location.href));
    this.#events.addEventListener("chunks", (e) => this.#onChange(JSON.parse((e as MessageEvent<string>).data) as LiveChangeEvent));
    this.#events.addEventListener("progress", (e) => this.#onProgress(JSON.parse((e as MessageEvent<string>).data) as LiveProgressEvent));
    return s;
  }

  #onProgress(p: LiveProgressEvent): void {
    this.debug.progress.push(p);
    this.#status.textContent = `segmenting: ${p.blocksDone}/${p.blocksTotal} blocks, ${p.objectsFound} objects${p.done ? ", reading them" : ""}`;
  }

  /** The live layer's selected segments follow its objects, so the 3D panel shows their meshes. */
  #showObjects(objects: LiveChangeEvent["objects"]): void {
    const layer = this.#viewer.layerManager.getLayerByName(LIVE_LAYER)?.layer as unknown as
      | { displayState?: { segmentationGroupState: { value: { visibleSegments: { add(x: Uint64): void; delete(x: Uint64): void } } } } }
      | null
      | undefined;
    const visible = layer?.displayState?.segmentationGroupState.value.visibleSegments;
    if (visible === undefined) return;
    const now = new Set(objects.map((o) => o.objectId));
    for (const id of this.#shown) if (!now.has(id)) visible.delete(Uint64.parseString(id));
    for (const id of now) if (!this.#shown.has(id)) visible.add(Uint64.parseString(id));
    this.#shown = now;
  }

  #onChange(e: LiveChangeEvent): void {
    this.debug.events.push(e);
    this.debug.generation = Math.max(this.debug.generation, e.generation);
    this.#renderObjects(e.objects);
    for (const o of e.objects) if (BigInt(o.objectId) > this.#maxListed) this.#maxListed = BigInt(o.objectId);
    this.#showObjects(e.objects);
    if (e.chunks.length === 0) return;
    for (const c of e.chunks) this.#stale.add(c);
    for (const o of e.changedObjects ?? []) this.#staleMeshes.add(o);
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
      if (this.#staleMeshes.size > 0) {
        // Neuroglancer caches meshes by segment id: refetch the changed objects' manifests and fragments.
        const meshes: InvalidateMeshesMessage = { queue: queue.rpcId!, url: `${window.location.origin}/volumes/${e.volumeId}/mesh`, objects: [...this.#staleMeshes] };
        this.#staleMeshes.clear();
        this.debug.meshRefreshes.push(meshes.objects);
        queue.rpc!.invoke(INVALIDATE_MESHES_RPC, meshes);
      }
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
    const s = await this.#ensureSession([prompts[0]!.point[0], prompts[0]!.point[1], z]);
    await this.#answered("POST", `${SESSIONS_API_PATH}/${s.sessionId}/prompts`, {
      objectId,
      z,
      points: prompts.map((p) => ({ x: p.point[0], y: p.point[1], label: p.label })),
    });
  }

  async #sendBox(p: BoxPrompt): Promise<void> {
    const s = await this.#ensureSession([(p.box.x0 + p.box.x1) / 2, (p.box.y0 + p.box.y1) / 2, p.z]);
    await this.#answered("POST", `${SESSIONS_API_PATH}/${s.sessionId}/prompts`, { objectId: p.objectId, z: p.z, box: p.box });
  }

  /**
   * The box "segment view" asks for: the xy panel's visible extent (its four corners mapped to
   * voxels) times the depth input's slices each way of the current one, clamped to the volume, with
   * fewer slices where it would exceed the bridge's voxel limit.
   */
  /** The xy panel's visible extent (its four corners mapped to voxels) and its slice; undefined without an xy panel. */
  #viewXy(): { x0: number; y0: number; x1: number; y1: number; z: number } | undefined {
    let xy: { invViewMatrix: Float32Array; logicalWidth: number; logicalHeight: number } | undefined;
    for (const panel of this.#viewer.display.panels) {
      const params = (panel as unknown as { sliceView?: { projectionParameters: { value: { invViewMatrix: Float32Array; logicalWidth: number; logicalHeight: number; viewportNormalInGlobalCoordinates: Float32Array } } } }).sliceView?.projectionParameters.value;
      if (params !== undefined && Math.abs(params.viewportNormalInGlobalCoordinates[2]!) > 0.999 && params.logicalWidth > 0) xy = params;
    }
    if (xy === undefined) return undefined;
    const m = xy.invViewMatrix;
    const lo = [Infinity, Infinity];
    const hi = [-Infinity, -Infinity];
    for (const sx of [-xy.logicalWidth / 2, xy.logicalWidth / 2])
      for (const sy of [-xy.logicalHeight / 2, xy.logicalHeight / 2])
        for (let d = 0; d < 2; d++) {
          const g = m[d]! * sx + m[4 + d]! * sy + m[12 + d]!;
          lo[d] = Math.min(lo[d]!, g);
          hi[d] = Math.max(hi[d]!, g);
        }
    return { x0: lo[0]!, y0: lo[1]!, x1: hi[0]!, y1: hi[1]!, z: m[14]! };
  }

  viewBox(s: Session): ViewBox {
    const view = this.#viewXy();
    if (view === undefined) throw new Error("segment view needs an xy panel in the layout");
    // Inside the session's box: on a large volume that is less than the volume.
    const [oz, oy, ox] = s.box.offsetZyx as [number, number, number];
    const [sz, sy, sx] = s.box.shapeZyx as [number, number, number];
    const x0 = Math.max(ox, Math.floor(view.x0));
    const x1 = Math.min(ox + sx, Math.ceil(view.x1));
    const y0 = Math.max(oy, Math.floor(view.y0));
    const y1 = Math.min(oy + sy, Math.ceil(view.y1));
    if (x1 <= x0 || y1 <= y0) throw new Error("the view does not show the volume");
    const area = (x1 - x0) * (y1 - y0);
    if (area > s.maxSegmentVoxels) throw new Error(`the view holds ${area} voxels per slice; segment view is limited to ${s.maxSegmentVoxels}: zoom in`);
    const z = Math.floor(view.z);
    const wanted = Math.max(0, Math.floor(Number(this.#depth.value) || 0));
    const depth = Math.min(wanted, Math.floor((Math.floor(s.maxSegmentVoxels / area) - 1) / 2));
    return { x0, y0, x1, y1, z0: Math.max(oz, z - depth), z1: Math.min(oz + sz, z + depth + 1) };
  }

  /**
   * "segment view": every mitochondrion in view becomes a live object. Runs beside the prompt
   * queue, so pressing it again (or closing the tab) cancels the running one on the server.
   */
  async segmentView(): Promise<void> {
    if (this.#segmenting !== undefined) {
      this.#segmenting.abort();
      return;
    }
    const abort = new AbortController();
    this.#segmenting = abort;
    this.#segmentButton.textContent = "cancel";
    this.debug.pending++;
    try {
      const s = await this.#ensureSession();
      const box = this.viewBox(s);
      this.debug.segmentBox = box;
      this.#status.textContent = `segmenting ${box.x1 - box.x0} x ${box.y1 - box.y0} x ${box.z1 - box.z0}...`;
      const res = await fetch(new URL(`${SESSIONS_API_PATH}/${s.sessionId}/${SEGMENT_VIEW_PATH}`, window.location.href), {
        method: "POST",
        headers: { "Content-Type": "application/json", [CLIENT_ID_HEADER]: this.#clientId },
        body: JSON.stringify({ box }),
        signal: abort.signal,
      });
      const json = (await res.json()) as { generation: number; newObjects: string[]; cancelled: boolean; message?: string };
      if (!res.ok) throw new Error(`segment view: HTTP ${res.status}${json.message ? `: ${json.message}` : ""}`);
      this.debug.answered = Math.max(this.debug.answered, json.generation);
      this.debug.segmented = { newObjects: json.newObjects, cancelled: json.cancelled };
      this.#status.textContent = json.cancelled ? "segment view cancelled" : `segment view: ${json.newObjects.length} objects`;
    } catch (e) {
      const msg = abort.signal.aborted ? "segment view cancelled" : e instanceof Error ? e.message : String(e);
      if (!abort.signal.aborted) this.debug.errors.push(msg);
      this.#status.textContent = msg;
    } finally {
      this.#segmenting = undefined;
      this.#segmentButton.textContent = "segment view";
      this.debug.pending--;
    }
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
    for (const a of [...layer.localAnnotations]) if (/^(?:box)?[+-]([0-9]+)$/.exec(a.description ?? "")?.[1] === objectId) layer.localAnnotations.delete(layer.localAnnotations.getReference(a.id));
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

  async #addBoxAnnotation(p: BoxPrompt): Promise<void> {
    let layer = this.#promptsLayer(true);
    for (let i = 0; layer === undefined && i < 250; i++) {
      await new Promise((resolve) => setTimeout(resolve, 20));
      layer = this.#promptsLayer(true);
    }
    if (layer === undefined) throw new Error(`the ${PROMPTS_LAYER} layer did not load`);
    const box: AxisAlignedBoundingBox = {
      type: AnnotationType.AXIS_ALIGNED_BOUNDING_BOX,
      id: "",
      pointA: Float32Array.of(p.box.x0, p.box.y0, p.z),
      pointB: Float32Array.of(p.box.x1, p.box.y1, p.z + 1),
      description: `box+${p.objectId}`,
      properties: [],
    };
    layer.localAnnotations.add(box);
  }

  #boxPrompts(): BoxPrompt[] {
    const layer = this.#promptsLayer(false);
    if (layer === undefined) return [];
    const out: BoxPrompt[] = [];
    for (const a of layer.localAnnotations) {
      const m = /^box\+([0-9]{1,20})$/.exec(a.description ?? "");
      if (a.type !== AnnotationType.AXIS_ALIGNED_BOUNDING_BOX || m === null) continue;
      const { pointA, pointB } = a as unknown as AxisAlignedBoundingBox;
      out.push({
        objectId: m[1]!,
        z: Math.floor(Math.min(pointA[2]!, pointB[2]!)),
        box: { x0: Math.min(pointA[0]!, pointB[0]!), y0: Math.min(pointA[1]!, pointB[1]!), x1: Math.max(pointA[0]!, pointB[0]!), y1: Math.max(pointA[1]!, pointB[1]!) },
      });
    }
    return out;
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
    const boxes = this.#boxPrompts();
    if (prompts.length === 0 && boxes.length === 0) return Promise.resolve();
    this.#setObject(String(this.#nextObjectId() - 1n));
    return this.#run("replay", async () => {
      const groups = new Map<string, Prompt[]>();
      for (const p of prompts) {
        const key = `${p.objectId}|${p.point[2]}`;
        groups.set(key, [...(groups.get(key) ?? []), p]);
      }
      for (const g of groups.values()) await this.#sendPrompts(g[0]!.objectId, g[0]!.point[2], g);
      for (const b of boxes) await this.#sendBox(b);
      await this.#propagate(this.#clickReach());
    });
  }
}

/** The local annotation source's API used here (iterable, add, delete). */
interface PromptAnnotations extends Iterable<(Point | AxisAlignedBoundingBox) & { description?: string | null }> {
  add(a: Point | AxisAlignedBoundingBox): void;
  delete(ref: unknown): void;
  getReference(id: string): unknown;
}
