-- parlor's shared Lua: prepended (after the key prelude of keys.rs) to
-- every script. Helpers only; a script's own body follows.
--
-- Conventions every script keeps:
-- * A script returns a table whose first element is 'ok' followed by its
--   answer, or a refusal made with refuse(CODE, ...) (scripts.rs maps the
--   codes to `Refusal`s).
-- * Times come from Redis's clock (time_ms), never from a node's.
-- * A change that a parked poll must see publishes its wake-up in the same
--   script (append_event, lobby_append and wake_all do), so a committed
--   change always publishes.

-- Milliseconds since the Unix epoch by Redis's clock.
local function time_ms()
  local now = redis.call('TIME')
  return tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
end

-- A whole number as decimal digits (Lua's `..` would print 1e+15).
local function int(n)
  return string.format('%d', n)
end

-- A refusal: the script's answer when the request is turned down.
local function refuse(code, ...)
  return { code, ... }
end

-- Wakes the parked polls of one user, on every node.
local function wake_user(user)
  redis.call('PUBLISH', WAKE_CHANNEL, 'u ' .. user)
end

-- Wakes every parked poll on every node (the lobby log changed; each
-- re-reads).
local function wake_all()
  redis.call('PUBLISH', WAKE_CHANNEL, 'b')
end

-- Wakes every parked poll on every node that is not already waiting out
-- its presence coalescing window (the presence board changed).
local function wake_presence()
  redis.call('PUBLISH', WAKE_CHANNEL, 'p')
end

-- Answers every poll of client `client` older than generation `gen`.
local function publish_supersede(client, gen)
  redis.call('PUBLISH', WAKE_CHANNEL, 's ' .. client .. ' ' .. int(gen))
end

-- Numbers `bodies` (events' JSON objects without "seq", each starting
-- with '{"type":') into the user's mailbox, which must exist, in one
-- RPUSH, dropping the oldest events while the mailbox is over
-- MAILBOX_CAPACITY events or MAILBOX_MAX_BYTES bytes (its start moves up:
-- older cursors get 410). Publishes nothing. Returns the last event's seq
-- (the head).
local function push_events(user, bodies)
  local meta = k_mmeta(user)
  local mbox = k_mbox(user)
  local count = #bodies
  if count == 0 then
    return tonumber(redis.call('HGET', meta, 'head'))
  end
  local seq = redis.call('HINCRBY', meta, 'head', count)
  local events, size = {}, 0
  for index, body in ipairs(bodies) do
    local event = '{"seq":' .. int(seq - count + index) .. ',' .. string.sub(body, 2)
    events[index] = event
    size = size + #event
  end
  local length = redis.call('RPUSH', mbox, unpack(events))
  local bytes = redis.call('HINCRBY', meta, 'bytes', size)
  local dropped_count = 0
  while length > MAILBOX_CAPACITY or (bytes > MAILBOX_MAX_BYTES and length > 1) do
    local dropped = redis.call('LPOP', mbox)
    bytes = bytes - #dropped
    dropped_count = dropped_count + 1
    length = length - 1
  end
  if dropped_count > 0 then
    redis.call('HSET', meta, 'bytes', bytes)
    redis.call('HINCRBY', meta, 'start', dropped_count)
  end
  return seq
end

-- One event: push_events with one body.
local function push_event(user, body)
  return push_events(user, { body })
end

-- Appends an event to an online user's mailbox and wakes the user's
-- polls. Returns the event's seq, or false when the user is offline (has
-- no mailbox): nothing is stored for an offline user.
local function append_event(user, body)
  if redis.call('EXISTS', k_mmeta(user)) == 0 then
    return false
  end
  local seq = push_event(user, body)
  wake_user(user)
  return seq
end

