// Waiting work in one FIFO per client, served least-recently-served first, so one client's burst
// (a propagation's many graph runs) delays another client's request by at most one run per worker.
// With `fair: false` it is one FIFO across clients (the oldest request first), kept for comparison.

/** Anything queued: `seq` orders requests by arrival (strictly increasing), `client` is its owner. */
export interface Queued {
  readonly seq: number;
  readonly client: string;
}

interface ClientState<T> {
  waiting: T[];
  /** Requests of this client handed out and not finished yet: a client with one running is not idle. */
  active: number;
  /** The `served` counter when this client was last handed a request; 0 for a new client. */
  lastServed: number;
}

// Idle clients are remembered (a propagation idles for a moment between slices and must not come
// back as a new client ahead of everyone); past this many records the forgettable ones are dropped.
const PRUNE_ABOVE = 256;

export class FairQueue<T extends Queued> {
  private readonly clients = new Map<string, ClientState<T>>();
  private served = 0;
  private count = 0;

  constructor(readonly fair: boolean) {}

  get size(): number {
    return this.count;
  }

  /** Requests of `client` waiting now. */
  waitingFor(client: string): number {
    return this.clients.get(client)?.waiting.length ?? 0;
  }

  /** Clients with a request waiting. */
  waitingClients(): number {
    let n = 0;
    for (const c of this.clients.values()) if (c.waiting.length > 0) n++;
    return n;
  }

  push(item: T): void {
    if (this.clients.size > PRUNE_ABOVE) this.prune();
    this.state(item.client).waiting.push(item);
    this.count++;
  }

  /**
   * Records that `client` was handed a request without it waiting (an idle worker took it at once):
   * it counts as that client's turn. Pair with `finished`.
   */
  started(client: string): void {
    const c = this.state(client);
    c.active++;
    c.lastServed = ++this.served;
  }

  /**
   * The next request to run: fair, the oldest request of the client served least recently (ties:
   * the older request); otherwise the oldest request of all. The caller pairs it with `finished`.
   */
  shift(): T | undefined {
    let best: ClientState<T> | undefined;
    for (const c of this.clients.values()) {
      const head = c.waiting[0];
      if (head === undefined) continue;
      if (best === undefined) {
        best = c;
        continue;
      }
      const bestHead = best.waiting[0]!;
      const earlier = this.fair ? c.lastServed < best.lastServed || (c.lastServed === best.lastServed && head.seq < bestHead.seq) : head.seq < bestHead.seq;
      if (earlier) best = c;
    }
    if (best === undefined) return undefined;
    const item = best.waiting.shift()!;
    this.count--;
    best.active++;
    best.lastServed = ++this.served;
    return item;
  }

  /** A handed-out request of `client` is done. */
  finished(client: string): void {
    const c = this.clients.get(client);
    if (c !== undefined) c.active--;
  }

  /** Removes a waiting request (aborted); false when it is not waiting (already handed out). */
  remove(item: T): boolean {
    const c = this.clients.get(item.client);
    const at = c?.waiting.indexOf(item) ?? -1;
    if (c === undefined || at < 0) return false;
    c.waiting.splice(at, 1);
    this.count--;
    return true;
  }

  /** Empties the queue, returning what was waiting (oldest first). */
  drain(): T[] {
    const all = [...this.clients.values()].flatMap((c) => c.waiting).sort((a, b) => a.seq - b.seq);
    for (const c of this.clients.values()) c.waiting.length = 0;
    this.count = 0;
    return all;
  }

  private state(client: string): ClientState<T> {
    let c = this.clients.get(client);
    if (c === undefined) {
      c = { waiting: [], active: 0, lastServed: 0 };
      this.clients.set(client, c);
    }
    return c;
  }

  // Forgetting an idle client served before every busy one keeps its place against them: back as
  // new (mark 0) it still ranks before them, as it would with its old mark.
  private prune(): void {
    const idle = (c: ClientState<T>) => c.waiting.length === 0 && c.active <= 0;
    let oldestBusy = Number.POSITIVE_INFINITY;
    for (const c of this.clients.values()) if (!idle(c)) oldestBusy = Math.min(oldestBusy, c.lastServed);
    for (const [k, c] of [...this.clients]) if (idle(c) && c.lastServed < oldestBusy) this.clients.delete(k);
  }
}
