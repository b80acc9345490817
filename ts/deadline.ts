import { performance } from 'node:perf_hooks';

/**
 * Converts a native lease deadline (`StateSnapshot.deadline`, milliseconds on the clock of
 * `Elector.clockNow()`) to the time base of `performance.now()`.
 *
 * The two clocks are not assumed to share a time base: on macOS Rust's `Instant` reads CLOCK_UPTIME_RAW
 * (stops while the machine sleeps) and libuv `mach_continuous_time` (keeps counting), on Linux both read
 * CLOCK_MONOTONIC, on Windows both QueryPerformanceCounter. Only the time the lease has left crosses over,
 * measured at one moment on each clock: `performance.now()` is read first and the native clock after it,
 * so the result is early by the length of that call (about a microsecond), never late.
 */
export function localDeadline(nativeDeadline: number, clockNow: () => number): number {
  const before = performance.now();
  return before + (nativeDeadline - clockNow());
}
