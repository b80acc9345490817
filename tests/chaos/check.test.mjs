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
    const records = (p.intervals ?? []).map(([term, first, last, lock, sampler]) => ({
      type: 'interval',
      candidate: id,
      ...(lock !== undefined ? { lock } : {}),
      ...(sampler !== undefined ? { sampler } : {}),
      term,
      first_true_ns: first * MS,
      last_true_ns: last * MS,
      samples: 1,
    }));
    if (p.fatal) records.push({ type: 'fatal', candidate: id, kind: 'unhandledRejection', message: p.fatal });
    const killed = p.proc?.signal === 'SIGKILL';
    if (p.ready) records.push({ type: 'ready', candidate: id, ...(p.ownListener ? { own_sigterm_listener: true } : {}) });
    if (!killed && p.exit !== false) records.push({ type: 'exit', candidate: id, shutdown: 'ok', max_sample_gap_ns: 0, ...(p.hooks ? { hooks: p.hooks } : {}) });
    fs.writeFileSync(path.join(dir, `${id}.jsonl`), records.map((r) => `${JSON.stringify(r)}\n`).join(''));
    // `slot`: one open interval; `slots`: several, one record each (a command-line candidate's commands).
    const slots = p.slots ?? (p.slot ? [p.slot] : []);
    if (slots.length > 0) {
      fs.writeFileSync(
        path.join(dir, `${id}.slot`),
        slots
          .map(([term, first, last]) => `${JSON.stringify({ type: 'open', candidate: id, term, first_true_ns: first * MS, last_true_ns: last * MS })}   \n`)
          .join(''),
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

test('a Nest candidate must end by the re-raised SIGTERM with its last shutdown hook run', () => {
  const sigterm = { exit_code: null, signal: 'SIGTERM', expected: 'sigterm' };
  const clean = runDir({
    procs: {
      a: { intervals: [[1, 100, 60_000]] },
      s: { lang: 'nest', ready: true, hooks: 'done', proc: sigterm },
      // SIGTERMed before its application had started: no hooks to check.
      t: { lang: 'nest', exit: false, proc: sigterm },
      // An app with a SIGTERM listener of its own: ended by its process.exit(143) on the re-raised signal.
      u: { lang: 'nest', ready: true, ownListener: true, hooks: 'done', proc: { exit_code: 143, signal: null, expected: 'sigterm' } },
    },
  });
  assert.deepEqual(check(clean).violations, []);
  const cut = runDir({
    procs: {
      a: { intervals: [[1, 100, 60_000]] },
      // Exit status 0 after SIGTERM, before the marker hook ran: the shutdown was cut short.
      s: { lang: 'nest', ready: true, exit: false, proc: { exit_code: 0, signal: null, expected: 'sigterm' } },
      // Ended by the signal but the last hook never ran.
      t: { lang: 'nest', ready: true, exit: false, proc: sigterm },
      // Its own listener, every hook ran, and yet status 0: the loop ran empty before the re-raised signal.
      u: { lang: 'nest', ready: true, ownListener: true, hooks: 'done', proc: { exit_code: 0, signal: null, expected: 'sigterm' } },
      // Status 143 from a candidate without a listener of its own is not how Nest ends it.
      v: { lang: 'nest', ready: true, hooks: 'done', proc: { exit_code: 143, signal: null, expected: 'sigterm' } },
    },
  });
  const texts = check(cut).violations.map((v) => `${v.kind} ${v.text}`);
  assert.equal(texts.length, 5, texts.join('\n'));
  assert.ok(texts.some((t) => /^crash u \(nest.*exited with status 0 .*not by the re-raised SIGTERM/.test(t)), texts.join('\n'));
  assert.ok(texts.some((t) => /^crash v \(nest.*exited with status 143 /.test(t)), texts.join('\n'));
  assert.ok(texts.some((t) => /^crash s \(nest.*exited with status 0 .*after SIGTERM, not by the re-raised SIGTERM/.test(t)), texts.join('\n'));
  assert.ok(texts.some((t) => /^crash s \(nest\) ended after SIGTERM without its last shutdown hook/.test(t)), texts.join('\n'));
  assert.ok(texts.some((t) => /^crash t \(nest\) ended after SIGTERM without its last shutdown hook/.test(t)), texts.join('\n'));
});

test('terms that start again after a DOWN+UP migration are term violations, per lock id and across candidates', () => {
  const downUp = { kind: 'down-up', locks: null, inject_ns: 20_000 * MS, heal_ns: 22_500 * MS, ref_ns: 22_500 * MS };
  const dir = runDir({
    procs: {
      a: { intervals: [[5, 100, 19_000, 7], [6, 100, 19_500, 8]] },
      // After the UP the sequence starts at 1 again: lock 7's next term is below a's, on another candidate.
      b: { intervals: [[1, 22_600, 60_000, 7], [7, 22_700, 60_000, 8]] },
    },
    faults: [downUp],
  });
  const v = check(dir).violations;
  assert.deepEqual(v.map((x) => x.kind), ['term']);
  assert.match(v[0].text, /^lock 7: b started leading with term 1 .*not above the earlier term 5 \(a\|5\)/);
  assert.equal(check(dir).report.termRegressions, 1);
  // Lock 8 alone (terms growing across the migration) passes.
  const fine = runDir({
    procs: { a: { intervals: [[6, 100, 19_500, 8]] }, b: { intervals: [[7, 22_700, 60_000, 8]] } },
    faults: [downUp],
  });
  assert.deepEqual(check(fine).violations, []);
});

test('two samplers of one process (twins) that lead one lock id at once overlap; other lock ids are apart', () => {
  const dir = runDir({
    procs: {
      r: { intervals: [[3, 100, 30_000, 7, 'r'], [4, 29_000, 60_000, 7, 'r~b'], [3, 100, 60_000, 8, 'r']] },
      n: { intervals: [[5, 100, 60_000, 9]] },
    },
  });
  const v = check(dir).violations;
  assert.deepEqual(v.map((x) => x.kind), ['overlap']);
  assert.match(v[0].text, /^lock 7: r \(term 3.*and r~b \(term 4/);
});

test('a gap over the bound of its own fault kind is a gap violation, within it is not', () => {
  // A lost acknowledgement: the bound is 2 x operation timeout + slack (1100 ms) from the heal.
  const lostAck = { kind: 'lost-ack', locks: [7], inject_ns: 19_700 * MS, heal_ns: 20_000 * MS, ref_ns: 20_000 * MS, bound_ms: 1100 };
  const over = runDir({
    procs: { a: { intervals: [[1, 100, 20_000, 7]] }, b: { intervals: [[2, 21_600, 60_000, 7]] } },
    faults: [lostAck],
  });
  const v = check(over).violations;
  assert.deepEqual(v.map((x) => x.kind), ['gap']);
  assert.match(v[0].text, /bound 1100 ms for lost-ack/);
  // The same gap on another lock id than the fault's is held to the general bound (no violation) ...
  const otherLock = runDir({
    procs: { a: { intervals: [[1, 100, 20_000, 8]] }, b: { intervals: [[2, 21_600, 60_000, 8]] } },
    faults: [lostAck, { kind: 'kill', locks: null, inject_ns: 19_900 * MS, heal_ns: 19_900 * MS, ref_ns: 19_900 * MS }],
  });
  assert.deepEqual(check(otherLock).violations, []);
  // ... and a lost acknowledgement that costs less than its bound passes.
  const within = runDir({
    procs: { a: { intervals: [[1, 100, 20_000, 7]] }, b: { intervals: [[2, 20_900, 60_000, 7]] } },
    faults: [lostAck],
  });
  assert.deepEqual(check(within).violations, []);
});

test('a stalled event loop: an old-term answer after the block and no other leader within the bound are found', () => {
  const stall = { kind: 'stall', target: 'n', locks: null, inject_ns: 20_000 * MS, heal_ns: 28_000 * MS, ref_ns: 20_000 * MS, bound_ms: 4800 };
  // The defect: the native side kept renewing, so the interval runs through the block and on after it.
  const wedged = runDir({
    procs: { n: { intervals: [[4, 100, 60_000]] }, b: {} },
    faults: [stall],
  });
  assert.deepEqual(kinds(wedged), ['gap', 'stall']);
  // Let go: the last true answer before the block, another candidate within the bound, no gap violation.
  const letGo = runDir({
    procs: { n: { intervals: [[4, 100, 20_000]] }, b: { intervals: [[5, 24_500, 60_000]] } },
    faults: [stall],
  });
  assert.deepEqual(check(letGo).violations, []);
});

test('a command-line candidate: 143 and 0 after SIGTERM are clean without an exit record, 75 is not; the killed commands of its slot records count', () => {
  const clean = runDir({
    procs: {
      c1: { lang: 'cli', exit: false, intervals: [[4, 30_500, 60_000]], slots: [[1, 100, 10_000], [3, 20_000, 30_000]], proc: { exit_code: 0 } },
      c2: { lang: 'cli', exit: false, proc: { exit_code: 143 } },
      a: { intervals: [[2, 10_500, 19_500]] },
    },
  });
  assert.deepEqual(check(clean).violations, []);
  const lost = runDir({ procs: { c1: { lang: 'cli', exit: false, intervals: [[1, 100, 60_000]], proc: { exit_code: 75, expected: null } } } });
  assert.deepEqual(kinds(lost), ['crash']);
  // The second killed command's last sample is after another candidate started leading.
  const late = runDir({
    procs: {
      c1: { lang: 'cli', exit: false, slots: [[1, 100, 10_000], [2, 10_500, 30_001]] },
      a: { intervals: [[3, 30_000, 60_000]] },
    },
  });
  assert.deepEqual(kinds(late), ['overlap']);
});

test('a candidate SIGSTOPped while leading that leads on for more than a lease before its SIGCONT is a stop violation', () => {
  // The command of a command-line candidate under a stopped npm wrapper runs (and samples) on.
  const stop = { kind: 'cli', signal: 'SIGSTOP', target: 'c1', locks: [7], inject_ns: 20_000 * MS, ref_ns: 20_000 * MS, heal_ns: 25_000 * MS };
  const ledOn = runDir({
    procs: {
      c1: { lang: 'cli', exit: false, intervals: [[1, 100, 22_100]] },
      a: { intervals: [[2, 22_400, 60_000]] },
    },
    faults: [stop],
  });
  assert.deepEqual(kinds(ledOn), ['stop']);
  // Stepped down within the lease (here at once), and led again after the SIGCONT: no violation.
  const steppedDown = runDir({
    procs: {
      c1: { lang: 'cli', exit: false, intervals: [[1, 100, 20_050], [3, 40_000, 60_000]] },
      a: { intervals: [[2, 20_100, 39_900]] },
    },
    faults: [stop],
  });
  assert.deepEqual(check(steppedDown).violations, []);
});
