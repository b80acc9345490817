import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { type AddressInfo, type Server, type Socket, connect, createServer } from 'node:net';

import { Client } from 'pg';

/** The PostgreSQL the tests run against. */
export const DATABASE_URL = process.env['DATABASE_URL'] ?? 'postgres://postgres@127.0.0.1:5432/test';

/** Short timings, so that elections and handovers happen within a second or two. */
export const FAST = { leaseDuration: 1500, renewalInterval: 400, jitterRange: 200 } as const;

/** A fresh schema name for one test (mixed case on purpose: it must be quoted everywhere). */
export function randomSchema(): string {
  return `ll_Test_${randomBytes(5).toString('hex')}`;
}

/** Runs `fn` with a connected pg client and closes it. */
export async function withClient<T>(fn: (c: Client) => Promise<T>): Promise<T> {
  const client = new Client({ connectionString: DATABASE_URL });
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}

export async function dropSchema(schema: string): Promise<void> {
  await withClient((c) => c.query(`DROP SCHEMA IF EXISTS "${schema.replace(/"/g, '""')}" CASCADE`));
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Polls `cond` every 25 ms until it holds or `timeoutMs` passes; returns whether it held. */
export async function waitFor(cond: () => boolean, timeoutMs: number): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (cond()) return true;
    await sleep(25);
  }
  return cond();
}

/** A TCP port on 127.0.0.1 that nothing listens on (bound, then closed). */
export async function closedPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      if (addr === null || typeof addr === 'string') return reject(new Error('no port'));
      srv.close(() => resolve(addr.port));
    });
  });
}

/** Runs a CommonJS `script` in a fresh Node process and returns what it printed as JSON. */
export async function runScript(script: string): Promise<Record<string, unknown>> {
  const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
  assert.equal(code, 0, err);
  return JSON.parse(out) as Record<string, unknown>;
}

/**
 * Closes `socket` with a TCP reset (RST), as a network fault would, or with a plain close when its write
 * side has already ended. Node 20's `resetAndDestroy()` on a socket whose shutdown (FIN, after `end()`, as
 * `pipe()` does when the other side ends) is still in flight leaks the handle: libuv refuses the reset
 * (EINVAL while shutting), Node marks the handle closing anyway, and the process then never exits (it
 * spins at exit waiting for that handle). Seen as tests/logs.test.ts hanging after all its tests passed.
 */
export function resetSocket(socket: Socket): void {
  if (socket.writableEnded) socket.destroy();
  else socket.resetAndDestroy();
}

/**
 * A TCP proxy on 127.0.0.1 in front of `target` (host:port) that a test can cut: `cut()` resets every
 * connection and every new one until `heal()`. What an elector sees when its database's network goes.
 */
export class CuttableProxy {
  #server: Server | null = null;
  #sockets = new Set<Socket>();
  #cut = false;
  port = 0;

  constructor(
    private readonly targetHost: string,
    private readonly targetPort: number,
  ) {}

  async listen(): Promise<this> {
    this.#server = createServer((client) => {
      if (this.#cut) return resetSocket(client);
      const upstream = connect(this.targetPort, this.targetHost);
      for (const s of [client, upstream]) {
        this.#sockets.add(s);
        s.on('close', () => this.#sockets.delete(s));
        s.on('error', () => undefined);
      }
      client.pipe(upstream);
      upstream.pipe(client);
      client.on('close', () => upstream.destroy());
      upstream.on('close', () => client.destroy());
    });
    await new Promise<void>((resolve) => this.#server!.listen(0, '127.0.0.1', resolve));
    this.port = (this.#server.address() as AddressInfo).port;
    return this;
  }

  /** A URL like `url` with host and port replaced by the proxy's. */
  urlFor(url: string): string {
    const u = new URL(url);
    u.hostname = '127.0.0.1';
    u.port = String(this.port);
    return u.toString();
  }

  cut(): void {
    this.#cut = true;
    for (const s of this.#sockets) resetSocket(s);
  }

  heal(): void {
    this.#cut = false;
  }

  async close(): Promise<void> {
    this.cut();
    await new Promise<void>((resolve) => (this.#server ? this.#server.close(() => resolve()) : resolve()));
  }
}

/** A proxy in front of the PostgreSQL of DATABASE_URL. */
export async function proxyToDatabase(): Promise<CuttableProxy> {
  const u = new URL(DATABASE_URL);
  return new CuttableProxy(u.hostname, Number(u.port || 5432)).listen();
}
