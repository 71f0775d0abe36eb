-- Move a job from one of the allowed states to a new one, once, and record the event.
-- KEYS[1] job hash, KEYS[2] events stream, KEYS[3] running set, KEYS[4..] the queued sets of every
-- queue (the job is in one)
-- ARGV[1] new state, ARGV[2] allowed current states (space separated), ARGV[3] event type,
-- ARGV[4] events stream max length, ARGV[5] event data (JSON), ARGV[6] the name of the running state,
-- ARGV[7..] field/value pairs to set.
-- Returns {1, previous_state} when it moved the job, {0, current_state or ''} when it refused.
local state = redis.call('HGET', KEYS[1], 'state')
if not state then
  return {0, ''}
end
local allowed = false
for s in string.gmatch(ARGV[2], '%S+') do
  if s == state then allowed = true end
end
if not allowed then
  return {0, state}
end
redis.call('HSET', KEYS[1], 'state', ARGV[1])
for i = 7, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
local id = redis.call('HGET', KEYS[1], 'id')
for i = 4, #KEYS do
  redis.call('SREM', KEYS[i], id)
end
if ARGV[1] == ARGV[6] then
  redis.call('SADD', KEYS[3], id)
else
  redis.call('SREM', KEYS[3], id)
end
add_event(KEYS[2], ARGV[4], ARGV[3], id, redis.call('HGET', KEYS[1], 'collection'),
  redis.call('HGET', KEYS[1], 'kind'), ARGV[1], ARGV[5])
return {1, state}
