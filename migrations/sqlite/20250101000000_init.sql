-- Timestamps are INTEGER nanoseconds since the Unix epoch (UTC): exact round trips of
-- chrono's DateTime<Utc> and cheap comparisons. Message ids are UUIDs as 16-byte BLOBs.

CREATE TABLE chats (
    id         TEXT    NOT NULL PRIMARY KEY,
    title      TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    -- The sequence number the chat's next message gets; assigned in the appending transaction.
    next_seq   INTEGER NOT NULL DEFAULT 0
);

-- list_chats: most recently active first.
CREATE INDEX chats_by_activity ON chats (updated_at DESC, id DESC);

CREATE TABLE messages (
    id                  BLOB    NOT NULL PRIMARY KEY,
    chat_id             TEXT    NOT NULL REFERENCES chats (id) ON DELETE CASCADE,
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
    -- Also the index history pages walk.
    UNIQUE (chat_id, seq),
    -- Idempotent sends; NULLs (messages without a key) never collide.
    UNIQUE (chat_id, client_message_id)
);

-- recover_streaming only ever looks at the few messages still streaming.
CREATE INDEX messages_streaming ON messages (updated_at) WHERE status = 'streaming';
