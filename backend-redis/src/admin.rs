//! The [`AdminStore`] implementation: listing by `SCAN`, owner-checked removal, memory
//! usage.

use async_trait::async_trait;
use eventonce_core::backend::check_arguments;
use eventonce_core::{AdminStore, ListedRecord, Record, RecordPage, RecordState, StoreError};

use crate::connection::RedisStore;
use crate::record::record_of;
use crate::scripts::{LIST, REMOVE};

/// A `SCAN ... MATCH` pattern matching exactly the keys that start with `scope`.
fn scan_pattern(scope: &str) -> String {
    let mut pattern = String::with_capacity(scope.len() + 2);
    for c in scope.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('*');
    pattern
}

/// Operator access on a single Redis server: `SCAN` (never `KEYS`) with a literal-prefix
/// `MATCH`, the values and TTLs of a page read by one script, `MEMORY USAGE` per key.
/// A Redis Cluster connection is refused: `SCAN` walks one node; run the commands
/// against each master instead.
#[async_trait]
impl AdminStore for RedisStore {
    async fn list_page(
        &self,
        scope: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<RecordPage, StoreError> {
        if self.is_cluster() {
            return Err(StoreError::InvalidArgument(
                "listing walks one server with SCAN; run it against each cluster master".into(),
            ));
        }
        let cursor = cursor.unwrap_or("0");
        if cursor.is_empty() || !cursor.bytes().all(|b| b.is_ascii_digit()) {
            return Err(StoreError::InvalidArgument(format!(
                "invalid SCAN cursor {cursor:?}"
            )));
        }
        let mut conn = self.connection().await?;
        let (next, keys): (String, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(scan_pattern(scope))
            .arg("COUNT")
            .arg(limit.max(1))
            .query_async(&mut conn)
            .await
            .map_err(|e| self.error(e))?;
        // A key that is not UTF-8 was not written by eventonce.
        let keys: Vec<String> = keys
            .into_iter()
            .filter_map(|k| String::from_utf8(k).ok())
            .filter(|k| k.starts_with(scope))
            .collect();
        let mut records = Vec::with_capacity(keys.len());
        if !keys.is_empty() {
            let mut invocation = LIST.prepare_invoke();
            for key in &keys {
                invocation.key(key);
            }
            let values: Vec<Option<(Vec<u8>, i64)>> = invocation
                .invoke_async(&mut conn)
                .await
                .map_err(|e| self.error(e))?;
            for (key, value) in keys.into_iter().zip(values) {
                if let Some((value, pttl)) = value {
                    records.push(ListedRecord {
                        key,
                        record: record_of(&value, pttl),
                    });
                }
            }
        }
        Ok(RecordPage {
            records,
            next: (next != "0").then_some(next),
        })
    }

    async fn remove_if_unchanged(&self, key: &str, seen: &Record) -> Result<bool, StoreError> {
        let Some(owner) = seen.owner.as_deref() else {
            return Err(StoreError::InvalidArgument(format!(
                "{key} holds an older writer's value, not an eventonce record; left untouched"
            )));
        };
        check_arguments(key, owner, None)?;
        let state = match seen.state {
            RecordState::Processing => "p",
            RecordState::Completed => "c",
        };
        let mut conn = self.connection().await?;
        let removed: i64 = REMOVE
            .key(key)
            .arg(state)
            .arg(owner)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.error(e))?;
        Ok(removed == 1)
    }

    async fn memory_usage(&self, keys: &[String]) -> Result<Vec<Option<u64>>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for key in keys {
            pipe.cmd("MEMORY").arg("USAGE").arg(key);
        }
        let mut conn = self.connection().await?;
        pipe.query_async(&mut conn).await.map_err(|e| self.error(e))
    }

    fn memory_measure(&self) -> &'static str {
        "MEMORY USAGE"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_patterns_match_the_scope_literally() {
        assert_eq!(scan_pattern("a:b:"), "a:b:*");
        assert_eq!(scan_pattern("a*[?]\\"), "a\\*\\[\\?\\]\\\\*");
    }
}
