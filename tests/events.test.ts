import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';

import { filter, firstValueFrom, type Subscription } from 'rxjs';

import {
  LeaderElectorCore,
  LeaderElectorService,
  type LeaderElectorConfig,
  type LeadershipEvent,
} from '../dist/index.js';
import { DATABASE_URL, FAST, dropSchema, randomSchema, runScript, waitFor } from './helpers.js';

const PACKAGE = join(__dirname, '..', 'dist', 'index.js');
const EVENTS = ['elected', 'revoked', 'leaderChanged'] as const;

function listeners(e: LeaderElectorCore): Record<(typeof EVENTS)[number], number> {
  return { elected: e.listenerCount('elected'), revoked: e.listenerCount('revoked'), leaderChanged: e.listenerCount('leaderChanged') };
}

/** Subscribes to `e.events$` and records what arrives. */
function record(e: LeaderElectorCore): { events: LeadershipEvent[]; completed: () => boolean; sub: Subscription } {
  const events: LeadershipEvent[] = [];
  let completed = false;
  const sub = e.events$.subscribe({ next: (ev) => events.push(ev), complete: () => (completed = true) });
  return { events, completed: () => completed, sub };
}

describe('events$ (RxJS)', () => {
  const schema = randomSchema();
  const electors: LeaderElectorCore[] = [];
  after(async () => {
    await Promise.allSettled(electors.map((e) => e.shutdown()));
    await dropSchema(schema);
  });
  const config = (lockId: number, instanceId: string): LeaderElectorConfig => ({ ...FAST, schema, lockId, instanceId });

  test('elected on the leader, leaderChanged on the follower, revoked after release, then the handover', async () => {
    const a = new LeaderElectorCore(DATABASE_URL, config(31, 'a'));
    electors.push(a);
    const ra = record(a); // before the election: it sees it
    await a.ready();
    assert.ok(await waitFor(() => a.amILeader(), 5000), 'a leads alone');
    const termA = a.term()!;
    assert.deepEqual(ra.events, [
      { type: 'elected', term: termA },
      { type: 'leaderChanged', leaderId: 'a', term: termA },
    ]);

    const b = new LeaderElectorCore(DATABASE_URL, config(31, 'b'));
    electors.push(b);
    const rb = record(b);
    await b.ready();
    assert.ok(await waitFor(() => rb.events.length > 0, 5000), 'b reports the leader it observes');
    assert.deepEqual(rb.events, [{ type: 'leaderChanged', leaderId: 'a', term: termA }]);

    // Released: a is revoked at once; b is elected at its next poll, with a greater term.
    const bElected = firstValueFrom(b.events$.pipe(filter((e) => e.type === 'elected')));
    await a.release();
    assert.ok(await waitFor(() => ra.events.some((e) => e.type === 'revoked'), 2000), 'a is revoked');
    const elected = await bElected;
    assert.ok(elected.term > termA, `the new term ${elected.term} is above ${termA}`);
    assert.ok(b.amILeader(), 'b leads when its elected event arrives');
    assert.ok(await waitFor(() => ra.events.length >= 4, 2000), 'a observes the new leader');
    assert.deepEqual(ra.events.slice(2), [
      { type: 'revoked' },
      { type: 'leaderChanged', leaderId: 'b', term: elected.term },
    ]);
    assert.deepEqual(rb.events.slice(1), [
      { type: 'elected', term: elected.term },
      { type: 'leaderChanged', leaderId: 'b', term: elected.term },
    ]);
    assert.equal(ra.events.filter((e) => e.type === 'elected').length, 1, 'a was elected once');
    ra.sub.unsubscribe();
    rb.sub.unsubscribe();
  });

  test('unsubscribing removes the listeners; shutdown completes the stream and removes them too', async () => {
    const c = new LeaderElectorCore(DATABASE_URL, config(32, 'c'));
    electors.push(c);
    const before = listeners(c);
    const subs = Array.from({ length: 5 }, () => record(c));
    for (const k of EVENTS) assert.equal(c.listenerCount(k), before[k] + 5, `one ${k} listener per subscription`);
    for (const s of subs) s.sub.unsubscribe();
    assert.deepEqual(listeners(c), before, 'unsubscribed: no listener left');

    // 20 subscribe/unsubscribe cycles through operators leave nothing either.
    for (let i = 0; i < 20; i++) c.events$.pipe(filter((e) => e.type === 'elected')).subscribe().unsubscribe();
    assert.deepEqual(listeners(c), before);

    const live = record(c);
    await c.ready();
    assert.ok(await waitFor(() => c.amILeader(), 5000), 'c leads');
    await c.shutdown();
    assert.equal(live.completed(), true, 'shutdown completes the stream');
    assert.deepEqual(live.events.map((e) => e.type), ['elected', 'leaderChanged', 'revoked']);
    assert.deepEqual(listeners(c), before, 'completion removes the listeners');
    // A subscription after shutdown completes at once and adds nothing.
    const late = record(c);
    assert.equal(late.completed(), true);
    assert.deepEqual(listeners(c), before);
  });

  test('a failed start completes the stream (ready() rejects with the reason)', async () => {
    const d = new LeaderElectorCore(DATABASE_URL, { ...config(33, 'd'), leaseDuration: -1 });
    const r = record(d);
    await assert.rejects(d.ready(), { code: 'ERR_INVALID_CONFIG' });
    assert.ok(await waitFor(() => r.completed(), 1000), 'completed');
    assert.deepEqual(r.events, []);
    assert.deepEqual(listeners(d), { elected: 0, revoked: 0, leaderChanged: 0 });
  });

  test('LeaderElectorService has events$: elected on init, revoked before shutdown, complete after', async () => {
    const svc = new LeaderElectorService(DATABASE_URL, config(34, 'svc'));
    electors.push(svc);
    const r = record(svc);
    await svc.onModuleInit();
    assert.ok(await waitFor(() => r.events.some((e) => e.type === 'elected'), 5000), 'elected');
    await svc.beforeApplicationShutdown();
    assert.ok(await waitFor(() => r.events.some((e) => e.type === 'revoked'), 2000), 'revoked');
    await svc.onApplicationShutdown();
    assert.equal(r.completed(), true);
  });

  test('without rxjs installed the package works, and events$ throws a typed error naming rxjs', async () => {
    // A child process in which `rxjs` cannot be resolved, as in an app that does not install it.
    const script = `
      const Module = require('node:module');
      const resolve = Module._resolveFilename;
      Module._resolveFilename = function (request, ...rest) {
        if (request === 'rxjs' || request.startsWith('rxjs/')) {
          const err = new Error("Cannot find module '" + request + "'");
          err.code = 'MODULE_NOT_FOUND';
          throw err;
        }
        return resolve.call(this, request, ...rest);
      };
      const { LeaderElectorCore, MissingPeerDependencyError } = require(${JSON.stringify(PACKAGE)});
      const e = new LeaderElectorCore('postgres://unused', {}, { start: false });
      const out = { leader: e.amILeader() };
      try {
        e.events$;
        out.threw = false;
      } catch (err) {
        out.threw = true;
        out.typed = err instanceof MissingPeerDependencyError;
        out.code = err.code;
        out.message = err.message;
      }
      e.once('elected', () => {});
      out.emitterWorks = e.listenerCount('elected') === 1;
      console.log(JSON.stringify(out));
    `;
    const result = await runScript(script);
    assert.equal(result['leader'], false);
    assert.equal(result['threw'], true);
    assert.equal(result['typed'], true);
    assert.equal(result['code'], 'ERR_MISSING_DEPENDENCY');
    assert.match(String(result['message']), /"rxjs".*npm install rxjs/);
    assert.equal(result['emitterWorks'], true);
  });
});
