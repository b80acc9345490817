// Many elections (one lock id each) in one process, for bench/run.mjs (IPC channel).
//   node bench/many.mjs '<json>'   json: { pkg, url, app, schema, config, n, firstLockId }
// Reports { type: 'progress', started, t } after each batch, { type: 'ready', started, t } when all run,
// { type: 'stats', t, rss, cpuUs, leaders, started } on command 'stats' (leaders: how many of its
// elections say amILeader() now), and exits on 'exit' (or when the parent goes away).
import { makeMany } from './electors.mjs';

const opts = JSON.parse(process.argv[2]);
const now = () => Number(process.hrtime.bigint());
const send = (msg) => {
  if (process.connected) process.send(msg);
};
let electors = [];
process.on('message', (msg) => {
  if (msg.cmd === 'stats') {
    const u = process.cpuUsage();
    const leaders = electors.filter((e) => e.amILeader()).length;
    send({ type: 'stats', t: now(), rss: process.memoryUsage().rss, cpuUs: u.user + u.system, leaders, started: electors.length });
  } else if (msg.cmd === 'exit') {
    process.exit(0);
  }
});
process.on('disconnect', () => process.exit(0));

const t0 = now();
electors = await makeMany(opts.pkg, opts.url, opts.app, opts.schema, opts.config, opts.n, opts.firstLockId, (sofar) => {
  electors = sofar;
  send({ type: 'progress', started: sofar.length, t: now() });
});
send({ type: 'ready', started: electors.length, t: now(), startMs: (now() - t0) / 1e6 });
