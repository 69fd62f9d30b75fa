-- pecora delivery hook for Dovecot 2.3 (push_notification Lua driver).
--
-- Dovecot calls dovecot_lua_notify_end_txn after the mailbox transaction has been
-- committed, inside the LMTP process, before LMTP answers Postfix. For every message
-- stored (MessageNew) this script drops one event file into pecora's delivery spool:
-- written in tmp/, then renamed into new/, so pecora never reads half a file. pecora
-- reads new/ whenever it runs: if pecora is down, events wait there.
--
-- The file name is UIDVALIDITY.UID.TOKEN.USER~MESSAGEID: TOKEN is random (16 hex digits),
-- so two deliveries never share a name, not even two events of one user that Dovecot
-- reports with uid 0 (it does under concurrent LMTP deliveries to one Maildir: the uid is
-- assigned later, when the uidlist lock is free); pecora then finds the stored copy by
-- user and Message-ID. The name carries the whole event because pecora may not be able to
-- read the file (Dovecot's umask makes it 0600, owned by the mail user). The user name and
-- the Message-ID (without its angle brackets) are encoded (enc_name) so that no value can
-- change the path: no `/`, no `..`, no `~`, no NUL or control character ever reaches it;
-- pecora decodes them the same way (src/delivery/mod.rs, DeliveryEvent::from_file_name)
-- and refuses a user name that could steer a path. A Message-ID that would make the name
-- longer than MAX_NAME is left out of the name (the file still has it). pecora
-- deduplicates in its registry, so a replayed event sends nothing twice.
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

-- File names stay well under NAME_MAX (255 bytes).
local MAX_NAME = 240

-- 16 random hex digits: from the kernel, or, if /dev/urandom cannot be read, from Lua's
-- generator (seeded at random by Lua 5.4), the clock and a counter of this process.
local urandom = nil
local counter = 0
local function token()
  if urandom == nil then
    urandom = io.open("/dev/urandom", "rb") or false
  end
  local bytes = urandom and urandom:read(8)
  if bytes and #bytes == 8 then
    return (bytes:gsub(".", function(c) return string.format("%02x", string.byte(c)) end))
  end
  counter = counter + 1
  return string.format("%08x%04x%04x", math.random(0, 0x7fffffff), os.time() % 0x10000, counter % 0x10000)
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
    -- uid is 0 when Dovecot has not assigned it yet.
    local head = string.format("%d.%d.%s.%s~", e.uid_validity, e.uid or 0, token(), enc_name(ctx.user))
    local msgid = enc_name((tostring(e.message_id or ""):gsub("^%s*<", ""):gsub(">%s*$", "")))
    local name = head .. msgid
    if #name > MAX_NAME then
      name = head
    end
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
      f:write("uid=", string.format("%d", e.uid or 0), "\n")
      f:write("message_id=", enc(e.message_id), "\n")
      f:close()
      local ok, rerr = os.rename(tmp, ctx.spool .. "/new/" .. name)
      if not ok then
        log_error("cannot publish " .. name .. ": " .. tostring(rerr))
      end
    end
  end
end
