// Bull Board, the dashboard FrostGuard's operators use, served against a Redis and read in headless Chromium:
// what the rendered page shows, as JSON, so a test can compare it with the jobs it ran.
//
//   node board.mjs '<json>'
//     redis       Redis URL (redis://host:port)
//     prefix      BullMQ key prefix (default "bull")
//     queues      queue names to put on the board
//     jobs        [{queue, id}] whose job pages to read (every tab of each)
//     screenshot  optional PNG path: the first queue's page, saved after all reads
//     chromium    optional browser path (default $CHROMIUM or /usr/bin/chromium)
//
// Prints one JSON object: {queues: {<name>: {paused, counts, lists}}, jobs: {<queue>/<id>: {...}}}. Each page or
// tab the board has is read by a function of its own (readQueuePage, readStatusList, readJobPage, readTab) so a
// check of another page is one more function. The board is read-only: no button that changes a queue is shown.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { createBullBoard } from '@bull-board/api';
import { BullMQAdapter } from '@bull-board/api/bullMQAdapter';
import { ExpressAdapter } from '@bull-board/express';
import { Queue } from 'bullmq';
import express from 'express';
import { chromium } from 'playwright-core';

const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];
/// How long one page may take to render (a loaded 2-core machine is slow, never this slow).
const PAGE_TIMEOUT_MS = 30_000;

/// Serves Bull Board for `queues` on a free loopback port; resolves to {url, close}.
async function serveBoard(queues) {
  const adapter = new ExpressAdapter();
  adapter.setBasePath('/');
  createBullBoard({
    queues: queues.map((q) => new BullMQAdapter(q, { readOnlyMode: true })),
    serverAdapter: adapter,
  });
  const app = express();
  app.use('/', adapter.getRouter());
  const server = await new Promise((resolve, reject) => {
    const s = app.listen(0, '127.0.0.1', () => resolve(s));
    s.on('error', reject);
  });
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    close: () => new Promise((resolve) => server.close(resolve)),
  };
}

/// Opens `path` and waits until the board has fetched its data and rendered the queue's status tabs.
async function open(page, base, path) {
  await page.goto(base + path, { waitUntil: 'networkidle', timeout: PAGE_TIMEOUT_MS });
  await page.locator('main').waitFor({ timeout: PAGE_TIMEOUT_MS });
}

/// A queue's page: the count badge of every status tab and whether the sidebar marks it paused.
async function readQueuePage(page, base, queue) {
  await open(page, base, `/queue/${encodeURIComponent(queue)}`);
  await page.locator('main [class*="statusTabs-"] li').first().waitFor({ timeout: PAGE_TIMEOUT_MS });
  return page.evaluate((queue) => {
    const counts = {};
    for (const link of document.querySelectorAll('main [class*="statusTabs-"] li a')) {
      const status = new URL(link.href).searchParams.get('status');
      if (!status) continue; // "latest" mixes every state
      const badge = link.querySelector('[class*="badge-"]');
      counts[status] = badge ? Number(badge.textContent.trim()) : 0;
    }
    const entry = [...document.querySelectorAll('#bull-board-sidebar nav a')].find(
      (a) => a.getAttribute('title') === queue,
    );
    return {
      listed: !!entry,
      paused: !!entry && /paused/i.test(entry.querySelector('[class*="isPaused-"]')?.textContent ?? ''),
      counts,
    };
  }, queue);
}

