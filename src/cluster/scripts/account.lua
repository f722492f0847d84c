-- A password /join's look-up of account ARGV[1], tried from the client
-- whose wrong-password bucket is key ARGV[2] (interval ARGV[3] µs, burst
-- ARGV[4]): {'ok', 'limited', WAIT_MS} when that bucket is empty (nothing
-- is taken: only a wrong password takes a token), else {'ok', 'account',
-- KIND, PHC} ('' for a name with no account).
local wait = rate_wait(ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]))
if wait then
  return { 'ok', 'limited', int(wait) }
end
local found = redis.call('HMGET', k_acct(ARGV[1]), 'kind', 'phc')
return { 'ok', 'account', found[1] or '', found[2] or '' }
