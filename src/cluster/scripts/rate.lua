-- A token from the bucket at key ARGV[1] (interval ARGV[2] µs, burst
-- ARGV[3]): {'ok', 'taken'}, or {'ok', 'limited', WAIT_MS} when it is empty.
local wait = take_rate(ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]))
if wait then
  return { 'ok', 'limited', int(wait) }
end
return { 'ok', 'taken' }
