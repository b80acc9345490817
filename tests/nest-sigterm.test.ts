// Issue 20.1: a NestJS worker of the shape users run (TypeORM, @nestjs/schedule, enableShutdownHooks and a
// SIGTERM listener of the app's own that exits 143 on the re-raised signal), SIGTERMed while it leads,
// must end by that listener every time: never with code 0 because the event loop ran empty first.
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';

import { upSql } from '../dist/index.js';
import { type FixtureApp, killAll, startFixture } from './fixture-app.js';
import { dropSchema, randomSchema, waitFor, withClient } from './helpers.js';

const ROUNDS = 10;

/** The latest leadership event `a` printed for `name`. */
const leadsNow = (a: FixtureApp, name: string): boolean =>
  a.exit === null && a.lines.filter((l) => l['name'] === name && (l['event'] === 'elected' || l['event'] === 'revoked')).at(-1)?.['event'] === 'elected';
const isUp = (a: FixtureApp): boolean => a.lines.some((l) => l['event'] === 'up');

/**
 * Three instances of tests/fixtures/sigterm-app.ts; `ROUNDS` times the leader of `name` is SIGTERMed (for
 * `slow`, while a run is in flight) and replaced by a new instance. Returns each old leader's exit.
 */
async function sigtermLeaders(schema: string, env: Record<string, string>, name: string, apps: FixtureApp[]) {
  let started = 0;
  const spawnOne = () => {
    const a = startFixture('sigterm-app', `app-${started++}`, { LL_SCHEMA: schema, ...env });
    apps.push(a);
  };
  for (let i = 0; i < 3; i++) spawnOne();
  const outcomes: { instance: string; exit: string; ms: number; drained: boolean | null }[] = [];
  for (let round = 0; round < ROUNDS; round++) {
    const running = () => apps.filter((a) => a.exit === null);
    const ready = () => running().every(isUp) && running().filter((a) => leadsNow(a, name)).length === 1;
    assert.ok(
      await waitFor(ready, 30_000),
      `round ${round}: three apps up and one leader of '${name}' within 30 s (${apps.map((a) => `${a.instance}: ${a.stderr}`).join('; ')})`,
    );
    const leader = running().find((a) => leadsNow(a, name))!;
    if (name === 'slow') {
      // SIGTERM in the middle of a run: the drain has work to wait for.
      const runs = leader.lines.filter((l) => l['event'] === 'run-start').length;
      await waitFor(() => leader.lines.filter((l) => l['event'] === 'run-start').length > runs, 10_000);
    }
    const sentAt = performance.now();
    leader.child.kill('SIGTERM');
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([leader.exited, new Promise((r) => (timer = setTimeout(r, 20_000)))]);
    clearTimeout(timer);
    assert.notEqual(leader.exit, null, `round ${round}: ${leader.instance} still runs 20 s after SIGTERM`);
    const ms = Math.round(performance.now() - sentAt);
    // For `slow`: the run in flight at the SIGTERM ended (run-end printed) before the process did.
    const drained = name === 'slow' ? leader.lines.at(-1)?.['event'] !== 'run-start' : null;
    outcomes.push({ instance: leader.instance, exit: `code ${leader.exit!.code} signal ${leader.exit!.signal}`, ms, drained });
    spawnOne();
  }
  return outcomes;
}

for (const [what, env, name] of [
  ['the original API (one @LeaderOnly() job)', { LL_SHAPE: 'original' }, 'app'],
  ['named jobs and 30 more named elections', { LL_SHAPE: 'named', LL_NAMES: '30' }, 'slow'],
] as const) {
  describe(`a NestJS worker with TypeORM, @nestjs/schedule and a SIGTERM listener of its own: ${what}`, () => {
    const schema = randomSchema();
    const apps: FixtureApp[] = [];
    after(async () => {
      await killAll(apps);
      await dropSchema(schema);
    });

    test(`${ROUNDS} SIGTERMs to the leader: each ends by the app's listener on the re-raised signal (143)`, async (t) => {
      await withClient((c) => c.query(upSql(schema)));
      const outcomes = await sigtermLeaders(schema, env, name, apps);
      for (const o of outcomes) t.diagnostic(JSON.stringify(o));
      const wrong = outcomes.filter((o) => o.exit !== 'code 143 signal null');
      assert.equal(wrong.length, 0, `${wrong.length} of ${ROUNDS} exits not by the re-raised SIGTERM:\n${outcomes.map((o) => JSON.stringify(o)).join('\n')}`);
      if (name === 'slow') assert.ok(outcomes.every((o) => o.drained), `a run in flight was cut: ${JSON.stringify(outcomes)}`);
      for (const a of apps) {
        const printed = a.stderr.replace(/^.*ExperimentalWarning.*$/gm, '').trim();
        if (printed !== '') t.diagnostic(`${a.instance} printed: ${printed}`);
      }
    });
  });
}
