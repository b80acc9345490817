import assert from 'node:assert/strict';
import { getEventListeners } from 'node:events';
import { join } from 'node:path';
import { after, afterEach, beforeEach, describe, test } from 'node:test';

import { LeaderElectorCore, LeaderOnly, NotLeaderError } from '../dist/index.js';
import { DATABASE_URL, FAST, closedPort, dropSchema, randomSchema, runScript, sleep, waitFor } from './helpers.js';

const DIST = join(__dirname, '..', 'dist');

/** Records the process warnings and unhandled rejections while a test runs. */
function watchProcess() {
  const warnings: (Error & { code?: string })[] = [];
  const rejections: unknown[] = [];
  const onWarning = (w: Error & { code?: string }) => warnings.push(w);
  const onRejection = (r: unknown) => rejections.push(r);
  beforeEach(() => {
    warnings.length = 0;
    rejections.length = 0;
    process.on('warning', onWarning);
    process.on('unhandledRejection', onRejection);
  });
  afterEach(() => {
    process.off('warning', onWarning);
    process.off('unhandledRejection', onRejection);
  });
  const withCode = (code: string) => warnings.filter((w) => w.code === code);
  return { warnings, rejections, withCode };
}

describe('@LeaderOnly() on an instance no elector is bound to', () => {
  const seen = watchProcess();

  test('is skipped (or throws), and warns once per method with a code', async () => {
    class Plain {
      runs = 0;
      @LeaderOnly()
      tick(): string {
        this.runs++;
        return 'ran';
      }
      @LeaderOnly({ onFollower: 'throw' })
      strict(): string {
        this.runs++;
        return 'ran';
      }
      @LeaderOnly()
      async later(): Promise<string> {
        this.runs++;
        return 'ran';
      }
    }
    const p = new Plain(); // not a Nest provider: nothing binds it to an elector
    assert.equal(p.tick(), undefined);
    assert.equal(p.tick(), undefined);
    assert.equal(new Plain().tick(), undefined);
    assert.throws(() => p.strict(), NotLeaderError);
    assert.throws(() => p.strict(), NotLeaderError);
    assert.equal(await p.later(), undefined);
    assert.equal(p.runs, 0, 'nothing ran');
    await sleep(10); // warnings are emitted on the next tick
    const unbound = seen.withCode('LEADERLEASE_LEADER_ONLY_UNBOUND');
    assert.equal(unbound.length, 3, `one warning per method: ${unbound.map((w) => w.message).join('\n')}`);
    assert.match(unbound[0]!.message, /Plain\.tick .*skipped.*LeaderElectorModule/);
    assert.match(unbound[1]!.message, /Plain\.strict .*refused/);
    assert.match(unbound[2]!.message, /Plain\.later /);
    assert.equal(unbound[0]!.name, 'LeaderElectionWarning');
  });

  test('without reflect-metadata: warns once at decoration, and the module still finds and binds the method', async () => {
    // An app without reflect-metadata (and so without NestJS and TypeORM, which need it).
    const result = await runScript(`
      const Module = require('node:module');
      const resolve = Module._resolveFilename;
      const blocked = (r) => r === 'reflect-metadata' || r === 'typeorm' || r.startsWith('@nestjs/');
      Module._resolveFilename = function (request, ...rest) {
        if (blocked(request)) {
          const err = new Error("Cannot find module '" + request + "'");
          err.code = 'MODULE_NOT_FOUND';
          throw err;
        }
        return resolve.call(this, request, ...rest);
      };
      const warnings = [];
      process.on('warning', (w) => warnings.push({ code: w.code, message: w.message }));
      const { LeaderOnly } = require(${JSON.stringify(join(DIST, 'index.js'))});
      const { LeaderOnlyExplorer } = require(${JSON.stringify(join(DIST, 'leader-only.explorer.js'))});
      class Jobs {
        tick() { return 'ran'; }
        other() { return 'ran'; }
      }
      for (const key of ['tick', 'other']) {
        const d = Object.getOwnPropertyDescriptor(Jobs.prototype, key);
        Object.defineProperty(Jobs.prototype, key, LeaderOnly()(Jobs.prototype, key, d));
      }
      const bound = new Jobs();
      const unbound = new Jobs();
      // What Nest gives the explorer; its Reflector finds no metadata here.
      const explorer = new LeaderOnlyExplorer(
        { getProviders: () => [{ instance: bound }], getControllers: () => [] },
        { getAllMethodNames: (proto) => Object.getOwnPropertyNames(proto).filter((k) => k !== 'constructor') },
        { get: () => undefined },
        { amILeader: () => true, leader: () => null },
      );
      explorer.onModuleInit();
      const out = {
        metadataApi: typeof Reflect.getMetadata === 'function',
        bound: bound.tick(),
        unbound: unbound.tick(),
      };
      setImmediate(() => console.log(JSON.stringify({ ...out, warnings })));
    `);
    assert.equal(result['metadataApi'], false, 'reflect-metadata was not loaded');
    assert.equal(result['bound'], 'ran', 'the module binds the method without its metadata');
    assert.equal(result['unbound'], undefined);
    const warnings = result['warnings'] as { code: string; message: string }[];
    const noMeta = warnings.filter((w) => w.code === 'LEADERLEASE_NO_REFLECT_METADATA');
    assert.equal(noMeta.length, 1, 'warned once for two methods');
    assert.match(noMeta[0]!.message, /Jobs\.tick.*reflect-metadata/);
    assert.equal(warnings.filter((w) => w.code === 'LEADERLEASE_LEADER_ONLY_UNBOUND').length, 1);
  });
});

