import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';

import { DATABASE_URL, withClient } from './helpers.js';

const ROOT = join(__dirname, '..');

interface Run {
  code: number | null;
  signal: NodeJS.Signals | null;
  out: string;
  err: string;
}

/**
 * Runs `bash scripts/demo.sh args` in its own process group (as a terminal runs it), calling
 * `onOutput(stdout so far, pid)` as output arrives; kills the group after `timeoutMs`.
 */
function runDemo(args: string[], onOutput?: (out: string, pid: number) => void, timeoutMs = 120_000): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn('bash', ['scripts/demo.sh', ...args], {
      cwd: ROOT,
      env: { ...process.env, DATABASE_URL },
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      onOutput?.(out, child.pid!);
    });
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const timer = setTimeout(() => {
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        // already gone
      }
    }, timeoutMs);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, out, err });
    });
  });
}

/** The schema the demo printed (`schema leaderlease_demo_<pid>`). */
function demoSchema(out: string): string {
  const m = /schema (leaderlease_demo_\d+)/.exec(out);
  assert.ok(m, `the demo names its schema:\n${out}`);
  return m[1]!;
}

/** Pids of live processes whose command line mentions `needle` (the candidates carry the schema name). */
function processesMentioning(needle: string): number[] {
  const pids: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const cmdline = readFileSync(`/proc/${entry}/cmdline`, 'utf8');
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
      if (cmdline.includes(needle) && state !== 'Z') pids.push(Number(entry));
    } catch {
      // exited meanwhile
    }
  }
  return pids;
}

async function schemaExists(schema: string): Promise<boolean> {
  const r = await withClient((c) => c.query('SELECT 1 FROM pg_namespace WHERE nspname = $1', [schema]));
  return r.rows.length > 0;
}

describe('npm run demo', () => {
  test('one round: a takeover after SIGKILL and two handovers, measured; never two leaders; nothing left behind', async () => {
    const run = await runDemo(['--rounds', '1']);
    assert.equal(run.code, 0, `exit code 0\n${run.out}\n${run.err}`);
    const summary = run.out.slice(run.out.indexOf('\nsummary'));
    assert.ok(summary.length > 1, `prints a summary:\n${run.out}`);
    assert.match(summary, /settings +lease 1500 ms, renewal 500 ± 100 ms/);
    const takeover = /takeover after SIGKILL +median (\d+) ms, max (\d+) ms \(1 run\)/.exec(summary);
    assert.ok(takeover, `names a takeover time:\n${summary}`);
    assert.match(summary, /handover after release\(\) +median \d+ ms, max \d+ ms \(1 run\)/);
    assert.match(summary, /handover after SIGTERM +median \d+ ms, max \d+ ms \(1 run\)/);
    assert.match(summary, /never two leaders +ok: \d+ leaderships/);
    assert.match(summary, /result +ok/);
    // A crashed leader's lease runs out at most one lease (1500 ms) after the kill, and the followers take
    // it over right then, not after the cleanup (6 leases); the bound leaves room for a busy machine.
    assert.ok(Number(takeover[2]) < 3 * 1500, `takeover within 3 leases (${takeover[2]} ms)`);
    // The live view showed a leader with its term.
    assert.match(run.out, /node-\d LEADER \(term \d+\)/);
    const schema = demoSchema(run.out);
    assert.deepEqual(processesMentioning(schema), [], 'no candidate left running');
    assert.equal(await schemaExists(schema), false, 'the demo schema is dropped');
  });

  test('Ctrl-C stops the demo and every candidate, exit code 130', async () => {
    let sent = false;
    const run = await runDemo(['--rounds', '3'], (out, pid) => {
      // Interrupt once a leader is elected, as a terminal does: SIGINT to the whole process group.
      if (!sent && / leads with term \d+/.test(out)) {
        sent = true;
        process.kill(-pid, 'SIGINT');
      }
    });
    assert.ok(sent, `a leader was elected before the interrupt:\n${run.out}\n${run.err}`);
    assert.equal(run.code, 130, `exit code 130\n${run.out}\n${run.err}`);
    assert.doesNotMatch(run.out, /\nsummary/);
    const schema = demoSchema(run.out);
    assert.deepEqual(processesMentioning(schema), [], 'no candidate left running');
    assert.equal(await schemaExists(schema), false, 'the demo schema is dropped');
  });
});

describe('npm run demo -- --nest', () => {
  test('three NestJS workers with named jobs: the leader of report SIGTERMed mid-run, no overlapping runs, nothing left behind', async () => {
    const run = await runDemo(['--nest', '--seconds', '25'], undefined, 240_000);
    assert.equal(run.code, 0, `exit code 0\n${run.out.slice(-3000)}\n${run.err}`);
    const summary = run.out.slice(run.out.lastIndexOf('\nsummary'));
    assert.match(summary, /report runs +[1-9]\d*/);
    assert.match(summary, /SIGTERMs +[1-9]/, `at least one SIGTERM of report's leader:\n${summary}`);
    assert.match(summary, /overlapping runs 0/);
    assert.match(summary, /result +ok/);
    const schema = /schema +(leaderlease_nest_demo_[0-9a-f]+)/.exec(summary)?.[1];
    assert.ok(schema, `names its schema:\n${summary}`);
    assert.deepEqual(processesMentioning(schema), [], 'no worker left running');
    assert.equal(await schemaExists(schema), false, 'the demo schema is dropped');
  });
});
