//! Claims as one plain `SET ... NX GET` on Redis 7, the `CLAIM` script elsewhere: the
//! commands a server runs per claim (its own `INFO commandstats`), a server that refuses
//! `NX` with `GET` as Redis 6 does (a proxy answering for it), and a refusal of another
//! kind reported as the script reports it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use eventonce_core::conformance::unique_key;
use eventonce_core::{Claim, Completion, IdempotencyStore};
use eventonce_redis::RedisStore;
use eventonce_testkit::RedisProcess;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const LEASE: Duration = Duration::from_secs(60);

fn url() -> String {
    std::env::var("EVENTONCE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Calls per command since the last `CONFIG RESETSTAT`, e.g. `[("evalsha", 1), ("set", 2)]`.
async fn calls(conn: &mut redis::aio::MultiplexedConnection) -> Vec<(String, u64)> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .expect("INFO");
    let mut out: Vec<(String, u64)> = info
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(":calls=")?;
            let n = rest.split(',').next()?.parse().ok()?;
            Some((name.to_owned(), n))
        })
        .filter(|(name, _)| !name.starts_with("config") && name != "info")
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn a_claim_is_one_plain_set_and_a_carried_completion_one_script_beside_it() {
    let (_server, store, mut admin) = private_server().await;
    let (new, held) = (unique_key("plain-new"), unique_key("plain-held"));
    // Loads the completion script (a fresh server answers NOSCRIPT once).
    let warm = unique_key("plain-warm");
    assert!(!store.complete(&warm, "a", LEASE).await.expect("store"));
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut admin)
        .await
        .expect("resetstat");

    claimed_held_completed(&store, &new).await;
    // Three claims: three SETs, and the completion's script (its GET and SET inside).
    assert_eq!(
        calls(&mut admin).await,
        [("evalsha".into(), 1), ("get".into(), 1), ("set".into(), 4)]
    );

    assert_eq!(
        store.try_claim(&held, "a", LEASE).await.expect("store"),
        Claim::Acquired
    );
    let done = [Completion {
        key: held.clone(),
        owner: "a".into(),
        ttl: LEASE,
        result: None,
    }];
    let next = unique_key("plain-next");
    let (written, claim) = store
        .complete_then_claim(&done, &next, "a", LEASE)
        .await
        .expect("complete then claim");
    assert_eq!(
        (written.expect("written"), claim),
        (vec![true], Claim::Acquired)
    );
    // Two more claims (SETs), one more completion script.
    assert_eq!(
        calls(&mut admin).await,
        [("evalsha".into(), 2), ("get".into(), 2), ("set".into(), 7)]
    );
}

#[tokio::test]
async fn a_carried_completion_whose_script_was_flushed_is_sent_again() {
    let (_server, store, mut admin) = private_server().await;
    for round in 0..2 {
        // A fresh server, then one whose scripts were flushed: NOSCRIPT either way.
        if round == 1 {
            let _: () = redis::cmd("SCRIPT")
                .arg("FLUSH")
                .query_async(&mut admin)
                .await
                .expect("flush");
        }
        let (held, next) = (unique_key("flushed-held"), unique_key("flushed-next"));
        claimed_then_carried(&store, &held, &next, "b").await;
        let record = store.get(&held).await.expect("get").expect("record");
        assert_eq!(record.state, eventonce_core::RecordState::Completed);
        assert_eq!(
            store.try_claim(&next, "c", LEASE).await.expect("claim"),
            Claim::InProgress
        );
    }
}

#[tokio::test]
async fn a_key_of_another_type_is_refused_as_the_script_refuses_it() {
    let store = RedisStore::connect(&url()).await.expect("connect");
    let mut raw = redis::Client::open(url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("raw");
    let key = unique_key("plain-hash");
    let _: () = redis::cmd("HSET")
        .arg(&key)
        .arg("f")
        .arg("v")
        .query_async(&mut raw)
        .await
        .expect("hset");
    let err = store
        .try_claim(&key, "a", LEASE)
        .await
        .expect_err("a hash is no record");
    // The script's error (its GET meets the hash), not the plain SET's.
    assert!(err.to_string().contains("WRONGTYPE"), "{err}");
    assert!(err.to_string().contains("script"), "{err}");
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut raw)
        .await
        .expect("del");
}

