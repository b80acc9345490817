/**
 * The lock id of a named election, derived from its name so that every instance of an app (and every
 * release of it) arrives at the same lease row without configuration.
 *
 * The rule, fixed for good (changing it would move every named election to another row):
 * `lockId = 0x40000000 + (FNV-1a-32(UTF-8 bytes of name) mod 2^30)`, so derived ids lie in
 * `[1073741824, 2147483647]`, far from the small ids (1, 2, ...) that `lockId` is usually set to by hand.
 * FNV-1a-32: offset basis 0x811c9dc5, prime 0x01000193, per byte `h = (h ^ byte) * prime mod 2^32`.
 * Two names of one app that land on one id (odds about n^2 / 2^31 for n names: 1 in 215,000 for 100
 * names) are refused when the app starts; an explicit `lockId` for one of them settles it.
 */

/** Smallest lock id a name is mapped to. */
export const NAMED_LOCK_ID_BASE = 0x40000000;

/** FNV-1a, 32 bits, of the UTF-8 bytes of `text`. */
export function fnv1a32(text: string): number {
  let h = 0x811c9dc5;
  for (const byte of Buffer.from(text, 'utf8')) {
    h ^= byte;
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h >>> 0;
}

/** The lock id of the election named `name` (see the rule above). */
export function lockIdForName(name: string): number {
  return NAMED_LOCK_ID_BASE + (fnv1a32(name) % NAMED_LOCK_ID_BASE);
}
