-- Count one finished child of a fanned-out job, once: the barrier's last child sees 0.
-- KEYS[1] barrier hash, KEYS[2] pending children set, KEYS[3] failed files list, KEYS[4] parent job hash
-- ARGV[1] child job id, ARGV[2] files done, ARGV[3] chunks embedded, ARGV[4] chunks reused, ARGV[5] now,
-- ARGV[6] 1 when the child failed or was canceled, ARGV[7..] its files that failed (none when it succeeded)
-- Returns the children still pending, or -1 when this child was counted before.
if redis.call('SREM', KEYS[2], ARGV[1]) == 0 then
  return -1
end
redis.call('HINCRBY', KEYS[1], 'files_done', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'chunks_embedded', ARGV[3])
redis.call('HINCRBY', KEYS[1], 'chunks_reused', ARGV[4])
if ARGV[6] == '1' then
  redis.call('HINCRBY', KEYS[1], 'children_failed', 1)
end
for i = 7, #ARGV do
  redis.call('RPUSH', KEYS[3], ARGV[i])
end
redis.call('HSET', KEYS[4], 'heartbeat', ARGV[5])
return redis.call('HINCRBY', KEYS[1], 'remaining', -1)
