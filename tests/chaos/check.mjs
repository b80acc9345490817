// The chaos checker: reads every record of a run directory and lists the violations (docs/chaos.md).
//
//   node tests/chaos/check.mjs RUN_DIR       prints the summary; exit status 1 on any violation
//
// A run directory holds run.json (settings, the bound), faults.jsonl, processes.jsonl and, per candidate
// process, <id>.jsonl (closed intervals, fatal/exit lines), <id>.slot (the interval open when it died) and
// <id>.stderr.
//
// Violations:
//   overlap   two candidate processes both answered "leader" at overlapping times
//   term      a new leadership whose term is not greater than every earlier leadership's, or a leadership
//             that resumed after a newer one had started
//   gap       no leader for longer than `bound_ms` after the later of the gap's start and the reference
//             time of the faults injected before it ended
//   crash     a candidate that exited unasked, with a non-zero status or a signal the harness did not
//             send, logged a fatal line (unhandled rejection, uncaught exception), or whose stderr shows a
//             panic, an unhandled rejection, an uncaught exception, a V8 fatal error or a segfault

import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const STDERR_PATTERNS = [
  /panicked at/i,
  /unhandled ?rejection/i,
  /uncaught ?exception/i,
  /FATAL ERROR/,
  /segmentation fault/i,
];

function readJsonLines(file) {
  if (!fs.existsSync(file)) return [];
  const out = [];
  for (const line of fs.readFileSync(file, 'utf8').split('\n')) {
    const t = line.trim();
    if (t === '') continue;
    try {
      out.push(JSON.parse(t));
    } catch {
      out.push({ type: 'garbled', line: t });
    }
  }
  return out;
}

const ms = (ns) => ns / 1e6;
const fmt = (ns) => `${ms(ns).toFixed(1)} ms`;
const at = (ns) => `t=${(ns / 1e9).toFixed(3)}s`;

