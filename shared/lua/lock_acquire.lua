-- Take a collection's rebuild lease for a job and hand out a new fencing number.
-- KEYS[1] lock, KEYS[2] fence counter; ARGV[1] job id, ARGV[2] lease ms.
-- Returns the fence, or {0, holder} when another job holds the lease.
local holder = redis.call('GET', KEYS[1])
if holder then
  local sep = string.find(holder, '|', 1, true)
  if string.sub(holder, 1, sep - 1) ~= ARGV[1] then
    return {0, holder}
  end
end
-- Free, or held by this same job (a redelivered message): a new fence fences off the earlier run.
local fence = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. fence, 'PX', ARGV[2])
return {fence, ''}
