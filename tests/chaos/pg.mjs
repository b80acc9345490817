// A throwaway PostgreSQL server of the chaos run's own: a free port on 127.0.0.1, a data directory under
// /tmp, removed at the end. Never the machine's shared server. As root, the server runs as `postgres`
// through runuser (initdb refuses root), as scripts/pg-env.sh does.

import { execFile, spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

function binDir() {
  const base = '/usr/lib/postgresql';
  if (fs.existsSync(base)) {
    const versions = fs
      .readdirSync(base)
      .filter((v) => fs.existsSync(path.join(base, v, 'bin', 'initdb')))
      .sort((a, b) => Number(b) - Number(a));
    if (versions.length > 0) return path.join(base, versions[0], 'bin');
  }
  for (const dir of (process.env.PATH ?? '').split(':')) {
    if (dir && fs.existsSync(path.join(dir, 'initdb'))) return dir;
  }
  throw new Error('initdb not found: install PostgreSQL\'s server binaries (Debian package `postgresql`)');
}

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
  bin = binDir();
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'leaderlease-chaos-pg-'));
  port = 0;
  #asRoot = process.getuid?.() === 0;
  #watchdog = null;

  get data() {
    return path.join(this.dir, 'data');
  }

  get url() {
    return `postgres://postgres@127.0.0.1:${this.port}/postgres`;
  }

  #cmd(tool, args) {
    const exe = path.join(this.bin, tool);
    return this.#asRoot ? ['runuser', ['-u', 'postgres', '--', exe, ...args]] : [exe, args];
  }

  async #run(tool, args, options = {}) {
    const [file, argv] = this.#cmd(tool, args);
    return run(file, argv, { timeout: 120_000, ...options });
  }

  async start() {
    fs.chmodSync(this.dir, 0o755);
    if (this.#asRoot) await run('chown', ['postgres:postgres', this.dir]);
    this.port = await freePort();
    await this.#run('initdb', ['-D', this.data, '-U', 'postgres', '-A', 'trust', '--no-sync']);
    this.#armWatchdog();
    await this.#run('pg_ctl', [
      '-D',
      this.data,
      '-l',
      path.join(this.dir, 'log'),
      '-w',
      '-o',
      `-p ${this.port} -k ${this.dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=400`,
      'start',
    ]);
    return this;
  }

  /** `pg_ctl stop -m fast`: ends every session and stops the server (start() brings it back). */
  async stop() {
    await this.#run('pg_ctl', ['-D', this.data, '-w', '-m', 'fast', 'stop']);
  }

  /** Starts the stopped server again with the options it last ran with. */
  async startAgain() {
    const opts = `-p ${this.port} -k ${this.dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=400`;
    await this.#run('pg_ctl', ['-D', this.data, '-l', path.join(this.dir, 'log'), '-w', '-o', opts, 'start']);
  }

  /** `pg_ctl restart -m fast`: ends every session, checkpoints, starts again on the same port. */
  async restart() {
    await this.#run('pg_ctl', ['-D', this.data, '-l', path.join(this.dir, 'log'), '-w', '-m', 'fast', 'restart']);
  }

  /** Stops the server (immediate) and deletes its directory. Idempotent. */
  async destroy() {
    if (!fs.existsSync(this.dir)) return;
    try {
      await this.#run('pg_ctl', ['-D', this.data, '-w', '-m', 'immediate', 'stop'], { timeout: 30_000 });
    } catch {
      // Not running (or never started).
    }
    fs.rmSync(this.dir, { recursive: true, force: true });
    this.#watchdog?.kill('SIGTERM');
  }

  /** Synchronous last resort for process exit handlers. */
  destroySync() {
    if (!fs.existsSync(this.dir)) return;
    const [file, argv] = this.#cmd('pg_ctl', ['-D', this.data, '-m', 'immediate', 'stop']);
    spawnSync(file, argv, { stdio: 'ignore', timeout: 30_000 });
    fs.rmSync(this.dir, { recursive: true, force: true });
    this.#watchdog?.kill('SIGTERM');
  }

  /**
   * A detached shell that stops the server and deletes its directory if this process dies without doing
   * it (SIGKILL of the harness).
   */
  #armWatchdog() {
    const [file, argv] = this.#cmd('pg_ctl', ['-D', this.data, '-m', 'immediate', 'stop']);
    const stopCmd = [file, ...argv].map((a) => `'${a.replaceAll("'", "'\\''")}'`).join(' ');
    const script = `while kill -0 ${process.pid} 2>/dev/null; do sleep 1; done; [ -d '${this.dir}' ] && { ${stopCmd} >/dev/null 2>&1; rm -rf '${this.dir}'; }`;
    this.#watchdog = spawn('bash', ['-c', script], { detached: true, stdio: 'ignore' });
    this.#watchdog.unref();
  }
}