#[tokio::test]
async fn a_server_refusing_nx_with_get_is_claimed_by_script_from_then_on() {
    let upstream = url()
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .to_owned();
    let refused = Arc::new(AtomicUsize::new(0));
    let proxy = old_server(upstream, Arc::clone(&refused)).await;
    let store = RedisStore::connect(&format!("redis://{proxy}"))
        .await
        .expect("connect through the proxy");
    let (key, held, next) = (
        unique_key("old-server"),
        unique_key("old-held"),
        unique_key("old-next"),
    );
    claimed_held_completed(&store, &key).await;
    claimed_then_carried(&store, &held, &next, "a").await;
    // Refused once: every later claim went to the script at once.
    assert_eq!(refused.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_passing_error_reply_to_the_plain_claim_does_not_turn_it_off() {
    let upstream = url()
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .to_owned();
    let seen = Arc::new(AtomicUsize::new(0));
    let refusal = Refuse::First(b"-ERR max number of clients reached\r\n");
    let proxy = proxy(upstream, Arc::clone(&seen), refusal).await;
    let store = RedisStore::connect(&format!("redis://{proxy}"))
        .await
        .expect("connect through the proxy");
    for n in 0..3 {
        let key = unique_key(&format!("passing-refusal-{n}"));
        assert_eq!(
            store.try_claim(&key, "a", LEASE).await.expect("claim"),
            Claim::Acquired
        );
    }
    // Refused once, by a condition that passes: the later claims are plain again.
    assert_eq!(
        seen.load(Ordering::Relaxed),
        3,
        "plain claims sent after one passing ERR reply"
    );
}

#[tokio::test]
async fn the_plain_claim_reads_every_value_as_the_claim_script_reads_it() {
    let upstream = url()
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .to_owned();
    let proxy = old_server(upstream, Arc::new(AtomicUsize::new(0))).await;
    let by_script = RedisStore::connect(&format!("redis://{proxy}"))
        .await
        .expect("connect through the proxy");
    let plain = RedisStore::connect(&url()).await.expect("connect");
    let mut raw = redis::Client::open(url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("raw");
    let values: &[&[u8]] = &[
        b"p|1764640000000|owner",
        b"p|1||",
        b"c|1764640000000|owner",
        b"c|0|",
        b"p||owner",
        b"p|12",
        b"p|x1|owner",
        b"P|1|owner",
        b"1",
        b"completed",
        b"",
        b"\xff\xfe",
        br#"{"status": "processing", "started_at": 1732712345.1}"#,
        br#"{"state":"processing"}"#,
        br#"{"status": "completed"}"#,
        br#"["processing"]"#,
        b"{",
    ];
    for value in values {
        let key = unique_key("plain-equal");
        let _: () = redis::cmd("SET")
            .arg(&key)
            .arg(*value)
            .arg("PX")
            .arg(60_000)
            .query_async(&mut raw)
            .await
            .expect("set");
        let scripted = by_script
            .try_claim(&key, "me", LEASE)
            .await
            .expect("script");
        let direct = plain.try_claim(&key, "me", LEASE).await.expect("plain");
        assert_eq!(direct, scripted, "{:?}", String::from_utf8_lossy(value));
        let still: Vec<u8> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut raw)
            .await
            .expect("get");
        assert_eq!(still, *value, "the value was rewritten");
    }
}

/// A proxy to `upstream` that answers `SET ... NX ... GET` as a server before Redis 7 does
/// (`ERR syntax error`) and forwards every other command, one at a time. Counts refusals.
async fn old_server(upstream: String, refused: Arc<AtomicUsize>) -> String {
    proxy(upstream, refused, Refuse::Always(b"-ERR syntax error\r\n")).await
}

/// Which `SET ... NX ... GET` commands a proxy refuses, and with what reply.
#[derive(Clone, Copy)]
enum Refuse {
    /// Every one.
    Always(&'static [u8]),
    /// The first one only (a passing condition); the later ones are forwarded.
    First(&'static [u8]),
}

/// A proxy to `upstream` refusing `SET ... NX ... GET` commands as `refuse` says and
/// forwarding every other command, one at a time. Counts the plain claims it saw.
async fn proxy(upstream: String, seen: Arc<AtomicUsize>, refuse: Refuse) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = TcpStream::connect(&upstream).await.expect("upstream");
            tokio::spawn(relay(client, server, Arc::clone(&seen), refuse));
        }
    });
    addr
}

