-- /leave with token hash ARGV[1]: closes the client process now.
local found = client_of(ARGV[1])
if not found then
  return refuse('unknown_client')
end
close_client(found.user, found.client, ARGV[1])
return { 'ok' }