/** Reads a run directory and returns { violations, report } (report: the numbers of the summary). */
export function check(dir) {
  const run = JSON.parse(fs.readFileSync(path.join(dir, 'run.json'), 'utf8'));
  const faults = readJsonLines(path.join(dir, 'faults.jsonl'));
  const processes = readJsonLines(path.join(dir, 'processes.jsonl'));
  const boundNs = run.bound_ms * 1e6;
  const violations = [];
  const intervals = [];
  const perProcess = new Map();
  const warnings = [];

  // --- Records of every candidate process.
  for (const p of processes) {
    const records = readJsonLines(path.join(dir, `${p.candidate}.jsonl`));
    const own = [];
    let exit = null;
    for (const r of records) {
      if (r.type === 'interval') own.push(r);
      else if (r.type === 'exit') exit = r;
      else if (r.type === 'fatal') {
        violations.push({ kind: 'crash', text: `${p.candidate}: ${r.kind}: ${String(r.message).split('\n')[0]}` });
      } else if (r.type === 'warning') {
        warnings.push(`${p.candidate}: ${r.name}: ${r.message}`);
      } else if (r.type === 'garbled') {
        violations.push({ kind: 'crash', text: `${p.candidate}: unreadable record: ${r.line.slice(0, 120)}` });
      }
    }
    const slotFile = path.join(dir, `${p.candidate}.slot`);
    if (fs.existsSync(slotFile)) {
      const text = fs.readFileSync(slotFile, 'utf8').trim();
      if (text !== '') {
        let slot = null;
        try {
          slot = JSON.parse(text);
        } catch {
          violations.push({ kind: 'crash', text: `${p.candidate}: unreadable slot: ${text.slice(0, 120)}` });
        }
        // The open interval of a process that died while leading (or between appending the closed interval
        // and clearing the slot, then it is a duplicate).
        if (slot?.type === 'open' && !own.some((r) => r.term === slot.term && r.first_true_ns === slot.first_true_ns)) {
          own.push({ ...slot, type: 'interval', open_at_death: true });
        }
      }
    }
    for (const r of own) {
      if (r.last_true_ns < r.first_true_ns) {
        violations.push({ kind: 'crash', text: `${p.candidate}: interval ends before it starts (term ${r.term})` });
      }
      intervals.push({ candidate: p.candidate, lang: p.lang, term: r.term, first: r.first_true_ns, last: r.last_true_ns });
    }
    perProcess.set(p.candidate, { exit, intervals: own.length });

    // --- Crashes.
    const killedByHarness = p.expected === 'sigkill' && p.signal === 'SIGKILL';
    const cleanExit = p.exit_code === 0 && p.signal === null;
    if (p.exit_code === undefined && p.signal === undefined) {
      violations.push({ kind: 'crash', text: `${p.candidate}: no exit recorded` });
    } else if (!killedByHarness && !cleanExit) {
      violations.push({
        kind: 'crash',
        text: `${p.candidate} (${p.lang}, pid ${p.pid}) exited with ${p.signal ?? `status ${p.exit_code}`} ${at(p.exited_ns)}${p.expected === 'sigterm' ? ' after SIGTERM' : ' unasked'}`,
      });
    } else if (cleanExit && p.expected !== 'sigterm') {
      violations.push({ kind: 'crash', text: `${p.candidate} (${p.lang}) exited by itself ${at(p.exited_ns)}` });
    } else if (cleanExit && exit === null) {
      violations.push({ kind: 'crash', text: `${p.candidate} (${p.lang}) exited 0 without its exit record` });
    }
    const stderrFile = path.join(dir, `${p.candidate}.stderr`);
    if (fs.existsSync(stderrFile)) {
      for (const line of fs.readFileSync(stderrFile, 'utf8').split('\n')) {
        if (STDERR_PATTERNS.some((re) => re.test(line))) {
          violations.push({ kind: 'crash', text: `${p.candidate} stderr: ${line.slice(0, 200)}` });
          break;
        }
      }
    }
  }

  intervals.sort((a, b) => a.first - b.first || a.last - b.last);

  // --- Overlaps: every pair of intervals of different processes that share a moment.
  let overlaps = 0;
  let maxOverlapNs = 0;
  const active = [];
  for (const iv of intervals) {
    for (let i = active.length - 1; i >= 0; i--) if (active[i].last < iv.first) active.splice(i, 1);
    for (const other of active) {
      if (other.candidate === iv.candidate) {
        violations.push({ kind: 'overlap', text: `${iv.candidate}: two intervals of one process overlap (terms ${other.term}, ${iv.term})` });
        continue;
      }
      overlaps += 1;
      const d = Math.min(other.last, iv.last) - iv.first;
      maxOverlapNs = Math.max(maxOverlapNs, d);
      violations.push({
        kind: 'overlap',
        text: `${other.candidate} (term ${other.term}, ${at(other.first)}..${at(other.last)}) and ${iv.candidate} (term ${iv.term}, ${at(iv.first)}..${at(iv.last)}) both led for ${fmt(d)}`,
      });
    }
    active.push(iv);
  }

  // --- Terms.
  let maxTerm = -Infinity;
  let maxKey = null;
  const seen = new Set();
  const leaderships = [];
  for (const iv of intervals) {
    const key = `${iv.candidate}|${iv.term}`;
    if (seen.has(key)) {
      if (iv.term < maxTerm) {
        violations.push({ kind: 'term', text: `${iv.candidate} led again with term ${iv.term} ${at(iv.first)} after ${maxKey} had started with term ${maxTerm}` });
      }
      continue;
    }
    if (iv.term <= maxTerm) {
      violations.push({ kind: 'term', text: `${iv.candidate} started leading with term ${iv.term} ${at(iv.first)}, not above the earlier term ${maxTerm} (${maxKey})` });
    }
    seen.add(key);
    leaderships.push(iv);
    if (iv.term > maxTerm) {
      maxTerm = iv.term;
      maxKey = key;
    }
  }

  // --- Leaderless gaps.
  const merged = [];
  for (const iv of intervals) {
    const last = merged[merged.length - 1];
    if (last && iv.first <= last.last) last.last = Math.max(last.last, iv.last);
    else merged.push({ first: iv.first, last: iv.last });
  }
  const gaps = [];
  const end = run.phase_end_ns;
  for (let i = 1; i < merged.length; i++) {
    if (merged[i].first > end) break;
    gaps.push({ g0: merged[i - 1].last, g1: merged[i].first, open: false });
  }
  const lastSegment = merged[merged.length - 1];
  if (lastSegment && lastSegment.last < end) gaps.push({ g0: lastSegment.last, g1: end, open: true });
  const byInject = [...faults].sort((a, b) => a.inject_ns - b.inject_ns);
  const perKind = new Map();
  const kindStats = (kind) => {
    if (!perKind.has(kind)) perKind.set(kind, { faults: 0, gaps: 0, maxGapNs: 0, maxRecoveryNs: 0 });
    return perKind.get(kind);
  };
  for (const f of faults) kindStats(f.kind).faults += 1;
  let spontaneous = 0;
  let maxRecoveryNs = 0;
  for (const g of gaps) {
    let ref = -Infinity;
    let cause = null;
    for (const f of byInject) {
      if (f.inject_ns > g.g1) break;
      ref = Math.max(ref, f.ref_ns ?? f.inject_ns);
      // The gap belongs to the latest fault injected before it started (allowing for the sampling step).
      if (f.inject_ns <= g.g0 + 50e6) cause = f;
    }
    const s = Math.max(g.g0, ref);
    // Zero when a leader was back before the fault's reference time (e.g. before a latency fault ended).
    const recovery = Math.max(0, g.g1 - s);
    maxRecoveryNs = Math.max(maxRecoveryNs, recovery);
    const len = g.g1 - g.g0;
    const explained = cause !== null && g.g0 <= Math.max(cause.heal_ns ?? cause.inject_ns, cause.ref_ns ?? cause.inject_ns) + boundNs;
    if (explained) {
      const k = kindStats(cause.kind);
      k.gaps += 1;
      k.maxGapNs = Math.max(k.maxGapNs, len);
      k.maxRecoveryNs = Math.max(k.maxRecoveryNs, recovery);
    } else {
      spontaneous += 1;
      const k = kindStats('(no fault)');
      k.gaps += 1;
      k.maxGapNs = Math.max(k.maxGapNs, len);
      k.maxRecoveryNs = Math.max(k.maxRecoveryNs, recovery);
    }
    if (recovery > boundNs) {
      violations.push({
        kind: 'gap',
        text: `no leader ${at(g.g0)}..${at(g.g1)}${g.open ? ' (until the end of the fault phase)' : ''}: ${fmt(len)}, ${fmt(recovery)} after ${s === g.g0 ? 'the gap began' : 'the reference time of the faults before it'} (bound ${run.bound_ms} ms)${cause ? `; last fault before: ${cause.kind} ${cause.target ?? ''} ${at(cause.inject_ns)}` : ''}`,
      });
    }
  }
  const startNs = run.candidates_started_ns ?? 0;
  const firstLeaderNs = merged.length > 0 ? merged[0].first - startNs : null;
  if (firstLeaderNs === null) violations.push({ kind: 'gap', text: 'no candidate ever led' });
  else if (firstLeaderNs > run.start_bound_ms * 1e6) {
    violations.push({ kind: 'gap', text: `the first leader took ${fmt(firstLeaderNs)} (start bound ${run.start_bound_ms} ms)` });
  }

  const byLang = {};
  for (const l of leaderships) byLang[l.lang] = (byLang[l.lang] ?? 0) + 1;
  let maxSampleGapNs = 0;
  let termless = 0;
  const stopped = new Set(faults.filter((f) => f.kind === 'stop').map((f) => f.target));
  for (const [candidate, { exit }] of perProcess.entries()) {
    if (exit) {
      // A SIGSTOPped process's pause is the fault itself, not the machine's load.
      if (!stopped.has(candidate)) maxSampleGapNs = Math.max(maxSampleGapNs, exit.max_sample_gap_ns ?? 0);
      termless += exit.termless_true_samples ?? 0;
    }
  }
  const leaderNs = merged.reduce((sum, m) => sum + (Math.min(m.last, end) - m.first), 0);
  return {
    violations,
    report: {
      faults: faults.length,
      perKind,
      leaderships: leaderships.length,
      byLang,
      maxTerm,
      intervals: intervals.length,
      overlaps,
      maxOverlapNs,
      gaps: gaps.length,
      spontaneous,
      maxRecoveryNs,
      firstLeaderNs,
      processes: processes.length,
      maxSampleGapNs,
      termless,
      warnings,
      leaderShare: end > 0 && merged.length > 0 ? leaderNs / (end - merged[0].first) : 0,
    },
    run,
  };
}

