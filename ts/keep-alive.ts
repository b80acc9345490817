/**
 * Keeps the Node process alive while an operation of the package is in flight.
 *
 * An awaited `release()`, `shutdown()` or start must settle before the process can exit, whatever else
 * holds the event loop: during a NestJS shutdown the app's own timers and servers are already gone, and a
 * wait that completes through one of the addon's weak (unref'd) callbacks keeps nothing alive. (Today each
 * promise of the addon holds a ref'd threadsafe function of napi-rs until it settles; this does not rely
 * on it.) Each operation in flight is counted; while any is, one ref'd timer holds the loop open. Apart
 * from `LeaderElectorCore.unref()`, which concerns the running elector, not an operation someone awaits.
 */

let inFlight = 0;
let timer: NodeJS.Timeout | null = null;

/** Runs `work` and holds the event loop open from now until the promise it returns settles. */
export async function keepAliveWhile<T>(work: () => Promise<T>): Promise<T> {
  if (inFlight++ === 0) timer = setInterval(() => undefined, 2 ** 30);
  try {
    return await work();
  } finally {
    if (--inFlight === 0 && timer !== null) {
      clearInterval(timer);
      timer = null;
    }
  }
}


/** The signals a NestJS shutdown is holding the loop for (see {@link holdUntilSignalReraised}). */
const holds = new Map<string, () => void>();

/**
 * Called from the module's last shutdown hooks with the signal Nest passes them: holds the event loop
 * open until that signal, which Nest re-raises with `process.kill(process.pid, signal)` after its
 * shutdown sequence, has been dispatched, or `maxMs` has passed.
 *
 * Why: when the app has a listener of its own for the signal (to log, or to `process.exit(143)`), the
 * re-raised signal does not kill the process at once; it reaches JavaScript at the event loop's next
 * turn. After a clean shutdown nothing else holds the loop (the timers, the pools and the elections are
 * gone, which is the point), so without a hold the loop can end first and the process exits with code 0
 * in the middle of a signal it never handled. Transparent otherwise: if the app has no listener of its
 * own, ours re-raises the signal with no listener left, and the signal's default action ends the process
 * as it would have without us.
 */
export function holdUntilSignalReraised(signal: unknown, maxMs = 5000): void {
  if (typeof signal !== 'string' || !/^SIG[A-Z0-9]+$/.test(signal) || holds.has(signal)) return;
  const name = signal as NodeJS.Signals;
  const timer = setTimeout(() => done(), maxMs);
  const done = () => {
    clearTimeout(timer);
    process.removeListener(name, onSignal);
    holds.delete(name);
  };
  const onSignal = () => {
    done();
    // Ours was the only listener: what the signal does without one (for SIGTERM, end the process by it).
    if (process.listenerCount(name) === 0) process.kill(process.pid, name);
  };
  process.on(name, onSignal);
  holds.set(name, done);
}
