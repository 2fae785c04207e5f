// The third-party files the dashboard embeds (public/vendor/): uPlot, copied verbatim from the
// npm package pinned in package.json. `npm run vendor` rewrites the copies after a version
// bump; tests/vendor.test.mjs checks they are byte-identical to the pinned package, so the
// binary never carries an unreviewed or hand-edited third-party file.
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = dirname(fileURLToPath(import.meta.url));
export const VENDORED = [
  ['node_modules/uplot/dist/uPlot.esm.js', 'public/vendor/uPlot.esm.js'],
  ['node_modules/uplot/dist/uPlot.min.css', 'public/vendor/uPlot.min.css'],
  ['node_modules/uplot/LICENSE', 'public/vendor/uPlot.LICENSE'],
];

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  for (const [from, to] of VENDORED) {
    mkdirSync(dirname(join(ROOT, to)), { recursive: true });
    writeFileSync(join(ROOT, to), readFileSync(join(ROOT, from)));
    console.log(`${from} -> ${to}`);
  }
}
