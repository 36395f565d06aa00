-- Content parts (text and images, for a message that holds more than text), the signed thinking
-- blocks of a reply, and the model and options that produced it: each kept as the JSON text it
-- was written as (like tool_calls), NULL for what most messages do not have. Existing rows keep
-- everything and read back as before (NULL is "none"); adding a nullable column rewrites no row.

ALTER TABLE messages ADD COLUMN parts TEXT;
ALTER TABLE messages ADD COLUMN thinking TEXT;
ALTER TABLE messages ADD COLUMN generation TEXT;
