-- Register a written segment: it becomes part of the collection, in registration order.
-- KEYS[1] docs hash, KEYS[2] segments list, KEYS[3] collection hash, KEYS[4] job hash
-- ARGV[1] segment seq, then pairs doc_id, chunk_count (-1 for a tombstone: the document is deleted).
-- Returns the collection's chunk count after registration.
-- Idempotent: a call repeated after its reply was lost (a client retries on a timeout) finds the
-- segment already recorded on the job and changes nothing (a retried call over 2M documents pushed the
-- segment onto the list twice).
local seq = ARGV[1]
if redis.call('HGET', KEYS[4], 'segment') == seq then
  return tonumber(redis.call('HGET', KEYS[3], 'chunks') or '0')
end
local delta, changes = 0, 0
for i = 2, #ARGV, 2 do
  local doc, count = ARGV[i], tonumber(ARGV[i + 1])
  local old = redis.call('HGET', KEYS[1], doc)
  if old then
    delta = delta - tonumber(string.match(old, ':(%d+)$'))
  end
  if count >= 0 then
    redis.call('HSET', KEYS[1], doc, seq .. ':' .. count)
    delta = delta + count
    changes = changes + 1
  elseif old then
    redis.call('HDEL', KEYS[1], doc)
    changes = changes + 1
  end
end
redis.call('RPUSH', KEYS[2], seq)
redis.call('HSET', KEYS[4], 'segment', seq)
redis.call('HINCRBY', KEYS[3], 'changes', changes)
return redis.call('HINCRBY', KEYS[3], 'chunks', delta)
