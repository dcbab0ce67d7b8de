-- Compact records (issue 26): the table of migrations 0001 and 0002 changed in place (its
-- grants, owner and name kept). Run in one transaction; the column change rewrites the
-- table under an exclusive lock, so on a large table plan for a pause of the consumers
-- (about a minute per 10 million live records on a small machine).
--
-- Expired records answer as absent already: removed first, so the rewrite copies only
-- live ones.
DELETE FROM {schema}.{table} WHERE expires_at <= now();

-- The primary key on the text key (an index entry as long as the key, about 100 bytes)
-- and the index on expires_at go. The reaper sweeps the table's pages instead of an index,
-- and without an index on expires_at a completion changes no indexed column: a HOT
-- update, written in the row's own page.
ALTER TABLE {schema}.{table} DROP CONSTRAINT IF EXISTS {table_unquoted}_pkey;
DROP INDEX IF EXISTS {schema}.{table_unquoted}_expires_at_idx;
ALTER TABLE {schema}.{table} DROP CONSTRAINT IF EXISTS {table_unquoted}_state_check;

-- A tenth of each page left free for the completions' HOT updates (the rewrite below
-- already leaves it).
ALTER TABLE {schema}.{table} SET (fillfactor = 90);

-- The state in one byte: 'p' processing, 'c' completed (it was the words). And the key's
-- digest, computed by the table from the key: the first 8 bytes of its SHA-256, an int8.
ALTER TABLE {schema}.{table}
    ALTER COLUMN key SET NOT NULL,
    ALTER COLUMN state TYPE "char"
        USING (CASE state WHEN 'completed' THEN 'c' ELSE 'p' END)::"char",
    ADD CONSTRAINT {table_unquoted}_state_check CHECK (state IN ('p', 'c')),
    ADD COLUMN key_digest int8 NOT NULL GENERATED ALWAYS AS
        (('x' || encode(substr(sha256(decode(replace(key, E'\\', E'\\\\'), 'escape')), 1, 8), 'hex'))::bit(64)::int8) STORED;

-- One key, one record: a unique index on the digest (16 bytes an entry, where the key's
-- own entry took about 100). Every statement looks a key up by its digest and then
-- compares the key itself, which stays in the table as written (the admin commands list
-- and show it).
CREATE UNIQUE INDEX {table_unquoted}_key_digest_idx ON {schema}.{table} (key_digest);
