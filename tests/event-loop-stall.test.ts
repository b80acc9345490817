import assert from 'node:assert/strict';
import { type ChildProcessWithoutNullStreams, spawn } from 'node:child_process';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';

import { LeaderElectorCore, type LeaderElectorConfig } from '../dist/index.js';
import { DATABASE_URL, FAST, dropSchema, randomSchema } from './helpers.js';

const PACKAGE = join(__dirname, '..', 'dist', 'index.js');

// A candidate in a child process. It reports (one JSON line each, times in ms on the machine's wall clock
// at sub-ms resolution, comparable between processes): `ready`, `leads` whenever amILeader() turns true
// (sampled every 5 ms), every `elected` / `revoked` event, and answers the commands it reads on stdin:
// `block <ms>` busy-loops the event loop for that long (sampling amILeader() inside the loop) and reports
// `resumed` with the first amILeader() answer after it; `release`; `shutdown`.
const CANDIDATE = `
  const { LeaderElectorCore } = require(${JSON.stringify(PACKAGE)});
  const now = () => performance.timeOrigin + performance.now();
  const say = (o) => process.stdout.write(JSON.stringify({ ...o, at: now() }) + '\\n');
  (async () => {
    const e = await LeaderElectorCore.connect(process.env.URL, JSON.parse(process.env.CONFIG));
    e.on('elected', ({ term }) => say({ event: 'elected', term, leader: e.amILeader() }));
    e.on('revoked', () => say({ event: 'revoked' }));
    let leading = false;
    setInterval(() => {
      const l = e.amILeader();
      if (l !== leading) say({ event: l ? 'leads' : 'follows' });
      leading = l;
    }, 5);
    say({ event: 'ready' });
    let buf = '';
    process.stdin.on('data', async (d) => {
      buf += d;
      let i;
      while ((i = buf.indexOf('\\n')) >= 0) {
        const [cmd, arg] = buf.slice(0, i).split(' ');
        buf = buf.slice(i + 1);
        if (cmd === 'block') {
          const start = now();
          say({ event: 'block' });
          let falseAfter = null;
          while (now() - start < Number(arg)) {
            if (falseAfter === null && !e.amILeader()) falseAfter = now() - start;
          }
          const first = e.amILeader();
          say({ event: 'resumed', first, falseAfter });
        } else if (cmd === 'release') {
          await e.release();
          say({ event: 'released' });
        } else if (cmd === 'shutdown') {
          await e.shutdown();
          say({ event: 'down' });
          process.exit(0);
        }
      }
    });
  })().catch((err) => { console.error(err); process.exit(2); });
`;

type Report = { event: string; at: number; [k: string]: unknown };

class Candidate {
  readonly reports: Report[] = [];
  readonly child: ChildProcessWithoutNullStreams;
  #err = '';
  constructor(config: object) {
    this.child = spawn(process.execPath, ['-e', CANDIDATE], {
      env: { ...process.env, URL: DATABASE_URL, CONFIG: JSON.stringify(config) },
    });
    let out = '';
    this.child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      let i;
      while ((i = out.indexOf('\n')) >= 0) {
        this.reports.push(JSON.parse(out.slice(0, i)) as Report);
        out = out.slice(i + 1);
      }
    });
    this.child.stderr.on('data', (d: Buffer) => (this.#err += d.toString()));
  }
  send(cmd: string): void {
    this.child.stdin.write(`${cmd}\n`);
  }
  /** The first report of `event` after index `from`, waiting up to `ms`. */
  async next(event: string, ms: number, from = 0): Promise<Report> {
    const end = Date.now() + ms;
    for (;;) {
      const found = this.reports.slice(from).find((r) => r.event === event);
      if (found) return found;
      if (Date.now() > end || this.child.exitCode !== null) {
        throw new Error(`no '${event}' within ${ms} ms; reports: ${JSON.stringify(this.reports)}; stderr: ${this.#err}`);
      }
      await new Promise((r) => setTimeout(r, 10));
    }
  }
  kill(): void {
    this.child.kill('SIGKILL');
  }
}

const LEASE = FAST.leaseDuration;
const BLOCK = 4 * LEASE;

