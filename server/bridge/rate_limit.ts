// Token buckets per key (a browser tab's client id, or a session): each key may burst up to
// `burst` requests and then gets `perSecond`, so one tab's flood of prompts cannot starve another.

export interface RateLimitOptions {
  burst: number;
  perSecond: number;
  /** Most keys remembered; beyond it, full (idle) buckets are forgotten first. */
  maxKeys?: number;
}

export class RateLimiter {
  readonly #buckets = new Map<string, { tokens: number; at: number }>();
  readonly #options: Required<RateLimitOptions>;

  constructor(options: RateLimitOptions) {
    this.#options = { maxKeys: 10_000, ...options };
  }

  /** Takes one token for `key`: 0 if granted, else the seconds until one is available. */
  take(key: string, now = Date.now()): number {
    const { burst, perSecond } = this.#options;
    const b = this.#buckets.get(key) ?? { tokens: burst, at: now };
    b.tokens = Math.min(burst, b.tokens + ((now - b.at) / 1000) * perSecond);
    b.at = now;
    // Re-inserting keeps the map in least-recently-used order for pruning.
    this.#buckets.delete(key);
    this.#buckets.set(key, b);
    if (this.#buckets.size > this.#options.maxKeys) this.#prune(now);
    if (b.tokens >= 1) {
      b.tokens -= 1;
      return 0;
    }
    return (1 - b.tokens) / perSecond;
  }

  #prune(now: number): void {
    for (const [key, b] of this.#buckets) {
      if (this.#buckets.size <= this.#options.maxKeys) return;
      if (b.tokens + ((now - b.at) / 1000) * this.#options.perSecond >= this.#options.burst) this.#buckets.delete(key);
    }
    // All remaining buckets are in use: drop the least recently used.
    for (const key of this.#buckets.keys()) {
      if (this.#buckets.size <= this.#options.maxKeys) return;
      this.#buckets.delete(key);
    }
  }
}
