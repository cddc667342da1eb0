// The Node BullMQ side of the interop tests and of the demo.
//
//   node drive.mjs <command> '<json>'
//
// Every command takes one JSON object (at least `redis`: a redis:// URL, or `cluster`: the redis:// URLs of
// Redis Cluster seed nodes, then ioredis' Cluster is used; `queue`; optional `prefix`, default "bull") and
// prints exactly one JSON document on stdout. Failures print a message on stderr and exit 1. Commands are
// listed in COMMANDS at the bottom.

import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import IORedis from 'ioredis';
import { loadBullmq } from './load-bullmq.mjs';

const { Queue, QueueEvents, Worker } = await loadBullmq();

const FINISHED = ['completed', 'failed'];

// A Redis Cluster connection (ioredis Cluster) from `cluster`: [redis:// URLs of seed nodes]. BullMQ takes
// the instance as its connection (and duplicates it for blocking reads); every key of a queue must hash to
// one slot, so the prefix carries a hash tag such as {bull}.
function clusterOf(input) {
  const nodes = input.cluster.map((u) => {
    const url = new URL(u);
    return { host: url.hostname, port: Number(url.port || 6379) };
  });
  const first = new URL(input.cluster[0]);
  const redisOptions = { maxRetriesPerRequest: null };
  if (first.password) redisOptions.password = decodeURIComponent(first.password);
  if (first.username) redisOptions.username = decodeURIComponent(first.username);
  return new IORedis.Cluster(nodes, { redisOptions });
}

function connectionOf(input) {
  if (input.cluster) return clusterOf(input);
  if (!input.redis) throw new Error('input needs "redis" (a redis:// URL) or "cluster" (seed node URLs)');
  const url = new URL(input.redis);
  const conn = { host: url.hostname, port: Number(url.port || 6379), maxRetriesPerRequest: null };
  if (url.password) conn.password = decodeURIComponent(url.password);
  if (url.username) conn.username = decodeURIComponent(url.username);
  const db = url.pathname.replace('/', '');
  if (db) conn.db = Number(db);
  return conn;
}

function prefixOf(input) {
  return input.prefix ?? 'bull';
}

// `eventsMaxLen`: how long the queue's event stream may grow (BullMQ's default keeps about 10,000 events), for
// tests that count every job's events afterwards.
function queueOf(input, extra = {}) {
  if (!input.queue) throw new Error('input needs "queue"');
  const streams = input.eventsMaxLen ? { streams: { events: { maxLen: input.eventsMaxLen } } } : {};
  return new Queue(input.queue, { connection: connectionOf(input), prefix: prefixOf(input), ...streams, ...extra });
}

function redisOf(input) {
  if (input.cluster) return clusterOf(input);
  return new IORedis(input.redis, { maxRetriesPerRequest: null });
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function snapshot(queue, id, withLogs) {
  // State first, then the hash: the other order can pair a hash read while the job was still active (no
  // returnvalue yet) with a state read just after it completed.
  const state = await queue.getJobState(id);
  const job = await queue.getJob(id);
  if (!job) return { id, state: 'missing' };
  const snap = {
    id: job.id,
    name: job.name,
    state,
    data: job.data,
    opts: job.opts,
    returnvalue: job.returnvalue ?? null,
    failedReason: job.failedReason ?? null,
    attemptsMade: job.attemptsMade,
    attemptsStarted: job.attemptsStarted,
    stalledCounter: job.stalledCounter,
    timestamp: job.timestamp,
    processedOn: job.processedOn ?? null,
    finishedOn: job.finishedOn ?? null,
    delay: job.delay,
    priority: job.priority,
    progress: job.progress,
    processedBy: job.processedBy ?? null,
    repeatJobKey: job.repeatJobKey ?? null,
    stacktrace: job.stacktrace ?? [],
  };
  if (withLogs) {
    const { logs } = await queue.getJobLogs(id);
    snap.logs = logs;
  }
  return snap;
}

async function snapshots(queue, ids, withLogs) {
  const out = [];
  for (const id of ids) out.push(await snapshot(queue, String(id), withLogs));
  return out;
}

// Adds `jobs` ([{name, data, opts}]) one by one with Queue.add, or with Queue.addBulk when `bulk` is true.
async function addJobs(queue, jobs, bulk) {
  if (bulk) {
    const added = await queue.addBulk(jobs.map((j) => ({ name: j.name, data: j.data ?? {}, opts: j.opts ?? {} })));
    return added.map((j) => j.id);
  }
  const ids = [];
  for (const j of jobs) {
    const job = await queue.add(j.name, j.data ?? {}, j.opts ?? {});
    ids.push(job.id);
  }
  return ids;
}

// Polls until every job is in one of `states` (and, with `minStarted`, has been started at least that often);
// returns the snapshots that met the condition (plus job logs with `withLogs`) and whether the deadline passed.
async function waitStates(queue, ids, states, timeoutMs, withLogs, minStarted = 0) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const snaps = await snapshots(queue, ids, false);
    const done = snaps.every((s) => states.includes(s.state) && s.attemptsStarted >= minStarted);
    if (done || Date.now() > deadline) {
      if (withLogs) {
        for (const snap of snaps) snap.logs = (await queue.getJobLogs(snap.id)).logs;
      }
      return { timedOut: !done, jobs: snaps };
    }
    await sleep(25);
  }
}

