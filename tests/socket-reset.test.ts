// The tests' network faults must not keep a test process from exiting: a proxied connection whose write
// side has ended (a FIN in flight) and is then cut must be closed, not leaked (see resetSocket).
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { test } from 'node:test';

test('cutting a connection whose FIN is in flight lets the process exit', async () => {
  const helpers = join(__dirname, 'helpers.js');
  const script = `
    const net = require('node:net');
    const { resetSocket } = require(${JSON.stringify(helpers)});
    const server = net.createServer((c) => c.on('error', () => {}));
    server.listen(0, '127.0.0.1', () => {
      const s = net.connect(server.address().port, '127.0.0.1', () => {
        s.on('error', () => {});
        s.end(); // the shutdown is in flight until the next turn of the loop
        resetSocket(s);
        server.close();
        process.stdout.write('cut');
      });
    });
  `;
  const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
  const code = await new Promise<number | null>((resolve) => child.on('close', (c) => resolve(c)));
  clearTimeout(timer);
  assert.equal(out, 'cut');
  assert.equal(code, 0, 'the process did not exit by itself within 15 s (killed)');
});
