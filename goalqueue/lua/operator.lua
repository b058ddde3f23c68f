-- The operator's pause (`goalqueue pause`, <ns>:operator_pause): in force from `since` until
-- `until` (0: until `goalqueue resume`). Redis replies false for a missing field.
local function operator_paused(since, until_, now)
  if not since then return false end
  local ends = tonumber(until_) or 0
  return ends == 0 or now < ends
end

-- The pauses by hand max age leaves out, as "start:end ..." (the last one, still in force or
-- ended by its `until`, ends at `now` or at that `until`), from the hash's since, until, spans.
local function operator_spans(since, until_, spans, now)
  if not since then return spans or '' end
  local ends = tonumber(until_) or 0
  if ends == 0 or ends > now then ends = now end
  local last = since .. ':' .. string.format('%.3f', ends)
  if spans and spans ~= '' then return spans .. ' ' .. last end
  return last
end

