-- Extend the lease if (and only if) it is still held by this job at this fence.
-- KEYS[1] lock; ARGV[1] "job_id|fence", ARGV[2] lease ms. Returns 1 when renewed, 0 when lost.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
