import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';

import { type Throwaway, throwawayPg, throwawayPgBouncer } from './servers.js';

/**
 * The demo's cluster (examples/cluster.mjs: three candidate processes; per round the leader is killed
 * with SIGKILL, the next one calls release(), the next one gets SIGTERM) through a real PgBouncer
 * started here in front of a throwaway PostgreSQL, in transaction and in session mode. The cluster
 * checks from the candidates' own reports that no two ever led at once and that terms grew; this test
 * checks its verdict and the handover times. docs/benchmarks.md has the numbers.
 */

const ROOT = join(__dirname, '..');
const RENEWAL = 500;
const JITTER = 200;
const LEASE = 1500;

interface Summary {
  out: string;
  code: number | null;
  /** Medians and maxima in ms, by row: takeover after SIGKILL, handover after release() / SIGTERM. */
  rows: Record<string, { median: number; max: number }>;
}

function runCluster(url: string, pooler: string): Promise<Summary> {
  return new Promise((resolve, reject) => {
    const child = spawn(
      process.execPath,
      ['examples/cluster.mjs', '--rounds', '2', '--lease', String(LEASE), '--renewal', String(RENEWAL), '--jitter', String(JITTER), '--pooler', pooler],
      { cwd: ROOT, env: { ...process.env, DATABASE_URL: url }, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    const timer = setTimeout(() => child.kill('SIGINT'), 150_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      const rows: Summary['rows'] = {};
      for (const m of out.matchAll(/^ {2}(takeover after SIGKILL|handover after release\(\)|handover after SIGTERM)\s+median (\d+) ms, max (\d+) ms/gm)) {
        rows[m[1]!] = { median: Number(m[2]), max: Number(m[3]) };
      }
      resolve({ out, code, rows });
    });
  });
}

for (const mode of ['transaction', 'session'] as const) {
  describe(`PgBouncer in ${mode} mode`, () => {
    let pg: Throwaway;
    let bouncer: Throwaway;
    before(() => {
      pg = throwawayPg();
      // Transaction mode: fewer server connections than clients, so the candidates' statements share them.
      bouncer = throwawayPgBouncer(pg, mode, mode === 'transaction' ? 3 : 40);
    });
    after(() => {
      bouncer?.destroy();
      pg?.destroy();
    });

    test('one leader of three; takeover after a kill, handover after release() and SIGTERM', async () => {
      const run = await runCluster(bouncer.url, mode);
      process.stdout.write(`# PgBouncer ${mode} mode:\n${run.out.split('\nsummary\n')[1] ?? run.out}\n`);
      assert.equal(run.code, 0, run.out);
      assert.match(run.out, /never two leaders\s+ok/);
      const takeover = run.rows['takeover after SIGKILL'];
      const release = run.rows['handover after release()'];
      const sigterm = run.rows['handover after SIGTERM'];
      assert.ok(takeover && release && sigterm, run.out);
      // A kill: the lease runs out (at most LEASE after the last renewal), then the next poll or wake-up.
      assert.ok(takeover.max <= LEASE + RENEWAL + JITTER + 1000, `takeover ${takeover.max} ms`);
      // A release: with LISTEN (session mode) at once; polling (transaction mode) within one poll.
      const bound = mode === 'transaction' ? RENEWAL + JITTER / 2 + 500 : 300;
      assert.ok(release.max <= bound, `release handover ${release.max} ms > ${bound} ms`);
      assert.ok(sigterm.max <= bound, `SIGTERM handover ${sigterm.max} ms > ${bound} ms`);
    });
  });
}
