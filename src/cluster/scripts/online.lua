-- Who is online: {'ok', presence version, name, status, name, status...}.
-- With ARGV[1] a token hash, refuses an unknown token first (/users).
if ARGV[1] and not client_of(ARGV[1]) then
  return refuse('unknown_client')
end
local answer = { 'ok', tonumber(redis.call('GET', K_PVER) or '0') }
for _, item in ipairs(redis.call('HGETALL', K_ONLINE)) do
  table.insert(answer, item)
end
return answer
