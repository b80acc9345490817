import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';

import { type FixtureApp, killAll, startFixture } from './fixture-app.js';
import { DATABASE_URL, FAST, dropSchema, randomSchema, runScript, waitFor } from './helpers.js';

const DIST = join(__dirname, '..', 'dist', 'index.js');

/** One NestJS app of tests/fixtures/shutdown-app.ts in its own process. */
type App = FixtureApp;

function startApp(instance: string, schema: string, lockId: number, markerDir: string): App {
  return startFixture('shutdown-app', instance, { LL_SCHEMA: schema, LL_LOCK_ID: String(lockId), LL_MARKER_DIR: markerDir });
}

/** The leadership events `a` printed, in order; `up` once it has started. */
const events = (a: App): string[] => a.lines.map((l) => l['event'] as string).filter((e) => e !== 'up');
const isUp = (a: App): boolean => a.lines.some((l) => l['event'] === 'up');

const leads = (a: App) => a.exit === null && events(a).at(-1) === 'elected';

describe('a NestJS app with enableShutdownHooks(), SIGTERMed while it leads', () => {
  const schema = randomSchema();
  const markerDir = mkdtempSync(join(tmpdir(), 'll-shutdown-'));
  const apps: App[] = [];
  after(async () => {
    await killAll(apps);
    await dropSchema(schema);
    rmSync(markerDir, { recursive: true, force: true });
  });

  test('runs every shutdown hook and ends by the re-raised SIGTERM, five leaders in a row', async (t) => {
    const lockId = 61;
    let started = 0;
    const spawnOne = () => {
      const a = startApp(`app-${started++}`, schema, lockId, markerDir);
      apps.push(a);
      return a;
    };
    for (let i = 0; i < 3; i++) spawnOne();
    const outcomes: string[] = [];
    const rounds = 5;
    for (let round = 0; round < rounds; round++) {
      const running = () => apps.filter((a) => a.exit === null);
      assert.ok(
        await waitFor(() => running().every(isUp) && running().filter(leads).length === 1, 20_000),
        `round ${round}: three apps up and one leader within 20 s (${apps.map((a) => `${a.instance}: ${events(a).join(',')} ${a.stderr}`).join('; ')})`,
      );
      const leader = running().find(leads)!;
      const sentAt = performance.now();
      leader.child.kill('SIGTERM');
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([leader.exited, new Promise((r) => (timer = setTimeout(r, 20_000)))]);
      clearTimeout(timer);
      assert.notEqual(leader.exit, null, `round ${round}: ${leader.instance} still runs 20 s after SIGTERM`);
      const ms = Math.round(performance.now() - sentAt);
      const marker = join(markerDir, `${leader.instance}.flushed`);
      const flushed = existsSync(marker) ? readFileSync(marker, 'utf8').split('\n')[0] : null;
      outcomes.push(
        `${leader.instance}: exit code ${leader.exit!.code} signal ${leader.exit!.signal} after ${ms} ms, ` +
          `flush hook ${flushed === null ? 'never ran' : `ran (${flushed})`}`,
      );
      spawnOne();
    }
    const complete = (o: string) => /signal SIGTERM .* flush hook ran \(SIGTERM\)/.test(o) || /exit code 143 .* flush hook ran/.test(o);
    for (const o of outcomes) t.diagnostic(o);
    for (const a of apps) if (a.stderr.trim() !== '') t.diagnostic(`${a.instance} printed: ${a.stderr.trim()}`);
    const cut = outcomes.filter((o) => !complete(o));
    assert.equal(cut.length, 0, `${cut.length} of ${rounds} shutdowns cut short:\n${outcomes.join('\n')}`);
  });
});

describe('standalone: an unref()ed elector', () => {
  const schema = randomSchema();
  after(() => dropSchema(schema));

  test('keeps the process alive through an awaited release() and shutdown(), and holds nothing after', async () => {
    // Nothing else holds the event loop in this process; runScript needs it to exit by itself, code 0.
    const script = `
      const { LeaderElectorCore } = require(${JSON.stringify(DIST)});
      (async () => {
        const e = await LeaderElectorCore.connect(${JSON.stringify(DATABASE_URL)},
          { ...${JSON.stringify(FAST)}, schema: ${JSON.stringify(schema)}, lockId: 62 });
        e.unref();
        const out = { led: false, released: false, stopped: null };
        const end = Date.now() + 5000;
        while (!e.amILeader() && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
        out.led = e.amILeader();
        await e.release();
        out.released = !e.amILeader();
        await e.shutdown();
        out.stopped = e.status().state;
        process.stdout.write(JSON.stringify(out));
      })();
    `;
    assert.deepEqual(await runScript(script), { led: true, released: true, stopped: 'stopped' });
  });
});