describe('a wedged JavaScript event loop', () => {
  const schema = randomSchema();
  const children: Candidate[] = [];
  after(async () => {
    for (const c of children) c.kill();
    await dropSchema(schema);
  });

  test('lets go: another instance leads within bound + lease + 1 s; the old leader rejoins as a candidate', async () => {
    const config = { ...FAST, schema, lockId: 1 };
    // Default bound: leaseDuration - safetyMargin (a tenth of the lease).
    const bound = LEASE - LEASE / 10;
    const a = new Candidate({ ...config, instanceId: 'a' });
    children.push(a);
    await a.next('leads', 10_000);
    const b = new Candidate({ ...config, instanceId: 'b' });
    children.push(b);
    await b.next('ready', 10_000);
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(b.reports.filter((r) => r.event === 'leads').length, 0, 'b follows while a leads');

    const before = a.reports.length;
    a.send(`block ${BLOCK}`);
    const block = await a.next('block', 5000, before);
    const bLeads = await b.next('leads', BLOCK + 5000).catch(() => null);
    const resumed = await a.next('resumed', BLOCK + 5000, before);
    assert.ok(bLeads !== null, `another instance never led during the ${BLOCK} ms block`);
    const takeover = bLeads.at - block.at;
    console.log(
      `takeover after a ${BLOCK} ms event loop block of the leader: ${takeover.toFixed(0)} ms from the block's start ` +
        `(bound ${bound} ms, lease ${LEASE} ms); the blocked leader's amILeader() turned false ` +
        `${Number(resumed['falseAfter']).toFixed(0)} ms into the block`,
    );
    assert.ok(bLeads.at < resumed.at, 'the other instance led while the loop was still blocked');
    assert.ok(takeover <= bound + LEASE + 1000, `takeover took ${takeover.toFixed(0)} ms`);
    assert.ok(Number(resumed['falseAfter']) <= bound + 50, `amILeader() still true ${resumed['falseAfter']} ms into the block`);
    assert.equal(resumed['first'], false, "the old leader's first amILeader() after the block");

    // Back from the block: no stale 'elected', no 'leads' while b leads.
    await new Promise((r) => setTimeout(r, 1000));
    const afterBlock = a.reports.slice(a.reports.indexOf(resumed) + 1);
    assert.deepEqual(
      afterBlock.filter((r) => r.event === 'elected' || r.event === 'leads'),
      [],
      'no elected event or leadership on the old leader after its block',
    );
    // It is still a candidate: when b releases, a leads again.
    const from = a.reports.length;
    b.send('release');
    const elected = await a.next('elected', 5000, from);
    assert.equal(elected['leader'], true, 'amILeader() inside the elected listener');
    a.send('shutdown');
    b.send('shutdown');
    await Promise.all([a.next('down', 5000), b.next('down', 5000)]);
  });

  test('maxEventLoopStall: 0 keeps leadership through a block (the check is off)', async () => {
    const config = { ...FAST, schema, lockId: 2, maxEventLoopStall: 0 };
    const a = new Candidate({ ...config, instanceId: 'a0' });
    children.push(a);
    await a.next('leads', 10_000);
    const b = new Candidate({ ...config, instanceId: 'b0' });
    children.push(b);
    await b.next('ready', 10_000);
    const before = a.reports.length;
    a.send(`block ${BLOCK}`);
    await a.next('resumed', BLOCK + 5000, before);
    // Renewals went on natively: a leads again as soon as its loop runs, and b never led.
    await a.next('leads', 2000, before);
    assert.equal(b.reports.filter((r) => r.event === 'leads').length, 0, 'b never led');
    a.send('shutdown');
    b.send('shutdown');
    await Promise.all([a.next('down', 5000), b.next('down', 5000)]);
  });

  test('maxEventLoopStall is validated with a typed error naming it', async () => {
    for (const [value, rule] of [
      [-1, /maxEventLoopStall.*non-negative/],
      [5, /maxEventLoopStall.*0 \(off\) or between 10 ms and 24 h/],
      [Number.NaN, /maxEventLoopStall/],
      ['1000', /maxEventLoopStall.*must be a number/],
    ] as const) {
      const options: Record<string, unknown> = { ...FAST, schema, lockId: 3, maxEventLoopStall: value };
      await assert.rejects(
        // An elector that starts anyway is shut down, so that the failure is reported and nothing leaks.
        LeaderElectorCore.connect(DATABASE_URL, options as LeaderElectorConfig).then(async (e) => {
          await e.shutdown();
          return e;
        }),
        (err: Error & { code?: string }) => {
          assert.equal(err.code, 'ERR_INVALID_CONFIG', String(err));
          assert.match(err.message, rule);
          return true;
        },
      );
    }
  });
});
