// The README's TypeScript blocks are code a newcomer copies: each ```ts / ```typescript block is written to
// a file of its own in a fresh ES-module project and compiled by the repository's tsc, strict, against this
// checkout's types (`leaderlease` and `leaderlease/core` mapped to dist/*.d.ts); then the standalone
// `LeaderElectorCore` block and the NestJS app block are run, unchanged, against the real PostgreSQL, each
// in a database of its own (so their lock ids and schemas are theirs), and must elect a leader and hand the
// lease back when sent SIGTERM.
//
// A block that calls functions the reader supplies (`runTheCronJob`, ...) has their declarations in an
// HTML comment right above it, which GitHub does not show:
//   <!-- snippet: the app's own function
//   declare function runTheCronJob(job: { fencingToken: number | null }): void;
//   -->
// Everything after the comment's first line is put before the block when it is compiled; the runs define
// those functions (HARNESS below).
import assert from 'node:assert/strict';
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, before, test } from 'node:test';

import { Client } from 'pg';

import { DATABASE_URL, closedPort, sleep } from './helpers';

const REPO = resolve(__dirname, '..');
const README = join(REPO, 'README.md');

interface Snippet {
  /** README line of the opening fence (1-based). */
  line: number;
  code: string;
  /** Declarations from the `<!-- snippet: ... -->` comment above the block ('' when none). */
  prelude: string;
  file: string;
}

/** The languages a README block may have; the TypeScript ones are compiled here, Rust by crates/leaderlease/tests/readme.rs. */
const TS = new Set(['ts', 'typescript']);
const NOT_CHECKED_HERE = new Set(['sh', 'bash', 'diff', 'text', 'rust']);

function readmeSnippets(text: string): { snippets: Snippet[]; unknown: string[] } {
  const lines = text.split('\n');
  const snippets: Snippet[] = [];
  const unknown: string[] = [];
  for (let i = 0; i < lines.length; i++) {
    const open = /^```(\S*)\s*$/.exec(lines[i]!);
    if (!open) continue;
    const lang = open[1]!;
    const start = i;
    let end = i + 1;
    while (end < lines.length && !/^```\s*$/.test(lines[end]!)) end++;
    assert.ok(end < lines.length, `README.md:${start + 1}: a code block that is never closed`);
    i = end;
    if (!TS.has(lang)) {
      if (!NOT_CHECKED_HERE.has(lang)) unknown.push(`README.md:${start + 1}: \`\`\`${lang}`);
      continue;
    }
    let prelude = '';
    if (start > 0 && lines[start - 1]!.trim() === '-->') {
      let c = start - 1;
      while (c >= 0 && !lines[c]!.startsWith('<!-- snippet:')) c--;
      assert.ok(c >= 0, `README.md:${start}: a comment above a block that is not a \`<!-- snippet: ... -->\``);
      prelude = lines.slice(c + 1, start - 1).join('\n');
    }
    snippets.push({
      line: start + 1,
      code: lines.slice(start + 1, end).join('\n'),
      prelude,
      file: `snippet-${start + 1}.ts`,
    });
  }
  return { snippets, unknown };
}

const { snippets, unknown } = readmeSnippets(readFileSync(README, 'utf8'));

/** The functions the README's preludes declare, as the runs define them: each prints one JSON line. */
const HARNESS = `globalThis.runTheCronJob = (job) => { process.stdout.write(JSON.stringify({ runTheCronJob: job }) + '\\n'); };\n`;

let dir = '';
let diagnostics = '';

