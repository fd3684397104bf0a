-- Adds one batch of a replica's usage to a key's totals for a day, at most once: a batch
-- retried after an unclear reply (it may have been applied) is recognised by its id.
-- KEYS[1]: the key's usage hash for the day. KEYS[2]: the id of the last batch this replica
-- applied for the key. ARGV: requests, prompt tokens, completion tokens (integers below 2^53),
-- the retention in seconds, the batch id.
for i = 1, 4 do
  local n = tonumber(ARGV[i])
  if not n or n < 0 or n ~= math.floor(n) or n >= 9007199254740992 then
    return redis.error_reply('usage: argument ' .. i .. ' is not a count')
  end
end
if redis.call('GET', KEYS[2]) == ARGV[5] then
  return 0
end
redis.call('HINCRBY', KEYS[1], 'requests', ARGV[1])
redis.call('HINCRBY', KEYS[1], 'prompt_tokens', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'completion_tokens', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('SET', KEYS[2], ARGV[5], 'EX', 86400)
return 1
