-- POST /send. ARGV: token sha (hex), conversation, text as a JSON string
-- literal, client_msg_id ('' for none), client_msg_id as a JSON string
-- literal ('' for none), send-rate interval (ms, 0 for no limit), burst.
--
-- Answers {'ok', 'sent', ANSWER, USER} for a new message, {'ok', 'first',
-- ANSWER, USER} for a retry of a client_msg_id seen in the last
-- CLIENT_MSG_ID_TTL seconds (nothing is sent again), or {'ok', 'limited',
-- WAIT_MS} over the send rate. ANSWER is /send's JSON: {"id","conversation","at"}.
--
-- In order, as single-node: the token, the client_msg_id (a retry is
-- answered before membership or rate are looked at), membership, the rate
-- (counted only for a new message), then the message: its id from INCR,
-- its time from Redis's clock, history, delivery, and the client_msg_id's
-- answer, all or nothing.
-- Rooms with at least this many members may wake by broadcast (below).
local BROADCAST_MIN_MEMBERS = 64

local token, conversation, text_json = ARGV[1], ARGV[2], ARGV[3]
local cmid, cmid_json = ARGV[4], ARGV[5]
local rate_interval, rate_burst = tonumber(ARGV[6]), tonumber(ARGV[7])

local user = redis.call('HGET', k_tok(token), 'user')
if not user then
  return refuse('unknown_client')
end
if cmid ~= '' then
  local first = redis.call('GET', k_cmid(user, cmid))
  if first then
    return { 'ok', 'first', first, user }
  end
end
local members_key = k_members(conversation)
if conversation ~= 'lobby' then
  if redis.call('EXISTS', members_key) == 0 then
    return refuse('unknown_conversation', conversation)
  end
  if redis.call('SISMEMBER', members_key, user) == 0 then
    return refuse('not_member', conversation)
  end
end
local wait = take_rate(k_srate(user), rate_interval, rate_burst)
if wait then
  return { 'ok', 'limited', int(wait) }
end

local id = redis.call('INCR', K_MSGID)
local at = time_ms()
-- The fields in the order serde writes `event::Message`; text and
-- client_msg_id come JSON-encoded from Rust, names need no escaping.
local message = '{"id":' .. int(id) .. ',"conversation":' .. quote(conversation)
  .. ',"from":' .. quote(user) .. ',"text":' .. text_json .. ',"at":' .. int(at)
if cmid ~= '' then
  message = message .. ',"client_msg_id":' .. cmid_json
end
message = message .. '}'

local history = k_hist(conversation)
redis.call('ZADD', history, id, message)
local excess = redis.call('ZCARD', history) - HISTORY_PER_CONVERSATION
if excess > 0 then
  redis.call('ZREMRANGEBYRANK', history, 0, excess - 1)
end

local event = '{"type":"message",' .. string.sub(message, 2)
if conversation == 'lobby' then
  -- Once, whatever the lobby's size: mailboxes copy it at poll time.
  lobby_append(id, event)
else
  -- A room's or dialog's online members (offline ones have no mailbox):
  -- one append each, bounded by the conversation's size. Before it, a
  -- mailbox copies the lobby messages it had not copied yet, so that it
  -- holds every message in the order sent (ids), as single-node's do.
  local members = redis.call('SMEMBERS', members_key)
  local newest = redis.call('ZRANGE', K_LOBBYLOG, -1, -1, 'WITHSCORES')
  newest = tonumber(newest[2] or '0')
  -- A room holding nearly everyone online wakes every parked poll with one
  -- message rather than one per member (each costs Redis as much as the
  -- append itself); the few others re-read for nothing.
  local broadcast = #members >= BROADCAST_MIN_MEMBERS
    and #members * 4 >= redis.call('HLEN', K_ONLINE) * 3
  for _, member in ipairs(members) do
    local lseen = redis.call('HGET', k_mmeta(member), 'lseen')
    if lseen then
      if tonumber(lseen) < newest then
        copy_lobby(member, LOBBY_LOG_CAPACITY)
      end
      push_event(member, event)
      if not broadcast then
        wake_user(member)
      end
    end
  end
  if broadcast then
    wake_all()
  end
end

local answer = '{"id":' .. int(id) .. ',"conversation":' .. quote(conversation)
  .. ',"at":' .. int(at) .. '}'
if cmid ~= '' then
  redis.call('SET', k_cmid(user, cmid), answer, 'EX', CLIENT_MSG_ID_TTL)
end
return { 'ok', 'sent', answer, user }
