-- /status with token hash ARGV[1] and status ARGV[2] (online|busy|away).
local found = client_of(ARGV[1])
if not found then
  return refuse('unknown_client')
end
-- (After Redis lost the mailbox the user comes online again; its polls
-- answer 410 until it calls /sync, as the epochs differ.)
open_mailbox(found.user)
if set_presence(found.user, ARGV[2]) then
  redis.call('HSET', K_ONLINE, found.user, ARGV[2])
  wake_presence()
end
return { 'ok' }
