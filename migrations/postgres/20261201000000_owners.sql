-- Every chat belongs to an owner (a user id; 'anonymous' for chats made without a user): chats
-- are keyed by (owner, id), so two owners may each have a chat of the same id, and a message
-- belongs to the chat (owner, chat_id). The chats and messages stored before owners existed
-- become the anonymous owner's, with nothing else changed.

ALTER TABLE chats ADD COLUMN owner TEXT NOT NULL DEFAULT 'anonymous';
ALTER TABLE messages ADD COLUMN owner TEXT NOT NULL DEFAULT 'anonymous';
-- Only the existing rows take the default: every write names its owner.
ALTER TABLE chats ALTER COLUMN owner DROP DEFAULT;
ALTER TABLE messages ALTER COLUMN owner DROP DEFAULT;

-- The keys that named a chat by its id alone; the foreign key goes first, it depends on the
-- primary key.
ALTER TABLE messages DROP CONSTRAINT messages_chat_id_fkey;
ALTER TABLE messages DROP CONSTRAINT messages_chat_seq;
ALTER TABLE messages DROP CONSTRAINT messages_chat_client_key;
ALTER TABLE chats DROP CONSTRAINT chats_pkey;
DROP INDEX chats_by_activity;

ALTER TABLE chats ADD CONSTRAINT chats_pkey PRIMARY KEY (owner, id);
ALTER TABLE messages ADD CONSTRAINT messages_chat
    FOREIGN KEY (owner, chat_id) REFERENCES chats (owner, id) ON DELETE CASCADE;
-- Also the index history pages walk.
ALTER TABLE messages ADD CONSTRAINT messages_chat_seq UNIQUE (owner, chat_id, seq);
-- Idempotent sends, per chat; NULLs (messages without a key) never collide.
ALTER TABLE messages ADD CONSTRAINT messages_chat_client_key
    UNIQUE (owner, chat_id, client_message_id);
-- list_chats: one owner's chats, most recently active first.
CREATE INDEX chats_by_activity ON chats (owner, updated_at DESC, id DESC);
