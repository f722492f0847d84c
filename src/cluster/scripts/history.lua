-- GET /history. ARGV: token sha (hex), conversation, before (a message id,
-- exclusive; '' for the newest), limit.
--
-- Answers {'ok', MESSAGE...}: message JSON, newest first.
local token, conversation, before, limit = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])

local user = redis.call('HGET', k_tok(token), 'user')
if not user then
  return refuse('unknown_client')
end
if conversation ~= 'lobby' then
  local members_key = k_members(conversation)
  if redis.call('EXISTS', members_key) == 0 then
    return refuse('unknown_conversation', conversation)
  end
  if redis.call('SISMEMBER', members_key, user) == 0 then
    return refuse('not_member', conversation)
  end
end
local newest = '+inf'
if before ~= '' then
  newest = '(' .. before
end
local page = redis.call('ZREVRANGEBYSCORE', k_hist(conversation), newest, '-inf', 'LIMIT', 0, limit)
table.insert(page, 1, 'ok')
return page
