-- /join after the password was checked: opens a client process of user
-- ARGV[1] with token hash ARGV[2]; ARGV[3] is the inactivity timeout (ms).
-- The user comes online with its first client process. Answers
-- {'ok', client id, session_of(user)...}.
local user, sha, inactivity = ARGV[1], ARGV[2], tonumber(ARGV[3])
if redis.call('HLEN', k_clients(user)) >= MAX_CLIENTS_PER_USER then
  return refuse('too_many_clients', user)
end
local epoch = open_mailbox(user)
local client = redis.call('INCR', K_CLIENTID)
local session = session_of(user)
redis.call('HSET', k_tok(sha), 'user', user, 'client', client, 'gen', 0, 'epoch', epoch)
redis.call('HSET', k_clients(user), client, sha)
redis.call('HSET', k_acks(user), client, session[1])
redis.call('ZADD', K_DEADLINES, time_ms() + inactivity, user .. '\0' .. client)
return { 'ok', client, session[1], session[2], session[3], session[4] }
