// The README and docs/ link into each other and into the code: every relative link must name a file that
// exists, and a link to `file.md#anchor` a heading that file has (GitHub's anchors: the heading in lower
// case, punctuation dropped, spaces as dashes). Moving text between the files keeps the links working.
import assert from 'node:assert/strict';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { dirname, join, normalize, resolve } from 'node:path';
import { test } from 'node:test';

const REPO = resolve(__dirname, '..');

/** Text outside fenced code blocks. */
function prose(text: string): string {
  return text.replace(/^```[\s\S]*?^```/gm, '');
}

function anchors(file: string): Set<string> {
  const out = new Set<string>();
  for (const line of prose(readFileSync(file, 'utf8')).split('\n')) {
    const m = /^#+ (.*)$/.exec(line);
    if (m) out.add(m[1]!.trim().toLowerCase().replace(/[^\p{L}\p{N}\- _]/gu, '').replace(/ /g, '-'));
  }
  return out;
}

const pages = ['README.md', ...readdirSync(join(REPO, 'docs')).filter((f) => f.endsWith('.md')).map((f) => `docs/${f}`)];

test('every relative link of the README and docs/ names an existing file and heading', () => {
  const broken: string[] = [];
  let checked = 0;
  for (const page of pages) {
    const file = join(REPO, page);
    for (const m of prose(readFileSync(file, 'utf8')).matchAll(/\]\(([^)\s]+)\)/g)) {
      const link = m[1]!;
      if (/^[a-z]+:/.test(link)) continue;
      const [path, anchor] = link.split('#') as [string, string | undefined];
      const target = path === '' ? file : normalize(join(dirname(file), path));
      checked += 1;
      if (!existsSync(target)) broken.push(`${page}: ${link} (no such file)`);
      else if (anchor && target.endsWith('.md') && !anchors(target).has(anchor)) broken.push(`${page}: ${link} (no such heading)`);
    }
  }
  assert.ok(checked > 50, `only ${checked} links found: the pattern no longer matches`);
  assert.deepEqual(broken, []);
});
