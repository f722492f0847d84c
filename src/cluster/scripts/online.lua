-- Who is online. ARGV[1]: a token hash to check first (/users), or ''.
-- ARGV[2]: the presence version of the caller's copy of the list, or '0'.
-- Answers {'ok', presence version, 'delta', name, status, ...} with the
-- board status (`offline` included) of each user changed since that
-- version, when pchanges still tells every change since (none pruned
-- since, and at most ONLINE_DELTA_MAX of them); else the whole list,
-- {'ok', presence version, 'full', name, status, ...}. A join storm then
-- costs each /join the changes since the node's last read, not the whole
-- list.
local ONLINE_DELTA_MAX = 1024
if ARGV[1] and ARGV[1] ~= '' and not client_of(ARGV[1]) then
  return refuse('unknown_client')
end
local pver = tonumber(redis.call('GET', K_PVER) or '0')
local since = tonumber(ARGV[2] or '0')
if since > 0 and since <= pver and since >= tonumber(redis.call('GET', K_PSWEPT) or '0') then
  local names = redis.call('ZRANGEBYSCORE', K_PCHANGES, '(' .. int(since), '+inf',
    'LIMIT', 0, ONLINE_DELTA_MAX + 1)
  if #names <= ONLINE_DELTA_MAX then
    local answer = { 'ok', pver, 'delta' }
    local entries = #names > 0 and redis.call('HMGET', K_PBOARD, unpack(names)) or {}
    for index, name in ipairs(names) do
      local entry = entries[index]
      local status = 'offline'
      if entry then
        status = string.sub(entry, string.find(entry, ':', 1, true) + 1)
      end
      table.insert(answer, name)
      table.insert(answer, status)
    end
    return answer
  end
end
local answer = { 'ok', pver, 'full' }
for _, item in ipairs(redis.call('HGETALL', K_ONLINE)) do
  table.insert(answer, item)
end
return answer
