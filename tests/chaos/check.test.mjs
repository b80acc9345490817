// The checker on hand-made records: each violation it exists for is found, and a clean run passes.
// No database needed: node --test tests/chaos/
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';

import { check } from './check.mjs';

const MS = 1e6;

/** A run directory: `procs` maps a candidate to { lang, intervals, slot, exit, stderr, proc }. */
function runDir({ procs, faults = [], phaseEnd = 60_000 * MS, bound = 3800 }) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'chaos-check-'));
  fs.writeFileSync(
    path.join(dir, 'run.json'),
    JSON.stringify({
      seed: 1,
      settings: { node: 1, rust: 1, lease: 2000, renewal: 600, jitter: 200, safetyMargin: 200, operationTimeout: 300, slack: 500, lockId: 7 },
      bound_ms: bound,
      bound_formula: '',
      start_bound_ms: 20_000 + bound,
      candidates_started_ns: 0,
      phase_end_ns: phaseEnd,
    }),
  );
  fs.writeFileSync(path.join(dir, 'faults.jsonl'), faults.map((f) => `${JSON.stringify(f)}\n`).join(''));
  const lines = [];
  for (const [id, p] of Object.entries(procs)) {
    const records = (p.intervals ?? []).map(([term, first, last]) => ({
      type: 'interval',
      candidate: id,
      term,
      first_true_ns: first * MS,
      last_true_ns: last * MS,
      samples: 1,
    }));
    if (p.fatal) records.push({ type: 'fatal', candidate: id, kind: 'unhandledRejection', message: p.fatal });
    const killed = p.proc?.signal === 'SIGKILL';
    if (!killed && p.exit !== false) records.push({ type: 'exit', candidate: id, shutdown: 'ok', max_sample_gap_ns: 0 });
    fs.writeFileSync(path.join(dir, `${id}.jsonl`), records.map((r) => `${JSON.stringify(r)}\n`).join(''));
    if (p.slot) {
      const [term, first, last] = p.slot;
      fs.writeFileSync(
        path.join(dir, `${id}.slot`),
        `${JSON.stringify({ type: 'open', candidate: id, term, first_true_ns: first * MS, last_true_ns: last * MS })}   \n`,
      );
    }
    fs.writeFileSync(path.join(dir, `${id}.stderr`), p.stderr ?? '');
    lines.push({
      candidate: id,
      lang: p.lang ?? 'node',
      pid: 1,
      spawned_ns: 0,
      exited_ns: phaseEnd,
      exit_code: 0,
      signal: null,
      expected: 'sigterm',
      ...p.proc,
    });
  }
  fs.writeFileSync(path.join(dir, 'processes.jsonl'), lines.map((l) => `${JSON.stringify(l)}\n`).join(''));
  return dir;
}

const kinds = (dir) => check(dir).violations.map((v) => v.kind).sort();

test('a clean handover passes', () => {
  const dir = runDir({
    procs: {
      a: { intervals: [[1, 100, 20_000]] },
      b: { intervals: [[2, 21_000, 60_000]], lang: 'rust' },
    },
    faults: [{ kind: 'kill', inject_ns: 19_000 * MS, heal_ns: 19_000 * MS, ref_ns: 19_000 * MS }],
  });
  assert.deepEqual(check(dir).violations, []);
});

test('two processes leading at once is an overlap', () => {
  const dir = runDir({
    procs: {
      a: { intervals: [[1, 100, 20_000]] },
      b: { intervals: [[2, 19_999, 60_000]] },
    },
  });
  assert.deepEqual(kinds(dir), ['overlap']);
});

test('an overlap hidden behind a longer interval of the same process is found', () => {
  const dir = runDir({
    procs: {
      a: { intervals: [[1, 100, 10_000], [3, 10_500, 60_000]] },
      b: { intervals: [[2, 9_000, 10_600]] },
    },
  });
  // b overlaps a's first interval and a's second one; the terms are out of order as well.
  assert.ok(kinds(dir).filter((k) => k === 'overlap').length >= 2);
});

test('the open interval of a killed leader counts', () => {
  const dir = runDir({
    procs: {
      a: { intervals: [], slot: [1, 100, 20_000], proc: { signal: 'SIGKILL', exit_code: null, expected: 'sigkill' } },
      b: { intervals: [[2, 19_000, 60_000]] },
    },
  });
  assert.deepEqual(kinds(dir), ['overlap']);
});

test('a new leadership without a greater term is a term violation', () => {
  const dir = runDir({
    procs: {
      a: { intervals: [[5, 100, 20_000]] },
      b: { intervals: [[5, 21_000, 60_000]] },
    },
  });
  assert.deepEqual(kinds(dir), ['term']);
});

test('a leadership resumed after a newer one started is a term violation', () => {
  const dir = runDir({
    procs: {
      a: { intervals: [[1, 100, 10_000], [1, 30_000, 60_000]] },
      b: { intervals: [[2, 11_000, 29_000]] },
    },
  });
  assert.deepEqual(kinds(dir), ['term']);
});

test('no leader for longer than the bound after a fault is a gap violation', () => {
  const dir = runDir({
    procs: {
      a: { intervals: [[1, 100, 20_000]] },
      b: { intervals: [[2, 25_000, 60_000]] },
    },
    faults: [{ kind: 'stop', inject_ns: 20_000 * MS, heal_ns: 24_000 * MS, ref_ns: 20_000 * MS }],
  });
  assert.deepEqual(kinds(dir), ['gap']);
});

test('the gap is measured from the reference time of a fault that heals later', () => {
  const dir = runDir({
    procs: {
      a: { intervals: [[1, 100, 20_000]] },
      b: { intervals: [[2, 26_000, 60_000]] },
    },
    faults: [{ kind: 'latency', inject_ns: 19_000 * MS, heal_ns: 23_000 * MS, ref_ns: 23_000 * MS }],
  });
  assert.deepEqual(check(dir).violations, []);
});

test('a cluster left without a leader at the end is a gap violation', () => {
  const dir = runDir({ procs: { a: { intervals: [[1, 100, 20_000]] }, b: {} } });
  assert.deepEqual(kinds(dir), ['gap']);
});

test('crashes: a signal the harness did not send, a fatal record, a panic on stderr, a missing exit record', () => {
  const dir = runDir({
    procs: {
      a: { intervals: [[1, 100, 60_000]] },
      b: { proc: { signal: 'SIGABRT', exit_code: null } },
      c: { fatal: 'boom' },
      d: { lang: 'rust', stderr: "thread 'tokio-runtime-worker' panicked at src/elector.rs:1:1\n" },
      e: { exit: false },
      f: { proc: { exit_code: 1 } },
    },
  });
  assert.deepEqual(kinds(dir), ['crash', 'crash', 'crash', 'crash', 'crash']);
});
