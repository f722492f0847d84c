-- /status with token hash ARGV[1] and status ARGV[2] (online|busy|away),
-- limited per client process by the bucket of interval ARGV[3] µs (0: no
-- limit) and burst ARGV[4]: {'ok', 'limited', WAIT_MS} when it is empty.
local found = client_of(ARGV[1])
if not found then
  return refuse('unknown_client')
end
local wait = take_rate(k_statrate(ARGV[1]), tonumber(ARGV[3]), tonumber(ARGV[4]))
if wait then
  return { 'ok', 'limited', int(wait) }
end
-- (After Redis lost the mailbox the user comes online again; its polls
-- answer 410 until it calls /sync, as the epochs differ.)
open_mailbox(found.user)
if set_presence(found.user, ARGV[2]) then
  redis.call('HSET', K_ONLINE, found.user, ARGV[2])
  wake_presence()
end
return { 'ok' }
