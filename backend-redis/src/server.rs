//! What the server must be for records to last, checked at every (re)connection: a
//! primary, since a replica refuses writes (each event then runs unprotected), and a
//! memory policy that never evicts a key, since an evicted record lets a completed event
//! run again and an evicted claim lets a second consumer run a held one at the same time.
//!
//! One `INFO` answers all three questions (role, `maxmemory_policy`, `evicted_keys`), on a
//! cluster from every primary. A server whose ACL refuses `INFO` is asked `CONFIG GET
//! maxmemory-policy` and `ROLE` instead; what no command answers is logged as unchecked.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use redis::aio::ConnectionLike;
use redis::{ErrorKind, RedisError, Value};

/// The one memory policy under which Redis never drops a key to make room.
pub const NO_EVICTION: &str = "noeviction";

/// The description of the error a refused server gives (its detail says why).
pub(crate) const UNFIT: &str = "unfit server";

/// What a Redis server (every primary of a cluster) says about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerReport {
    /// Its `maxmemory-policy` (the first that is not `noeviction`, on a cluster), or `None`
    /// when the server would not tell.
    pub eviction_policy: Option<String>,
    /// Its replication role: `master`, `slave` (a replica), or `None` when the server would
    /// not tell.
    pub role: Option<String>,
    /// The keys it has evicted since it started (`evicted_keys`, summed over a cluster's
    /// primaries), or `None` when the server would not tell.
    pub evicted_keys: Option<u64>,
}

impl ServerReport {
    /// Why the store must not use this server, if so: a replica, or (unless
    /// `allow_eviction`) a memory policy that evicts.
    pub(crate) fn refusal(&self, allow_eviction: bool) -> Option<String> {
        if let Some(role) = self.role.as_deref().filter(|r| *r != "master") {
            return Some(format!(
                "the server is a read-only replica (role {role}): claims and completions would be refused or lost; point the URL at the primary"
            ));
        }
        match self.eviction_policy.as_deref() {
            Some(policy) if policy != NO_EVICTION && !allow_eviction => Some(format!(
                "the server evicts keys under memory pressure (maxmemory-policy {policy}): an evicted record lets a completed event run again, an evicted claim lets a second consumer run a held one; set `maxmemory-policy noeviction` on the server (or give the records a Redis of their own), or accept the risk with RedisOptions::allow_eviction"
            )),
            _ => None,
        }
    }
}

/// Reads the report of the server behind `conn`: `INFO`, else `CONFIG GET` and `ROLE`.
pub(crate) async fn report<C: ConnectionLike + Send>(conn: &mut C) -> ServerReport {
    let mut report = ServerReport::default();
    if let Ok(value) = redis::cmd("INFO").query_async::<Value>(conn).await {
        for text in info_texts(value) {
            merge_info(&mut report, &text);
        }
    }
    if report.eviction_policy.is_none() {
        if let Ok((_, policy)) = redis::cmd("CONFIG")
            .arg("GET")
            .arg("maxmemory-policy")
            .query_async::<(String, String)>(conn)
            .await
        {
            report.eviction_policy = Some(policy);
        }
    }
    if report.role.is_none() {
        if let Ok(Value::Array(items)) = redis::cmd("ROLE").query_async::<Value>(conn).await {
            report.role = items.first().and_then(text_of);
        }
    }
    report
}

/// The `INFO` texts of a reply: one server's, or each primary's on a cluster.
fn info_texts(value: Value) -> Vec<String> {
    match value {
        Value::Map(nodes) => nodes.into_iter().filter_map(|(_, v)| text_of(&v)).collect(),
        other => text_of(&other).into_iter().collect(),
    }
}

fn text_of(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(text) => Some(text.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    }
}

/// Adds one server's `INFO` to the report: an evicting policy or a replica wins over a
/// fine one, eviction counts add up.
fn merge_info(report: &mut ServerReport, info: &str) {
    for line in info.lines() {
        let Some((field, value)) = line.trim().split_once(':') else {
            continue;
        };
        match field {
            "maxmemory_policy"
                if report
                    .eviction_policy
                    .as_deref()
                    .is_none_or(|p| p == NO_EVICTION) =>
            {
                report.eviction_policy = Some(value.to_owned());
            }
            "role" if report.role.as_deref().is_none_or(|r| r == "master") => {
                report.role = Some(value.to_owned());
            }
            "evicted_keys" => {
                if let Ok(n) = value.parse::<u64>() {
                    report.evicted_keys = Some(report.evicted_keys.unwrap_or(0) + n);
                }
            }
            _ => {}
        }
    }
}

