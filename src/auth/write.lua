-- Changes the runtime keys or the revocations and raises the version replicas watch, in one
-- step. KEYS[1]: the keys hash, KEYS[2]: the revocations (member -> until), KEYS[3]: the
-- version. ARGV[1]: the operation; the rest depends on it:
--   create      ARGV[2] key id, ARGV[3] the record (JSON)   -> 0 when the id is taken
--   revoke_key  ARGV[2] key id, ARGV[3] until
--   revoke_jti  ARGV[2] token id, ARGV[3] until, ARGV[4] now (older revocations are dropped)
local op = ARGV[1]
if op == 'create' then
  if redis.call('HSETNX', KEYS[1], ARGV[2], ARGV[3]) == 0 then
    return 0
  end
elseif op == 'revoke_key' then
  redis.call('HDEL', KEYS[1], ARGV[2])
  redis.call('ZADD', KEYS[2], 'GT', ARGV[3], 'key:' .. ARGV[2])
elseif op == 'revoke_jti' then
  -- GT: a revocation is only ever lengthened.
  redis.call('ZADD', KEYS[2], 'GT', ARGV[3], 'jti:' .. ARGV[2])
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[4])
else
  return redis.error_reply('unknown operation')
end
redis.call('INCR', KEYS[3])
return 1