/** The summary as printed at the end of a run. */
export function summarize({ violations, report, run }) {
  const lines = [];
  const s = run.settings;
  lines.push(
    `chaos summary: seed ${run.seed}, ${(run.phase_end_ns / 60e9).toFixed(1)} min, ${s.node} Node + ${s.rust} Rust candidates, lock id ${s.lockId}`,
  );
  lines.push(
    `  settings: lease ${s.lease} ms, renewal ${s.renewal} ms ± ${s.jitter / 2} ms, safety margin ${s.safetyMargin} ms, operation timeout ${s.operationTimeout} ms`,
  );
  lines.push(
    `  gap bound: ${run.bound_ms} ms = lease + renewal + jitter/2 + 2 x operation timeout + ${s.slack} ms slack (${run.bound_formula})`,
  );
  const kinds = [...report.perKind.entries()].filter(([k]) => k !== '(no fault)');
  lines.push(`  faults injected: ${report.faults} (${kinds.map(([k, v]) => `${k} ${v.faults}`).join(', ')})`);
  lines.push(
    `  leaderships: ${report.leaderships} (${Object.entries(report.byLang)
      .map(([k, v]) => `${k} ${v}`)
      .join(', ')}), highest term ${report.maxTerm}, ${report.intervals} intervals from ${report.processes} candidate processes`,
  );
  lines.push(`  first leader ${report.firstLeaderNs === null ? 'never' : fmt(report.firstLeaderNs)} after the candidates started; a leader ${(report.leaderShare * 100).toFixed(1)}% of the time`);
  lines.push('  leaderless gaps by fault kind (gap = no candidate answering true; recovery = from the later of gap start and fault reference):');
  for (const [k, v] of [...report.perKind.entries()].sort()) {
    if (v.gaps === 0 && k === '(no fault)') continue;
    lines.push(
      `    ${k.padEnd(12)} faults ${String(v.faults).padStart(3)}  gaps ${String(v.gaps).padStart(3)}  max gap ${v.gaps ? fmt(v.maxGapNs).padStart(10) : '         -'}  max recovery ${v.gaps ? fmt(v.maxRecoveryNs).padStart(10) : '         -'}`,
    );
  }
  lines.push(`  max recovery ${fmt(report.maxRecoveryNs)} (bound ${run.bound_ms} ms); gaps with no fault before them: ${report.spontaneous}`);
  lines.push(`  overlaps: ${report.overlaps}${report.overlaps ? ` (max ${fmt(report.maxOverlapNs)})` : ''}`);
  lines.push(
    `  longest pause between two samples of a candidate that was not SIGSTOPped: ${fmt(report.maxSampleGapNs)}; true answers of unknown term: ${report.termless}`,
  );
  if (report.warnings.length > 0) {
    lines.push(`  process warnings (not violations): ${report.warnings.length}`);
    for (const w of report.warnings.slice(0, 5)) lines.push(`    ${w.slice(0, 200)}`);
  }
  const byKind = {};
  for (const v of violations) byKind[v.kind] = (byKind[v.kind] ?? 0) + 1;
  lines.push(
    `  violations: ${violations.length}${violations.length ? ` (${Object.entries(byKind).map(([k, n]) => `${k} ${n}`).join(', ')})` : ''}`,
  );
  for (const v of violations.slice(0, 40)) lines.push(`    [${v.kind}] ${v.text}`);
  if (violations.length > 40) lines.push(`    ... and ${violations.length - 40} more`);
  lines.push(violations.length === 0 ? 'chaos: PASS' : 'chaos: FAIL');
  return lines.join('\n');
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const dir = process.argv[2];
  if (!dir) {
    process.stderr.write('usage: node tests/chaos/check.mjs RUN_DIR\n');
    process.exit(2);
  }
  const result = check(dir);
  process.stdout.write(`${summarize(result)}\n`);
  process.exit(result.violations.length === 0 ? 0 : 1);
}
