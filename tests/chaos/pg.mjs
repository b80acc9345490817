// A throwaway PostgreSQL server of the chaos run's own: a free port on 127.0.0.1, a data directory under
// /tmp, removed at the end. Never the machine's shared server. A thin wrapper: scripts/throwaway-pg.sh does
// the work (the same script the shell scripts and the Rust tests use).

import { execFile, spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const run = promisify(execFile);
const SCRIPT = fileURLToPath(new URL('../../scripts/throwaway-pg.sh', import.meta.url));

/** A TCP port nothing listens on right now (the kernel's pick). */
export async function freePort() {
  const server = net.createServer();
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const { port } = server.address();
  await new Promise((resolve) => server.close(() => resolve()));
  return port;
}

export class ThrowawayPostgres {
  dir = '';
  port = 0;
  url = '';
  #watchdog = null;

  async #script(args, options = {}) {
    return run('bash', [SCRIPT, ...args], { timeout: 120_000, ...options });
  }

  async start() {
    this.port = await freePort();
    const { stdout } = await this.#script(['start', '--port', String(this.port), '-c', 'max_connections=400']);
    this.dir = stdout.trim();
    this.url = fs.readFileSync(`${this.dir}/url`, 'utf8').trim();
    // A detached watcher deletes the server if this process dies without doing it (SIGKILL of the harness).
    this.#watchdog = spawn('bash', [SCRIPT, 'watch', this.dir, String(process.pid)], { detached: true, stdio: 'ignore' });
    this.#watchdog.unref();
    return this;
  }

  /** `pg_ctl stop -m fast`: ends every session and stops the server (startAgain() brings it back). */
  async stop() {
    await this.#script(['stop', this.dir, 'fast']);
  }

  /** Starts the stopped server again with the settings it last ran with. */
  async startAgain() {
    await this.#script(['start-again', this.dir]);
  }

  /** `pg_ctl restart -m fast`: ends every session, checkpoints, starts again on the same port. */
  async restart() {
    await this.#script(['restart', this.dir]);
  }

  /** Stops the server (immediate) and deletes its directory. Idempotent. */
  async destroy() {
    if (!this.dir) return;
    await this.#script(['destroy', this.dir], { timeout: 30_000 }).catch(() => undefined);
    this.#watchdog?.kill('SIGTERM');
  }

  /** Synchronous last resort for process exit handlers. */
  destroySync() {
    if (!this.dir) return;
    spawnSync('bash', [SCRIPT, 'destroy', this.dir], { stdio: 'ignore', timeout: 30_000 });
    this.#watchdog?.kill('SIGTERM');
  }
}
