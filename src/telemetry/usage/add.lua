-- Adds one flush's usage to a key's totals for a day, atomically, and keeps them for the
-- retention period. KEYS[1]: the key's usage hash for the day. ARGV: requests, prompt tokens,
-- completion tokens (integers below 2^53), retention in seconds.
for i = 1, 4 do
  local n = tonumber(ARGV[i])
  if not n or n < 0 or n ~= math.floor(n) or n >= 9007199254740992 then
    return redis.error_reply('usage: argument ' .. i .. ' is not a count')
  end
end
redis.call('HINCRBY', KEYS[1], 'requests', ARGV[1])
redis.call('HINCRBY', KEYS[1], 'prompt_tokens', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'completion_tokens', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
