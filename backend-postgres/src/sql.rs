//! The statements, each with the guarantee it gives, built once per store with the
//! configured table name in them.

use std::sync::Arc;
use std::time::Duration;

/// The statements, with the configured table name in them, built once.
pub(crate) struct Statements {
    pub(crate) claim: Arc<str>,
    pub(crate) claim_tx: Arc<str>,
    pub(crate) state: Arc<str>,
    pub(crate) complete: Arc<str>,
    pub(crate) complete_result: Arc<str>,
    pub(crate) get_result: Arc<str>,
    pub(crate) release: Arc<str>,
    pub(crate) extend: Arc<str>,
    pub(crate) get: Arc<str>,
    pub(crate) reap: Arc<str>,
    pub(crate) claim_many: Arc<str>,
    pub(crate) complete_many: Arc<str>,
    pub(crate) complete_many_results: Arc<str>,
    pub(crate) release_many: Arc<str>,
    pub(crate) extend_many: Arc<str>,
    pub(crate) complete_then_claim: Arc<str>,
    pub(crate) complete_results_then_claim: Arc<str>,
    pub(crate) complete_one_then_claim: Arc<str>,
    pub(crate) list: Arc<str>,
    pub(crate) remove: Arc<str>,
    pub(crate) sizes: Arc<str>,
}

impl Statements {
    /// The statements for `table` (quoted, schema-qualified), claims waiting at most
    /// `lock_wait` for a row another transaction holds.
    pub(crate) fn new(table: &str, lock_wait: Duration) -> Self {
        let wait = wait(lock_wait);
        let claim_one = claim_one(table);
        let answer_one = answer_one(table);
        Statements {
            claim: claim(&wait, &claim_one, &answer_one),
            claim_tx: claim_tx(&wait, &claim_one, &answer_one),
            state: state(table),
            complete: complete(table),
            complete_result: complete_result(table),
            get_result: get_result(table),
            release: release(table),
            extend: extend(table),
            get: get(table),
            reap: reap(table),
            claim_many: claim_many(table, &wait),
            complete_many: complete_many(table),
            complete_many_results: complete_many_results(table),
            release_many: release_many(table),
            extend_many: extend_many(table),
            complete_then_claim: complete_then_claim(table, &wait, &claim_one),
            complete_results_then_claim: complete_results_then_claim(table, &wait, &claim_one),
            complete_one_then_claim: complete_one_then_claim(table, &wait, &claim_one),
            list: list(table),
            remove: remove(table),
            sizes: sizes(table),
        }
    }
}

/// `lock_timeout` for the rest of the statement's transaction (just the statement,
/// outside an explicit transaction): how long a claim waits for a row another
/// transaction holds. 0 would mean no limit, so at least 1 ms.
fn wait(lock_wait: Duration) -> String {
    format!(
        "set_config('lock_timeout', '{}ms', true)",
        lock_wait.as_millis().max(1)
    )
}

/// The claim of $1 for $2 for $3 ms, once the lock timeout is set: the INSERT's one
/// row comes from `wait`, so no lock is waited for before it is set. Absent or
/// expired → the caller's claim (RETURNING 1). A live record → untouched (the DO
/// UPDATE's WHERE is false), and its state read by the same statement (2 processing,
/// 3 completed). A record inserted by a transaction that committed after this
/// statement's snapshot returns no row: the caller reports it in progress. A record
/// another transaction holds for longer than the lock timeout fails the statement
/// with 55P03 (lock_not_available): the caller reports it in progress too.
fn claim_one(table: &str) -> String {
    format!(
        "claim AS (
                   INSERT INTO {table} AS r (key, state, owner, updated_at, expires_at)
                   SELECT $1, 'processing', $2, now(), now() + make_interval(secs => $3::float8 / 1000)
                     FROM wait
                   ON CONFLICT (key) DO UPDATE
                     SET state = 'processing', owner = EXCLUDED.owner,
                         updated_at = EXCLUDED.updated_at, expires_at = EXCLUDED.expires_at
                     WHERE r.expires_at <= now()
                   RETURNING 1 AS code
                 )"
    )
}

