-- pecora delivery hook for Dovecot 2.3 (push_notification Lua driver).
--
-- Dovecot calls dovecot_lua_notify_end_txn after the mailbox transaction has been
-- committed, inside the LMTP process, before LMTP answers Postfix. For every message
-- stored (MessageNew) this script drops one event file into pecora's delivery spool:
-- written in tmp/, then renamed into new/, so pecora never reads half a file. pecora
-- reads new/ whenever it runs: if pecora is down, events wait there.
--
-- The file name is derived from (user, uidvalidity, uid), so a replayed event overwrites
-- its own file instead of adding one; pecora also deduplicates in its registry.
-- No network I/O and no process is spawned here: delivery stays cheap.
--
-- Settings (plugin { } section of the Dovecot configuration):
--   push_notification_driver = lua:file=/usr/share/pecora/dovecot/pecora-delivered.lua
--   pecora_spool = /var/spool/pecora/delivered     (default shown)

local DEFAULT_SPOOL = "/var/spool/pecora/delivered"

-- Percent-encode anything but a safe set, so values can never break the line format.
local function enc(s)
  return (tostring(s or ""):gsub("[^%w%.%-_@<>+:/]", function(c)
    return string.format("%%%02X", string.byte(c))
  end))
end

local function log_error(msg)
  if dovecot and dovecot.i_error then
    dovecot.i_error("pecora-delivered: " .. msg)
  end
end

function dovecot_lua_notify_begin_txn(user)
  local spool = user:plugin_getenv("pecora_spool")
  if spool == nil or spool == "" then
    spool = DEFAULT_SPOOL
  end
  return { user = user.username, spool = spool, events = {} }
end

function dovecot_lua_notify_event_message_new(ctx, event)
  table.insert(ctx.events, event)
end

function dovecot_lua_notify_end_txn(ctx, success)
  if not success then
    return
  end
  for _, e in ipairs(ctx.events) do
    -- uid and uid_validity arrive as Lua numbers: format them as integers.
    local name = string.format("%d.%d.%s", e.uid_validity, e.uid, (enc(ctx.user):gsub("%%", "=")))
    local tmp = ctx.spool .. "/tmp/" .. name
    local f, err = io.open(tmp, "w")
    if f == nil then
      log_error("cannot write " .. tmp .. ": " .. tostring(err))
    else
      f:write("version=1\n")
      f:write("user=", enc(ctx.user), "\n")
      f:write("mailbox=", enc(e.mailbox), "\n")
      f:write("uidvalidity=", string.format("%d", e.uid_validity), "\n")
      f:write("uid=", string.format("%d", e.uid), "\n")
      f:write("message_id=", enc(e.message_id), "\n")
      f:write("time=", string.format("%d", os.time()), "\n")
      f:close()
      local ok, rerr = os.rename(tmp, ctx.spool .. "/new/" .. name)
      if not ok then
        log_error("cannot publish " .. name .. ": " .. tostring(rerr))
      end
    end
  end
end
