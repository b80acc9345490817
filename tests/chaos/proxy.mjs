// A TCP proxy on 127.0.0.1 between one candidate and PostgreSQL, which can add latency and cut the
// candidate off (docs/chaos.md).
//
//   latency(ms)        every chunk, both directions, is delivered `ms` later (order kept); heal() delivers
//                      what is still queued at once.
//   partition('drop')  nothing is forwarded any more (data is dropped) and new connections are accepted but
//                      never answered; heal() destroys the connections that lived through the partition.
//   partition('hold')  like 'drop' but the data is kept and delivered at heal(), as TCP retransmission
//                      would after a short partition: statements sent before or during the partition, even
//                      on connections the client has closed since, reach the server late.
//   partition('reset') every connection is reset and new ones are reset at once (a closed port).
//   lostAck({ match, holdMs, mode })
//                      a lost acknowledgement: waits for the next client-to-server chunk that contains
//                      `match` (e.g. the subject of a NATS KV update), forwards it, and then either holds
//                      everything the server sends on that connection for `holdMs` ('hold': the reply
//                      arrives after the client's timeout) or closes the connection towards the server
//                      after the chunk and resets it towards the client ('drop': the request is applied,
//                      its reply never arrives). Resolves with { matched, at, healAt } (performance.now()
//                      times), or { matched: false } after `waitMs`.
//
// A connection's two directions are queues: data, then an end marker when that side closed. A side that
// closed does not discard what is still queued for the other side.

import net from 'node:net';

const END = null;

/**
 * A TCP reset (RST), or a plain close when the socket's write side has already ended: Node 20's
 * `resetAndDestroy()` while a shutdown (FIN) is in flight leaks the handle and the process never exits
 * (tests/helpers.ts, resetSocket).
 */
function resetSocket(socket) {
  if (socket.writableEnded) socket.destroy();
  else socket.resetAndDestroy();
}

export class Proxy {
  #targetPort;
  #server = null;
  #conns = new Set();
  #latency = 0;
  /** 'ok' | 'drop' | 'hold' | 'reset' */
  #mode = 'ok';
  /** An armed lostAck(), or null. */
  #ack = null;
  port = 0;
  stats = { connections: 0, bytes: 0 };

  constructor(targetPort) {
    this.#targetPort = targetPort;
  }

  async listen() {
    this.#server = net.createServer((client) => this.#accept(client));
    await new Promise((resolve, reject) => {
      this.#server.once('error', reject);
      this.#server.listen(0, '127.0.0.1', () => resolve());
    });
    this.#server.on('error', () => undefined);
    this.port = this.#server.address().port;
    return this;
  }

