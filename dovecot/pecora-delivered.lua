-- pecora delivery hook for Dovecot 2.3 (push_notification Lua driver).
--
-- Dovecot calls dovecot_lua_notify_end_txn after the mailbox transaction has been
-- committed, inside the LMTP process, before LMTP answers Postfix. For every message
-- stored (MessageNew) this script drops one event file into pecora's delivery spool:
-- written in tmp/, then renamed into new/, so pecora never reads half a file. pecora
-- reads new/ whenever it runs: if pecora is down, events wait there.
--
-- The file name is derived from (user, uidvalidity, uid), so a replayed event overwrites
-- its own file instead of adding one; pecora also deduplicates in its registry. The user
-- name in it is encoded (enc_name) so that no user name can change the path: no `/`, no
-- `..`, no NUL or control character ever reaches it; pecora decodes it the same way
-- (src/delivery/mod.rs, DeliveryEvent::from_file_name) and refuses a user name that would.
-- The event carries no time: pecora certifies the time Dovecot saved the message.
-- No network I/O and no process is spawned here: delivery stays cheap.
--
-- Settings (plugin { } section of the Dovecot configuration):
--   push_notification_driver = lua:file=/usr/share/pecora/dovecot/pecora-delivered.lua
--   pecora_spool = /var/spool/pecora/delivered     (default shown)

local DEFAULT_SPOOL = "/var/spool/pecora/delivered"

-- Percent-encode anything but a safe set (ASCII, whatever the locale), so values can never
-- break the line format.
local function enc(s)
  return (tostring(s or ""):gsub("[^A-Za-z0-9._@<>+:/%-]", function(c)
    return string.format("%%%02X", string.byte(c))
  end))
end

-- The user's part of a file name: every byte outside [A-Za-z0-9@_+.-] as =XX (so `/`, `=`,
-- `%`, NUL, control characters and any non-ASCII byte are encoded), and the dots of every
-- `..` as well.
local function enc_name(s)
  local out = tostring(s or ""):gsub("[^A-Za-z0-9@_+.%-]", function(c)
    return string.format("=%02X", string.byte(c))
  end)
  return (out:gsub("%.%.", "=2E=2E"))
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
    local name = string.format("%d.%d.%s", e.uid_validity, e.uid, enc_name(ctx.user))
    local tmp = ctx.spool .. "/tmp/" .. name
    -- Never write through whatever was left under that name (a symbolic link).
    os.remove(tmp)
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
      f:close()
      local ok, rerr = os.rename(tmp, ctx.spool .. "/new/" .. name)
      if not ok then
        log_error("cannot publish " .. name .. ": " .. tostring(rerr))
      end
    end
  end
end
