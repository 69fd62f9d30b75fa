-- Outbox seals (src/store/seal.rs): HMAC-SHA256 over kind, sender, recipients and message,
-- keyed from the provider signing key; the worker injects only rows whose seal verifies.
-- Rows queued before this migration have none (NULL): the daemon that migrates seals them.
ALTER TABLE outbox_messages ADD COLUMN seal TEXT;
