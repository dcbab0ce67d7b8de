//! Operator access to a store: list records page by page, remove one record, measure
//! memory. Used by the `eventonce` admin commands (`keys`, `show`, `release`, `stats`).
//!
//! This is a separate trait from [`IdempotencyStore`](crate::IdempotencyStore): the guard
//! never needs it, and a backend can offer it or not.

use async_trait::async_trait;

use crate::error::StoreError;
use crate::store::Record;

/// One record and its key, as [`AdminStore::list_page`] returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedRecord {
    /// The full store key.
    pub key: String,
    /// The decoded record.
    pub record: Record,
}

/// One page of a listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordPage {
    /// The live records of this page (possibly none, even when more pages follow).
    pub records: Vec<ListedRecord>,
    /// Where the next page starts; `None` when the listing is complete.
    pub next: Option<String>,
}

/// Listing and removal for operators. Every method is read-only except
/// [`remove_if_unchanged`](AdminStore::remove_if_unchanged).
///
/// ```
/// # mod eventonce { pub use eventonce_core::*; }
/// use eventonce::{AdminStore, ListedRecord, StoreError};
///
/// /// Every live record under `scope`, page by page.
/// async fn all(store: &dyn AdminStore, scope: &str) -> Result<Vec<ListedRecord>, StoreError> {
///     let mut out = Vec::new();
///     let mut cursor = None;
///     loop {
///         let page = store.list_page(scope, cursor.as_deref(), 500).await?;
///         out.extend(page.records);
///         match page.next {
///             Some(next) => cursor = Some(next),
///             None => return Ok(out),
///         }
///     }
/// }
/// ```
#[async_trait]
pub trait AdminStore: Send + Sync {
    /// One page of the live records whose key starts with `scope` (taken literally, never
    /// as a pattern), starting at `cursor` (`None`: from the beginning). `limit` bounds the
    /// work of one call (a Redis `SCAN` count, a SQL `LIMIT`), not exactly the page size.
    /// A record written or removed during the listing may or may not appear.
    async fn list_page(
        &self,
        scope: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<RecordPage, StoreError>;

    /// Removes the record at `key`, whoever owns it, but only if it is still the record
    /// `seen` (same state and owner) and was written by eventonce: an operator confirms
    /// what they saw, and a record that changed meanwhile is left alone. Returns whether
    /// it removed it.
    ///
    /// A record without an owner (an older writer's value) is refused with
    /// [`StoreError::InvalidArgument`].
    async fn remove_if_unchanged(&self, key: &str, seen: &Record) -> Result<bool, StoreError>;

    /// The memory each key takes in the store, in bytes (`None` for a key that is gone).
    async fn memory_usage(&self, keys: &[String]) -> Result<Vec<Option<u64>>, StoreError>;

    /// How [`memory_usage`](AdminStore::memory_usage) measures, for reports: for example
    /// `"MEMORY USAGE"`.
    fn memory_measure(&self) -> &'static str;
}
