// The options of the chaos candidates (docs/chaos.md) in one table: the harness builds each candidate's
// arguments from it (candidateArgv), the Node and Nest candidates parse theirs with it (parseCandidateArgs,
// strict: an option the table does not give that candidate is an error), and the Rust candidate
// (crates/leaderlease/examples/chaos_candidate.rs) reads the same names. `langs`: the candidates that take
// the option (`node`, `nest`, `rust`, and `cli`: the command a command-line candidate runs,
// `chaos_candidate --cli-child`).

import { parseArgs } from 'node:util';

const ALL = ['node', 'nest', 'rust'];

/** [option, key in the parsed arguments, kind, default, candidates that take it] */
export const CANDIDATE_OPTIONS = [
  ['id', 'id', 'required', undefined, [...ALL, 'cli']],
  ['url', 'url', 'required', undefined, ALL],
  ['dir', 'dir', 'required', undefined, [...ALL, 'cli']],
  ['t0', 't0', 'bigint', undefined, [...ALL, 'cli']],
  ['lock-id', 'lockId', 'number', 7, ALL],
  ['elections', 'elections', 'number', 1, ['node', 'rust']],
  ['schema', 'schema', 'string', 'chaos', ALL],
  ['lease', 'lease', 'number', 2000, ALL],
  ['renewal', 'renewal', 'number', 600, ALL],
  ['jitter', 'jitter', 'number', 200, ALL],
  ['safety-margin', 'safetyMargin', 'number', undefined, ALL],
  ['operation-timeout', 'operationTimeout', 'number', undefined, ALL],
  ['max-event-loop-stall', 'maxEventLoopStall', 'number', undefined, ['node', 'nest']],
  ['store', 'store', ['pg', 'nats'], 'pg', ALL],
  ['bucket', 'bucket', 'string', 'chaos', ALL],
  ['package', 'packageDir', 'string', undefined, ['node', 'nest']],
  ['answer', 'answer', ['amILeader', 'status'], 'amILeader', ['node']],
  ['shared', 'shared', 'flag', false, ['rust']],
  ['twin', 'twin', 'flag', false, ['rust']],
  ['fleet', 'fleet', 'flag', false, ['node']],
];

const forLang = (lang) => CANDIDATE_OPTIONS.filter((o) => o[4].includes(lang));

/** The arguments of candidate `lang` for `values` (keys as in the table; undefined and false are left out). */
export function candidateArgv(lang, values) {
  const argv = [];
  for (const [name, key, kind] of forLang(lang)) {
    const v = values[key];
    if (v === undefined || v === null || v === false) continue;
    if (kind === 'flag') argv.push(`--${name}`);
    else argv.push(`--${name}`, String(v));
  }
  return argv;
}

/** Parses the arguments of candidate `lang`; throws on an unknown option, a missing one or a bad value. */
export function parseCandidateArgs(lang, argv) {
  const options = Object.fromEntries(forLang(lang).map(([name, , kind]) => [name, { type: kind === 'flag' ? 'boolean' : 'string' }]));
  const { values } = parseArgs({ args: argv, strict: true, options });
  const out = {};
  for (const [name, key, kind, dflt] of forLang(lang)) {
    const v = values[name];
    if (v === undefined) {
      if (kind === 'required' || kind === 'bigint') throw new Error(`missing --${name}`);
      out[key] = dflt;
    } else if (kind === 'number') {
      const n = Number(v);
      if (!Number.isFinite(n)) throw new Error(`--${name}: not a number: ${v}`);
      out[key] = n;
    } else if (kind === 'bigint') {
      out[key] = BigInt(v);
    } else if (Array.isArray(kind) && !kind.includes(v)) {
      throw new Error(`--${name}: ${kind.join(' or ')}`);
    } else {
      out[key] = v;
    }
  }
  return out;
}
