-- Admits one request against the limits of one API key: requests/min, tokens/min and
-- concurrent streams, atomically and on Redis server time, so replica clocks do not matter.
-- All or nothing: a refusal changes no state. The bucket arithmetic mirrors bucket.rs.
--
-- KEYS[1] requests bucket (hash: l = level, t = ms), KEYS[2] tokens bucket, KEYS[3] admissions
--   in flight (zset: admission id -> expiry ms; the streams cap counts them, settle.lua removes
--   them, and only a settlement that removed one adjusts tokens, so settling is idempotent)
-- ARGV[1] requests cap, ARGV[2] tokens cap, ARGV[3] tokens asked, ARGV[4] streams cap
--   (a cap of 0 means unlimited), ARGV[5] admission id, ARGV[6] admission ttl ms
--   Every argument must be a non-negative integer below 2^53; anything else is an error reply
--   that changes nothing.
-- Returns {status, kind, limit, retry_ms, req_remaining, req_reset_ms, tok_remaining, tok_reset_ms}
--   status: 1 admitted, 0 refused for now, -1 can never fit; kind: 1 requests, 2 tokens, 3 streams
local WINDOW = 60000
local MAX_EXACT = 9007199254740992

local args = {}
for i = 1, 6 do
  local v = tonumber(ARGV[i])
  if v == nil or v < 0 or v >= MAX_EXACT or v ~= math.floor(v) then
    return redis.error_reply('ERR sluicegate admit: argument ' .. i .. ' must be a non-negative integer')
  end
  args[i] = v
end
local rpm_cap, tpm_cap, tokens, streams_cap, ttl = args[1], args[2], args[3], args[4], args[6]

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)

local function level_of(key, cap)
  local state = redis.call('HMGET', key, 'l', 't')
  if not state[1] then
    return cap
  end
  local elapsed = math.max(0, now - tonumber(state[2]))
  return math.min(cap, tonumber(state[1]) + elapsed * cap / WINDOW)
end

local function save(key, cap, level)
  redis.call('HSET', key, 'l', tostring(level), 't', now)
  redis.call('PEXPIRE', key, math.ceil((cap - level) * WINDOW / cap) + 1000)
end

local function reset_ms(cap, level)
  if cap == 0 then
    return 0
  end
  return math.ceil(math.max(0, cap - level) * WINDOW / cap)
end

local req_level = rpm_cap > 0 and level_of(KEYS[1], rpm_cap) or 0
local tok_level = tpm_cap > 0 and level_of(KEYS[2], tpm_cap) or 0

local function reply(status, kind, limit, retry_ms)
  return {status, kind, limit, retry_ms,
    math.floor(math.max(0, req_level)), reset_ms(rpm_cap, req_level),
    math.floor(math.max(0, tok_level)), reset_ms(tpm_cap, tok_level)}
end

local tracked = tpm_cap > 0 or streams_cap > 0
if tracked then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
end
if streams_cap > 0 and redis.call('ZCARD', KEYS[3]) >= streams_cap then
  return reply(0, 3, streams_cap, 1000)
end
if rpm_cap > 0 and req_level < 1 then
  return reply(0, 1, rpm_cap, math.ceil((1 - req_level) * WINDOW / rpm_cap))
end
if tpm_cap > 0 then
  if tokens > tpm_cap then
    return reply(-1, 2, tpm_cap, 0)
  end
  if tok_level < tokens then
    return reply(0, 2, tpm_cap, math.ceil((tokens - tok_level) * WINDOW / tpm_cap))
  end
end

if rpm_cap > 0 then
  req_level = req_level - 1
  save(KEYS[1], rpm_cap, req_level)
end
if tpm_cap > 0 then
  tok_level = tok_level - tokens
  save(KEYS[2], tpm_cap, tok_level)
end
if tracked then
  redis.call('ZADD', KEYS[3], now + ttl, ARGV[5])
  redis.call('PEXPIRE', KEYS[3], ttl)
end
return reply(1, 0, 0, 0)