before(() => {
  dir = mkdtempSync(join(tmpdir(), 'll-readme-'));
  writeFileSync(join(dir, 'package.json'), JSON.stringify({ private: true, type: 'module' }));
  // node_modules: the checkout's packages, and the checkout itself as `leaderlease` (for the runs; the
  // compiler is pointed at dist/*.d.ts by `paths`).
  const modules = join(dir, 'node_modules');
  mkdirSync(modules);
  for (const name of readdirSync(join(REPO, 'node_modules'))) {
    symlinkSync(join(REPO, 'node_modules', name), join(modules, name));
  }
  symlinkSync(REPO, join(modules, 'leaderlease'));
  writeFileSync(
    join(dir, 'tsconfig.json'),
    JSON.stringify({
      compilerOptions: {
        target: 'es2022',
        lib: ['es2022'],
        module: 'nodenext',
        moduleResolution: 'nodenext',
        types: ['node'],
        strict: true,
        experimentalDecorators: true,
        emitDecoratorMetadata: true,
        skipLibCheck: true,
        rootDir: '.',
        outDir: 'out',
        paths: {
          leaderlease: [join(REPO, 'dist/index.d.ts')],
          'leaderlease/core': [join(REPO, 'dist/core.d.ts')],
        },
      },
      include: ['*.ts'],
    }),
  );
  for (const s of snippets) writeFileSync(join(dir, s.file), `${s.prelude}\n${s.code}\n`);
  writeFileSync(join(dir, 'harness.mjs'), HARNESS);
  const tsc = spawnSync(join(REPO, 'node_modules/.bin/tsc'), ['-p', dir, '--pretty', 'false'], { cwd: dir, encoding: 'utf8' });
  // Diagnostics name the snippet file and its line: turned into README lines.
  const preludeLines = new Map(snippets.map((s) => [s.file, s.prelude.split('\n').length]));
  const lineOf = new Map(snippets.map((s) => [s.file, s.line]));
  diagnostics = `${tsc.stdout}${tsc.stderr}`
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => {
      const m = /^(?:.*\/)?(snippet-\d+\.ts)\((\d+),(\d+)\): (.*)$/.exec(l);
      if (!m) return l;
      const at = Number(m[2]) - preludeLines.get(m[1]!)!;
      const where = at >= 1 ? `README.md:${lineOf.get(m[1]!)! + at}:${m[3]}` : `README.md:${lineOf.get(m[1]!)!} (its snippet comment)`;
      return `${where}: ${m[4]}`;
    })
    .join('\n');
  if (tsc.status !== 0 && diagnostics === '') diagnostics = `tsc exited with ${tsc.status}`;
});

after(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test('every TypeScript block of the README compiles against the package types', () => {
  assert.ok(snippets.length >= 3, `only ${snippets.length} TypeScript blocks found: the pattern no longer matches`);
  assert.deepEqual(unknown, [], 'README blocks in a language this test neither compiles nor knows to skip');
  assert.equal(diagnostics, '');
});

/** A database of its own for one run, dropped afterwards; returns its URL. */
async function ownDatabase(): Promise<{ url: string; drop: () => Promise<void> }> {
  const name = `ll_readme_${randomBytes(5).toString('hex')}`;
  const admin = async (sql: string) => {
    const c = new Client({ connectionString: DATABASE_URL });
    await c.connect();
    try {
      await c.query(sql);
    } finally {
      await c.end();
    }
  };
  await admin(`CREATE DATABASE ${name} TEMPLATE template0`);
  const url = new URL(DATABASE_URL);
  url.pathname = `/${name}`;
  return { url: url.toString(), drop: () => admin(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`) };
}

/** The lease row of `lockId` in `schema` of the database at `url`, or null. */
async function lease(url: string, schema: string, lockId: number): Promise<{ term: string; live: boolean } | null> {
  const c = new Client({ connectionString: url });
  await c.connect();
  try {
    const exists = await c.query(`SELECT to_regclass($1) AS t`, [`"${schema}".leader_lease`]);
    if (exists.rows[0].t === null) return null;
    const r = await c.query(`SELECT term::text AS term, expires_at > now() AS live FROM "${schema}".leader_lease WHERE id = $1`, [lockId]);
    return (r.rows[0] as { term: string; live: boolean } | undefined) ?? null;
  } finally {
    await c.end();
  }
}

interface Run {
  child: ChildProcess;
  lines: () => string[];
  output: () => string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

function runSnippet(s: Snippet, env: Record<string, string>): Run {
  const js = join(dir, 'out', s.file.replace(/\.ts$/, '.js'));
  const child = spawn(process.execPath, ['--import', './harness.mjs', js], {
    cwd: dir,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) =>
    child.on('exit', (code, signal) => r({ code, signal })),
  );
  return { child, lines: () => out.split('\n'), output: () => `stdout:\n${out}\nstderr:\n${err}`, exited };
}

async function until<T>(what: string, run: Run, probe: () => Promise<T | null | undefined>, timeoutMs: number): Promise<T> {
  const end = Date.now() + timeoutMs;
  let exited = false;
  void run.exited.then(() => (exited = true));
  while (Date.now() < end && !exited) {
    const v = await probe();
    if (v !== null && v !== undefined) return v;
    await sleep(100);
  }
  assert.fail(`${what}: not within ${timeoutMs} ms${exited ? ' (the process exited)' : ''}\n${run.output()}`);
}

async function withinMs<T>(p: Promise<T>, ms: number, what: string, run: Run): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms\n${run.output()}`)), ms);
  });
  try {
    return await Promise.race([p, late]);
  } finally {
    clearTimeout(timer);
  }
}

