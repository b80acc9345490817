// `npx leaderlease`: the package's bin runs the Rust command line (native/leaderlease-<platform>, built
// by scripts/build-cli.sh with the addon), passes its exit status through, and when the wrapper itself
// is SIGKILLed the command line still stops its command and releases the lease.
import assert from 'node:assert/strict';
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
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

test('three wrappers, SIGKILL and SIGSTOP of the leader in turn: a new command runs after every fault, never two at once', async (t) => {
  // The npm bin stays the parent of the native command line (Node cannot exec), so a SIGSTOP of
  // `npx leaderlease run` stops only the wrapper: the command line under it must step down as if it had
  // been stopped itself, and its command must be stopped before anyone else's starts.
  const dir = mkdtempSync(join(tmpdir(), 'll-cli-faults-'));
  const marks = join(dir, 'marks');
  const wrappers: { id: string; child: ChildProcess; exit: Promise<number | string | null> }[] = [];
  const start = () => {
    const id = `npx-f${wrappers.length}`;
    const child = spawn(
      process.execPath,
      [
        BIN, 'run', '--url', DATABASE_URL, '--schema', schema, '--lock-id', '5', '--lease', '2s', '--instance-id', id,
        '--restart', '--', 'sh', '-c', `while :; do echo "$LEADERLEASE_INSTANCE_ID $$ $LEADERLEASE_TERM" >> '${marks}'; sleep 0.02; done`,
      ],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    let stderr = '';
    child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
    const exit = new Promise<number | string | null>((resolve) => child.on('exit', (code, sig) => resolve(code ?? sig)));
    wrappers.push({ id, child, exit: exit.then((c) => (c === 0 || c === 143 || c === 'SIGKILL' ? c : `${c}: ${stderr}`)) });
  };
  // Every line a command wrote, in the order written: [instance id, pid, term].
  const lines = (): string[][] => {
    try {
      return readFileSync(marks, 'utf8').trim().split('\n').filter(Boolean).map((l) => l.split(' '));
    } catch {
      return [];
    }
  };
  const pids = (): string[] => [...new Set(lines().map((l) => l[1]!))];
  /** Waits for a command other than those in `seen` to write; returns its instance id and pid. */
  const next = async (seen: string[], label: string, ms: number): Promise<{ id: string; pid: string }> => {
    const until = Date.now() + ms;
    while (Date.now() < until) {
      const fresh = lines().find((l) => !seen.includes(l[1]!));
      if (fresh) return { id: fresh[0]!, pid: fresh[1]! };
      await sleep(10);
    }
    assert.fail(`${label}: no new command ran within ${ms} ms (commands so far: ${pids().length})`);
  };
  try {
    for (let i = 0; i < 3; i++) start();
    let leader = await next([], 'the start', 20_000);
    const faults: string[] = [];
    for (let round = 0; round < 2; round++) {
      for (const sig of ['SIGKILL', 'SIGSTOP'] as const) {
        await sleep(500);
        const w = wrappers.find((x) => x.id === leader.id)!;
        const at = Date.now();
        w.child.kill(sig);
        faults.push(`${sig} ${w.id}`);
        if (sig === 'SIGKILL') start();
        leader = await next(pids(), `${sig} of the leading wrapper ${w.id} (faults: ${faults.join(', ')})`, 6_000);
        faults[faults.length - 1] += ` -> ${leader.id} after ${Date.now() - at} ms`;
        if (sig === 'SIGSTOP') {
          // Stopped past its lease, then continued: it must not run its old command again.
          await sleep(Math.max(0, 2_500 - (Date.now() - at)));
          w.child.kill('SIGCONT');
        }
      }
    }
    await sleep(1_000);
    // The commands ran one at a time: each one's last line comes before the next one's first.
    const all = lines();
    const spans = pids().map((pid) => {
      const at = all.flatMap((l, i) => (l[1] === pid ? [i] : []));
      return [at[0]!, at[at.length - 1]!] as const;
    });
    for (let i = 1; i < spans.length; i++) {
      assert.ok(spans[i - 1]![1] < spans[i]![0], `commands ${i} and ${i + 1} overlap (faults: ${faults.join(', ')})`);
    }
    assert.ok(spans.length >= 5, `${spans.length} commands for 4 faults`);
    t.diagnostic(faults.join('; '));
  } finally {
    for (const w of wrappers) {
      w.child.kill('SIGCONT');
      w.child.kill('SIGTERM');
    }
    const codes = await Promise.all(wrappers.map((w) => w.exit));
    for (const c of codes) assert.ok(c === 0 || c === 143 || c === 'SIGKILL', `a wrapper exited with ${c}`);
    for (const pid of pids()) {
      let state = 'gone';
      try {
        state = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ')[0]!;
      } catch {
        // Gone.
      }
      assert.ok(state === 'gone' || state === 'Z', `the command ${pid} outlived its command line (state ${state})`);
    }
    rmSync(dir, { recursive: true, force: true });
  }
});
