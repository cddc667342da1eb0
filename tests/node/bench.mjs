// Node side of the throughput benchmark (tests/benches/throughput.rs):
//   node bench.mjs add <redisUrl> <queue> <count>        enqueue <count> `complete` jobs with addBulk
//   node bench.mjs worker <redisUrl> <queue> <concurrency> run a Node BullMQ Worker until SIGTERM
import { Queue, Worker } from 'bullmq';
import IORedis from 'ioredis';

const [command, url, queueName, arg] = process.argv.slice(2);
const connection = new IORedis(url, { maxRetriesPerRequest: null });

if (command === 'add') {
  const count = Number(arg);
  const queue = new Queue(queueName, { connection });
  for (let start = 0; start < count; start += 1000) {
    const jobs = [];
    for (let i = start; i < Math.min(count, start + 1000); i++) {
      jobs.push({ name: 'complete', data: { result: 1 } });
    }
    await queue.addBulk(jobs);
  }
  await queue.close();
  await connection.quit();
} else if (command === 'worker') {
  // The same work as the test plugin's `complete`: return the job's `result`.
  const worker = new Worker(queueName, async (job) => job.data.result, {
    connection,
    concurrency: Number(arg),
  });
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
