-- Settles one admitted request: returns unused reserved tokens (or charges extra ones) to the
-- key's tokens bucket and releases its stream lease. Mirrors Bucket::adjust in bucket.rs.
--
-- KEYS[1] tokens bucket (hash: l = level, t = ms), KEYS[2] leases (zset)
-- ARGV[1] tokens cap (0 = unlimited), ARGV[2] adjustment (+ refund, - charge), ARGV[3] lease id ('' = none)
local WINDOW = 60000
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)

local cap, adjustment = tonumber(ARGV[1]), tonumber(ARGV[2])
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
if ARGV[3] ~= '' then
  redis.call('ZREM', KEYS[2], ARGV[3])
end
return 1
