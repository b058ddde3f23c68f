-- Pauses for a configuration problem: a 401 (the API key), a redirect (the URL), a TLS failure
-- (the URL, or the certificates). A worker configured otherwise (its fingerprint of the key and
-- URL differs from the one the pause was set with) drops such a pause at once.
local CONFIGURATION_PAUSES = {auth = true, redirect = true, tls = true}

local function outdated_pause(reason, key, fingerprint)
  return CONFIGURATION_PAUSES[reason] == true and key ~= fingerprint
end

