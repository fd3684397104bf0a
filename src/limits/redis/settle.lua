-- Settles one admitted request: releases its admission (and so its stream lease) and returns
-- unused reserved tokens (or charges extra ones) to the key's tokens bucket. Idempotent: only
-- the call that removes the admission adjusts the bucket, so a repeated settlement, or the undo
-- of an admission that never happened, changes nothing. Mirrors Bucket::adjust in bucket.rs.
--
-- KEYS[1] tokens bucket (hash: l = level, t = ms), KEYS[2] admissions in flight (zset)
-- ARGV[1] tokens cap (0 = unlimited), ARGV[2] adjustment (+ refund, - charge), ARGV[3] admission id
--   Caps and adjustments are integers of magnitude below 2^53; anything else is an error reply.
-- Returns 1 when the admission was settled now, 0 when it was not (or no longer) in flight.
local WINDOW = 60000
local MAX_EXACT = 9007199254740992

local cap, adjustment = tonumber(ARGV[1]), tonumber(ARGV[2])
if cap == nil or cap < 0 or cap >= MAX_EXACT or cap ~= math.floor(cap) then
  return redis.error_reply('ERR sluicegate settle: the tokens cap must be a non-negative integer')
end
if adjustment == nil or math.abs(adjustment) >= MAX_EXACT or adjustment ~= math.floor(adjustment) then
  return redis.error_reply('ERR sluicegate settle: the adjustment must be an integer')
end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
if redis.call('ZREM', KEYS[2], ARGV[3]) == 0 then
  return 0
end

if cap > 0 and adjustment ~= 0 then
  local state = redis.call('HMGET', KEYS[1], 'l', 't')
  local level = cap
  if state[1] then
    local elapsed = math.max(0, now - tonumber(state[2]))
    level = math.min(cap, tonumber(state[1]) + elapsed * cap / WINDOW)
  end
  level = math.min(cap, level + adjustment)
  redis.call('HSET', KEYS[1], 'l', tostring(level), 't', now)
  redis.call('PEXPIRE', KEYS[1], math.ceil((cap - level) * WINDOW / cap) + 1000)
end
return 1
