-- The host's stalled-job check (the BullMQ protocol's "moveStalledJobsToWait", written for frostguard-worker
-- because bullmq-official's own check runs at the wrong rate and misreads its reply; see
-- docs/bullmq-official.md D8/D14).
--
-- Two passes per run, at most one run per check period per queue (shared with every other worker of the
-- queue, Node's included, through the stalled-check key):
--   1. every job marked by the previous run whose lock is gone goes back to wait (its stall count grows;
--      past the limit it gets a deferred failure, which the next worker to fetch it applies), with the
--      'waiting' and 'stalled' events Node emits;
--   2. every job now active is marked; renewing a lock removes the mark.
--
-- KEYS: 1 stalled (set)  2 wait  3 active  4 stalled-check  5 meta  6 marker  7 events  8 repeat
-- ARGV: 1 max stalled count  2 job key prefix ("<prefix>:<queue>:")  3 now (ms)  4 check period (ms)
-- Reply: the ids moved back to wait (a flat array), or false when another worker checked recently.

local call = redis.call
local stalledKey, waitKey, activeKey, checkKey = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local metaKey, markerKey, eventsKey, repeatKey = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local maxStalled = tonumber(ARGV[1])
local jobPrefix = ARGV[2]

if call("EXISTS", checkKey) == 1 then
  return false
end
call("SET", checkKey, ARGV[3], "PX", ARGV[4])

local maxEvents = call("HGET", metaKey, "opts.maxLenEvents")
if not maxEvents then
  maxEvents = 10000
  call("HSET", metaKey, "opts.maxLenEvents", maxEvents)
end
call("XTRIM", eventsKey, "MAXLEN", "~", maxEvents)

-- A job produced by a job scheduler is never failed for stalling: its iteration must go on.
local function fromScheduler(jobKey)
  local schedulerId = call("HGET", jobKey, "rjk")
  if not schedulerId then
    return false
  end
  return call("EXISTS", repeatKey .. ":" .. schedulerId) == 1 or call("ZSCORE", repeatKey, schedulerId) ~= false
end

-- Whether a worker may take a job now (paused queue, or global concurrency reached): if not, no marker.
local function held()
  local meta = call("HMGET", metaKey, "paused", "concurrency")
  if meta[1] then
    return true
  end
  return meta[2] and call("LLEN", activeKey) >= tonumber(meta[2]) or false
end

local moved = {}
local marked = call("SMEMBERS", stalledKey)
if #marked > 0 then
  call("DEL", stalledKey)
  for _, jobId in ipairs(marked) do
    if string.sub(jobId, 1, 2) == "0:" then
      -- an old-style delay marker, never a job
      call("LREM", activeKey, 1, jobId)
    else
      local jobKey = jobPrefix .. jobId
      if call("EXISTS", jobKey .. ":lock") == 0 and call("LREM", activeKey, 1, jobId) > 0 then
        local stalls = call("HINCRBY", jobKey, "stc", 1)
        -- A deferred failure already there (a job that crashed the worker) keeps its own reason.
        if stalls > maxStalled and not fromScheduler(jobKey) and call("HEXISTS", jobKey, "defa") == 0 then
          call("HSET", jobKey, "defa", "job stalled more than allowable limit")
        end
        call("RPUSH", waitKey, jobId)
        if not held() then
          call("ZADD", markerKey, 0, "0")
        end
        call("XADD", eventsKey, "*", "event", "waiting", "jobId", jobId, "prev", "active")
        call("XADD", eventsKey, "*", "event", "stalled", "jobId", jobId)
        moved[#moved + 1] = jobId
      end
    end
  end
end

local active = call("LRANGE", activeKey, 0, -1)
local batch = 5000
for first = 1, #active, batch do
  call("SADD", stalledKey, unpack(active, first, math.min(first + batch - 1, #active)))
end

return moved