-- Copies into the user's mailbox, which must exist, up to `limit` lobby
-- messages it has not copied yet (those after its lseen), in id order. If
-- the log dropped some it had not copied, they count as one dropped event:
-- every cursor up to now expires, as when a mailbox overflows. Returns the
-- mailbox's head and lseen.
local function copy_lobby(user, limit)
  local meta = k_mmeta(user)
  local m = redis.call('HMGET', meta, 'head', 'lseen')
  local head, lseen = tonumber(m[1]), tonumber(m[2])
  local trimmed = tonumber(redis.call('GET', K_LOBBYTRIM) or '0')
  if trimmed > lseen then
    redis.call('DEL', k_mbox(user))
    head = head + 1
    lseen = trimmed
    redis.call('HSET', meta, 'start', head, 'head', head, 'bytes', 0, 'lseen', lseen)
  end
  local lobby = redis.call('ZRANGEBYSCORE', K_LOBBYLOG, '(' .. int(lseen), '+inf',
    'WITHSCORES', 'LIMIT', 0, limit)
  if #lobby > 0 then
    local bodies = {}
    for index = 1, #lobby, 2 do
      bodies[#bodies + 1] = lobby[index]
    end
    head = push_events(user, bodies)
    lseen = tonumber(lobby[#lobby])
    redis.call('HSET', meta, 'lseen', int(lseen))
  end
  return head, lseen
end

-- Adds lobby message `id` (its event JSON `body` without "seq") to the
-- lobby log, which every online user's mailbox copies from at poll time,
-- trims the log to LOBBY_LOG_CAPACITY (recording the highest id dropped in
-- lobbytrim, so that a mailbox that had not copied it yet learns it missed
-- messages) and wakes every parked poll. Ids must grow (they come from
-- INCR msgid in the same script).
local function lobby_append(id, body)
  redis.call('ZADD', K_LOBBYLOG, id, body)
  local excess = redis.call('ZCARD', K_LOBBYLOG) - LOBBY_LOG_CAPACITY
  if excess > 0 then
    local dropped = redis.call('ZRANGE', K_LOBBYLOG, 0, excess - 1, 'WITHSCORES')
    redis.call('SET', K_LOBBYTRIM, dropped[#dropped])
    redis.call('ZREMRANGEBYRANK', K_LOBBYLOG, 0, excess - 1)
  end
  wake_all()
end

-- Sets a user's status on the presence board (online, busy, away or
-- offline): a new board version, one pchanges entry per user. Returns
-- false when the status was already that.
local function set_presence(user, status)
  local current = redis.call('HGET', K_PBOARD, user)
  if current then
    local colon = string.find(current, ':', 1, true)
    if string.sub(current, colon + 1) == status then
      return false
    end
  end
  local version = redis.call('INCR', K_PVER)
  redis.call('HSET', K_PBOARD, user, int(version) .. ':' .. status)
  redis.call('ZADD', K_PCHANGES, version, user)
  if status == 'offline' then
    redis.call('ZADD', K_POFFLINE, version, user)
  else
    redis.call('ZREM', K_POFFLINE, user)
  end
  return true
end

-- The bucket at `key` (the generic cell rate algorithm of crate::limits,
-- by Redis's clock, so one bucket serves every node): at most `burst`
-- tokens at once, then one every `interval` µs. Returns the ms to wait
-- before a take would succeed; or false, with what the key would hold
-- after a take now (when the bucket is full again) and Redis's time in µs.
local function rate_peek(key, interval, burst)
  local now = redis.call('TIME')
  local now_us = tonumber(now[1]) * 1000000 + tonumber(now[2])
  local full_at = tonumber(redis.call('GET', key) or 0)
  if full_at < now_us then
    full_at = now_us
  end
  local after = full_at + interval
  local over = after - now_us - burst * interval
  if over > 0 then
    return math.ceil(over / 1000)
  end
  return false, after, now_us
end

-- Takes a token from the bucket at `key` (see rate_peek); an `interval`
-- of 0 means no limit. The key holds when the bucket is full again and
-- expires then. Returns false when taken, or the ms to wait.
local function take_rate(key, interval, burst)
  if interval <= 0 then
    return false
  end
  local wait, after, now_us = rate_peek(key, interval, burst)
  if wait then
    return wait
  end
  redis.call('SET', key, int(after), 'PX', int(math.ceil((after - now_us) / 1000)))
  return false
end

-- Like take_rate, but takes nothing: the milliseconds until the bucket at
-- `key` has a token, or false if it has one now.
local function rate_wait(key, interval, burst)
  if interval <= 0 then
    return false
  end
  return (rate_peek(key, interval, burst))
end

-- JSON string literal of a plain name (names are [A-Za-z0-9_.-] and
-- dialog ids add ':'; nothing to escape).
local function quote(name)
  return '"' .. name .. '"'
end

-- A token's client process: user, client id, poll generation, the epoch
-- of the mailbox it was opened on and the generation of its poll that
-- last answered `park` (false if none may be parked); nil when the token
-- is unknown.
local function client_of(sha)
  local found = redis.call('HMGET', k_tok(sha), 'user', 'client', 'gen', 'epoch', 'parked')
  if not found[1] then
    return nil
  end
  return { user = found[1], client = found[2], gen = tonumber(found[3]), epoch = found[4],
    parked = found[5] }
end

-- A new mailbox epoch: Redis's clock in microseconds, so that a mailbox
-- made again after Redis lost data never reuses one (a counter could go
-- back with the data).
local function new_epoch()
  local now = redis.call('TIME')
  return now[1] .. string.format('%06d', tonumber(now[2]))
end

-- Opens the user's mailbox if there is none: the user comes online (the
-- `online` hash, presence online on the board, every poll woken). The
-- mailbox starts after everything already on the presence board and in the
-- lobby log. Returns the mailbox's epoch.
local function open_mailbox(user)
  local meta = k_mmeta(user)
  local epoch = redis.call('HGET', meta, 'epoch')
  if epoch then
    return epoch
  end
  epoch = new_epoch()
  local pver = redis.call('GET', K_PVER) or '0'
  local lseen = redis.call('GET', K_MSGID) or '0'
  redis.call('HSET', meta, 'start', 0, 'head', 0, 'bytes', 0, 'pseen', pver,
    'lseen', lseen, 'epoch', epoch)
  redis.call('ZADD', K_MSEEN, pver, user)
  redis.call('HSET', K_ONLINE, user, 'online')
  set_presence(user, 'online')
  wake_presence()
  return epoch
end

-- The user goes offline (its last client process closed): each dialog is
-- torn down (the other member is told, conversation_removed with reason
-- user_offline), presence offline, and its mailbox deleted.
local function close_user(user)
  local dialogs = redis.call('SMEMBERS', k_udialogs(user))
  for _, dialog in ipairs(dialogs) do
    local removed = '{"type":"conversation_removed","conversation":' .. quote(dialog)
      .. ',"reason":"user_offline"}'
    for _, member in ipairs(redis.call('SMEMBERS', k_members(dialog))) do
      if member ~= user then
        redis.call('SREM', k_udialogs(member), dialog)
        append_event(member, removed)
      end
    end
    redis.call('DEL', k_members(dialog))
  end
  redis.call('DEL', k_udialogs(user), k_mbox(user), k_mmeta(user), k_clients(user), k_acks(user))
  redis.call('ZREM', K_MSEEN, user)
  redis.call('HDEL', K_ONLINE, user)
  set_presence(user, 'offline')
  wake_presence()
end

-- Closes one client process (its token, its entries, its deadline); with
-- the user's last one, the user goes offline. Its parked polls, on any
-- node, re-read and find the token gone. Returns true when the user went
-- offline.
local function close_client(user, client, sha)
  if sha then
    redis.call('DEL', k_tok(sha))
  end
  redis.call('HDEL', k_clients(user), client)
  redis.call('HDEL', k_acks(user), client)
  redis.call('ZREM', K_DEADLINES, user .. '\0' .. client)
  wake_user(user)
  if redis.call('HLEN', k_clients(user)) == 0 then
    close_user(user)
    return true
  end
  return false
end

-- The session part of a /join or /sync answer that lives in Redis:
-- {head, presence version, rooms, dialogs}, each conversation as {id,
-- member...}. (The online users come from online_snapshot, cached by
-- presence version on each node.)
local function session_of(user)
  -- The head counts every lobby message sent so far, as single-node's
  -- does: a client that reloads history from here must not get older
  -- lobby messages again through its mailbox.
  local head = copy_lobby(user, LOBBY_LOG_CAPACITY)
  local rooms = {}
  for _, room in ipairs(redis.call('SMEMBERS', k_urooms(user))) do
    local conversation = redis.call('SMEMBERS', k_members(room))
    table.insert(conversation, 1, room)
    table.insert(rooms, conversation)
  end
  local dialogs = {}
  for _, dialog in ipairs(redis.call('SMEMBERS', k_udialogs(user))) do
    local conversation = redis.call('SMEMBERS', k_members(dialog))
    table.insert(conversation, 1, dialog)
    table.insert(dialogs, conversation)
  end
  return { head, tonumber(redis.call('GET', K_PVER) or '0'), rooms, dialogs }
end
