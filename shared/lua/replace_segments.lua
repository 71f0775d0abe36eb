-- Compaction: replace the oldest segments of a collection by the one segment merged from them.
-- KEYS[1] segments list, KEYS[2] docs hash
-- ARGV[1] the merged segment's seq, ARGV[2] n, ARGV[3 .. 2+n] the replaced seqs (the list's first n, in
-- order), then pairs doc_id, chunk count: a batch of the documents the merged segment holds.
-- The first call swaps the list; the client sends the documents in batches, each a call of its own,
-- so Redis is never held for all of them at once (2M documents in one call took 10.5 s, past every
-- client's 5 s socket timeout). A call that finds the merged segment first in the list (a later batch,
-- or a retry of a call whose reply was lost) only repoints its batch.
-- A document is pointed at the merged segment only while it still lives in a replaced one (a newer
-- segment registered meanwhile keeps its documents). Returns 1, or 0 when the list no longer starts
-- with the replaced segments (nothing changed).
local n = tonumber(ARGV[2])
local replaced = {}
for i = 1, n do
  replaced[ARGV[2 + i]] = true
end
if redis.call('LINDEX', KEYS[1], 0) ~= ARGV[1] then
  local head = redis.call('LRANGE', KEYS[1], 0, n - 1)
  if #head ~= n then
    return 0
  end
  for i = 1, n do
    if head[i] ~= ARGV[2 + i] then
      return 0
    end
  end
  redis.call('LTRIM', KEYS[1], n, -1)
  redis.call('LPUSH', KEYS[1], ARGV[1])
end
for i = 3 + n, #ARGV, 2 do
  local current = redis.call('HGET', KEYS[2], ARGV[i])
  if current and replaced[string.match(current, '^(%d+):')] then
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[1] .. ':' .. ARGV[i + 1])
  end
end
return 1
