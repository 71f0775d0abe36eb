-- Register a collection found in the data dir (recover from disk, restore of a snapshot): its record,
-- document map, segment list, counters, pointer and pointer history, all at once, and only if the name
-- is neither a collection nor being dropped (nothing that exists is ever overwritten).
-- KEYS[1] collections set, KEYS[2] collection hash, KEYS[3] docs hash, KEYS[4] segments list,
-- KEYS[5] segment seq counter, KEYS[6] fence counter, KEYS[7] pointer hash, KEYS[8] pointer history,
-- KEYS[9] drop marker
-- ARGV[1] the name, ARGV[2] JSON {fields = {...}, docs = {doc = "seq:chunks"}, segments = [...],
-- segseq = n, fence = n, pointer = {...} or absent, history = [JSON, ...] oldest first}, ARGV[3] the swap
-- channel: with a pointer, API processes are told at once, as by a publish
-- Returns 1 when registered, 0 when the name is a collection, -1 while it is being dropped.
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then
  return 0
end
if redis.call('EXISTS', KEYS[9]) == 1 then
  return -1
end
local data = cjson.decode(ARGV[2])
-- Keys of a name that is not a collection are leftovers nobody reads: start from nothing.
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[7], KEYS[8])
for k, v in pairs(data.fields) do
  redis.call('HSET', KEYS[2], k, tostring(v))
end
for doc, loc in pairs(data.docs) do
  redis.call('HSET', KEYS[3], doc, loc)
end
for _, seq in ipairs(data.segments) do
  redis.call('RPUSH', KEYS[4], seq)
end
-- Counters only ever rise: a fence or a segment number handed out before must never come again.
if tonumber(redis.call('GET', KEYS[5]) or '0') < tonumber(data.segseq) then
  redis.call('SET', KEYS[5], data.segseq)
end
if tonumber(redis.call('GET', KEYS[6]) or '0') < tonumber(data.fence) then
  redis.call('SET', KEYS[6], data.fence)
end
if data.pointer then
  for k, v in pairs(data.pointer) do
    redis.call('HSET', KEYS[7], k, tostring(v))
  end
end
for _, item in ipairs(data.history) do
  redis.call('LPUSH', KEYS[8], item)
end
redis.call('SADD', KEYS[1], ARGV[1])
-- Every API process learns of the collection (and loads its version, when it has one) from this message.
local version = nil
if data.pointer then version = data.pointer['version'] end
redis.call('PUBLISH', ARGV[3], cjson.encode({collection = ARGV[1], version = version}))
return 1
