-- Publish a new index version of a collection, fenced, and finish its rebuild job, atomically.
-- KEYS[1] pointer hash, KEYS[2] pointer history, KEYS[3] job hash, KEYS[4] events stream,
-- KEYS[5] collection hash, KEYS[6] the collection's lease lock
-- ARGV[1] fence, ARGV[2] pointer JSON, ARGV[3] history length kept, ARGV[4] job result JSON,
-- ARGV[5] now, ARGV[6] swap channel, ARGV[7] events max length, ARGV[8] job id ('' for a rollback),
-- ARGV[9] the running state, ARGV[10] the succeeded state, ARGV[11] its event type,
-- ARGV[12] the publisher's lease token "holder|fence", ARGV[13] the published event type,
-- ARGV[14] the job kind (rebuild), ARGV[15] the job's final stage
-- Returns {1, ''} when published; {0, reason} when refused: 'lease' (the publisher no longer holds the
-- collection's lease with this fence: it expired, or another run took it over), 'stale' (a fence not
-- higher than the published one), 'canceled' (cancel requested) or 'state:<s>' (the job is no longer
-- running).
-- The lease check comes first: a worker paused past its lease may hold a fence above the published one
-- while another worker builds with a newer fence; only the lease holder may publish.
if redis.call('GET', KEYS[6]) ~= ARGV[12] then
  return {0, 'lease'}
end
local current = tonumber(redis.call('HGET', KEYS[1], 'fence') or '0')
local fence = tonumber(ARGV[1])
if fence <= current then
  return {0, 'stale'}
end
local job_id = ARGV[8]
if job_id ~= '' then
  local state = redis.call('HGET', KEYS[3], 'state')
  if state ~= ARGV[9] then
    return {0, 'state:' .. tostring(state)}
  end
  if redis.call('HGET', KEYS[3], 'cancel_requested') == '1' then
    return {0, 'canceled'}
  end
end
local ptr = cjson.decode(ARGV[2])
redis.call('DEL', KEYS[1])
for k, v in pairs(ptr) do
  redis.call('HSET', KEYS[1], k, tostring(v))
end
redis.call('HSET', KEYS[1], 'fence', ARGV[1])
redis.call('LPUSH', KEYS[2], ARGV[2])
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[3]) - 1)
local collection = ptr['collection']
add_event(KEYS[4], ARGV[7], ARGV[13], job_id, collection, ARGV[14], '', ARGV[2])
if job_id ~= '' then
  redis.call('HSET', KEYS[5], 'last_rebuild_at', ARGV[5])
  redis.call('HSET', KEYS[3], 'state', ARGV[10], 'result', ARGV[4], 'finished_at', ARGV[5], 'stage', ARGV[15])
  add_event(KEYS[4], ARGV[7], ARGV[11], job_id, collection, ARGV[14], ARGV[10], '{"result":' .. ARGV[4] .. '}')
end
redis.call('PUBLISH', ARGV[6], cjson.encode({collection = collection, version = ptr['version']}))
return {1, ''}
