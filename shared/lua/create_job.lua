-- Create a job in state queued, unless its queue is full: the back-pressure bound and the creation
-- are one step, so concurrent submissions can never overshoot the bound.
-- KEYS[1] job hash, KEYS[2] all-jobs sorted set, KEYS[3] collection's jobs sorted set,
-- KEYS[4] the queue's queued set, KEYS[5] events stream
-- ARGV[1] bound on queued jobs (0: none), ARGV[2] job id, ARGV[3] created_at (score),
-- ARGV[4] events max length, ARGV[5] collection, ARGV[6] kind, ARGV[7] event type, ARGV[8] state,
-- ARGV[9..] field/value pairs.
-- Returns {1, depth after} when created, {0, depth} when the queue is full, {-1, 0} when the id exists.
local bound = tonumber(ARGV[1])
local depth = redis.call('SCARD', KEYS[4])
if bound > 0 and depth >= bound then
  return {0, depth}
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {-1, 0}
end
for i = 9, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[2])
redis.call('SADD', KEYS[4], ARGV[2])
add_event(KEYS[5], ARGV[4], ARGV[7], ARGV[2], ARGV[5], ARGV[6], ARGV[8], '{}')
return {1, depth + 1}