/// The claim's answer: its own code, or the live record's state.
fn answer_one(table: &str) -> String {
    format!(
        "SELECT code FROM claim
                 UNION ALL
                 SELECT CASE WHEN state = 'completed' THEN 3 ELSE 2 END FROM {table}
                  WHERE key = $1 AND expires_at > now() AND NOT EXISTS (SELECT 1 FROM claim)"
    )
}

/// `input`, `held` and `done` of a batch of completions (the parameters of their keys,
/// owners and TTLs in ms): the live processing claims of their owners, locked in key
/// order, then completed; `done` returns the keys completed.
fn complete_rows(table: &str, keys: &str, owners: &str, ttls: &str) -> String {
    format!(
        "input AS (
                   SELECT k, o, ms FROM unnest({keys}::text[], {owners}::text[], {ttls}::float8[])
                     AS i(k, o, ms)
                 ), {}",
        complete_held(table, "")
    )
}

/// [`complete_rows`] with each completion's result (the parameter of a `bytea[]`, NULL for
/// none), written in the same row update and stamped with the completing owner, as
/// [`complete_result`] does; a completion without one clears what an earlier owner of the
/// row left.
fn complete_rows_results(
    table: &str,
    keys: &str,
    owners: &str,
    ttls: &str,
    results: &str,
) -> String {
    format!(
        "input AS (
                   SELECT k, o, ms, res
                     FROM unnest({keys}::text[], {owners}::text[], {ttls}::float8[], {results}::bytea[])
                     AS i(k, o, ms, res)
                 ), {}",
        complete_held(table, ", result = i.res, result_owner = CASE WHEN i.res IS NULL THEN NULL ELSE i.o END")
    )
}

/// The `held` and `done` CTEs of [`complete_rows`], with `set` added to the update.
fn complete_held(table: &str, set: &str) -> String {
    format!(
        "held AS (
                   SELECT r.key FROM {table} r JOIN input i ON r.key = i.k
                    WHERE r.owner = i.o AND r.state = 'processing' AND r.expires_at > now()
                    ORDER BY r.key FOR UPDATE OF r
                 ), done AS (
                   UPDATE {table} AS r SET state = 'completed', updated_at = now(),
                          expires_at = now() + make_interval(secs => i.ms / 1000){set}
                     FROM held h, input i
                    WHERE r.key = h.key AND i.k = h.key AND r.owner = i.o
                      AND r.state = 'processing' AND r.expires_at > now()
                   RETURNING r.key
                 )"
    )
}

/// Guarantee: one atomic statement (see [`claim_one`]).
fn claim(wait: &str, claim_one: &str, answer_one: &str) -> Arc<str> {
    Arc::from(format!(
        "WITH wait AS MATERIALIZED (SELECT {wait} AS lock_wait), {claim_one}
                 {answer_one}"
    ))
}

/// The claim inside the handler's transaction: the same, then the transaction's lock
/// timeout is set back to what it was, so the handler's statements wait as the
/// application configured them. The restoring projection runs on the row of `wait`
/// joined with the answer (or its absence), so after the claim. Always one row; a NULL
/// code is no answer.
fn claim_tx(wait: &str, claim_one: &str, answer_one: &str) -> Arc<str> {
    Arc::from(format!(
        "WITH wait AS MATERIALIZED (
                   SELECT prev, {wait} AS lock_wait
                     FROM (SELECT current_setting('lock_timeout') AS prev OFFSET 0) AS p
                 ), {claim_one}, answer AS (
                 {answer_one}
                 )
                 SELECT a.code, set_config('lock_timeout', w.prev, true) AS restored
                   FROM wait w LEFT JOIN answer a ON true"
    ))
}

/// The live record's state (2 processing, 3 completed).
fn state(table: &str) -> Arc<str> {
    Arc::from(format!(
        "SELECT CASE WHEN state = 'completed' THEN 3 ELSE 2 END AS code FROM {table}
                  WHERE key = $1 AND expires_at > now()"
    ))
}

/// Guarantee: only the live processing claim of $2 becomes completed.
fn complete(table: &str) -> Arc<str> {
    Arc::from(format!(
        "UPDATE {table} SET state = 'completed', updated_at = now(),
                        expires_at = now() + make_interval(secs => $3::float8 / 1000)
                  WHERE key = $1 AND owner = $2 AND state = 'processing' AND expires_at > now()"
    ))
}

