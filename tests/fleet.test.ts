// LeaderFleet (issue 22): named elections of LeaderElectorCore spread over the members of a fleet by the
// core's plan, on the real PostgreSQL. Three members (each on a hub of its own, as three processes are)
// run the same 12 names: balanced 4/4/4, no move at steady state, a leave moves only the leaver's names,
// and no name ever has two leaders at a sample.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, describe, test } from 'node:test';

import { LeaderElectionConfigError, LeaderElectorCore, LeaderFleet } from '../dist/index.js';
import { DATABASE_URL, FAST, dropSchema, randomSchema, sleep, waitFor } from './helpers.js';

const NAMES = 12;

function urlWithApp(app: string): string {
  const u = new URL(DATABASE_URL);
  u.searchParams.set('application_name', app);
  return u.toString();
}

interface Member {
  id: string;
  fleet: LeaderFleet;
  electors: LeaderElectorCore[];
}

async function member(schema: string, id: string): Promise<Member> {
  const url = urlWithApp(`ll_fleet_${id}_${randomBytes(3).toString('hex')}`);
  const fleet = await LeaderFleet.join(url, { id, schema, leaseDuration: 2000, renewalInterval: 500 });
  const electors = await Promise.all(
    Array.from({ length: NAMES }, (_, i) =>
      LeaderElectorCore.connect(url, { ...FAST, schema, lockId: 100 + i, fleet: { fleet, name: `job-${i}` } }),
    ),
  );
  return { id, fleet, electors };
}

/** The leader of each name by member id (null: none), asserting that no name has two. */
function leaders(members: Member[]): (string | null)[] {
  return Array.from({ length: NAMES }, (_, i) => {
    const ids = members.filter((m) => m.electors[i]!.amILeader()).map((m) => m.id);
    assert.ok(ids.length <= 1, `job-${i} has two leaders: ${ids.join(', ')}`);
    return ids[0] ?? null;
  });
}

function loads(members: Member[]): number[] {
  const l = leaders(members);
  return members.map((m) => l.filter((x) => x === m.id).length);
}

describe('LeaderFleet: named elections spread by membership', () => {
  const schema = randomSchema();
  const members: Member[] = [];
  after(async () => {
    for (const m of members) {
      await m.fleet.leave().catch(() => undefined);
      await Promise.allSettled(m.electors.map((e) => e.shutdown()));
    }
    await dropSchema(schema);
  });

  test('three members share 12 names 4/4/4, nothing moves at steady state, a leave moves only its names', async () => {
    for (const id of ['a', 'b', 'c']) members.push(await member(schema, id));
    assert.ok(
      await waitFor(() => {
        const l = loads(members);
        return l.every((n) => n === 4);
      }, 15_000),
      `not balanced: ${JSON.stringify(loads(members))}`,
    );
    for (const m of members) {
      assert.deepEqual(m.fleet.members().map((x) => x.id).sort(), ['a', 'b', 'c']);
      assert.equal(m.fleet.owned().length, 4, `${m.id} plans 4 names for itself`);
    }
    const plans = members.map((m) => JSON.stringify(m.fleet.plan()));
    assert.ok(plans.every((p) => p === plans[0]), 'every member computes the same plan');

    // Steady state: several renewals of leases (0.4 s) and memberships (0.5 s).
    const before = leaders(members);
    const until = Date.now() + 2500;
    while (Date.now() < until) {
      assert.deepEqual(leaders(members), before, 'a name moved at steady state');
      await sleep(10);
    }

    // c leaves, then stops its elections: only c's names move, to a and b.
    const c = members.pop()!;
    const ofC = before.map((l, i) => (l === 'c' ? i : -1)).filter((i) => i >= 0);
    await c.fleet.leave();
    await Promise.all(c.electors.map((e) => e.shutdown()));
    assert.ok(await waitFor(() => loads(members).every((n) => n === 6), 10_000), `not rebalanced: ${JSON.stringify(loads(members))}`);
    const afterLeave = leaders(members);
    for (let i = 0; i < NAMES; i++) {
      if (!ofC.includes(i)) assert.equal(afterLeave[i], before[i], `job-${i} moved though its leader stayed`);
    }
  });

  test('a name prefers the newest version: a singleton moves once, to the new version, and stays', async () => {
    const vschema = randomSchema();
    const started: { fleet: LeaderFleet; elector: LeaderElectorCore }[] = [];
    const join = async (id: string, version: string) => {
      const url = urlWithApp(`ll_fleet_v_${id}_${randomBytes(3).toString('hex')}`);
      const fleet = await LeaderFleet.join(url, { id, version, schema: vschema, leaseDuration: 2000, renewalInterval: 500 });
      const elector = await LeaderElectorCore.connect(url, { ...FAST, schema: vschema, lockId: 300, fleet: { fleet, name: 'singleton' } });
      started.push({ fleet, elector });
      return elector;
    };
    try {
      const old = await join('old', '1.9');
      assert.ok(await waitFor(() => old.amILeader(), 10_000), 'the only member leads the singleton');
      const leaders: string[] = [];
      const sampler = setInterval(() => {
        const now = started.filter((m) => m.elector.amILeader()).map((m) => m.fleet.id);
        assert.ok(now.length <= 1, `two leaders: ${now.join(', ')}`);
        if (now[0] !== undefined && leaders.at(-1) !== now[0]) leaders.push(now[0]);
      }, 5);
      try {
        const fresh = await join('new', '1.10');
        assert.ok(await waitFor(() => fresh.amILeader(), 10_000), 'the member of the newer version (1.10 > 1.9) takes it');
        await sleep(2000);
        assert.deepEqual(leaders, ['old', 'new'], 'one move, and it stays with the new version');
      } finally {
        clearInterval(sampler);
      }
    } finally {
      for (const m of started) await m.fleet.leave().catch(() => undefined);
      await Promise.allSettled(started.map((m) => m.elector.shutdown()));
      await dropSchema(vschema);
    }
  });

  test('a fleet option that is none is warned about naming the closest, and a fleet that is no LeaderFleet is refused', async () => {
    const seen: string[] = [];
    const onWarning = (w: Error) => seen.push(w.message);
    process.on('warning', onWarning);
    try {
      const f = await LeaderFleet.join(DATABASE_URL, { schema, versoin: '1' } as never);
      await f.leave();
      await sleep(20);
    } finally {
      process.off('warning', onWarning);
    }
    assert.ok(seen.some((m) => /versoin/.test(m) && /version/.test(m)), `a warning naming versoin and version: ${JSON.stringify(seen)}`);
    await assert.rejects(LeaderFleet.join(DATABASE_URL, 42 as never), LeaderElectionConfigError);
    await assert.rejects(
      LeaderElectorCore.connect(DATABASE_URL, { ...FAST, schema, lockId: 999, fleet: { fleet: {} as LeaderFleet, name: 'x' } }),
      (e: unknown) => e instanceof LeaderElectionConfigError && /fleet\.fleet/.test(e.message),
    );
  });
});
