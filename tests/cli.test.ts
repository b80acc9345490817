// `npx leaderlease`: the package's bin runs the Rust command line (native/leaderlease-<platform>, built
// by scripts/build-cli.sh with the addon), passes its exit status through, and when the wrapper itself
// is SIGKILLed the command line still stops its command and releases the lease.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { after, test } from 'node:test';

import { DATABASE_URL, dropSchema, randomSchema, sleep, withClient } from './helpers.js';

const BIN = join(__dirname, '..', 'dist', 'cli.js');
const schema = randomSchema();
after(() => dropSchema(schema));

const leases = () =>
  withClient(async (c) => {
    const r = await c.query(`SELECT id, leader_id FROM "${schema}".leader_lease`);
    return r.rows as { id: number; leader_id: string }[];
  });

test('the bin runs the native command line and passes the exit status through', () => {
  const version = spawnSync(process.execPath, [BIN, '--version'], { encoding: 'utf8' });
  assert.equal(version.status, 0, version.stderr);
  assert.match(version.stdout, /^leaderlease \d+\.\d+\.\d+/);

  const up = spawnSync(process.execPath, [BIN, 'migrate', 'up', '--url', DATABASE_URL, '--schema', schema], {
    encoding: 'utf8',
  });
  assert.equal(up.status, 0, up.stderr);
  const run = spawnSync(
    process.execPath,
    [BIN, 'run', '--url', DATABASE_URL, '--schema', schema, '--lock-id', '3', '--lease', '2s', '--', 'sh', '-c', 'exit 6'],
    { encoding: 'utf8' },
  );
  assert.equal(run.status, 6, run.stderr);
  const status = spawnSync(process.execPath, [BIN, 'status', '--url', DATABASE_URL, '--schema', schema, '--json'], {
    encoding: 'utf8',
  });
  assert.equal(status.status, 0, status.stderr);
  assert.deepEqual(JSON.parse(status.stdout).leases, []);
});

test('a SIGKILLed wrapper: the command line stops its command and releases the lease', async () => {
  const wrapper = spawn(
    process.execPath,
    [BIN, 'run', '--url', DATABASE_URL, '--schema', schema, '--lock-id', '4', '--lease', '3s', '--instance-id', 'npx-a', '--', 'sleep', '61.2345'],
    { stdio: 'ignore' },
  );
  let leading = false;
  const deadline = Date.now() + 15_000;
  while (!leading && Date.now() < deadline) {
    leading = (await leases()).some((l) => l.id === 4 && l.leader_id === 'npx-a');
    if (!leading) await sleep(50);
  }
  assert.ok(leading, 'the command line never led');
  wrapper.kill('SIGKILL');
  // Released at once (not left to expire after 3 s).
  const start = Date.now();
  let rows = await leases();
  while (rows.some((l) => l.id === 4) && Date.now() - start < 2_000) {
    await sleep(25);
    rows = await leases();
  }
  assert.deepEqual(rows.filter((l) => l.id === 4), [], 'the lease was not released');
  const sleeping = spawnSync('pgrep', ['-f', '^sleep 61.2345$'], { encoding: 'utf8' });
  assert.equal(sleeping.stdout.trim(), '', 'the command outlived the command line');
});
