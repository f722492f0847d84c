-- The inactivity sweeper, run by every node every second: closes up to
-- ARGV[1] client processes whose deadline (Redis's clock) passed, and
-- prunes up to ARGV[1] offline users from the presence board that every
-- mailbox has copied. One script, so each is closed exactly once however
-- many nodes sweep. Answers {'ok', clients closed, users online, client
-- processes, users gone offline...} (the counts feed the metrics' gauges).
local limit = tonumber(ARGV[1])
local now = time_ms()
local expired = redis.call('ZRANGEBYSCORE', K_DEADLINES, '-inf', now, 'LIMIT', 0, limit)
local offline = {}
for _, member in ipairs(expired) do
  local zero = string.find(member, '\0', 1, true)
  local user = string.sub(member, 1, zero - 1)
  local client = string.sub(member, zero + 1)
  local sha = redis.call('HGET', k_clients(user), client)
  if close_client(user, client, sha) then
    table.insert(offline, user)
  end
end
-- Offline entries older than every mailbox's copy are no longer needed.
local oldest = redis.call('ZRANGE', K_MSEEN, 0, 0, 'WITHSCORES')
local seen_by_all = oldest[2] and tonumber(oldest[2]) or tonumber(redis.call('GET', K_PVER) or '0')
-- pswept records the newest version pruned: a node's online list older
-- than that cannot be brought up to date from pchanges (online.lua).
local old = redis.call('ZRANGEBYSCORE', K_POFFLINE, '-inf', seen_by_all, 'WITHSCORES',
  'LIMIT', 0, limit)
for index = 1, #old, 2 do
  local user = old[index]
  redis.call('HDEL', K_PBOARD, user)
  redis.call('ZREM', K_PCHANGES, user)
  redis.call('ZREM', K_POFFLINE, user)
end
if #old > 0 and tonumber(old[#old]) > tonumber(redis.call('GET', K_PSWEPT) or '0') then
  redis.call('SET', K_PSWEPT, old[#old])
end
local answer = { 'ok', #expired, redis.call('HLEN', K_ONLINE), redis.call('ZCARD', K_DEADLINES) }
for _, user in ipairs(offline) do
  table.insert(answer, user)
end
return answer