async fn relay(client: TcpStream, server: TcpStream, seen: Arc<AtomicUsize>, refuse: Refuse) {
    let (client_read, mut client_write) = client.into_split();
    let (server_read, mut server_write) = server.into_split();
    let (mut from_client, mut from_server) =
        (BufReader::new(client_read), BufReader::new(server_read));
    while let Some((raw, args)) = request(&mut from_client).await {
        let upper: Vec<String> = args
            .iter()
            .map(|a| String::from_utf8_lossy(a).to_ascii_uppercase())
            .collect();
        let plain = upper.first().is_some_and(|c| c == "SET")
            && upper.iter().any(|a| a == "NX")
            && upper.iter().any(|a| a == "GET");
        let refusal = match refuse {
            Refuse::Always(reply) if plain => Some(reply),
            Refuse::First(reply) if plain && seen.load(Ordering::Relaxed) == 0 => Some(reply),
            _ => None,
        };
        if plain {
            seen.fetch_add(1, Ordering::Relaxed);
        }
        let reply = match refusal {
            Some(reply) => reply.to_vec(),
            None => {
                server_write.write_all(&raw).await.expect("forward");
                reply(&mut from_server).await
            }
        };
        if client_write.write_all(&reply).await.is_err() {
            return;
        }
    }
}

async fn line(r: &mut BufReader<impl AsyncReadExt + Unpin>) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    (r.read_until(b'\n', &mut out).await.ok()? > 0).then_some(out)
}

fn number(line: &[u8]) -> i64 {
    String::from_utf8_lossy(&line[1..line.len() - 2])
        .parse()
        .expect("a RESP length")
}

/// One command: its bytes and its arguments.
async fn request(r: &mut BufReader<impl AsyncReadExt + Unpin>) -> Option<(Vec<u8>, Vec<Vec<u8>>)> {
    let head = line(r).await?;
    let mut raw = head.clone();
    let mut args = Vec::new();
    for _ in 0..number(&head) {
        let len = line(r).await?;
        raw.extend_from_slice(&len);
        let mut arg = vec![0; usize::try_from(number(&len)).ok()? + 2];
        r.read_exact(&mut arg).await.ok()?;
        raw.extend_from_slice(&arg);
        arg.truncate(arg.len() - 2);
        args.push(arg);
    }
    Some((raw, args))
}

/// One RESP2 reply, nested arrays included.
async fn reply(r: &mut BufReader<impl AsyncReadExt + Unpin>) -> Vec<u8> {
    let mut raw = Vec::new();
    let mut pending = 1;
    while pending > 0 {
        pending -= 1;
        let head = line(r).await.expect("a reply");
        raw.extend_from_slice(&head);
        match head[0] {
            b'$' if number(&head) >= 0 => {
                let mut data = vec![0; usize::try_from(number(&head)).expect("len") + 2];
                r.read_exact(&mut data).await.expect("bulk");
                raw.extend_from_slice(&data);
            }
            b'*' if number(&head) > 0 => pending += number(&head),
            _ => {}
        }
    }
    raw
}

/// `key` claimed by "a", held against "b", completed by "a", then a duplicate for "b".
async fn claimed_held_completed(store: &RedisStore, key: &str) {
    assert_eq!(
        store.try_claim(key, "a", LEASE).await.expect("store"),
        Claim::Acquired
    );
    assert_eq!(
        store.try_claim(key, "b", LEASE).await.expect("store"),
        Claim::InProgress
    );
    assert!(store.complete(key, "a", LEASE).await.expect("store"));
    assert_eq!(
        store.try_claim(key, "b", LEASE).await.expect("store"),
        Claim::Completed
    );
}

/// `held` claimed by "a", then its completion carried by `claimer`'s claim of `next`: both
/// answered (completed, acquired).
async fn claimed_then_carried(store: &RedisStore, held: &str, next: &str, claimer: &str) {
    assert_eq!(
        store.try_claim(held, "a", LEASE).await.expect("claim"),
        Claim::Acquired
    );
    let done = [Completion {
        key: held.to_owned(),
        owner: "a".into(),
        ttl: LEASE,
        result: None,
    }];
    let (written, claim) = store
        .complete_then_claim(&done, next, claimer, LEASE)
        .await
        .expect("complete then claim");
    assert_eq!(
        (written.expect("written"), claim),
        (vec![true], Claim::Acquired)
    );
}

/// A private `redis-server` (its command counts are this test's alone), the store on it and
/// a plain connection to read its counts.
async fn private_server() -> (RedisProcess, RedisStore, redis::aio::MultiplexedConnection) {
    let server = RedisProcess::start();
    let store = RedisStore::connect(&server.url()).await.expect("connect");
    let admin = redis::Client::open(server.url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("admin");
    (server, store, admin)
}
