import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';

import { LeaderElectorCore, downSql, upSql } from '../dist/index.js';
import { DATABASE_URL, FAST, dropSchema, randomSchema, waitFor, withClient } from './helpers.js';

const PACKAGE = join(__dirname, '..', 'dist', 'index.js');

describe('shutdown', () => {
  const schema = randomSchema();
  after(() => dropSchema(schema));

  test('amILeader() is false after shutdown, and shutdown is idempotent', async () => {
    const elector = await LeaderElectorCore.connect(DATABASE_URL, { ...FAST, schema });
    assert.ok(await waitFor(() => elector.amILeader(), 5000), 'leads alone');
    await elector.shutdown();
    assert.equal(elector.amILeader(), false);
    assert.equal(elector.status().state, 'stopped');
    await elector.shutdown();
    // The lease row was deleted, so another candidate need not wait for it to expire.
    const rows = await withClient((c) => c.query(`SELECT 1 FROM "${schema}".leader_lease WHERE id = 1`));
    assert.equal(rows.rows.length, 0);
  });

  test('a process that shuts its elector down exits by itself', async () => {
    const script = `
      const { LeaderElectorCore } = require(${JSON.stringify(PACKAGE)});
      (async () => {
        const e = await LeaderElectorCore.connect(process.env.URL, JSON.parse(process.env.CONFIG));
        e.on('status', () => {});
        const start = Date.now();
        while (!e.amILeader()) {
          if (Date.now() - start > 5000) throw new Error('never led');
          await new Promise((r) => setTimeout(r, 20));
        }
        await e.shutdown();
        console.log('shut down ' + e.amILeader());
      })().catch((err) => { console.error(err); process.exitCode = 2; });
    `;
    const child = spawn(process.execPath, ['-e', script], {
      env: { ...process.env, URL: DATABASE_URL, CONFIG: JSON.stringify({ ...FAST, schema, lockId: 3 }) },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    let shutAt = 0;
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('shut down')) shutAt ||= Date.now();
    });
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const code = await new Promise<number | null>((resolve) => {
      const timer = setTimeout(() => {
        child.kill('SIGKILL');
        resolve(null);
      }, 15_000);
      child.on('exit', (c) => {
        clearTimeout(timer);
        resolve(c);
      });
    });
    assert.notEqual(code, null, `the child did not exit within 15 s (stdout: ${out}, stderr: ${err})`);
    assert.equal(code, 0, `child failed: ${err}`);
    assert.match(out, /shut down false/);
    assert.ok(Date.now() - shutAt < 3000, 'exited within 3 s of the shutdown');
  });
});

/** Runs `script` in a child Node process; resolves with its exit code, or null if still running after `ms`. */
async function runChild(script: string, env: Record<string, string>, ms: number) {
  const child = spawn(process.execPath, ['-e', script], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (out += d.toString()));
  const code = await new Promise<number | null>((resolve) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      resolve(null);
    }, ms);
    child.on('exit', (c) => {
      clearTimeout(timer);
      resolve(c);
    });
  });
  return { code, out };
}

describe('keeping the process alive', () => {
  const schema = randomSchema();
  after(() => dropSchema(schema));
  const env = { URL: DATABASE_URL, CONFIG: JSON.stringify({ ...FAST, schema, lockId: 4 }) };

  test('a running elector keeps the process alive, like a server', async () => {
    const script = `
      const { LeaderElectorCore } = require(${JSON.stringify(PACKAGE)});
      LeaderElectorCore.connect(process.env.URL, JSON.parse(process.env.CONFIG))
        .then(() => console.log('started'), (err) => { console.error(err); process.exitCode = 2; });
    `;
    const { code, out } = await runChild(script, env, 2500);
    assert.equal(code, null, `the process exited (code ${code}) while its elector ran: ${out}`);
    assert.match(out, /started/);
  });

  test('unref() lets the process exit while the elector runs', async () => {
    const script = `
      const { LeaderElectorCore } = require(${JSON.stringify(PACKAGE)});
      LeaderElectorCore.connect(process.env.URL, JSON.parse(process.env.CONFIG))
        .then((e) => { e.unref(); console.log('started'); }, (err) => { console.error(err); process.exitCode = 2; });
    `;
    const { code, out } = await runChild(script, env, 10_000);
    assert.equal(code, 0, out);
    assert.match(out, /started/);
  });
});

describe('a crashed leader', () => {
  const schema = randomSchema();
  let follower: LeaderElectorCore | undefined;
  after(async () => {
    await follower?.shutdown();
    await dropSchema(schema);
  });

  test('is replaced within about one lease after SIGKILL', async () => {
    const config = { ...FAST, schema, lockId: 5 };
    const script = `
      const { LeaderElectorCore } = require(${JSON.stringify(PACKAGE)});
      LeaderElectorCore.connect(process.env.URL, JSON.parse(process.env.CONFIG)).then((e) => {
        const t = setInterval(() => { if (e.amILeader()) { console.log('leading'); clearInterval(t); } }, 10);
      }, (err) => { console.error(err); process.exit(2); });
    `;
    const child = spawn(process.execPath, ['-e', script], {
      env: { ...process.env, URL: DATABASE_URL, CONFIG: JSON.stringify(config) },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    try {
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error('the child did not lead within 10 s')), 10_000);
        child.stdout.on('data', (d: Buffer) => {
          if (d.toString().includes('leading')) {
            clearTimeout(timer);
            resolve();
          }
        });
        child.on('exit', (c) => reject(new Error(`the child exited early (${c})`)));
      });
      follower = await LeaderElectorCore.connect(DATABASE_URL, config);
      assert.ok(await waitFor(() => follower!.leader() !== null, 3000), 'the follower sees the leader');
      assert.equal(follower.amILeader(), false);
    } finally {
      child.kill('SIGKILL');
    }
    const killed = Date.now();
    assert.ok(
      await waitFor(() => follower!.amILeader(), 2 * FAST.leaseDuration + 1000),
      'the follower took over within two leases',
    );
    console.log(`takeover after SIGKILL of the leader: ${Date.now() - killed} ms (lease ${FAST.leaseDuration} ms)`);
  });
});

describe('migration SQL from the binding', () => {
  const schema = randomSchema();
  after(() => dropSchema(schema));

  test('upSql creates a table an elector with createTableOnInit false can use; downSql drops it', async () => {
    await withClient((c) => c.query(upSql(schema)));
    const elector = await LeaderElectorCore.connect(DATABASE_URL, { ...FAST, schema, createTableOnInit: false });
    try {
      assert.ok(await waitFor(() => elector.amILeader(), 5000));
    } finally {
      await elector.shutdown();
    }
    await withClient((c) => c.query(downSql(schema)));
    const left = await withClient((c) =>
      c.query(`SELECT to_regclass($1) AS t`, [`"${schema}".leader_lease`]),
    );
    assert.equal(left.rows[0].t, null);
  });
});

describe('LeaderElectorCore.create(dataSource)', () => {
  const schema = randomSchema();
  after(() => dropSchema(schema));

  test('runs on the server described by DataSource options', async () => {
    const u = new URL(DATABASE_URL);
    const dataSource = {
      options: {
        type: 'postgres',
        host: u.hostname,
        port: Number(u.port || 5432),
        username: decodeURIComponent(u.username),
        password: decodeURIComponent(u.password),
        database: u.pathname.slice(1),
      },
    };
    const elector = await LeaderElectorCore.create(dataSource, { ...FAST, schema });
    try {
      assert.ok(await waitFor(() => elector.amILeader(), 5000));
    } finally {
      await elector.shutdown();
    }
  });
});
