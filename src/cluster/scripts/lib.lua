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

-- Wakes every parked poll on every node (the lobby log or the presence
-- board changed; each re-reads).
local function wake_all()
  redis.call('PUBLISH', WAKE_CHANNEL, 'b')
end

-- Answers every poll of client `client` older than generation `gen`.
local function publish_supersede(client, gen)
  redis.call('PUBLISH', WAKE_CHANNEL, 's ' .. client .. ' ' .. int(gen))
end

-- Numbers `body` (an event's JSON object without "seq", starting with
-- '{"type":') into the user's mailbox, which must exist, dropping the
-- oldest events while the mailbox is over MAILBOX_CAPACITY events or
-- MAILBOX_MAX_BYTES bytes (its start moves up: older cursors get 410).
-- Publishes nothing. Returns the event's seq.
local function push_event(user, body)
  local meta = k_mmeta(user)
  local mbox = k_mbox(user)
  local seq = redis.call('HINCRBY', meta, 'head', 1)
  local event = '{"seq":' .. int(seq) .. ',' .. string.sub(body, 2)
  local length = redis.call('RPUSH', mbox, event)
  local bytes = redis.call('HINCRBY', meta, 'bytes', #event)
  while length > MAILBOX_CAPACITY or (bytes > MAILBOX_MAX_BYTES and length > 1) do
    local dropped = redis.call('LPOP', mbox)
    bytes = redis.call('HINCRBY', meta, 'bytes', -#dropped)
    redis.call('HINCRBY', meta, 'start', 1)
    length = length - 1
  end
  return seq
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
  return true
end

-- Takes a token from the bucket at `key` (the generic cell rate algorithm
-- of crate::limits, by Redis's clock, so one bucket serves every node): at
-- most `burst` at once, then one every `interval` µs; 0 means no limit.
-- The key holds when the bucket is full again and expires then. Returns
-- false when taken, or the ms to wait before a take would succeed.
local function take_rate(key, interval, burst)
  if interval <= 0 then
    return false
  end
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
  redis.call('SET', key, int(after), 'PX', int(math.ceil((after - now_us) / 1000)))
  return false
end

-- JSON string literal of a plain name (names are [A-Za-z0-9_.-] and
-- dialog ids add ':'; nothing to escape).
local function quote(name)
  return '"' .. name .. '"'
end
