-- Settle an Idempotency-Key claim, only if it is still ours: delete it (ARGV[2] == '') or replace it
-- by the stored response (ARGV[2], kept ARGV[3] seconds).
-- KEYS[1] the idempotency record; ARGV[1] our claim's token. Returns 1 when settled, 0 otherwise.
local raw = redis.call('GET', KEYS[1])
if raw and cjson.decode(raw)['token'] == ARGV[1] then
  if ARGV[2] == '' then
    return redis.call('DEL', KEYS[1])
  end
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
  return 1
end
return 0
