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

