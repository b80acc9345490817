/** Injection token of the module's options (`LeaderElectorModuleOptions`). */
export const LEADER_ELECTOR_MODULE_OPTIONS = 'LEADER_ELECTOR_MODULE_OPTIONS';

/** Metadata key set by `@LeaderOnly()` on a method (its value: the `LeaderOnlyOptions`). */
export const LEADER_ONLY_METADATA = 'leaderlease:leader-only';
