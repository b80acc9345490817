// The chaos checker: reads every record of a run directory and lists the violations (docs/chaos.md).
//
//   node tests/chaos/check.mjs RUN_DIR       prints the summary; exit status 1 on any violation
//
// A run directory holds run.json (settings, the bounds), faults.jsonl, processes.jsonl and, per candidate
// process, <id>.jsonl (closed intervals, stall/fatal/exit lines), <id>.slot (the intervals open when it
// died, one fixed-size record per sampled elector) and <id>.stderr. An interval names its lock id (`lock`,
// the run's lockId when absent) and its sampler (`sampler`, the process id when absent: a process may run
// several electors, and two electors of one process for the same lock id are two samplers).
//
// Every check is per lock id. Violations:
//   overlap   two samplers both answered "leader" for one lock id at overlapping times
//   term      a new leadership whose term is not greater than every earlier leadership's of that lock id,
//             or a leadership that resumed after a newer one had started
//   gap       no leader for longer than the bound after the later of the gap's start and the reference
//             time of the faults injected before it ended (the bound of the fault kind that caused the gap
//             when it has one of its own, else `bound_ms`); after an event-loop stall, no other candidate
//             leading within the stall's bound of its start
//   stall     a candidate whose event loop was blocked answered "leader" after the block with the term it
//             held before it
//   stop      a candidate SIGSTOPped while it led (a command-line candidate under the npm bin: its
//             wrapper) that still led more than a lease after the SIGSTOP, before its SIGCONT
//   crash     a candidate that exited unasked, with a non-zero status or a signal the harness did not
//             send, logged a fatal line (unhandled rejection, uncaught exception), or whose stderr shows a
//             panic, an unhandled rejection, an uncaught exception, a V8 fatal error or a segfault; a Nest
//             candidate sent SIGTERM that did not end by that signal (Nest re-raises it after its hooks) or
//             whose last shutdown hook did not run; a command-line candidate (`leaderlease run`) ends on
//             SIGTERM with status 0 (its command's, as a leader) or 143 (a follower), and writes no exit
//             record of its own (its commands write their intervals)

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
  const defaultLock = run.settings?.lockId ?? 7;
  const violations = [];
  const intervals = [];
  const perProcess = new Map();
  const warnings = [];

  // --- Records of every candidate process.
  for (const p of processes) {
    const records = readJsonLines(path.join(dir, `${p.candidate}.jsonl`));
    const own = [];
    let exit = null;
    let ready = false;
    let ownListener = false;
    for (const r of records) {
      if (r.type === 'interval') own.push(r);
      else if (r.type === 'ready') {
        ready = true;
        ownListener = r.own_sigterm_listener === true;
      }
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
      // One fixed-size record per sampled elector, each ending with a newline.
      for (const text of fs.readFileSync(slotFile, 'utf8').split('\n').map((t) => t.trim())) {
        if (text === '') continue;
        let slot = null;
        try {
          slot = JSON.parse(text);
        } catch {
          violations.push({ kind: 'crash', text: `${p.candidate}: unreadable slot: ${text.slice(0, 120)}` });
        }
        // The open interval of a process that died while leading (or between appending the closed interval
        // and clearing the slot, then it is a duplicate).
        const same = (r) =>
          r.term === slot.term && r.first_true_ns === slot.first_true_ns && (r.lock ?? defaultLock) === (slot.lock ?? defaultLock) && (r.sampler ?? p.candidate) === (slot.sampler ?? p.candidate);
        if (slot?.type === 'open' && !own.some(same)) own.push({ ...slot, type: 'interval', open_at_death: true });
      }
    }
    for (const r of own) {
      if (r.last_true_ns < r.first_true_ns) {
        violations.push({ kind: 'crash', text: `${p.candidate}: interval ends before it starts (term ${r.term})` });
      }
      intervals.push({
        process: p.candidate,
        candidate: r.sampler ?? p.candidate,
        lock: r.lock ?? defaultLock,
        lang: p.lang,
        term: r.term,
        first: r.first_true_ns,
        last: r.last_true_ns,
      });
    }
    perProcess.set(p.candidate, { exit, intervals: own.length });

    // --- Crashes.
    const killedByHarness = p.expected === 'sigkill' && p.signal === 'SIGKILL';
    // `leaderlease run` passes its command's status through as a leader, and exits 128 + 15 as a follower.
    const cli = p.lang === 'cli';
    const cleanExit = (p.exit_code === 0 || (cli && p.exit_code === 143)) && p.signal === null;
    if (p.exit_code === undefined && p.signal === undefined) {
      violations.push({ kind: 'crash', text: `${p.candidate}: no exit recorded` });
    } else if (p.lang === 'nest' && p.expected === 'sigterm' && !ready && (p.signal === 'SIGTERM' || cleanExit)) {
      // SIGTERMed before the application had started: nothing of the package's shutdown to check.
    } else if (p.lang === 'nest' && p.expected === 'sigterm') {
      // Nest runs its shutdown hooks on SIGTERM and then raises the signal again: a complete shutdown ends
      // by SIGTERM (exit status 143), with the marker of the last hook written; an app with a SIGTERM
      // listener of its own ends by that listener's process.exit(143) on the re-raised signal.
      const byListener = ownListener && p.exit_code === 143 && p.signal === null;
      if (p.signal !== 'SIGTERM' && !byListener) {
        violations.push({
          kind: 'crash',
          text: `${p.candidate} (nest, pid ${p.pid}) exited with ${p.signal ?? `status ${p.exit_code}`} ${at(p.exited_ns)} after SIGTERM, not by the re-raised SIGTERM: Nest's shutdown was cut short`,
        });
      }
      if (exit?.hooks !== 'done') {
        violations.push({ kind: 'crash', text: `${p.candidate} (nest) ended after SIGTERM without its last shutdown hook having run (no marker)` });
      }
    } else if (!killedByHarness && !cleanExit) {
      violations.push({
        kind: 'crash',
        text: `${p.candidate} (${p.lang}, pid ${p.pid}) exited with ${p.signal ?? `status ${p.exit_code}`} ${at(p.exited_ns)}${p.expected === 'sigterm' ? ' after SIGTERM' : ' unasked'}`,
      });
    } else if (cleanExit && p.expected !== 'sigterm') {
      violations.push({ kind: 'crash', text: `${p.candidate} (${p.lang}) exited by itself ${at(p.exited_ns)}` });
    } else if (cleanExit && exit === null && !cli) {
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
  // The run's lock ids (each must have had a leader), and any other that shows up in the records.
  const seenLocks = intervals.map((iv) => iv.lock);
  const runLocks = run.settings?.locks ?? (seenLocks.length > 0 ? [] : [defaultLock]);
  const locks = [...new Set([...runLocks, ...seenLocks])].sort((a, b) => a - b);
  const byLock = new Map(locks.map((l) => [l, []]));
  for (const iv of intervals) byLock.get(iv.lock).push(iv);
  const relevant = (f, lock) => !Array.isArray(f.locks) || f.locks.includes(lock);

  const perKind = new Map();
  const kindStats = (kind) => {
    if (!perKind.has(kind)) perKind.set(kind, { faults: 0, gaps: 0, maxGapNs: 0, maxRecoveryNs: 0, boundMs: null });
    return perKind.get(kind);
  };
  for (const f of faults) {
    const k = kindStats(f.kind);
    k.faults += 1;
    if (f.bound_ms !== undefined) k.boundMs = Math.max(k.boundMs ?? 0, f.bound_ms);
  }

  let overlaps = 0;
  let maxOverlapNs = 0;
  let termRegressions = 0;
  let leadershipCount = 0;
  let changes = 0;
  let maxTerm = -Infinity;
  let gapCount = 0;
  let spontaneous = 0;
  let maxRecoveryNs = 0;
  let leaderNs = 0;
  let spanNs = 0;
  const leaderships = [];
  const end = run.phase_end_ns;
  const byInject = [...faults].sort((a, b) => a.inject_ns - b.inject_ns);
  let firstLeaderNs = null;
  const startNs = run.candidates_started_ns ?? 0;

  for (const [lock, ivs] of byLock.entries()) {
    const tag = locks.length > 1 ? `lock ${lock}: ` : '';

    // --- Overlaps: every pair of intervals of different samplers that share a moment.
    const active = [];
    for (const iv of ivs) {
      for (let i = active.length - 1; i >= 0; i--) if (active[i].last < iv.first) active.splice(i, 1);
      for (const other of active) {
        if (other.candidate === iv.candidate) {
          violations.push({ kind: 'overlap', text: `${tag}${iv.candidate}: two intervals of one sampler overlap (terms ${other.term}, ${iv.term})` });
          continue;
        }
        overlaps += 1;
        const d = Math.min(other.last, iv.last) - iv.first;
        maxOverlapNs = Math.max(maxOverlapNs, d);
        violations.push({
          kind: 'overlap',
          text: `${tag}${other.candidate} (term ${other.term}, ${at(other.first)}..${at(other.last)}) and ${iv.candidate} (term ${iv.term}, ${at(iv.first)}..${at(iv.last)}) both led for ${fmt(d)}`,
        });
      }
      active.push(iv);
    }

    // --- Terms.
    let lockMax = -Infinity;
    let maxKey = null;
    const seen = new Set();
    let lockLeaderships = 0;
    for (const iv of ivs) {
      const key = `${iv.candidate}|${iv.term}`;
      if (seen.has(key)) {
        if (iv.term < lockMax) {
          termRegressions += 1;
          violations.push({ kind: 'term', text: `${tag}${iv.candidate} led again with term ${iv.term} ${at(iv.first)} after ${maxKey} had started with term ${lockMax}` });
        }
        continue;
      }
      if (iv.term <= lockMax) {
        termRegressions += 1;
        violations.push({ kind: 'term', text: `${tag}${iv.candidate} started leading with term ${iv.term} ${at(iv.first)}, not above the earlier term ${lockMax} (${maxKey})` });
      }
      seen.add(key);
      leaderships.push(iv);
      lockLeaderships += 1;
      if (iv.term > lockMax) {
        lockMax = iv.term;
        maxKey = key;
      }
    }
    leadershipCount += lockLeaderships;
    changes += Math.max(0, lockLeaderships - 1);
    maxTerm = Math.max(maxTerm, lockMax);

    // --- Leaderless gaps.
    const merged = [];
    for (const iv of ivs) {
      const last = merged[merged.length - 1];
      if (last && iv.first <= last.last) last.last = Math.max(last.last, iv.last);
      else merged.push({ first: iv.first, last: iv.last });
    }
    const gaps = [];
    for (let i = 1; i < merged.length; i++) {
      if (merged[i].first > end) break;
      gaps.push({ g0: merged[i - 1].last, g1: merged[i].first, open: false });
    }
    const lastSegment = merged[merged.length - 1];
    if (lastSegment && lastSegment.last < end) gaps.push({ g0: lastSegment.last, g1: end, open: true });
    const lockFaults = byInject.filter((f) => relevant(f, lock));
    for (const g of gaps) {
      let ref = -Infinity;
      let cause = null;
      for (const f of lockFaults) {
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
      const k = kindStats(explained ? cause.kind : '(no fault)');
      if (!explained) spontaneous += 1;
      k.gaps += 1;
      k.maxGapNs = Math.max(k.maxGapNs, len);
      k.maxRecoveryNs = Math.max(k.maxRecoveryNs, recovery);
      gapCount += 1;
      const gapBoundMs = explained && cause.bound_ms !== undefined ? cause.bound_ms : run.bound_ms;
      if (recovery > gapBoundMs * 1e6) {
        violations.push({
          kind: 'gap',
          text: `${tag}no leader ${at(g.g0)}..${at(g.g1)}${g.open ? ' (until the end of the fault phase)' : ''}: ${fmt(len)}, ${fmt(recovery)} after ${s === g.g0 ? 'the gap began' : 'the reference time of the faults before it'} (bound ${gapBoundMs} ms${gapBoundMs !== run.bound_ms ? ` for ${cause.kind}` : ''})${cause ? `; last fault before: ${cause.kind} ${cause.target ?? ''} ${at(cause.inject_ns)}` : ''}`,
        });
      }
    }
    if (merged.length > 0) {
      const lockFirst = merged[0].first - startNs;
      firstLeaderNs = firstLeaderNs === null ? lockFirst : Math.max(firstLeaderNs, lockFirst);
      if (lockFirst > run.start_bound_ms * 1e6) {
        violations.push({ kind: 'gap', text: `${tag}the first leader took ${fmt(lockFirst)} (start bound ${run.start_bound_ms} ms)` });
      }
      leaderNs += merged.reduce((sum, m) => sum + Math.max(0, Math.min(m.last, end) - m.first), 0);
      spanNs += Math.max(0, end - merged[0].first);
    } else {
      violations.push({ kind: 'gap', text: `${tag}no candidate ever led` });
    }
  }

  // --- Event-loop stalls: the blocked candidate must not answer "leader" with its old term after the
  // block, and another candidate must lead each lock it held within the stall's bound of the block's start.
  for (const f of faults.filter((x) => x.kind === 'stall')) {
    const boundStall = (f.bound_ms ?? run.bound_ms) * 1e6;
    const held = intervals.filter((iv) => iv.process === f.target && iv.first <= f.inject_ns && iv.last >= f.inject_ns - 50e6);
    for (const iv of held) {
      const tag = locks.length > 1 ? `lock ${iv.lock}: ` : '';
      const after = intervals.find((x) => x.process === f.target && x.lock === iv.lock && x.term <= iv.term && x.last > f.heal_ns);
      if (after) {
        violations.push({
          kind: 'stall',
          text: `${tag}${f.target} answered "leader" with term ${after.term} ${at(after.last)}, after its event loop was blocked ${at(f.inject_ns)}..${at(f.heal_ns)} holding term ${iv.term}`,
        });
      }
      const other = intervals.find((x) => x.lock === iv.lock && x.process !== f.target && x.first > f.inject_ns && x.first <= f.inject_ns + boundStall);
      if (!other) {
        violations.push({
          kind: 'gap',
          text: `${tag}no other candidate led within ${f.bound_ms} ms (stall bound) of ${f.target}'s event loop being blocked ${at(f.inject_ns)} while it led (term ${iv.term})`,
        });
      }
    }
  }

  // --- Stopped candidates: a frozen leader's lease ends at most a lease after the SIGSTOP (its last renewal
  // was sent before it), and so must its leading. A library candidate's sampler is frozen with it; the
  // command of a command-line candidate is a process of its own, stopped only by the command line.
  const leaseNs = (run.settings?.lease ?? 0) * 1e6;
  for (const f of faults.filter((x) => x.kind === 'stop' || x.signal === 'SIGSTOP')) {
    if (leaseNs === 0 || f.heal_ns === undefined) continue;
    for (const iv of intervals.filter((x) => x.process === f.target && x.first < f.heal_ns && x.last > f.inject_ns + leaseNs)) {
      const tag = locks.length > 1 ? `lock ${iv.lock}: ` : '';
      violations.push({
        kind: 'stop',
        text: `${tag}${iv.candidate} led (term ${iv.term}) until ${at(iv.last)}, though stopped ${at(f.inject_ns)}..${at(f.heal_ns)}: more than a lease (${run.settings.lease} ms) after the SIGSTOP`,
      });
    }
  }

  const byLang = {};
  for (const l of leaderships) byLang[l.lang] = (byLang[l.lang] ?? 0) + 1;
  let maxSampleGapNs = 0;
  let termless = 0;
  const paused = new Set(faults.filter((f) => f.kind === 'stop' || f.kind === 'stall').map((f) => f.target));
  for (const [candidate, { exit }] of perProcess.entries()) {
    if (exit) {
      // A SIGSTOPped or stalled process's pause is the fault itself, not the machine's load.
      if (!paused.has(candidate)) maxSampleGapNs = Math.max(maxSampleGapNs, exit.max_sample_gap_ns ?? 0);
      termless += exit.termless_true_samples ?? 0;
    }
  }
  return {
    violations,
    report: {
      store: run.settings?.store ?? 'pg',
      locks: locks.length,
      faults: faults.length,
      perKind,
      leaderships: leadershipCount,
      changes,
      byLang,
      maxTerm,
      intervals: intervals.length,
      overlaps,
      maxOverlapNs,
      termRegressions,
      gaps: gapCount,
      spontaneous,
      maxRecoveryNs,
      firstLeaderNs,
      processes: processes.length,
      maxSampleGapNs,
      termless,
      warnings,
      leaderShare: spanNs > 0 ? leaderNs / spanNs : 0,
    },
    run,
  };
}

/** The summary as printed at the end of a run. */
export function summarize({ violations, report, run }) {
  const lines = [];
  const s = run.settings;
  const who = [`${s.node} Node`, `${s.rust} Rust`, ...(s.nest ? [`${s.nest} Nest`] : []), ...(s.cli ? [`${s.cli} CLI`] : [])].join(' + ');
  const lockText = report.locks > 1 ? `lock ids ${s.lockId}..${s.lockId + report.locks - 1}` : `lock id ${s.lockId}`;
  lines.push(
    `chaos summary [${report.store === 'nats' ? 'NATS' : 'PostgreSQL'}]: seed ${run.seed}, ${((run.phase_end_ns - (run.candidates_started_ns ?? 0)) / 60e9).toFixed(1)} min, ${who} candidates${s.twin ? ' (one Rust process with two electors of one instance id)' : ''}, ${lockText}`,
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
    `  leadership changes: ${report.changes} (${report.leaderships} leaderships: ${Object.entries(report.byLang)
      .map(([k, v]) => `${k} ${v}`)
      .join(', ')}), highest term ${report.maxTerm}, ${report.intervals} intervals from ${report.processes} candidate processes`,
  );
  lines.push(`  first leader ${report.firstLeaderNs === null ? 'never' : fmt(report.firstLeaderNs)} after the candidates started (the slowest lock id); a leader ${(report.leaderShare * 100).toFixed(1)}% of the time`);
  lines.push('  leaderless gaps by fault kind (gap = no candidate answering true; recovery = from the later of gap start and fault reference):');
  for (const [k, v] of [...report.perKind.entries()].sort()) {
    if (v.gaps === 0 && k === '(no fault)') continue;
    const bound = v.boundMs ?? run.bound_ms;
    lines.push(
      `    ${k.padEnd(12)} faults ${String(v.faults).padStart(4)}  gaps ${String(v.gaps).padStart(4)}  max gap ${v.gaps ? fmt(v.maxGapNs).padStart(10) : '         -'}  max recovery ${v.gaps ? fmt(v.maxRecoveryNs).padStart(10) : '         -'} / bound ${bound} ms`,
    );
  }
  lines.push(`  max recovery ${fmt(report.maxRecoveryNs)} (bound ${run.bound_ms} ms unless the kind has its own); gaps with no fault before them: ${report.spontaneous}`);
  lines.push(`  overlaps: ${report.overlaps}${report.overlaps ? ` (max ${fmt(report.maxOverlapNs)})` : ''}; term regressions: ${report.termRegressions}`);
  lines.push(
    `  longest pause between two samples of a candidate that was not SIGSTOPped or stalled: ${fmt(report.maxSampleGapNs)}; true answers of unknown term: ${report.termless}`,
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