  get state() {
    if (this.#mode !== 'ok') return `partition-${this.#mode}`;
    return this.#latency > 0 ? `latency-${this.#latency}ms` : 'ok';
  }

  latency(ms) {
    this.#latency = ms;
  }

  lostAck({ match, holdMs, mode = 'hold', waitMs = 5000 }) {
    if (!['hold', 'drop'].includes(mode)) throw new Error(`unknown lost-ack mode ${mode}`);
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.#ack = null;
        resolve({ matched: false });
      }, waitMs);
      this.#ack = { match: Buffer.from(match), holdMs, mode, resolve, timer };
    });
  }

  partition(mode) {
    if (!['drop', 'hold', 'reset'].includes(mode)) throw new Error(`unknown partition mode ${mode}`);
    this.#mode = mode;
    for (const c of [...this.#conns]) {
      if (mode === 'reset') this.#kill(c, true);
      else if (mode === 'drop') {
        c.cut = 'drop';
        c.toServer.length = 0;
        c.toClient.length = 0;
      } else c.cut = 'hold';
    }
  }

  /** Ends latency and partition: queued data is delivered now, connections that saw a drop are destroyed. */
  heal() {
    this.#latency = 0;
    this.#mode = 'ok';
    for (const c of [...this.#conns]) {
      if (c.cut === 'drop') {
        this.#kill(c, false);
        continue;
      }
      c.cut = null;
      for (const q of [c.toServer, c.toClient]) for (const item of q) item.at = 0;
      if (c.upstream === null) this.#connectUpstream(c);
      this.#flush(c);
    }
  }

  async close() {
    for (const c of [...this.#conns]) this.#kill(c, false);
    await new Promise((resolve) => (this.#server ? this.#server.close(() => resolve()) : resolve()));
  }

  #accept(client) {
    this.stats.connections += 1;
    if (this.#mode === 'reset') {
      client.on('error', () => undefined);
      resetSocket(client);
      return;
    }
    client.setNoDelay(true);
    const c = {
      client,
      upstream: null,
      cut: this.#mode === 'ok' ? null : this.#mode,
      toServer: [],
      toClient: [],
      holdToClient: false,
      ended: { toServer: false, toClient: false },
      timer: null,
      dead: false,
    };
    this.#conns.add(c);
    client.on('data', (chunk) => this.#enqueue(c, 'toServer', chunk));
    client.on('end', () => this.#enqueue(c, 'toServer', END));
    client.on('error', () => undefined);
    client.on('close', () => {
      this.#enqueue(c, 'toServer', END);
      this.#reap(c);
    });
    // During a partition the connection is accepted but its server side opens only at heal().
    if (c.cut === null) this.#connectUpstream(c);
  }

  #connectUpstream(c) {
    const upstream = net.connect(this.#targetPort, '127.0.0.1');
    upstream.setNoDelay(true);
    c.upstream = upstream;
    let failed = false;
    upstream.on('connect', () => this.#flush(c));
    upstream.on('data', (chunk) => this.#enqueue(c, 'toClient', chunk));
    upstream.on('end', () => this.#enqueue(c, 'toClient', END));
    upstream.on('error', () => {
      failed = true;
    });
    upstream.on('close', () => {
      // The server refused or reset: the client sees its connection reset too.
      if (failed) this.#kill(c, true);
      else {
        this.#enqueue(c, 'toClient', END);
        this.#reap(c);
      }
    });
  }

  #enqueue(c, dir, chunk) {
    if (c.dead || c.cut === 'drop') return;
    if (chunk === END) {
      if (c.ended[dir]) return;
      c.ended[dir] = true;
    } else {
      this.stats.bytes += chunk.length;
    }
    c[dir].push({ at: performance.now() + this.#latency, chunk });
    const ack = this.#ack;
    if (ack !== null && dir === 'toServer' && chunk !== END && chunk.includes(ack.match)) {
      this.#ack = null;
      clearTimeout(ack.timer);
      const at = performance.now();
      if (ack.mode === 'hold') {
        c.holdToClient = true;
        this.#flush(c);
        setTimeout(() => {
          c.holdToClient = false;
          for (const item of c.toClient) item.at = 0;
          this.#flush(c);
          ack.resolve({ matched: true, at, healAt: performance.now() });
        }, ack.holdMs);
      } else {
        // The request goes out, then the connection ends towards the server (FIN after the data) and is
        // reset towards the client, which never sees the reply.
        c.dead = true;
        if (c.timer !== null) clearTimeout(c.timer);
        this.#conns.delete(c);
        if (c.upstream === null) this.#connectUpstream(c);
        // Written even while the server side is still connecting (the socket buffers it), then FIN.
        for (const item of c.toServer) if (item.chunk !== END) c.upstream.write(item.chunk);
        c.toServer.length = 0;
        c.upstream.end();
        c.client.on('error', () => undefined);
        resetSocket(c.client);
        ack.resolve({ matched: true, at, healAt: performance.now() });
      }
      return;
    }
    this.#flush(c);
  }

  /** Delivers what is due, unless the connection is cut. */
  #flush(c) {
    if (c.dead || c.cut !== null) return;
    const now = performance.now();
    let next = Infinity;
    for (const [dir, dst] of [
      ['toServer', c.upstream],
      ['toClient', c.client],
    ]) {
      const q = c[dir];
      if (dst === null || dst.connecting || (dir === 'toClient' && c.holdToClient)) continue;
      if (dst.destroyed || dst.writableEnded) {
        q.length = 0;
        continue;
      }
      while (q.length > 0 && q[0].at <= now) {
        const { chunk } = q.shift();
        if (chunk === END) dst.end();
        else dst.write(chunk);
      }
      if (q.length > 0) next = Math.min(next, q[0].at);
    }
    if (c.timer !== null) {
      clearTimeout(c.timer);
      c.timer = null;
    }
    if (next !== Infinity) {
      c.timer = setTimeout(
        () => {
          c.timer = null;
          this.#flush(c);
        },
        Math.max(0, Math.ceil(next - performance.now())),
      );
    }
    this.#reap(c);
  }

  /** Forgets a connection once both sides are closed and nothing is left to deliver. */
  #reap(c) {
    if (c.dead) return;
    const clientGone = c.client.destroyed;
    const upstreamGone = c.upstream === null ? clientGone && c.cut === null : c.upstream.destroyed;
    if (clientGone && upstreamGone) this.#kill(c, false);
    else if (clientGone && c.toServer.length === 0 && c.upstream !== null && !c.upstream.writableEnded) {
      c.upstream.end();
    }
  }

  #kill(c, reset) {
    if (c.dead) return;
    c.dead = true;
    if (c.timer !== null) clearTimeout(c.timer);
    this.#conns.delete(c);
    for (const s of [c.client, c.upstream]) {
      if (s === null || s.destroyed) continue;
      s.on('error', () => undefined);
      if (reset) resetSocket(s);
      else s.destroy();
    }
  }
}
