-- Stored results (`complete_with_result`): the handler's serialized answer, kept with the
-- completed record. Nullable and without a default, so adding them to an existing table
-- is a change of the catalog only (no rewrite, no long lock). `result_owner` is the owner
-- token of the completion that wrote `result`: a result is read back only while it
-- matches the record's owner, so a result left on a row that expired and was claimed
-- again is never answered for the new record.
ALTER TABLE {schema}.{table}
    ADD COLUMN IF NOT EXISTS result       bytea,
    ADD COLUMN IF NOT EXISTS result_owner text;
