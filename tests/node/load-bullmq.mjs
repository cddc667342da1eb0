// Which Node BullMQ a script drives the queue with: this directory's (6.x) by default, or the one installed in
// the Node project named by FROSTGUARD_BULLMQ_DIR (e.g. ../node-bullmq5, the 5.67 line FrostGuard's API uses),
// so the same commands run against both producer versions. Shared by drive.mjs (tests) and bench.mjs.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { createRequire } from 'node:module';

export async function loadBullmq() {
  const dir = process.env.FROSTGUARD_BULLMQ_DIR;
  if (!dir) return import('bullmq');
  if (!existsSync(join(dir, 'node_modules', 'bullmq', 'package.json'))) {
    throw new Error(`FROSTGUARD_BULLMQ_DIR=${dir}: no bullmq installed there (run npm ci in it)`);
  }
  // Through require, resolved from that project: bullmq 5 ships its ES build without Node-style import paths,
  // so Node loads it as CommonJS (its package "main").
  return createRequire(join(dir, 'package.json'))('bullmq');
}
