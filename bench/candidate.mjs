// One candidate process of the benchmark (started by bench/run.mjs with an IPC channel).
//
//   node bench/candidate.mjs '<json>'   json: { pkg: 'leaderlease' | 'nest-leader-election', url, app,
//                                        schema, config, pollMs, mode?: 'candidate' | 'cost' }
//
// It campaigns with the package's standalone API and reports over IPC, with process.hrtime.bigint()
// (CLOCK_MONOTONIC, the same clock in every process of the machine) as nanoseconds in a Number:
//   { type: 'ready', pid, t, instanceId }           the elector campaigns
//   { type: 'leader', value, t }                     amILeader() changed (sampled every pollMs)
//   { type: 'gap', from, to, value }                 the sampler did not run for a while (e.g. SIGSTOP);
//                                                    value is amILeader() at the first sample after it
//   { type: 'shutdown-start', t } / 'shutdown-done'  around elector.shutdown() (command 'shutdown')
//   { type: 'stats', t, rss, cpuUs }                 resident memory and CPU time (command 'stats')
//   { type: 'cost', ... }                            ns per amILeader() call (mode 'cost')
// The packages' own console output goes to the inherited stdout, which run.mjs discards.
if (process.argv[2] === '--rss-only') {
  // An empty Node process, for scale.
  process.send({ rss: process.memoryUsage().rss }, () => process.exit(0));
  await new Promise(() => undefined);
}
const { makeElector } = await import('./electors.mjs');

const opts = JSON.parse(process.argv[2]);
const now = () => Number(process.hrtime.bigint());
const send = (msg) => {
  if (process.connected) process.send(msg);
};

const elector = await makeElector(opts.pkg, opts.url, opts.app, opts.schema, opts.config);

if (opts.mode === 'cost') {
  send({ type: 'cost', ...(await measureCost(elector)) });
  await elector.shutdown();
  process.exit(0);
}

let pollMs = opts.pollMs ?? 1;
let last = false;
let lastSample = now();
const gapNs = () => Math.max(250, 10 * pollMs) * 1e6;
function sample() {
  const t = now();
  const value = elector.amILeader();
  if (t - lastSample > gapNs()) send({ type: 'gap', from: lastSample, to: t, value });
  lastSample = t;
  if (value !== last) {
    last = value;
    send({ type: 'leader', value, t });
  }
}
let timer = setInterval(sample, pollMs);
sample();

process.on('message', async (msg) => {
  switch (msg.cmd) {
    case 'poll':
      pollMs = msg.ms;
      clearInterval(timer);
      lastSample = now();
      timer = setInterval(sample, pollMs);
      break;
    case 'stats':
      send({ type: 'stats', t: now(), rss: process.memoryUsage().rss, cpuUs: cpuUs() });
      break;
    case 'shutdown': {
      clearInterval(timer);
      send({ type: 'shutdown-start', t: now() });
      await elector.shutdown();
      send({ type: 'shutdown-done', t: now() });
      process.exit(0);
    }
  }
});
process.on('disconnect', () => process.exit(0));

send({ type: 'ready', pid: process.pid, t: now(), instanceId: opts.config.instanceId });

function cpuUs() {
  const u = process.cpuUsage();
  return u.user + u.system;
}

/** ns per amILeader() call while leading: best of 5 rounds, the event loop free between rounds. */
async function measureCost(e) {
  const deadline = Date.now() + 60_000;
  while (!e.amILeader()) {
    if (Date.now() > deadline) throw new Error('never became leader');
    await new Promise((r) => setTimeout(r, 5));
  }
  const n = 1_000_000;
  const bench = async (fn) => {
    for (let i = 0; i < 100_000; i++) fn();
    let best = Infinity;
    let allTrue = true;
    for (let round = 0; round < 5; round++) {
      await new Promise((r) => setImmediate(r));
      let yes = 0;
      const t0 = process.hrtime.bigint();
      for (let i = 0; i < n; i++) if (fn()) yes++;
      best = Math.min(best, Number(process.hrtime.bigint() - t0) / n);
      if (yes !== n) allTrue = false;
    }
    return { ns: best, allTrue };
  };
  let flag = true;
  const plain = await bench(() => flag);
  const call = await bench(() => e.amILeader());
  flag = false;
  return { ns: call.ns, allTrue: call.allTrue, plainNs: plain.ns, calls: n, rounds: 5 };
}