/** The compiler's messages about block `s`. */
function errorsOf(s: Snippet): string {
  const lines = s.code.split('\n').length;
  return diagnostics
    .split('\n')
    .filter((d) => {
      const m = /^README\.md:(\d+)/.exec(d);
      return m !== null && Number(m[1]) >= s.line && Number(m[1]) <= s.line + lines;
    })
    .join('\n');
}

function theBlock(marker: string): Snippet {
  const found = snippets.filter((s) => s.code.includes(marker));
  assert.equal(found.length, 1, `README blocks containing ${JSON.stringify(marker)}: ${found.length}, expected one`);
  return found[0]!;
}

test('the standalone LeaderElectorCore block, run against PostgreSQL, leads and lets go on SIGTERM', async () => {
  const block = theBlock('LeaderElectorCore.connect(');
  assert.equal(errorsOf(block), '', 'the block does not compile');
  const lockId = Number(/lockId: (\d+)/.exec(block.code)?.[1]);
  assert.ok(Number.isInteger(lockId), 'the block names its lock id');
  const db = await ownDatabase();
  const run = runSnippet(block, { DATABASE_URL: db.url });
  try {
    // It leads: the job runs with a term, which is the term of its lease row.
    const job = await until(
      'the block runs its job as leader',
      run,
      async () => {
        const line = run.lines().find((l) => l.startsWith('{"runTheCronJob"'));
        return line ? (JSON.parse(line) as { runTheCronJob: { fencingToken: number | null } }).runTheCronJob : null;
      },
      30_000,
    );
    assert.ok(typeof job.fencingToken === 'number' && job.fencingToken > 0, `fencing token ${job.fencingToken}`);
    const row = await lease(db.url, 'public', lockId);
    assert.ok(row?.live, `no live lease row for lock id ${lockId}: ${JSON.stringify(row)}`);
    assert.equal(row.term, String(job.fencingToken));
    // SIGTERM: the process ends by itself (nothing left running), its lease released.
    run.child.kill('SIGTERM');
    const end = await withinMs(run.exited, 15_000, 'the process exits after SIGTERM', run);
    assert.deepEqual(end, { code: 0, signal: null }, run.output());
    assert.equal(await lease(db.url, 'public', lockId), null, 'the lease row is gone (released) after SIGTERM');
  } finally {
    run.child.kill('SIGKILL');
    await run.exited;
    await db.drop();
  }
});

test('the NestJS app block, run against PostgreSQL, leads and hands the lease over on SIGTERM', async () => {
  const block = theBlock('NestFactory.create(');
  assert.equal(errorsOf(block), '', 'the block does not compile');
  const m = /schema: '([^']+)', lockId: (\d+)/.exec(block.code);
  assert.ok(m, 'the block names its schema and lock id');
  const [schema, lockId] = [m[1]!, Number(m[2])];
  const db = await ownDatabase();
  const run = runSnippet(block, { DATABASE_URL: db.url, PORT: String(await closedPort()) });
  try {
    await until('the app takes the lease', run, async () => ((await lease(db.url, schema, lockId))?.live ? true : null), 60_000);
    run.child.kill('SIGTERM');
    const end = await withinMs(run.exited, 20_000, 'the app exits after SIGTERM', run);
    // Nest's shutdown hooks close the app, then raise the signal again.
    assert.ok(end.signal === 'SIGTERM' || end.code === 0, `${JSON.stringify(end)}\n${run.output()}`);
    assert.equal(await lease(db.url, schema, lockId), null, 'the lease row is gone (released) after SIGTERM');
  } finally {
    run.child.kill('SIGKILL');
    await run.exited;
    await db.drop();
  }
});
