-- POST /rooms/leave. ARGV: token sha (hex), conversation.
--
-- Answers {'ok'}. The other members get member_left, the leaver's other
-- client processes conversation_removed (reason left). The last member to
-- leave deletes the room and its history. (Members stay members while
-- offline, so neither /leave nor the sweeper ever empties a room.)
local token, conversation = ARGV[1], ARGV[2]

local user = redis.call('HGET', k_tok(token), 'user')
if not user then
  return refuse('unknown_client')
end
if conversation == 'lobby' then
  return refuse('cannot_leave_lobby')
end
if string.sub(conversation, 1, 7) == 'dialog:' then
  return refuse('not_a_room')
end
local members_key = k_members(conversation)
if redis.call('EXISTS', members_key) == 0 then
  return refuse('unknown_conversation', conversation)
end
if redis.call('SREM', members_key, user) == 0 then
  return refuse('not_member', conversation)
end
redis.call('SREM', k_urooms(user), conversation)
if redis.call('EXISTS', members_key) == 0 then
  -- Nobody is left to read it: the room and its history go, so that empty
  -- rooms do not pile up against MAX_ROOMS. UNLINK frees the history
  -- (up to HISTORY_PER_CONVERSATION messages) off Redis's main thread.
  redis.call('SREM', K_ROOMS, conversation)
  redis.call('UNLINK', k_hist(conversation))
else
  local left = '{"type":"member_left","conversation":' .. quote(conversation)
    .. ',"user":' .. quote(user) .. '}'
  for _, member in ipairs(redis.call('SMEMBERS', members_key)) do
    append_event(member, left)
  end
end
local removed = '{"type":"conversation_removed","conversation":' .. quote(conversation)
  .. ',"reason":"left"}'
append_event(user, removed)
return { 'ok' }
