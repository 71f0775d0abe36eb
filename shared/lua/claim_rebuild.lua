-- Coalesce rebuild requests: at most one queued (pending) and one running per collection.
-- KEYS[1] pending key, KEYS[2] lock; ARGV[1] new job id, ARGV[2] "exclusive" or "coalesce".
-- exclusive (a user's POST /rebuild): refused when a rebuild is queued or running -> {0, holder id}.
-- coalesce (after an ingest): joins the queued one if any -> {0, id}; else claims -> {1, new id}.
local pending = redis.call('GET', KEYS[1])
if pending then
  return {0, pending}
end
if ARGV[2] == 'exclusive' then
  local holder = redis.call('GET', KEYS[2])
  if holder then
    local sep = string.find(holder, '|', 1, true)
    return {0, string.sub(holder, 1, sep - 1)}
  end
end
redis.call('SET', KEYS[1], ARGV[1])
return {1, ARGV[1]}