/// A status tab's job list: id and name of each job card shown.
async function readStatusList(page, base, queue, status) {
  await open(page, base, `/queue/${encodeURIComponent(queue)}?status=${status}`);
  await page.locator('main [class*="jobLink-"]').first().waitFor({ timeout: PAGE_TIMEOUT_MS });
  return page.evaluate(() =>
    [...document.querySelectorAll('main [class*="jobLink-"]')].map((a) => ({
      id: a.querySelector('[class*="jobId-"]')?.textContent.replace(/^#/, '') ?? '',
      name: a.querySelector('[class*="jobNameInline-"]')?.textContent ?? '',
      text: a.closest('[class*="card-"]')?.innerText ?? '',
    })),
  );
}

/// The text of one tab of the job card on screen (Data, Progress, Options, Logs, Error), clicking it first.
async function readTab(page, name) {
  const tab = page.locator('main [role="tab"]', { hasText: new RegExp(`^${name}$`) });
  if ((await tab.count()) === 0) return null;
  await tab.first().click();
  const panel = page.locator('main [role="tabpanel"]').first();
  await panel.waitFor({ timeout: PAGE_TIMEOUT_MS });
  // The Logs tab fetches its lines after opening: wait until they (or its empty text) are shown.
  await page.waitForLoadState('networkidle', { timeout: PAGE_TIMEOUT_MS });
  return (await panel.innerText()).trim();
}

/// A job's own page: heading, attempt, progress bar, timeline, the tabs offered and the text of each. Bull Board
/// shows the heading with "attempt #N" (attempts made, when more than one) only for job ids longer than eight
/// characters; shorter ids get the name inline and no attempt count.
async function readJobPage(page, base, queue, id) {
  await open(page, base, `/queue/${encodeURIComponent(queue)}/${encodeURIComponent(id)}`);
  await page.locator('main [role="tab"]').first().waitFor({ timeout: PAGE_TIMEOUT_MS });
  const head = await page.evaluate(() => {
    const card = document.querySelector('main [class*="card-"]');
    const heading = card?.querySelector('h5');
    return {
      heading: heading?.innerText ?? '',
      attempt: [...(heading?.querySelectorAll('span') ?? [])]
        .map((s) => /attempt #(\d+)/i.exec(s.textContent)?.[1])
        .find(Boolean),
      timeline: card?.querySelector('[class*="timeline-"]')?.innerText ?? '',
      progress: document.querySelector('main [role="progressbar"]')?.getAttribute('aria-valuetext') ?? null,
    };
  });
  const tabNames = await page.locator('main [role="tab"]').allInnerTexts();
  const tabs = {};
  for (const name of tabNames) tabs[name] = await readTab(page, name);
  return {
    heading: head.heading,
    attempt: head.attempt ? Number(head.attempt) : null,
    progress: head.progress,
    timeline: head.timeline,
    tabs,
  };
}

async function main() {
  const input = JSON.parse(process.argv[2] ?? '{}');
  if (!input.redis || !Array.isArray(input.queues) || input.queues.length === 0) {
    throw new Error('usage: node board.mjs \'{"redis":"redis://...","queues":["name"],...}\'');
  }
  const prefix = input.prefix ?? 'bull';
  const queues = input.queues.map((name) => new Queue(name, { connection: { url: input.redis }, prefix }));
  const board = await serveBoard(queues);
  const profile = await mkdtemp(join(tmpdir(), 'fg-board-chromium-'));
  let context;
  try {
    context = await chromium.launchPersistentContext(profile, {
      executablePath: input.chromium ?? process.env.CHROMIUM ?? '/usr/bin/chromium',
      headless: true,
      args: CHROMIUM_ARGS,
      viewport: { width: 1280, height: 900 },
      timeout: 60_000,
    });
    const page = context.pages()[0] ?? (await context.newPage());
    page.setDefaultTimeout(PAGE_TIMEOUT_MS);
    const out = { board: board.url, queues: {}, jobs: {} };
    for (const name of input.queues) {
      const queue = await readQueuePage(page, board.url, name);
      queue.lists = {};
      for (const [status, count] of Object.entries(queue.counts)) {
        if (count > 0) queue.lists[status] = await readStatusList(page, board.url, name, status);
      }
      out.queues[name] = queue;
    }
    for (const { queue, id } of input.jobs ?? []) {
      out.jobs[`${queue}/${id}`] = await readJobPage(page, board.url, queue, id);
    }
    if (input.screenshot) {
      await open(page, board.url, `/queue/${encodeURIComponent(input.queues[0])}?status=completed`);
      await page.locator('main [class*="jobLink-"]').first().waitFor({ timeout: PAGE_TIMEOUT_MS });
      await page.screenshot({ path: input.screenshot, fullPage: false });
    }
    process.stdout.write(JSON.stringify(out) + '\n');
  } finally {
    await context?.close();
    await board.close();
    await Promise.all(queues.map((q) => q.close()));
    await rm(profile, { recursive: true, force: true });
  }
}

main().catch((e) => {
  process.stderr.write(`board.mjs: ${e.stack ?? e}\n`);
  process.exit(1);
});
