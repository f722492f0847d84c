-- /sync with token hash ARGV[1]; ARGV[2] is the inactivity timeout (ms).
-- A fresh session at the mailbox's head. A mailbox lost with Redis data
-- while the token survived is made anew, and the token moves to it.
-- Answers {'ok', client id, user, session_of(user)...}.
local found = client_of(ARGV[1])
if not found then
  return refuse('unknown_client')
end
local user = found.user
local epoch = open_mailbox(user)
if epoch ~= found.epoch then
  redis.call('HSET', k_tok(ARGV[1]), 'epoch', epoch)
  redis.call('HSET', k_clients(user), found.client, ARGV[1])
end
local session = session_of(user)
redis.call('HSET', k_acks(user), found.client, session[1])
redis.call('ZADD', K_DEADLINES, time_ms() + tonumber(ARGV[2]), user .. '\0' .. found.client)
return { 'ok', found.client, user, session[1], session[2], session[3], session[4] }
