-- PURGE: dead letters deleted for good. Returns how many were still there.
local dead_key, reasons = KEYS[1], words(ARGV[1])
-- ARGV[2..]: event ids

local purged = 0
for i = 2, #ARGV do purged = purged + drop_letter(dead_key, reasons, ARGV[i]) end
return purged