// The queue's event stream, oldest first: [{streamId, ms, event, jobId, ...fields}].
async function readEvents(input) {
  const redis = redisOf(input);
  try {
    const key = `${prefixOf(input)}:${input.queue}:events`;
    const entries = await redis.xrange(key, '-', '+');
    return entries.map(([streamId, flat]) => {
      const ev = { streamId, ms: Number(streamId.split('-')[0]) };
      for (let i = 0; i < flat.length; i += 2) ev[flat[i]] = flat[i + 1];
      return ev;
    });
  } finally {
    redis.disconnect();
  }
}

async function withQueue(input, fn, extra) {
  const queue = queueOf(input, extra);
  try {
    return await fn(queue);
  } finally {
    await queue.close();
  }
}

const COMMANDS = {
  // {} → {version}: the Node BullMQ version these commands run with (no Redis needed).
  async bullmqVersion() {
    const dir = process.env.FROSTGUARD_BULLMQ_DIR ?? new URL('.', import.meta.url).pathname;
    const pkg = JSON.parse(readFileSync(join(dir, 'node_modules', 'bullmq', 'package.json'), 'utf8'));
    return { version: pkg.version };
  },

  // {jobs: [{name, data, opts}], bulk?} → {ids}. Instead of `jobs`, `template` ({name, data, opts}) and
  // `count` add that many copies, each with `data.i` set to its index (added in bulk batches of 500): thousands
  // of jobs without a command line that long.
  async add(input) {
    return withQueue(input, async (queue) => {
      if (!input.template) return { ids: await addJobs(queue, input.jobs, input.bulk) };
      const ids = [];
      for (let start = 0; start < input.count; start += 500) {
        const jobs = [];
        for (let i = start; i < Math.min(input.count, start + 500); i++) {
          jobs.push({ ...input.template, data: { ...(input.template.data ?? {}), i } });
        }
        ids.push(...(await addJobs(queue, jobs, true)));
      }
      return { ids };
    });
  },

  // {ids, withLogs?} → {jobs: [snapshot]}
  async jobs(input) {
    return withQueue(input, async (queue) => ({ jobs: await snapshots(queue, input.ids, input.withLogs) }));
  },

  // {ids, states? (default completed/failed), minStarted?, timeoutMs?, withLogs?} → {timedOut, jobs}
  async wait(input) {
    return withQueue(input, (queue) =>
      waitStates(
        queue,
        input.ids,
        input.states ?? FINISHED,
        input.timeoutMs ?? 30000,
        input.withLogs,
        input.minStarted ?? 0,
      ),
    );
  },

  // {jobs, bulk?, sequential?, timeoutMs?, ...} → adds and waits: {ids, timedOut, jobs}. With `sequential`, each
  // job is added only once the previous one has finished, so finish times are distinct and ordered.
  async run(input) {
    return withQueue(input, async (queue) => {
      if (input.sequential) {
        const ids = [];
        for (const job of input.jobs) {
          ids.push(...(await addJobs(queue, [job], false)));
          const res = await waitStates(queue, ids.slice(-1), FINISHED, input.timeoutMs ?? 30000, false);
          if (res.timedOut) return { ids, ...res };
        }
        return { ids, timedOut: false, jobs: await snapshots(queue, ids, input.withLogs) };
      }
      const ids = await addJobs(queue, input.jobs, input.bulk);
      const res = await waitStates(queue, ids, FINISHED, input.timeoutMs ?? 30000, input.withLogs);
      return { ids, ...res };
    });
  },

  // Subscribes a QueueEvents, adds `jobs`, then awaits job.waitUntilFinished() for each and collects the
  // queue events seen for those jobs. → {ids, results: [{id, ok, value?, error?}], events: [{event, jobId, ...}]}
  async 'events-flow'(input) {
    const connection = connectionOf(input);
    const prefix = prefixOf(input);
    const queueEvents = new QueueEvents(input.queue, { connection, prefix, lastEventId: '0-0' });
    const seen = [];
    for (const name of ['completed', 'failed', 'progress', 'active', 'delayed', 'waiting']) {
      queueEvents.on(name, (args) => seen.push({ event: name, ...args }));
    }
    await queueEvents.waitUntilReady();
    const queue = queueOf(input);
    try {
      const jobs = [];
      if (input.bulk) {
        jobs.push(...(await queue.addBulk(input.jobs.map((j) => ({ name: j.name, data: j.data ?? {}, opts: j.opts ?? {} })))));
      } else {
        for (const j of input.jobs) jobs.push(await queue.add(j.name, j.data ?? {}, j.opts ?? {}));
      }
      const ttl = input.timeoutMs ?? 30000;
      const results = await Promise.all(
        jobs.map((job) =>
          job.waitUntilFinished(queueEvents, ttl).then(
            (value) => ({ id: job.id, ok: true, value: value ?? null }),
            (err) => ({ id: job.id, ok: false, error: String(err?.message ?? err) }),
          ),
        ),
      );
      const ids = jobs.map((j) => j.id);
      // The terminal event of each job was seen by waitUntilFinished; give the listener a moment to catch up
      // with the same stream position, bounded by the deadline.
      const deadline = Date.now() + ttl;
      const terminal = () =>
        ids.every((id) => seen.some((e) => e.jobId === id && (e.event === 'completed' || e.event === 'failed')));
      while (!terminal() && Date.now() < deadline) await sleep(25);
      return { ids, results, events: seen.filter((e) => ids.includes(e.jobId)) };
    } finally {
      await queue.close();
      await queueEvents.close();
    }
  },

  // {ids} → {jobs: [{id, data, returnvalue}]}: JSON.stringify of job.data and job.returnvalue as Node parsed
  // them, so a test can compare the text (key order included) byte for byte.
  async texts(input) {
    return withQueue(input, async (queue) => {
      const jobs = [];
      for (const id of input.ids) {
        const job = await queue.getJob(String(id));
        jobs.push({ id, data: JSON.stringify(job?.data ?? null), returnvalue: JSON.stringify(job?.returnvalue ?? null) });
      }
      return { jobs };
    });
  },

  // → getJobCounts()
  async counts(input) {
    return withQueue(input, (queue) => queue.getJobCounts());
  },

  // {states: ['completed', ...]} → {ids} of the jobs currently in those states
  async list(input) {
    return withQueue(input, async (queue) => {
      const jobs = await queue.getJobs(input.states, 0, -1, true);
      return { ids: jobs.filter(Boolean).map((j) => j.id) };
    });
  },

  // → {events: [...]} (the raw event stream)
  async events(input) {
    return { events: await readEvents(input) };
  },

  async pause(input) {
    return withQueue(input, async (queue) => {
      await queue.pause();
      return { paused: await queue.isPaused() };
    });
  },

  async resume(input) {
    return withQueue(input, async (queue) => {
      await queue.resume();
      return { paused: await queue.isPaused() };
    });
  },

  // {id, repeat: {every | pattern, ...}, template: {name, data, opts}} → {id, nextMillis}
  async 'upsert-scheduler'(input) {
    return withQueue(input, async (queue) => {
      const first = await queue.upsertJobScheduler(input.id, input.repeat, input.template);
      return { id: input.id, firstJobId: first?.id ?? null };
    });
  },

  async 'remove-scheduler'(input) {
    return withQueue(input, async (queue) => ({ removed: await queue.removeJobScheduler(input.id) }));
  },

  async schedulers(input) {
    return withQueue(input, async (queue) => ({ schedulers: await queue.getJobSchedulers() }));
  },

  // Runs a Node Worker until `count` jobs have finished. {concurrency?, count, timeoutMs?, limiter?,
  // stalledInterval?} →
  // {order: [job ids in the order the Node worker started them], timedOut}
  async 'node-worker'(input) {
    const order = [];
    let finished = 0;
    const worker = new Worker(
      input.queue,
      async (job) => {
        order.push(job.id);
        if (job.name === 'fail') throw new Error(job.data?.message ?? 'requested failure');
        return job.data?.result ?? { echo: job.data, processedBy: 'node' };
      },
      {
        connection: connectionOf(input),
        prefix: prefixOf(input),
        concurrency: input.concurrency ?? 1,
        autorun: false,
        ...(input.stalledInterval ? { stalledInterval: input.stalledInterval } : {}),
      },
    );
    worker.on('completed', () => finished++);
    worker.on('failed', () => finished++);
    worker.run();
    const deadline = Date.now() + (input.timeoutMs ?? 30000);
    while (finished < input.count && Date.now() < deadline) await sleep(20);
    await worker.close();
    return { order, timedOut: finished < input.count };
  },

  // A Node Worker and whatever else consumes the queue (the host) share `count` jobs named `name` (default
  // `complete`). The Node worker counts its own runs per job id in a Redis hash. Waits until every job is
  // completed (or the deadline), then reports who completed what, and every job that the event stream shows
  // active or completed other than exactly once. `gateKey`: see below. → {jobs, timedOut, states, byNode, byOther, wrongValue,
  // nodeRunsTotal, nodeRanTwice: [id], activeNotOnce: [[id, n]], completedNotOnce: [[id, n]]}
  async 'mixed-fleet'(input) {
    const count = input.count;
    const prefix = prefixOf(input);
    const runsKey = `${prefix}:${input.queue}:node-runs`;
    const redis = redisOf(input);
    // A long event stream so that every job's events can be counted afterwards.
    const queue = queueOf(input, { streams: { events: { maxLen: 1000000 } } });
    // With `gateKey`, the Node worker's jobs wait (already counted as runs) until that Redis key exists: the
    // test opens the gate once the host has completed a job, so that both workers are known to take part.
    const gate = redisOf(input);
    let gateOpen = !input.gateKey;
    const worker = new Worker(
      input.queue,
      async (job) => {
        await redis.hincrby(runsKey, job.id, 1);
        while (!gateOpen) {
          gateOpen = (await gate.exists(input.gateKey)) === 1;
          if (!gateOpen) await sleep(20);
        }
        return { processedBy: 'node', i: job.data.i };
      },
      { connection: connectionOf(input), prefix, concurrency: input.concurrency ?? 4 },
    );
    try {
      await worker.waitUntilReady();
      const ids = [];
      const batch = 500;
      for (let start = 0; start < count; start += batch) {
        const jobs = [];
        for (let i = start; i < Math.min(count, start + batch); i++) {
          jobs.push({ name: input.name ?? 'complete', data: { i }, opts: input.opts ?? {} });
        }
        ids.push(...(await addJobs(queue, jobs, true)));
      }
      const deadline = Date.now() + (input.timeoutMs ?? 120000);
      let completed = 0;
      while (Date.now() < deadline) {
        completed = await queue.getCompletedCount();
        if (completed >= count) break;
        await sleep(100);
      }
      await worker.close();
      const states = {};
      let byNode = 0;
      let byOther = 0;
      const wrongValue = [];
      for (let start = 0; start < ids.length; start += 200) {
        const chunk = ids.slice(start, start + 200);
        const jobs = await Promise.all(chunk.map((id) => queue.getJob(id)));
        for (let k = 0; k < chunk.length; k++) {
          const job = jobs[k];
          const state = job ? await job.getState() : 'missing';
          states[state] = (states[state] ?? 0) + 1;
          if (state !== 'completed') continue;
          const rv = job.returnvalue;
          if (rv && rv.processedBy === 'node') byNode++;
          else byOther++;
          const i = rv?.processedBy === 'node' ? rv.i : rv?.echo?.i;
          if (i !== job.data.i) wrongValue.push(job.id);
        }
      }
      const nodeRuns = await redis.hgetall(runsKey);
      const activeEvents = {};
      const completedEvents = {};
      for (const ev of await readEvents(input)) {
        if (ev.event === 'active') activeEvents[ev.jobId] = (activeEvents[ev.jobId] ?? 0) + 1;
        if (ev.event === 'completed') completedEvents[ev.jobId] = (completedEvents[ev.jobId] ?? 0) + 1;
      }
      const notOnce = (tally) => ids.filter((id) => tally[id] !== 1);
      return {
        jobs: ids.length,
        timedOut: completed < count,
        states,
        byNode,
        byOther,
        wrongValue,
        nodeRunsTotal: Object.values(nodeRuns).reduce((sum, v) => sum + Number(v), 0),
        nodeRanTwice: Object.keys(nodeRuns).filter((id) => Number(nodeRuns[id]) > 1),
        activeNotOnce: notOnce(activeEvents).map((id) => [id, activeEvents[id] ?? 0]),
        completedNotOnce: notOnce(completedEvents).map((id) => [id, completedEvents[id] ?? 0]),
      };
    } finally {
      await worker.close();
      await queue.close();
      redis.disconnect();
      gate.disconnect();
    }
  },

  // Waits until every job of `ids` is finished (one queue), then reports, in chunks so that thousands of jobs
  // stay cheap: {timedOut, states: {state: n}, processedBy: {name: n}, wrongValue: [id],
  // rerun: [[id, attemptsStarted]], completedNotOnce: [[id, n]]} where completedNotOnce counts each job's
  // 'completed' events in the stream (keep it long: add with `streams.events.maxLen`).
  async 'fleet-report'(input) {
    return withQueue(input, async (queue) => {
      const ids = input.ids;
      const deadline = Date.now() + (input.timeoutMs ?? 120000);
      let pending = ids;
      while (pending.length > 0 && Date.now() < deadline) {
        const next = [];
        for (let start = 0; start < pending.length; start += 500) {
          const chunk = pending.slice(start, start + 500);
          const states = await Promise.all(chunk.map((id) => queue.getJobState(id)));
          chunk.forEach((id, k) => {
            if (!FINISHED.includes(states[k])) next.push(id);
          });
        }
        pending = next;
        if (pending.length > 0) await sleep(200);
      }
      const states = {};
      const processedBy = {};
      const wrongValue = [];
      const rerun = [];
      for (let start = 0; start < ids.length; start += 500) {
        const chunk = ids.slice(start, start + 500);
        const jobs = await Promise.all(chunk.map((id) => queue.getJob(id)));
        const jobStates = await Promise.all(chunk.map((id) => queue.getJobState(id)));
        chunk.forEach((id, k) => {
          const job = jobs[k];
          const state = job ? jobStates[k] : 'missing';
          states[state] = (states[state] ?? 0) + 1;
          if (!job) return;
          const by = job.processedBy ?? 'none';
          processedBy[by] = (processedBy[by] ?? 0) + 1;
          if (job.attemptsStarted > 1) rerun.push([id, job.attemptsStarted]);
          if (state === 'completed' && (job.returnvalue === null || job.returnvalue === undefined)) wrongValue.push(id);
        });
      }
      const completed = {};
      for (const ev of await readEvents(input)) {
        if (ev.event === 'completed') completed[ev.jobId] = (completed[ev.jobId] ?? 0) + 1;
      }
      return {
        timedOut: pending.length > 0,
        states,
        processedBy,
        wrongValue,
        rerun,
        completedNotOnce: ids.filter((id) => completed[id] !== 1).map((id) => [id, completed[id] ?? 0]),
      };
    });
  },

  // {cmd: ["SMEMBERS", "key"]} → {result}
  async redis(input) {
    const redis = redisOf(input);
    try {
      const [name, ...args] = input.cmd;
      return { result: await redis.call(name, ...args) };
    } finally {
      redis.disconnect();
    }
  },
};

async function main() {
  const [command, raw] = process.argv.slice(2);
  const fn = COMMANDS[command];
  if (!fn) {
    process.stderr.write(`unknown command ${JSON.stringify(command)}; known: ${Object.keys(COMMANDS).join(', ')}\n`);
    process.exit(2);
  }
  const input = JSON.parse(raw ?? '{}');
  const output = await fn(input);
  // Exit only once the output is flushed: a pipe is written asynchronously.
  await new Promise((resolve) => process.stdout.write(`${JSON.stringify(output)}\n`, resolve));
}

main().then(
  () => process.exit(0),
  (err) => {
    process.stderr.write(`drive.mjs: ${err?.stack ?? err}\n`);
    process.exit(1);
  },
);
