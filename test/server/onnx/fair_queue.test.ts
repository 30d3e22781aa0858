// The scheduler's order, step by step: clients take turns (least recently served first, each
// client's requests in order), a client that idles between requests keeps its place, and the FIFO
// mode serves the oldest request whoever sent it.
import { describe, expect, it } from "vitest";
import { FairQueue, type Queued } from "#server/onnx/fair_queue.ts";

interface Item extends Queued {
  name: string;
}

function queue(fair: boolean) {
  const q = new FairQueue<Item>(fair);
  let seq = 1;
  const push = (client: string, n = 1) => {
    for (let i = 0; i < n; i++) q.push({ seq: seq++, client, name: `${client}${seq - 1}` });
  };
  /** Hands out `n` requests one at a time, each finishing before the next (one worker). */
  const serve = (n: number) => {
    const out: string[] = [];
    for (let i = 0; i < n; i++) {
      const item = q.shift();
      if (item === undefined) break;
      out.push(item.client);
      q.finished(item.client);
    }
    return out.join("");
  };
  return { q, push, serve };
}

describe("FairQueue", () => {
  it("serves a client that arrives behind a burst after one request of the burst at most", () => {
    const { q, push, serve } = queue(true);
    // A's first request went straight to a worker; A queued 5 more, then B and C one each.
    q.started("A");
    push("A", 5);
    push("B");
    push("C");
    expect(q.size).toBe(7);
    expect(q.waitingFor("A")).toBe(5);
    expect(q.waitingClients()).toBe(3);
    q.finished("A");
    expect(serve(8)).toBe("BCAAAAA");
    expect(q.size).toBe(0);
  });

  it("alternates between busy clients, each client's requests in arrival order", () => {
    const { q, push } = queue(true);
    push("A", 3);
    push("B", 3);
    const order: string[] = [];
    for (let item = q.shift(); item !== undefined; item = q.shift()) {
      order.push(item.name);
      q.finished(item.client);
    }
    expect(order).toEqual(["A1", "B4", "A2", "B5", "A3", "B6"]);
  });

  it("with two workers, a client's running request counts as its turn", () => {
    const { q, push } = queue(true);
    push("A", 4);
    const a1 = q.shift()!;
    const a2 = q.shift()!;
    expect([a1.name, a2.name]).toEqual(["A1", "A2"]);
    push("B", 2);
    // A worker frees: B (never served) goes before A's third.
    q.finished(a1.client);
    expect(q.shift()!.name).toBe("B5");
    q.finished(a2.client);
    // A was served before B was, so A is next, then B again.
    expect(q.shift()!.name).toBe("A3");
    expect(q.shift()!.name).toBe("B6");
  });

  it("keeps the place of a client that idles for a moment between requests", () => {
    const { push, serve } = queue(true);
    push("A");
    push("B");
    expect(serve(1)).toBe("A");
    // A has nothing waiting or running now (a propagation between two slices), then asks again
    // before C, a newcomer, does: C and B were served less recently than A, so they go first.
    push("A");
    push("C");
    expect(serve(3)).toBe("BCA");
  });

  it("drops an aborted request and keeps the others' order", () => {
    const { q, push, serve } = queue(true);
    push("A", 2);
    push("B", 1);
    const b = { seq: 99, client: "B", name: "B99" };
    q.push(b);
    expect(q.remove(b)).toBe(true);
    expect(q.remove(b)).toBe(false);
    expect(q.size).toBe(3);
    expect(serve(5)).toBe("ABA");
  });

  it("serves the oldest request first when not fair", () => {
    const { q, push, serve } = queue(false);
    q.started("A");
    push("A", 5);
    push("B");
    push("C");
    q.finished("A");
    expect(serve(8)).toBe("AAAAABC");
  });

  it("drain returns what waits, oldest first, and empties the queue", () => {
    const { q, push } = queue(true);
    push("A", 2);
    push("B", 2);
    expect(q.drain().map((i) => i.name)).toEqual(["A1", "A2", "B3", "B4"]);
    expect(q.size).toBe(0);
    expect(q.shift()).toBeUndefined();
  });
});
