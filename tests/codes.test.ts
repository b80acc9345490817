import assert from 'node:assert/strict';
import { test } from 'node:test';

import { LeaderElectionError, errorCodes, fromNative } from '../dist/index.js';

test('every code of the native layer maps to its own named Error subclass', () => {
  const codes = errorCodes();
  assert.ok(codes.includes('ERR_INVALID_CONFIG'), `codes: ${codes.join(', ')}`);
  const names = new Set<string>();
  for (const code of codes) {
    const err = fromNative(new Error(`[${code}] something went wrong`));
    assert.ok(err instanceof LeaderElectionError);
    assert.equal(err.code, code);
    assert.equal(err.message, 'something went wrong');
    assert.notEqual(err.constructor, LeaderElectionError, `${code} has no subclass of its own`);
    names.add(err.name);
  }
  assert.equal(names.size, codes.length, 'one class per code');
});
