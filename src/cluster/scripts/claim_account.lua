-- Claims account ARGV[1] with kind ARGV[2] (password|jwt) and PHC string
-- ARGV[3], unless it exists (two nodes claiming one name at once: the
-- first wins). Answers {'ok', claimed (1|0), kind, phc} as stored.
local key = k_acct(ARGV[1])
local stored = redis.call('HMGET', key, 'kind', 'phc')
if stored[1] then
  return { 'ok', 0, stored[1], stored[2] or '' }
end
redis.call('HSET', key, 'kind', ARGV[2], 'phc', ARGV[3])
return { 'ok', 1, ARGV[2], ARGV[3] }
