-- MARK: delivered markers for goals delivered elsewhere (an import, a test): for each event id
-- and DataFast's id, a marker unless the id has one already; returns how many were new. The
-- worker's SETTLE marks the goals it delivers itself.
local markers_key, marker_ttl_ms = KEYS[1], tonumber(ARGV[1])
-- ARGV[2..]: event id, DataFast's event id; ...

local now_ms = marker_now_ms()
local live, expired = marker_window(markers_key, now_ms)
marker_prune(markers_key, expired)
local added = 0
for i = 2, #ARGV, 2 do
  local field, packed = marker_field(ARGV[i])
  if not marker_find(live, field, packed) then
    marker_add(markers_key, live, now_ms, marker_bucket_ms(marker_ttl_ms), marker_ttl_ms, field,
               packed, ARGV[i + 1])
    added = added + 1
  end
end
return added
