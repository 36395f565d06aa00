-- Timestamps are timestamptz (microsecond precision).

CREATE TABLE chats (
    id         TEXT        NOT NULL PRIMARY KEY,
    title      TEXT,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    -- The sequence number the chat's next message gets; incremented in the appending
    -- transaction, so processes sharing the database never hand out the same number.
    next_seq   BIGINT      NOT NULL DEFAULT 0
);

-- list_chats: most recently active first.
CREATE INDEX chats_by_activity ON chats (updated_at DESC, id DESC);

CREATE TABLE messages (
    id                  UUID        NOT NULL PRIMARY KEY,
    chat_id             TEXT        NOT NULL REFERENCES chats (id) ON DELETE CASCADE,
    seq                 BIGINT      NOT NULL,
    role                TEXT        NOT NULL,
    content             TEXT        NOT NULL,
    reasoning           TEXT,
    -- JSON array of tool calls, kept as the text it was written as; NULL when there are none.
    tool_calls          TEXT,
    tool_call_id        TEXT,
    status              TEXT        NOT NULL,
    finish_reason       TEXT,
    usage_input_tokens  BIGINT,
    usage_output_tokens BIGINT,
    error               TEXT,
    client_message_id   TEXT,
    reply_to            UUID,
    created_at          TIMESTAMPTZ NOT NULL,
    updated_at          TIMESTAMPTZ NOT NULL,
    -- Also the index history pages walk.
    CONSTRAINT messages_chat_seq UNIQUE (chat_id, seq),
    -- Idempotent sends; NULLs (messages without a key) never collide.
    CONSTRAINT messages_chat_client_key UNIQUE (chat_id, client_message_id)
);

-- recover_streaming only ever looks at the few messages still streaming.
CREATE INDEX messages_streaming ON messages (updated_at) WHERE status = 'streaming';
