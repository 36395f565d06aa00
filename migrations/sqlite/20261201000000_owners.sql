-- Every chat belongs to an owner (a user id; 'anonymous' for chats made without a user): chats
-- are keyed by (owner, id), so two owners may each have a chat of the same id, and a message
-- belongs to the chat (owner, chat_id). The chats and messages stored before owners existed
-- become the anonymous owner's, with nothing else changed.
--
-- SQLite cannot change a primary key or a foreign key in place: both tables are rebuilt, in the
-- migration's transaction. The old tables are renamed out of the way first and the new ones
-- created under the final names, so the new foreign key names `chats` from the start: nothing
-- depends on how a rename rewrites references in other tables (which `legacy_alter_table`
-- changes), and it works with foreign keys on, as the store's connections have them.

DROP INDEX chats_by_activity;
DROP INDEX messages_streaming;
ALTER TABLE messages RENAME TO messages_before_owners;
ALTER TABLE chats RENAME TO chats_before_owners;

CREATE TABLE chats (
    owner      TEXT    NOT NULL,
    id         TEXT    NOT NULL,
    title      TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    -- The sequence number the chat's next message gets; assigned in the appending transaction.
    next_seq   INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (owner, id)
);

-- list_chats: one owner's chats, most recently active first.
CREATE INDEX chats_by_activity ON chats (owner, updated_at DESC, id DESC);

CREATE TABLE messages (
    id                  BLOB    NOT NULL PRIMARY KEY,
    owner               TEXT    NOT NULL,
    chat_id             TEXT    NOT NULL,
    seq                 INTEGER NOT NULL,
    role                TEXT    NOT NULL,
    content             TEXT    NOT NULL,
    reasoning           TEXT,
    -- JSON array of tool calls; NULL when there are none.
    tool_calls          TEXT,
    tool_call_id        TEXT,
    status              TEXT    NOT NULL,
    finish_reason       TEXT,
    usage_input_tokens  INTEGER,
    usage_output_tokens INTEGER,
    error               TEXT,
    client_message_id   TEXT,
    reply_to            BLOB,
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL,
    FOREIGN KEY (owner, chat_id) REFERENCES chats (owner, id) ON DELETE CASCADE,
    -- Also the index history pages walk.
    UNIQUE (owner, chat_id, seq),
    -- Idempotent sends, per chat; NULLs (messages without a key) never collide.
    UNIQUE (owner, chat_id, client_message_id)
);

-- recover_streaming only ever looks at the few messages still streaming.
CREATE INDEX messages_streaming ON messages (updated_at) WHERE status = 'streaming';

INSERT INTO chats (owner, id, title, created_at, updated_at, next_seq)
    SELECT 'anonymous', id, title, created_at, updated_at, next_seq FROM chats_before_owners;

-- Messages whose chat is gone (deleted through a connection with foreign keys off, which the
-- old schema could not stop) were already unreachable: the chat's deletion meant them gone.
INSERT INTO messages (id, owner, chat_id, seq, role, content, reasoning, tool_calls,
        tool_call_id, status, finish_reason, usage_input_tokens, usage_output_tokens, error,
        client_message_id, reply_to, created_at, updated_at)
    SELECT id, 'anonymous', chat_id, seq, role, content, reasoning, tool_calls, tool_call_id,
        status, finish_reason, usage_input_tokens, usage_output_tokens, error,
        client_message_id, reply_to, created_at, updated_at
    FROM messages_before_owners
    WHERE chat_id IN (SELECT id FROM chats_before_owners);

DROP TABLE messages_before_owners;
DROP TABLE chats_before_owners;
