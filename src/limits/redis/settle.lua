-- Settles admitted requests, one or many in a call: each releases its admission (and so its
-- stream lease) and returns unused reserved tokens (or charges extra ones) to its key's tokens
-- bucket. Idempotent: only the call that removes an admission adjusts the bucket, so a repeated
-- settlement, or the undo of an admission that never happened, changes nothing. Entries apply
-- in order, so several of one key compose. Mirrors Bucket::adjust in bucket.rs.
--
-- For entry i (from 1): KEYS[2i-1] tokens bucket (hash: l = level, t = ms), KEYS[2i] admissions
-- in flight (zset); ARGV[3i-2] tokens cap (0 = unlimited), ARGV[3i-1] adjustment (+ refund,
-- - charge), ARGV[3i] admission id.
--   Caps and adjustments are integers of magnitude below 2^53; anything else is an error reply,
--   found before any entry applies, so a bad call changes nothing.
-- Returns how many admissions were settled now (the others were not, or no longer, in flight).
local WINDOW = 60000
local MAX_EXACT = 9007199254740992

local entries = #KEYS / 2
if entries ~= math.floor(entries) or #ARGV ~= entries * 3 then
  return redis.error_reply('ERR sluicegate settle: two keys and three arguments per entry')
end
local caps, adjustments = {}, {}
for i = 1, entries do
  local cap, adjustment = tonumber(ARGV[3 * i - 2]), tonumber(ARGV[3 * i - 1])
  if cap == nil or cap < 0 or cap >= MAX_EXACT or cap ~= math.floor(cap) then
    return redis.error_reply('ERR sluicegate settle: the tokens cap must be a non-negative integer')
  end
  if adjustment == nil or math.abs(adjustment) >= MAX_EXACT or adjustment ~= math.floor(adjustment) then
    return redis.error_reply('ERR sluicegate settle: the adjustment must be an integer')
  end
  caps[i], adjustments[i] = cap, adjustment
end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)

local settled = 0
for i = 1, entries do
  local bucket, cap, adjustment = KEYS[2 * i - 1], caps[i], adjustments[i]
  if redis.call('ZREM', KEYS[2 * i], ARGV[3 * i]) == 1 then
    settled = settled + 1
    if cap > 0 and adjustment ~= 0 then
      local state = redis.call('HMGET', bucket, 'l', 't')
      local level = cap
      if state[1] then
        local elapsed = math.max(0, now - tonumber(state[2]))
        level = math.min(cap, tonumber(state[1]) + elapsed * cap / WINDOW)
      end
      level = math.min(cap, level + adjustment)
      redis.call('HSET', bucket, 'l', tostring(level), 't', now)
      redis.call('PEXPIRE', bucket, math.ceil((cap - level) * WINDOW / cap) + 1000)
    end
  end
end
return settled
