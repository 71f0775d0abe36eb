-- Release the lease if it is still ours. KEYS[1] lock; ARGV[1] "job_id|fence". Returns 1 if released.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
