// The fault proxy on a local echo server: latency, the three partitions and healing.
// No database needed: node --test tests/chaos/proxy.test.mjs
import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, test } from 'node:test';

import { Proxy } from './proxy.mjs';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

let echo;
let echoPort;
/** Every line the echo server received, on any connection. */
const received = [];

before(async () => {
  echo = net.createServer((s) => {
    s.on('data', (d) => {
      received.push(...d.toString().split('\n').filter(Boolean));
      s.write(d);
    });
    s.on('error', () => undefined);
  });
  await new Promise((r) => echo.listen(0, '127.0.0.1', r));
  echoPort = echo.address().port;
});

after(() => echo.close());

/** A client connection with a buffer of what came back and how it ended. */
async function client(port) {
  const s = net.connect(port, '127.0.0.1');
  const c = { s, data: '', ended: null };
  s.on('data', (d) => {
    c.data += d.toString();
  });
  s.on('error', (e) => {
    c.ended = e.code ?? 'error';
  });
  s.on('close', () => {
    c.ended ??= 'closed';
  });
  await new Promise((r) => s.once('connect', r));
  return c;
}

async function until(cond, ms = 2000) {
  const end = Date.now() + ms;
  while (!cond() && Date.now() < end) await sleep(5);
  return cond();
}

test('forwards both ways, and with latency delivers later in order', async () => {
  const proxy = await new Proxy(echoPort).listen();
  const c = await client(proxy.port);
  c.s.write('a\n');
  assert.ok(await until(() => c.data === 'a\n'));
  proxy.latency(150);
  const t = Date.now();
  c.s.write('b\n');
  c.s.write('c\n');
  assert.ok(await until(() => c.data === 'a\nb\nc\n'));
  const took = Date.now() - t;
  assert.ok(took >= 290, `a round trip took ${took} ms with 150 ms each way`);
  c.s.destroy();
  await proxy.close();
});

test('heal delivers what latency still holds at once', async () => {
  const proxy = await new Proxy(echoPort).listen();
  const c = await client(proxy.port);
  proxy.latency(5000);
  c.s.write('slow\n');
  await sleep(50);
  assert.equal(c.data, '');
  proxy.heal();
  assert.ok(await until(() => c.data === 'slow\n', 1000));
  c.s.destroy();
  await proxy.close();
});

test('drop: nothing goes through, and the connections are destroyed at heal', async () => {
  const proxy = await new Proxy(echoPort).listen();
  const c = await client(proxy.port);
  proxy.partition('drop');
  c.s.write('lost-1\n');
  const late = await client(proxy.port);
  late.s.write('lost-2\n');
  await sleep(100);
  assert.equal(c.data, '');
  assert.equal(late.data, '');
  proxy.heal();
  assert.ok(await until(() => c.ended !== null && late.ended !== null));
  assert.ok(!received.includes('lost-1') && !received.includes('lost-2'));
  const fresh = await client(proxy.port);
  fresh.s.write('after\n');
  assert.ok(await until(() => fresh.data === 'after\n'));
  fresh.s.destroy();
  await proxy.close();
});

test('hold: what was sent during the partition arrives at heal, even from a client that has closed', async () => {
  const proxy = await new Proxy(echoPort).listen();
  const c = await client(proxy.port);
  proxy.partition('hold');
  c.s.write('zombie\n');
  await sleep(50);
  c.s.end();
  await sleep(50);
  assert.ok(!received.includes('zombie'));
  proxy.heal();
  assert.ok(await until(() => received.includes('zombie')));
  await proxy.close();
});

test('reset: connections are reset and new ones refused until heal', async () => {
  const proxy = await new Proxy(echoPort).listen();
  const c = await client(proxy.port);
  proxy.partition('reset');
  assert.ok(await until(() => c.ended !== null));
  const s = net.connect(proxy.port, '127.0.0.1');
  const outcome = await new Promise((r) => {
    s.on('error', (e) => r(e.code));
    s.on('close', () => r('closed'));
  });
  assert.ok(['ECONNRESET', 'closed', 'EPIPE'].includes(outcome), outcome);
  proxy.heal();
  const fresh = await client(proxy.port);
  fresh.s.write('back\n');
  assert.ok(await until(() => fresh.data === 'back\n'));
  fresh.s.destroy();
  await proxy.close();
});

test('lost-ack hold: the matching request reaches the server at once, its reply only after the hold', async () => {
  const proxy = await new Proxy(echoPort).listen();
  const c = await client(proxy.port);
  const lost = proxy.lostAck({ match: 'PUB $KV.chaos.lock-7', holdMs: 300, mode: 'hold' });
  c.s.write('PING\n');
  assert.ok(await until(() => c.data === 'PING\n'), 'an unrelated request is answered normally');
  const t = Date.now();
  c.s.write('PUB $KV.chaos.lock-7 update\n');
  assert.ok(await until(() => received.includes('PUB $KV.chaos.lock-7 update'), 200), 'the update reached the server at once');
  await sleep(150);
  assert.equal(c.data, 'PING\n', 'the reply is held');
  const res = await lost;
  assert.equal(res.matched, true);
  assert.ok(await until(() => c.data.endsWith('update\n')));
  assert.ok(Date.now() - t >= 290, `reply after ${Date.now() - t} ms`);
  c.s.write('after\n');
  assert.ok(await until(() => c.data.endsWith('after\n')), 'the connection works on after the hold');
  c.s.destroy();
  await proxy.close();
});

test('lost-ack drop: the matching request reaches the server, the client is reset and sees no reply', async () => {
  const proxy = await new Proxy(echoPort).listen();
  const c = await client(proxy.port);
  const lost = proxy.lostAck({ match: 'lock-8', holdMs: 0, mode: 'drop' });
  c.s.write('UPDATE lock-8 x\n');
  const res = await lost;
  assert.equal(res.matched, true);
  assert.ok(await until(() => received.includes('UPDATE lock-8 x')), 'the update reached the server');
  assert.ok(await until(() => c.ended !== null));
  assert.equal(c.data, '', 'no reply');
  // A new connection goes through.
  const d = await client(proxy.port);
  d.s.write('again\n');
  assert.ok(await until(() => d.data === 'again\n'));
  d.s.destroy();
  await proxy.close();
});

test('lost-ack without a matching request gives up after waitMs', async () => {
  const proxy = await new Proxy(echoPort).listen();
  const res = await proxy.lostAck({ match: 'never', holdMs: 100, waitMs: 50 });
  assert.equal(res.matched, false);
  await proxy.close();
});
