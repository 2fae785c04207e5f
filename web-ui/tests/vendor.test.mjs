// The embedded charting library is exactly the pinned npm package (see ../vendor.mjs).
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { ROOT, VENDORED } from '../vendor.mjs';

test('the embedded uPlot is the pinned npm package, byte for byte', () => {
  for (const [from, to] of VENDORED) {
    assert.ok(readFileSync(join(ROOT, from)).equals(readFileSync(join(ROOT, to))), `${to} differs from ${from}: run npm run vendor`);
  }
});
