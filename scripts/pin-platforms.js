#!/usr/bin/env node
// Pins the platform packages as the published package's optionalDependencies: every npm/<dir>/package.json
// of this checkout (the addons, `leaderlease-<platform>`, and on Linux the command lines,
// `leaderlease-cli-<platform>`) at the version of the package.json it writes, so that npm installs the one
// that fits the user's machine (docs/platforms.md).
//
// The checkout's package.json names none of them: they exist only on the registry, and npm leaves an
// optional dependency it cannot fetch out of package-lock.json, which `npm ci` then rejects. napi-rs's
// way: pin them when publishing. `napi prepublish` pins the addons of `napi.targets` (not the command
// lines); the release workflow runs this script after it, and the pack tests run it on the unpacked
// tarball (tests/packed-app.ts), so that what they install is what the registry gets.
//   node scripts/pin-platforms.js [PACKAGE_DIR]      (default: this checkout; the release edits its CI copy)
'use strict';
const fs = require('node:fs');
const path = require('node:path');

const repo = path.resolve(__dirname, '..');
const target = path.resolve(process.argv[2] ?? repo, 'package.json');
const manifest = JSON.parse(fs.readFileSync(target, 'utf8'));
const npmDir = path.join(repo, 'npm');

const pinned = { ...manifest.optionalDependencies };
for (const dir of fs.readdirSync(npmDir).sort()) {
  const file = path.join(npmDir, dir, 'package.json');
  if (!fs.existsSync(file)) continue;
  pinned[JSON.parse(fs.readFileSync(file, 'utf8')).name] = manifest.version;
}
if (Object.keys(pinned).length === 0) {
  console.error(`pin-platforms: no platform package under ${npmDir}`);
  process.exit(1);
}
manifest.optionalDependencies = pinned;
fs.writeFileSync(target, JSON.stringify(manifest, null, 2) + '\n');
console.error(`pin-platforms: ${target}: ${Object.keys(pinned).length} optionalDependencies at ${manifest.version}`);
