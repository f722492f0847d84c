-- POST /api/publish, for one batch of users. ARGV: the notification
-- event's JSON (without seq), then the user names.
--
-- Answers {'ok', FLAG...}: per user in order, 1 if delivered (online), 0 if
-- offline.
local event = ARGV[1]
local delivered = { 'ok' }
for index = 2, #ARGV do
  if append_event(ARGV[index], event) then
    delivered[index] = 1
  else
    delivered[index] = 0
  end
end
return delivered
