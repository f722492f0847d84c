-- The read of /poll: client token hash ARGV[1] reads after cursor ARGV[2].
-- ARGV[3]: the inactivity timeout (ms); ARGV[4]: how long the poll may
-- still park (ms; 0: it may not); ARGV[5]: '1' to copy presence changes
-- even when nothing else is unread (else they wait for the poll's
-- coalescing window); ARGV[6]: the poll's generation, or '0' for a new
-- poll, which takes the next one and supersedes the client's older polls
-- on every node.
--
-- Copies into the mailbox what it has not seen of the lobby log and the
-- presence board (bounded per read), acknowledges the cursor (dropping
-- events every client of the user has seen), then answers:
--   {'ok', 'events', last seq, event...}       events after the cursor
--   {'ok', 'park', gen, head, pseen, lseen, coalescing (1|0), user, client}
--   {'ok', 'empty'}                            nothing, and may not park
--   {'ok', 'superseded'}                       a newer poll took over
-- or refuses: unknown_client; cursor_expired (behind what is kept, ahead of
-- the head — Redis lost events —, or the mailbox was made anew).
local sha, cursor = ARGV[1], tonumber(ARGV[2])
local inactivity, park_ms = tonumber(ARGV[3]), tonumber(ARGV[4])
local copy_now, generation = ARGV[5] == '1', tonumber(ARGV[6])
local found = client_of(sha)
if not found then
  return refuse('unknown_client')
end
local user, client = found.user, found.client
if generation == 0 then
  generation = redis.call('HINCRBY', k_tok(sha), 'gen', 1)
  publish_supersede(client, generation)
elseif found.gen ~= generation then
  return { 'ok', 'superseded' }
end
local now = time_ms()
local deadline_member = user .. '\0' .. client
local meta = k_mmeta(user)
local mbox = k_mbox(user)
local m = redis.call('HMGET', meta, 'start', 'head', 'pseen', 'lseen', 'epoch')
if not m[5] or m[5] ~= found.epoch then
  redis.call('ZADD', K_DEADLINES, now + inactivity, deadline_member)
  return refuse('cursor_expired', cursor, tonumber(m[2] or '0'))
end
local pseen = tonumber(m[3])

-- Lobby messages after lseen (lib.lua's copy_lobby).
local head, lseen = copy_lobby(user, MAX_EVENTS_PER_POLL)
local start = tonumber(redis.call('HGET', meta, 'start'))

-- Presence changes after pseen, coalesced by construction (one entry per
-- user, with its newest status).
local valid = cursor >= start and cursor <= head
local unread = valid and head - cursor or 0
local pver = tonumber(redis.call('GET', K_PVER) or '0')
local coalescing = 0
if pseen < pver then
  if unread == 0 and not copy_now then
    coalescing = 1
  else
    local room = math.min(PRESENCE_CHANGES_PER_POLL, MAX_EVENTS_PER_POLL - unread)
    if room > 0 then
      local changes = redis.call('ZRANGEBYSCORE', K_PCHANGES, '(' .. int(pseen), '+inf',
        'WITHSCORES', 'LIMIT', 0, room)
      local copied = 0
      for index = 1, #changes, 2 do
        local name = changes[index]
        local entry = redis.call('HGET', K_PBOARD, name)
        if entry then
          local colon = string.find(entry, ':', 1, true)
          head = push_event(user, '{"type":"presence","user":' .. quote(name)
            .. ',"status":"' .. string.sub(entry, colon + 1) .. '"}')
        end
        pseen = tonumber(changes[index + 1])
        copied = copied + 1
      end
      if copied < room then
        pseen = pver
      end
      redis.call('HSET', meta, 'pseen', int(pseen))
      redis.call('ZADD', K_MSEEN, pseen, user)
      start = tonumber(redis.call('HGET', meta, 'start'))
    end
  end
end

-- Acknowledge: events every client of the user has seen are dropped.
if cursor >= start and cursor <= head then
  local acks = k_acks(user)
  redis.call('HSET', acks, client, cursor)
  local seen_by_all = cursor
  for _, acked in ipairs(redis.call('HVALS', acks)) do
    seen_by_all = math.min(seen_by_all, tonumber(acked))
  end
  if seen_by_all > start then
    local dropped = redis.call('LPOP', mbox, seen_by_all - start)
    local bytes = 0
    for _, event in ipairs(dropped or {}) do
      bytes = bytes + #event
    end
    redis.call('HINCRBY', meta, 'bytes', -bytes)
    redis.call('HSET', meta, 'start', int(seen_by_all))
    start = seen_by_all
  end
end

if cursor < start or cursor > head then
  redis.call('ZADD', K_DEADLINES, now + inactivity, deadline_member)
  if cursor < start then
    return refuse('cursor_expired', cursor, start)
  end
  -- Ahead of the head: only Redis losing events makes that happen to a
  -- client that keeps the cursors it is given, so it must resync.
  return refuse('cursor_expired', cursor, head)
end
if cursor < head then
  redis.call('ZADD', K_DEADLINES, now + inactivity, deadline_member)
  local first = cursor - start
  local events = redis.call('LRANGE', mbox, first, first + MAX_EVENTS_PER_POLL - 1)
  local answer = { 'ok', 'events', cursor + #events }
  for _, event in ipairs(events) do
    table.insert(answer, event)
  end
  return answer
end
if park_ms > 0 then
  -- Parked: the deadline covers the wait, so a node that dies with the
  -- poll parked leaves it to be swept without any heartbeat.
  redis.call('ZADD', K_DEADLINES, now + park_ms + inactivity, deadline_member)
  return { 'ok', 'park', generation, head, pseen, lseen, coalescing, user, client }
end
redis.call('ZADD', K_DEADLINES, now + inactivity, deadline_member)
return { 'ok', 'empty' }
