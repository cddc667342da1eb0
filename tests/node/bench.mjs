// Node side of the benchmark (tests/benches/throughput):
//   node bench.mjs add <redisUrl> <queue> <count> <kind> [ms]          enqueue <count> jobs with addBulk
//   node bench.mjs trickle <redisUrl> <queue> <count> <perSecond> <kind> [ms]
//                                      add jobs one at a time, <perSecond> a second; print {"latencies": [ms, ...]}
//                                      from just before each add to its `active` event (QueueEvents), in job order
//   node bench.mjs worker <redisUrl> <queue> <concurrency>             run a Node BullMQ Worker until SIGTERM
// Job kinds: `complete` (the test plugin's no-op: returns data.result), `sleep` (waits data.ms, as an HTTP call
// to a provider would), `sms` (an `sms:send` job shaped as FrostGuard's producer makes them).
// FROSTGUARD_BULLMQ_DIR names another Node project whose bullmq to load (e.g. ../node-bullmq5), as in drive.mjs.
import { setTimeout as sleep } from 'node:timers/promises';
import IORedis from 'ioredis';
import { loadBullmq } from './load-bullmq.mjs';

const { Queue, QueueEvents, Worker } = await loadBullmq();

const [command, url, queueName, ...args] = process.argv.slice(2);
const connection = new IORedis(url, { maxRetriesPerRequest: null });

// One job of `kind`, as { name, data, opts }.
function job(kind, ms) {
  switch (kind) {
    case 'complete':
      return { name: 'complete', data: { result: 1 } };
    case 'sleep':
      return { name: 'sleep', data: { ms } };
    case 'sms':
      // FrostGuard's smsJobOptions without removeOnComplete/removeOnFail: the bench counts the completed set.
      return {
        name: 'sms:send',
        data: {
          organizationId: '11111111-2222-3333-4444-555555555555',
          phoneNumber: '+15551234567',
          message: 'CRITICAL: Temperature alert (benchmark)',
          alertId: 'a-1',
          deliveryId: '7a1c3f2e-5b8d-4e6f-9a0b-1c2d3e4f5a6b',
          userId: 'u-1',
          alertType: 'alarm_active',
        },
        opts: { attempts: 5, backoff: { type: 'exponential', delay: 2000 } },
      };
    default:
      throw new Error(`unknown job kind ${kind}`);
  }
}

if (command === 'add') {
  const [count, kind, ms] = [Number(args[0]), args[1], Number(args[2] ?? 0)];
  const queue = new Queue(queueName, { connection });
  for (let start = 0; start < count; start += 1000) {
    const jobs = [];
    for (let i = start; i < Math.min(count, start + 1000); i++) jobs.push(job(kind, ms));
    await queue.addBulk(jobs);
  }
  await queue.close();
  await connection.quit();
} else if (command === 'trickle') {
  const [count, perSecond, kind, ms] = [Number(args[0]), Number(args[1]), args[2], Number(args[3] ?? 0)];
  const queue = new Queue(queueName, { connection });
  // From the stream's start (`$` would miss events added before the reader's first XREAD); the warm-up job's
  // events are read too and ignored.
  const events = new QueueEvents(queueName, {
    connection: new IORedis(url, { maxRetriesPerRequest: null }),
    lastEventId: '0-0',
  });
  await events.waitUntilReady();
  // The `active` event may be read before the add's own reply: both ends are kept by job id.
  const addedAt = new Map();
  const activeAt = new Map();
  const allActive = () => addedAt.size === count && [...addedAt.keys()].every((id) => activeAt.has(id));
  let resolveDone;
  const done = new Promise((resolve) => (resolveDone = resolve));
  events.on('active', ({ jobId }) => {
    if (!activeAt.has(jobId)) activeAt.set(jobId, performance.now());
    if (allActive()) resolveDone();
  });
  const spacing = 1000 / perSecond;
  const start = performance.now();
  const ids = [];
  for (let i = 0; i < count; i++) {
    // Paced from the start, so a slow add does not stretch the whole phase.
    const wait = start + i * spacing - performance.now();
    if (wait > 0) await sleep(wait);
    const { name, data, opts } = job(kind, ms);
    const before = performance.now();
    const added = await queue.add(name, data, opts);
    addedAt.set(added.id, before);
    ids.push(added.id);
  }
  if (!allActive()) {
    const timeout = sleep(30_000).then(() => {
      const seen = ids.filter((id) => activeAt.has(id)).length;
      throw new Error(`only ${seen} of ${count} jobs became active within 30 s`);
    });
    await Promise.race([done, timeout]);
  }
  console.log(JSON.stringify({ latencies: ids.map((id) => activeAt.get(id) - addedAt.get(id)) }));
  await events.close();
  await queue.close();
  await connection.quit();
  process.exit(0);
} else if (command === 'worker') {
  // The same work as the test plugin's `complete` and `sleep` jobs.
  const worker = new Worker(
    queueName,
    async (job) => {
      if (job.name === 'sleep') {
        await sleep(job.data.ms);
        return { slept: job.data.ms };
      }
      return job.data.result;
    },
    { connection, concurrency: Number(args[0]) },
  );
  process.on('SIGTERM', async () => {
    await worker.close();
    await connection.quit();
    process.exit(0);
  });
  await worker.waitUntilReady();
  console.log('ready');
} else {
  console.error(`unknown command ${command}`);
  process.exit(2);
}