/// Guarantee: as [`complete`], the result $4 written in the same row update, stamped with
/// the completing owner (`result_owner`).
fn complete_result(table: &str) -> Arc<str> {
    Arc::from(format!(
        "UPDATE {table} SET state = 'completed', updated_at = now(),
                        expires_at = now() + make_interval(secs => $3::float8 / 1000),
                        result = $4, result_owner = $2
                  WHERE key = $1 AND owner = $2 AND state = 'processing' AND expires_at > now()"
    ))
}

/// The live record of $1 with its result: only a completed record's, and only when the
/// result was written by the completion of the record's own owner (a result left on a row
/// claimed again after it expired is not answered).
fn get_result(table: &str) -> Arc<str> {
    Arc::from(format!(
        "SELECT state, owner,
                        (EXTRACT(EPOCH FROM updated_at) * 1000)::int8 AS updated_ms,
                        (EXTRACT(EPOCH FROM (expires_at - now())) * 1000)::int8 AS left_ms,
                        CASE WHEN state = 'completed' AND result_owner = owner THEN result END
                          AS result
                   FROM {table} WHERE key = $1 AND expires_at > now()"
    ))
}

/// Guarantee: only the live processing claim of $2 is deleted.
fn release(table: &str) -> Arc<str> {
    Arc::from(format!(
        "DELETE FROM {table}
                  WHERE key = $1 AND owner = $2 AND state = 'processing' AND expires_at > now()"
    ))
}

/// Guarantee: only the live processing claim of $2 is renewed.
fn extend(table: &str) -> Arc<str> {
    Arc::from(format!(
        "UPDATE {table} SET updated_at = now(),
                        expires_at = now() + make_interval(secs => $3::float8 / 1000)
                  WHERE key = $1 AND owner = $2 AND state = 'processing' AND expires_at > now()"
    ))
}

/// The live record of $1.
fn get(table: &str) -> Arc<str> {
    Arc::from(format!(
        "SELECT state, owner,
                        (EXTRACT(EPOCH FROM updated_at) * 1000)::int8 AS updated_ms,
                        (EXTRACT(EPOCH FROM (expires_at - now())) * 1000)::int8 AS left_ms
                   FROM {table} WHERE key = $1 AND expires_at > now()"
    ))
}

/// Deletes one batch of expired records, skipping rows a claim holds.
fn reap(table: &str) -> Arc<str> {
    Arc::from(format!(
        "DELETE FROM {table} WHERE key IN (
                   SELECT key FROM {table} WHERE expires_at <= now()
                    ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED)"
    ))
}

/// Guarantee: the claim statement above for every key of $1 at once, in one
/// statement; one code per key in input order. No row is waited for but through
/// the lock timeout, so a row another transaction holds never blocks the batch:
/// - visible records are read (no lock); the expired ones are locked in key order,
///   skipping those another transaction holds, and renewed for $2;
/// - keys with no visible record are inserted in key order; an insert that meets
///   another transaction's uncommitted record of the key waits at most the lock
///   timeout, and then the statement fails with 55P03 (the caller answers key by
///   key); one committed since the snapshot is left alone (DO NOTHING);
/// - a key neither renewed nor inserted is completed (3) or in progress (2): live,
///   held by another transaction, or written since the snapshot.
fn claim_many(table: &str, wait: &str) -> Arc<str> {
    Arc::from(format!(
        "WITH wait AS MATERIALIZED (
                   SELECT {wait} AS lock_wait
                 ), input AS (
                   SELECT k, ord FROM unnest($1::text[]) WITH ORDINALITY AS t(k, ord)
                 ), seen AS (
                   SELECT key, state, expires_at > now() AS live FROM {table}
                    WHERE key = ANY($1::text[])
                 ), held AS (
                   SELECT r.key FROM seen s JOIN {table} r ON r.key = s.key
                    WHERE NOT s.live AND r.expires_at <= now()
                    ORDER BY r.key FOR UPDATE OF r SKIP LOCKED
                 ), renewed AS (
                   UPDATE {table} AS r SET state = 'processing', owner = $2, updated_at = now(),
                          expires_at = now() + make_interval(secs => $3::float8 / 1000)
                     FROM held h
                    WHERE r.key = h.key
                   RETURNING r.key
                 ), inserted AS (
                   INSERT INTO {table} AS r (key, state, owner, updated_at, expires_at)
                   SELECT i.k, 'processing', $2, now(), now() + make_interval(secs => $3::float8 / 1000)
                     FROM input i CROSS JOIN wait
                    WHERE NOT EXISTS (SELECT 1 FROM seen s WHERE s.key = i.k)
                    ORDER BY i.k
                   ON CONFLICT (key) DO NOTHING
                   RETURNING r.key
                 )
                 SELECT (CASE WHEN c.key IS NOT NULL THEN 1
                              WHEN s.live AND s.state = 'completed' THEN 3
                              ELSE 2 END)::int4 AS code
                   FROM input i
                   LEFT JOIN (SELECT key FROM renewed UNION ALL SELECT key FROM inserted) c
                     ON c.key = i.k
                   LEFT JOIN seen s ON s.key = i.k
                  ORDER BY i.ord"
    ))
}

