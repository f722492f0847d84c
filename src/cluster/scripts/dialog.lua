-- POST /dialog (create-or-focus). ARGV: token sha (hex), the other user.
--
-- Answers {'ok', ID, FIRST, SECOND}: the dialog and its members, sorted. A
-- new dialog sends conversation_added to both users; an existing one
-- changes nothing.
local token, with = ARGV[1], ARGV[2]

local user = redis.call('HGET', k_tok(token), 'user')
if not user then
  return refuse('unknown_client')
end
if with == user then
  return refuse('dialog_with_self')
end
if redis.call('HEXISTS', K_ONLINE, with) == 0 then
  return refuse('user_offline', with)
end
local first, second = user, with
if second < first then
  first, second = second, first
end
local id = 'dialog:' .. first .. ':' .. second
local conversation = '{"id":' .. quote(id) .. ',"kind":"dialog","members":['
  .. quote(first) .. ',' .. quote(second) .. ']}'
local members = k_members(id)
if redis.call('EXISTS', members) == 1 then
  return { 'ok', id, first, second }
end
redis.call('SADD', members, first, second)
redis.call('SADD', k_udialogs(first), id)
redis.call('SADD', k_udialogs(second), id)
local added = '{"type":"conversation_added","conversation":' .. conversation .. '}'
append_event(first, added)
append_event(second, added)
return { 'ok', id, first, second }
