-- The idempotency records of eventonce. `{schema}` and `{table}` are replaced by the
-- configured (validated, quoted) names when the migration runs.
CREATE TABLE IF NOT EXISTS {schema}.{table} (
    -- The full key: {prefix}:{service}:{event type}:{hash}. Every operation looks a record
    -- up by it, so it is the primary key (a unique btree index).
    key        text        PRIMARY KEY,
    state      text        NOT NULL CHECK (state IN ('processing', 'completed')),
    -- The owner token of the claim that wrote the record.
    owner      text        NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    -- The lease while processing, the event type's TTL once completed. Judged against the
    -- database clock (now()), never the client's.
    expires_at timestamptz NOT NULL
);

-- The reaper deletes expired records oldest first in small batches: a btree on expires_at
-- turns that into a range scan instead of a sequential scan. No other index: nothing
-- looks records up by state or owner.
CREATE INDEX IF NOT EXISTS {table_unquoted}_expires_at_idx ON {schema}.{table} (expires_at);