/// Guarantee: each live processing claim of its owner becomes completed for its TTL;
/// returns the keys it completed. Rows are locked in key order, as by every statement
/// that locks several rows, so two of them sharing keys never deadlock.
fn complete_many(table: &str) -> Arc<str> {
    Arc::from(format!(
        "WITH {} SELECT key FROM done",
        complete_rows(table, "$1", "$2", "$3")
    ))
}

/// Guarantee: as [`complete_many`], each completion's result ($4, NULL for none) written
/// in its row's update.
fn complete_many_results(table: &str) -> Arc<str> {
    Arc::from(format!(
        "WITH {} SELECT key FROM done",
        complete_rows_results(table, "$1", "$2", "$3", "$4")
    ))
}

/// The `held` CTE of the batch transitions: the live processing claims of $2 among the
/// keys of $1, locked in key order.
fn held_by_owner(table: &str) -> String {
    format!(
        "held AS (
                   SELECT key FROM {table}
                    WHERE key = ANY($1::text[]) AND owner = $2 AND state = 'processing'
                      AND expires_at > now()
                    ORDER BY key FOR UPDATE
                 )"
    )
}

/// Guarantee: only live processing claims of $2 are deleted (locked in key order
/// first); returns their keys.
fn release_many(table: &str) -> Arc<str> {
    let held = held_by_owner(table);
    Arc::from(format!(
        "WITH {held}
                 DELETE FROM {table} AS r USING held h
                  WHERE r.key = h.key AND r.owner = $2 AND r.state = 'processing'
                    AND r.expires_at > now()
                 RETURNING r.key"
    ))
}

/// Guarantee: only live processing claims of $2 are renewed (locked in key order
/// first); returns their keys.
fn extend_many(table: &str) -> Arc<str> {
    let held = held_by_owner(table);
    Arc::from(format!(
        "WITH {held}
                 UPDATE {table} AS r SET updated_at = now(),
                        expires_at = now() + make_interval(secs => $3::float8 / 1000)
                   FROM held h
                  WHERE r.key = h.key AND r.owner = $2 AND r.state = 'processing'
                    AND r.expires_at > now()
                 RETURNING r.key"
    ))
}

/// Guarantee: `complete_many` of $4..$6, then the claim of $1, in one statement (the
/// key claimed is never one of those completed). The lock timeout is set only once
/// every completion is done (`wait` counts them), so completions wait for their rows
/// as `complete_many` does, and the claim's row is the last one locked. Rows: ('d',
/// key) per completion done, then ('c', code) for the claim (none: in progress).
fn complete_then_claim(table: &str, wait: &str, claim_one: &str) -> Arc<str> {
    done_then_claim(
        table,
        &complete_rows(table, "$4", "$5", "$6"),
        wait,
        claim_one,
    )
}

