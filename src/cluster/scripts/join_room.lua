-- POST /rooms/join. ARGV: token sha (hex), room name (valid: checked in
-- Rust), room-creation rate interval (ms, 0 for no limit), burst.
--
-- Answers {'ok', 'lobby'} (the node lists the lobby from its copy of the
-- online list: at most a page of it, never the whole hash),
-- {'ok', 'room', MEMBER...} (the room after joining; unchanged if the user
-- was in it already), or {'ok', 'limited', WAIT_MS} when creating it would
-- exceed the user's room-creation rate.
local token, name = ARGV[1], ARGV[2]
local rate_interval, rate_burst = tonumber(ARGV[3]), tonumber(ARGV[4])

local user = redis.call('HGET', k_tok(token), 'user')
if not user then
  return refuse('unknown_client')
end
if name == 'lobby' then
  return {'ok', 'lobby'}
end
local members_key = k_members(name)
if redis.call('EXISTS', members_key) == 1 then
  if redis.call('SISMEMBER', members_key, user) == 1 then
    local members = redis.call('SMEMBERS', members_key)
    table.sort(members)
    table.insert(members, 1, 'room')
    table.insert(members, 1, 'ok')
    return members
  end
else
  if redis.call('SCARD', K_ROOMS) >= MAX_ROOMS then
    return refuse('too_many_rooms')
  end
  local wait = take_rate(k_rrate(user), rate_interval, rate_burst)
  if wait then
    return { 'ok', 'limited', int(wait) }
  end
  redis.call('SADD', K_ROOMS, name)
end
redis.call('SADD', members_key, user)
redis.call('SADD', k_urooms(user), name)
local members = redis.call('SMEMBERS', members_key)
table.sort(members)

local joined = '{"type":"member_joined","conversation":' .. quote(name)
  .. ',"user":' .. quote(user) .. '}'
local quoted = {}
for index, member in ipairs(members) do
  quoted[index] = quote(member)
  if member ~= user then
    append_event(member, joined)
  end
end
local added = '{"type":"conversation_added","conversation":{"id":' .. quote(name)
  .. ',"kind":"room","name":' .. quote(name) .. ',"members":['
  .. table.concat(quoted, ',') .. ']}}'
append_event(user, added)
table.insert(members, 1, 'room')
table.insert(members, 1, 'ok')
return members
