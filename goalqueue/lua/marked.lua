#!lua flags=no-writes
-- MARKED: the delivered marker of each event id, as two fields: when it was delivered (unix ms)
-- and DataFast's event id ('' when not kept); false, false for an id with no live marker.
local markers_key = KEYS[1]

local live = marker_window(markers_key, marker_now_ms())
local replies = {}
for _, event_id in ipairs(ARGV) do
  local bucket, value = marker_find(live, marker_field(event_id))
  if bucket then
    local at, remote = marker_read(bucket, value)
    table.insert(replies, string.format('%.0f', at))
    table.insert(replies, remote)
  else
    table.insert(replies, false)
    table.insert(replies, false)
  end
end
return replies
