-- Compaction: replace the oldest segments of a collection by the one segment merged from them.
-- KEYS[1] segments list, KEYS[2] docs hash
-- ARGV[1] the merged segment's seq, ARGV[2] n, ARGV[3 .. 2+n] the replaced seqs (the list's first n, in
-- order), then pairs doc_id, chunk count of the documents the merged segment holds.
-- A document is pointed at the merged segment only while it still lives in a replaced one (a newer
-- segment registered meanwhile keeps its documents). Returns 1, or 0 when the list no longer starts
-- with the replaced segments (nothing changed).
local n = tonumber(ARGV[2])
local head = redis.call('LRANGE', KEYS[1], 0, n - 1)
if #head ~= n then
  return 0
end
local replaced = {}
for i = 1, n do
  if head[i] ~= ARGV[2 + i] then
    return 0
  end
  replaced[ARGV[2 + i]] = true
end
for i = 3 + n, #ARGV, 2 do
  local current = redis.call('HGET', KEYS[2], ARGV[i])
  if current and replaced[string.match(current, '^(%d+):')] then
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[1] .. ':' .. ARGV[i + 1])
  end
end
redis.call('LTRIM', KEYS[1], n, -1)
redis.call('LPUSH', KEYS[1], ARGV[1])
return 1
