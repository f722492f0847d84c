-- The read of /poll, for a batch of polls in one run (a burst of woken
-- polls costs one script per batch, not one each). ARGV[1]: the inactivity
-- timeout (ms); then 5 arguments per poll: the client token hash, the
-- cursor, how long the poll may still park (ms; 0: it may not), '1' to
-- copy presence changes even when nothing else is unread (else they wait
-- for the poll's coalescing window), and the poll's generation, or '0' for
-- a new poll, which takes the next one and supersedes the client's older
-- polls on every node (a supersede is published only when an older poll of
-- the client may still be parked: the token's `parked` field).
--
-- Each poll, in order, as if it ran alone: copies into the mailbox what it
-- has not seen of the lobby log and the presence board (bounded per read),
-- acknowledges the cursor (dropping events every client of the user has
-- seen), then answers:
--   {'ok', 'events', last seq, event...}       events after the cursor
--   {'ok', 'park', gen, head, pseen, lseen, coalescing (1|0), user, client}
--   {'ok', 'empty'}                            nothing, and may not park
--   {'ok', 'superseded'}                       a newer poll took over
-- or refuses: unknown_client; cursor_expired (behind what is kept, ahead of
-- the head — Redis lost events —, or the mailbox was made anew).
-- The script answers {'ok', answer...}, one answer per poll.
local inactivity = tonumber(ARGV[1])

local function read_one(sha, cursor, park_ms, copy_now, generation)
  local found = client_of(sha)
  if not found then
    return refuse('unknown_client')
  end
  local user, client = found.user, found.client
  if generation == 0 then
    generation = redis.call('HINCRBY', k_tok(sha), 'gen', 1)
    if found.parked then
      publish_supersede(client, generation)
    end
  elseif found.gen ~= generation then
    return { 'ok', 'superseded' }
  end
  -- Whether this poll answers parked: the token's `parked` field says
  -- so, for the client's next poll to know whether to supersede it.
  local function parked(parking)
    if parking then
      if found.parked ~= int(generation) then
        redis.call('HSET', k_tok(sha), 'parked', int(generation))
      end
    elseif found.parked then
      redis.call('HDEL', k_tok(sha), 'parked')
    end
  end
  local now = time_ms()
  local deadline_member = user .. '\0' .. client
  local meta = k_mmeta(user)
  local mbox = k_mbox(user)
  local m = redis.call('HMGET', meta, 'start', 'head', 'pseen', 'lseen', 'epoch')
  if not m[5] or m[5] ~= found.epoch then
    redis.call('ZADD', K_DEADLINES, now + inactivity, deadline_member)
    parked(false)
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
        local copied = #changes / 2
        if copied > 0 then
          local names = {}
          for index = 1, #changes, 2 do
            names[#names + 1] = changes[index]
          end
          local entries = redis.call('HMGET', K_PBOARD, unpack(names))
          local bodies = {}
          for index, name in ipairs(names) do
            local entry = entries[index]
            if entry then
              local colon = string.find(entry, ':', 1, true)
              bodies[#bodies + 1] = '{"type":"presence","user":' .. quote(name)
                .. ',"status":"' .. string.sub(entry, colon + 1) .. '"}'
            end
          end
          if #bodies > 0 then
            head = push_events(user, bodies)
          end
          pseen = tonumber(changes[#changes])
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
      parked(false)
      return refuse('cursor_expired', cursor, start)
    end
    -- Ahead of the head: only Redis losing events makes that happen to a
    -- client that keeps the cursors it is given, so it must resync.
    parked(false)
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
    parked(false)
    return answer
  end
  if park_ms > 0 then
    -- Parked: the deadline covers the wait, so a node that dies with the
    -- poll parked leaves it to be swept without any heartbeat.
    redis.call('ZADD', K_DEADLINES, now + park_ms + inactivity, deadline_member)
    parked(true)
    return { 'ok', 'park', generation, head, pseen, lseen, coalescing, user, client }
  end
  redis.call('ZADD', K_DEADLINES, now + inactivity, deadline_member)
  parked(false)
  return { 'ok', 'empty' }
end

local answers = { 'ok' }
for at = 2, #ARGV, 5 do
  answers[#answers + 1] = read_one(ARGV[at], tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2]),
    ARGV[at + 3] == '1', tonumber(ARGV[at + 4]))
end
return answers
