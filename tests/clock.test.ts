import assert from 'node:assert/strict';
import { performance } from 'node:perf_hooks';
import { test } from 'node:test';

import { localDeadline } from '../dist/deadline.js';
import { Elector } from '../native/index.js';
import { DATABASE_URL, dropSchema, randomSchema, sleep, waitFor, withClient } from './helpers.js';

// amILeader() compares performance.now() with a copy of the native lease deadline. The native deadline is
// on the core's clock (Rust's Instant), which need not share a time base with performance.now() (macOS:
// CLOCK_UPTIME_RAW against libuv's mach_continuous_time), so only the time left crosses over. These tests
// hold the conversion to its rule on this machine's clocks: never later than the native deadline, and
// only a call's length earlier.

const clockNow = (): number => Elector.clockNow();
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

test('a converted deadline passes no later than the native one, and at most a moment earlier', (t) => {
  const gaps: number[] = [];
  let violations = 0;
  for (let round = 0; round < 30; round++) {
    const nativeDeadline = Elector.clockNow() + 5 + round;
    const local = localDeadline(nativeDeadline, clockNow);
    let localPassedAt = -1;
    let nativePassedAt = -1;
    while (nativePassedAt < 0) {
      // Native first: once it has passed, the JavaScript answer read after it must have passed too.
      const nativeValid = Elector.clockNow() < nativeDeadline;
      const now = performance.now();
      const localValid = now < local;
      if (localValid && !nativeValid) violations++;
      if (!localValid && localPassedAt < 0) localPassedAt = now;
      if (!nativeValid) nativePassedAt = now;
    }
    gaps.push(nativePassedAt - localPassedAt);
  }
  t.diagnostic(`gap median ${median(gaps).toFixed(4)} ms, max ${Math.max(...gaps).toFixed(4)} ms`);
  assert.equal(violations, 0, 'the converted deadline was still ahead after the native one had passed');
  assert.ok(Math.min(...gaps) >= 0, `gaps ${gaps.join(', ')}`);
  // Early by one native call: far below a millisecond (a wrong time base would be off by seconds).
  assert.ok(median(gaps) < 0.5, `median gap ${median(gaps)} ms, gaps ${gaps.map((g) => g.toFixed(3)).join(', ')}`);
});

test('with renewals blocked, the converted copy of a real lease ends with native isLeader(), never after', async (t) => {
  const schema = randomSchema();
  const e = await Elector.connect(DATABASE_URL, {
    leaseDuration: 3000,
    renewalInterval: 800,
    jitterRange: 100,
    schema,
    lockId: 1,
    maxEventLoopStall: 0,
  });
  let copy = -Infinity;
  e.onStateChange((s) => {
    copy = s.state === 'leader' && s.deadline != null ? localDeadline(s.deadline, clockNow) : -Infinity;
  });
  try {
    assert.ok(await waitFor(() => e.isLeader() && performance.now() < copy, 8000), 'leads, and the copy says so');
    await withClient(async (blocker) => {
      // Hold the lease row's lock: every renewal waits and times out, the deadline stops moving.
      await blocker.query('BEGIN');
      await blocker.query(`SELECT 1 FROM "${schema}".leader_lease WHERE id = 1 FOR UPDATE`);
      // A renewal confirmed just before the lock reports within this wait; later ones cannot be confirmed.
      await sleep(1000);
      assert.ok(e.isLeader(), 'still leads on its last confirmed renewal');
      let violations = 0;
      let samples = 0;
      let copyEndedAt = -1;
      let nativeEndedAt = -1;
      const until = performance.now() + 4000;
      // No yielding: no snapshot is delivered meanwhile, the copy is the one taken before the loop.
      while (nativeEndedAt < 0 && performance.now() < until) {
        const native = e.isLeader();
        const now = performance.now();
        const js = now < copy;
        samples++;
        if (js && !native) violations++;
        if (!js && copyEndedAt < 0) copyEndedAt = now;
        if (!native) nativeEndedAt = now;
      }
      await blocker.query('ROLLBACK');
      assert.ok(nativeEndedAt > 0, 'native isLeader() turned false at its deadline');
      assert.equal(violations, 0, `the copy said leader after native isLeader() said not, ${violations} of ${samples}`);
      const gap = nativeEndedAt - copyEndedAt;
      t.diagnostic(`copy ended ${gap.toFixed(4)} ms before native isLeader(); ${samples} samples`);
      assert.ok(gap >= 0 && gap < 25, `the copy ended ${gap.toFixed(3)} ms before the native deadline`);
    });
  } finally {
    await e.shutdown();
    await dropSchema(schema);
  }
});