/// The server's eviction count as last seen, to count its growth. Shared by a store's
/// clones and its connection attempts.
#[derive(Debug, Default)]
pub(crate) struct Evictions(AtomicU64);

/// The counter of keys the server evicted while a store watched it (the `metrics` feature).
pub const EVICTED_KEYS_TOTAL: &str = "eventonce_redis_evicted_keys_total";

impl Evictions {
    const UNSEEN: u64 = u64::MAX;

    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Evictions(AtomicU64::new(Self::UNSEEN)))
    }

    /// Notes the count `now`, and returns how much it grew since the last one seen (none
    /// the first time, or after a restart reset it).
    pub(crate) fn observe(&self, now: u64, target: &str) -> u64 {
        let before = self.0.swap(now, Ordering::Relaxed);
        if before == Self::UNSEEN || now <= before {
            return 0;
        }
        let grown = now - before;
        tracing::error!(
            target: "eventonce",
            evicted = grown,
            evicted_keys = now,
            "REDIS_EVICTING: the Redis server at {target} evicted {grown} key(s) since the last check: records and claims may be lost (events may run twice); set maxmemory-policy noeviction"
        );
        #[cfg(feature = "metrics")]
        metrics::counter!(EVICTED_KEYS_TOTAL).increment(grown);
        grown
    }
}

/// Checks a new connection: a refusal as the connection's error, a server that could not
/// be checked or whose eviction is accepted logged at WARN.
pub(crate) async fn vet<C: ConnectionLike + Send>(
    conn: &mut C,
    allow_eviction: bool,
    evictions: &Evictions,
    target: &str,
) -> Result<ServerReport, RedisError> {
    let report = report(conn).await;
    if let Some(why) = report.refusal(allow_eviction) {
        return Err(RedisError::from((ErrorKind::Client, UNFIT, why)));
    }
    match report.eviction_policy.as_deref() {
        None => tracing::warn!(
            target: "eventonce",
            "REDIS_UNCHECKED: the Redis server at {target} did not say its maxmemory-policy (INFO and CONFIG GET refused): make sure it is noeviction, or let the ACL user run INFO so that eventonce can check"
        ),
        Some(policy) if policy != NO_EVICTION => tracing::warn!(
            target: "eventonce",
            policy,
            "REDIS_EVICTION_ACCEPTED: the Redis server at {target} evicts keys (maxmemory-policy {policy}) and RedisOptions::allow_eviction accepts it: an evicted record or claim lets its event run twice"
        ),
        Some(_) => {}
    }
    if report.role.is_none() {
        tracing::warn!(
            target: "eventonce",
            "REDIS_UNCHECKED: the Redis server at {target} did not say whether it is a primary (INFO and ROLE refused): make sure the URL names the primary"
        );
    }
    if let Some(n) = report.evicted_keys {
        evictions.observe(n, target);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_of_every_primary_is_merged_worst_first() {
        let mut report = ServerReport::default();
        merge_info(
            &mut report,
            "# Memory\r\nmaxmemory_policy:noeviction\r\n# Stats\r\nevicted_keys:2\r\n# Replication\r\nrole:master\r\n",
        );
        merge_info(
            &mut report,
            "maxmemory_policy:allkeys-lru\r\nevicted_keys:5\r\nrole:master\r\n",
        );
        merge_info(
            &mut report,
            "maxmemory_policy:noeviction\r\nrole:master\r\n",
        );
        assert_eq!(report.eviction_policy.as_deref(), Some("allkeys-lru"));
        assert_eq!(report.role.as_deref(), Some("master"));
        assert_eq!(report.evicted_keys, Some(7));
        assert!(report
            .refusal(false)
            .is_some_and(|why| why.contains("allkeys-lru")));
        assert_eq!(report.refusal(true), None);
    }

    #[test]
    fn a_replica_is_refused_even_when_eviction_is_allowed() {
        let report = ServerReport {
            role: Some("slave".into()),
            eviction_policy: Some(NO_EVICTION.into()),
            evicted_keys: None,
        };
        assert!(report
            .refusal(true)
            .is_some_and(|why| why.contains("replica")));
    }

    #[test]
    fn eviction_growth_is_counted_from_the_second_sight() {
        let seen = Evictions::new();
        assert_eq!(seen.observe(10, "t"), 0);
        assert_eq!(seen.observe(14, "t"), 4);
        assert_eq!(seen.observe(3, "t"), 0);
        assert_eq!(seen.observe(5, "t"), 2);
    }
}