/// Guarantee: as [`complete_then_claim`], each completion's result ($7, NULL for none)
/// written in its row's update.
fn complete_results_then_claim(table: &str, wait: &str, claim_one: &str) -> Arc<str> {
    done_then_claim(
        table,
        &complete_rows_results(table, "$4", "$5", "$6", "$7"),
        wait,
        claim_one,
    )
}

/// Guarantee: [`complete_then_claim`] of one completion, $4 for $5 for $6 ms, with
/// scalar parameters: PostgreSQL caches the plan of this statement (a generic plan, after
/// a few executions), where it plans the array statement again at every execution. The
/// completed row is the only one locked before the lock timeout is set, so nothing is
/// locked out of key order. The same rows as [`complete_then_claim`].
fn complete_one_then_claim(table: &str, wait: &str, claim_one: &str) -> Arc<str> {
    let done = format!(
        "done AS (
                   UPDATE {table} SET state = 'completed', updated_at = now(),
                          expires_at = now() + make_interval(secs => $6::float8 / 1000)
                    WHERE key = $4 AND owner = $5 AND state = 'processing' AND expires_at > now()
                   RETURNING key
                 )"
    );
    done_then_claim(table, &done, wait, claim_one)
}

/// The statement of [`complete_then_claim`] around its `done` CTE (the completions): the
/// lock timeout set once they are done, the claim of $1, and the rows both answer.
fn done_then_claim(table: &str, done: &str, wait: &str, claim_one: &str) -> Arc<str> {
    Arc::from(format!(
        "WITH {done}, wait AS MATERIALIZED (
                   SELECT {wait} AS lock_wait FROM (SELECT count(*) FROM done) AS d
                 ), {claim_one}
                 SELECT 'd' AS kind, key, 0::int4 AS code FROM done
                 UNION ALL
                 SELECT 'c', NULL, code FROM claim
                 UNION ALL
                 SELECT 'c', NULL, CASE WHEN state = 'completed' THEN 3 ELSE 2 END FROM {table}
                  WHERE key = $1 AND expires_at > now() AND NOT EXISTS (SELECT 1 FROM claim)"
    ))
}

/// One page of live records in key order, after the cursor key: a range scan of the
/// primary key. The scope is matched with starts_with, so its characters are never a
/// LIKE pattern.
fn list(table: &str) -> Arc<str> {
    Arc::from(format!(
        "SELECT key, state, owner,
                        (EXTRACT(EPOCH FROM updated_at) * 1000)::int8 AS updated_ms,
                        (EXTRACT(EPOCH FROM (expires_at - now())) * 1000)::int8 AS left_ms
                   FROM {table}
                  WHERE key > $1 AND starts_with(key, $2) AND expires_at > now()
                  ORDER BY key LIMIT $3"
    ))
}

/// Guarantee: deletes the record only if it is still live and exactly the one the
/// operator saw (state and owner), whoever owns it.
fn remove(table: &str) -> Arc<str> {
    Arc::from(format!(
        "DELETE FROM {table}
                  WHERE key = $1 AND state = $2 AND owner = $3 AND expires_at > now()"
    ))
}

/// The size of each record of $1 (`pg_column_size` of the row).
fn sizes(table: &str) -> Arc<str> {
    Arc::from(format!(
        "SELECT key, pg_column_size(r.*)::int8 AS bytes FROM {table} r
                  WHERE key = ANY($1)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_wait_is_whole_milliseconds_and_never_unlimited() {
        // lock_timeout = 0 would mean no limit at all.
        for (wait, text) in [
            (Duration::ZERO, "'1ms'"),
            (Duration::from_micros(300), "'1ms'"),
            (Duration::from_millis(50), "'50ms'"),
            (Duration::from_secs(2), "'2000ms'"),
        ] {
            let sql = Statements::new("t", wait);
            for statement in [
                &sql.claim,
                &sql.claim_tx,
                &sql.claim_many,
                &sql.complete_then_claim,
                &sql.complete_one_then_claim,
            ] {
                assert!(
                    statement.contains(&format!("set_config('lock_timeout', {text}, true)")),
                    "{wait:?}: {statement}"
                );
            }
            assert!(
                !sql.complete_many.contains("lock_timeout"),
                "completions wait"
            );
        }
    }
}