describe('a failed start nobody listens for', () => {
  const seen = watchProcess();

  test('is a process warning, never an unhandled rejection', async () => {
    const e = new LeaderElectorCore(DATABASE_URL, { ...FAST, leaseDuration: -1 });
    assert.ok(await waitFor(() => seen.withCode('LEADERLEASE_START_FAILED').length > 0, 2000), 'warned');
    const [w] = seen.withCode('LEADERLEASE_START_FAILED');
    assert.match(w!.message, /ERR_INVALID_CONFIG.*leaseDuration/);
    assert.equal(w!.name, 'LeaderElectionWarning');
    // ready() still tells whoever asks later.
    await assert.rejects(e.ready(), { code: 'ERR_INVALID_CONFIG' });
    await sleep(20);
    assert.deepEqual(seen.rejections, []);
  });

  test('an unreachable database: the warning names it', async () => {
    const port = await closedPort();
    const e = new LeaderElectorCore(`postgres://postgres@127.0.0.1:${port}/test`, FAST);
    assert.ok(await waitFor(() => seen.withCode('LEADERLEASE_START_FAILED').length > 0, 15_000), 'warned');
    assert.match(seen.withCode('LEADERLEASE_START_FAILED')[0]!.message, /ERR_DATABASE_UNREACHABLE/);
    assert.equal(e.amILeader(), false);
    await e.shutdown(); // never rejects after a failed start
    assert.deepEqual(seen.rejections, []);
  });

  test('no warning when an error listener or an awaited ready() hears of it', async () => {
    const heard: unknown[] = [];
    const withListener = new LeaderElectorCore(DATABASE_URL, { ...FAST, leaseDuration: -1 });
    withListener.on('error', (err) => heard.push(err));
    assert.ok(await waitFor(() => heard.length === 1, 2000), 'the error listener heard it');
    assert.equal((heard[0] as { code: string }).code, 'ERR_INVALID_CONFIG');
    await assert.rejects(LeaderElectorCore.connect(DATABASE_URL, { ...FAST, leaseDuration: -1 }), {
      code: 'ERR_INVALID_CONFIG',
    });
    const deferred = new LeaderElectorCore(DATABASE_URL, { ...FAST, leaseDuration: -1 }, { start: false });
    await assert.rejects(deferred.start(), { code: 'ERR_INVALID_CONFIG' });
    await sleep(50);
    assert.deepEqual(seen.withCode('LEADERLEASE_START_FAILED'), []);
    assert.deepEqual(seen.rejections, []);
  });
});

describe('runWhileLeader leaves no listener behind', () => {
  const schema = randomSchema();
  const electors: LeaderElectorCore[] = [];
  after(async () => {
    await Promise.allSettled(electors.map((e) => e.shutdown()));
    await dropSchema(schema);
  });

  test('20 cycles on the leader (returns, throws, rejects, aborted by the caller) and 20 aborted waits on a follower', async () => {
    const a = await LeaderElectorCore.connect(DATABASE_URL, { ...FAST, schema, lockId: 41, instanceId: 'a' });
    electors.push(a);
    assert.ok(await waitFor(() => a.amILeader(), 5000), 'a leads');
    const b = await LeaderElectorCore.connect(DATABASE_URL, { ...FAST, schema, lockId: 41, instanceId: 'b' });
    electors.push(b);
    const counts = (e: LeaderElectorCore) => e.eventNames().map((n) => `${String(n)}:${e.listenerCount(n)}`).join(',');
    const baseA = counts(a);
    const baseB = counts(b);
    // A long-lived signal passed to every cycle: a leak would pile up 'abort' listeners on it.
    const keep = new AbortController();

    for (let i = 0; i < 20; i++) {
      switch (i % 4) {
        case 0:
          assert.equal(await a.runWhileLeader(() => i, { signal: keep.signal }), i);
          break;
        case 1:
          await assert.rejects(
            a.runWhileLeader(() => {
              throw new Error(`sync ${i}`);
            }, { signal: keep.signal }),
            { message: `sync ${i}` },
          );
          break;
        case 2: {
          const caller = new AbortController();
          const run = a.runWhileLeader(
            (signal) => new Promise<string>((resolve) => signal.addEventListener('abort', () => resolve('aborted'))),
            { signal: caller.signal },
          );
          setTimeout(() => caller.abort(), 5);
          assert.equal(await run, 'aborted');
          assert.equal(getEventListeners(caller.signal, 'abort').length, 0);
          break;
        }
        default:
          await assert.rejects(
            a.runWhileLeader(async () => {
              await sleep(1);
              throw new Error(`async ${i}`);
            }, { signal: keep.signal }),
            { message: `async ${i}` },
          );
      }
      assert.ok(a.amILeader(), 'a still leads');
    }
    for (let i = 0; i < 20; i++) {
      const caller = new AbortController();
      const waiting = b.runWhileLeader(() => 'ran', { signal: caller.signal });
      setTimeout(() => caller.abort(new Error(`gave up ${i}`)), 2);
      await assert.rejects(waiting, { message: `gave up ${i}` });
      assert.equal(getEventListeners(caller.signal, 'abort').length, 0);
    }
    assert.equal(counts(a), baseA, 'the leader has as many listeners as before');
    assert.equal(counts(b), baseB, 'the follower has as many listeners as before');
    assert.equal(getEventListeners(keep.signal, 'abort').length, 0, 'nothing left on the caller signal');
  });
});
