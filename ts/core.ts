// `leaderlease/core`: the standalone elector and its errors, without the NestJS module, the TypeORM entity
// or the migration class, so that importing it loads none of NestJS, TypeORM or rxjs (rxjs is loaded only
// if `events$` is read). It loads the native addon (ts/native.ts: `UnsupportedPlatformError` where none fits).

export * from './public-exports.js';
export { LeaderElectorCore } from './leader-elector.core.js';
export { connectionStringFromDataSource, connectionSettingsFromDataSource } from './connection-options.js';
export { FENCE_SQLSTATE } from './fence.js';
export type { SslOptions } from './leader-elector.config.js';
import { loadNative } from './native.js';

/** The error codes the native layer reports (each maps to its own subclass of `LeaderElectionError`). */
export const errorCodes: () => string[] = () => loadNative().errorCodes();
