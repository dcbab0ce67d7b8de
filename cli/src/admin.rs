//! The admin commands: `keys`, `show`, `release`, `stats`.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::Args;
use eventonce::{
    AdminStore, EventEnvelope, IdempotencyConfig, KeyParts, KeyScheme, ListedRecord, Record,
    RecordState, StoreError,
};
use serde_json::{json, Value};

use crate::connect::{connect, Backend, Connected, StoreArgs};
use crate::{fail, EXIT_NO};

/// How many records a listing asks the store for per round trip.
const PAGE: usize = 500;

#[derive(Args)]
pub(crate) struct KeysArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Only this service's keys.
    #[arg(long)]
    service: Option<String>,
    /// Only this event type's keys (as the producer spells it, dots and all).
    #[arg(long)]
    event_type: Option<String>,
    /// Only records in this state.
    #[arg(long, value_parser = ["processing", "completed"])]
    state: Option<String>,
    /// Print at most this many keys (at least 1).
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = at_least_one)]
    limit: usize,
    /// Print a JSON array instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("record").required(true).args(["key", "service"])))]
pub(crate) struct ShowArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The key to show (under the prefix).
    #[arg(conflicts_with_all = ["service", "event_type", "event_id", "data_file"])]
    key: Option<String>,
    /// Compute the key from an event: its consumer service.
    #[arg(long, requires_all = ["event_type", "data_file"])]
    service: Option<String>,
    /// Compute the key from an event: its type.
    #[arg(long, requires = "service")]
    event_type: Option<String>,
    /// Compute the key from an event: its `event_id` (leave out for an event without one).
    #[arg(long, requires = "service")]
    event_id: Option<String>,
    /// Compute the key from an event: a file with its `data` JSON (`-`: standard input).
    #[arg(long, value_name = "FILE", requires = "service")]
    data_file: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub(crate) struct ReleaseArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The key whose record to remove.
    key: String,
    /// Do not ask for confirmation.
    #[arg(long)]
    yes: bool,
}

#[derive(Args)]
pub(crate) struct StatsArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Only this service's records.
    #[arg(long)]
    service: Option<String>,
    /// Keys per service and event type whose memory is measured.
    #[arg(long, default_value_t = 20)]
    samples: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// `--limit`: a whole number, at least 1.
fn at_least_one(value: &str) -> Result<usize, String> {
    value
        .parse::<usize>()
        .ok()
        .filter(|&n| n >= 1)
        .ok_or_else(|| "must be a whole number, at least 1".to_owned())
}

/// Checks the prefix (and service) as a configuration would, and gives the literal key
/// prefix to list: `{prefix}:`, `{prefix}:{service}:`, or with the event type's segment
/// under `scheme` too.
fn scope(
    scheme: KeyScheme,
    prefix: &str,
    service: Option<&str>,
    event_type: Option<&str>,
) -> Result<String, String> {
    IdempotencyConfig::builder(service.unwrap_or("any"))
        .key_prefix(prefix)
        .build()
        .map_err(|e| e.to_string())?;
    let mut scope = format!("{prefix}:");
    if let Some(service) = service {
        scope.push_str(service);
        scope.push(':');
        if let Some(event_type) = event_type {
            let segment = scheme
                .event_type_segment(event_type)
                .map_err(|e| e.to_string())?;
            scope.push_str(&segment);
            scope.push(':');
        }
    } else if let Some(event_type) = event_type {
        // Checked here too, so that a refused type is refused with or without --service.
        scheme
            .event_type_segment(event_type)
            .map_err(|e| e.to_string())?;
    }
    Ok(scope)
}

/// The parts of `key` when it belongs to the namespace listed: of the key form under
/// `prefix` (as `release` requires) and, when `service` is given, of that service. Listing
/// goes by the literal beginning `{prefix}:{service}:`, which a key of another prefix can
/// share (prefix `P:x`, service `s` gives `P:x:s:...`, under `P:x:`): it is left out.
fn own_parts(
    scheme: KeyScheme,
    prefix: &str,
    service: Option<&str>,
    key: &str,
) -> Option<KeyParts> {
    KeyParts::parse_with(scheme, prefix, key)
        .filter(|parts| service.is_none_or(|service| parts.service == service))
}

async fn open(args: &StoreArgs) -> Result<Connected, String> {
    connect(&Backend::for_admin(args), false).await
}

/// Every live record under `scope` that `keep` accepts, up to `limit` of them; and
/// whether more were left out.
async fn collect(
    store: &dyn AdminStore,
    scope: &str,
    limit: usize,
    mut keep: impl FnMut(&ListedRecord) -> bool,
) -> Result<(Vec<ListedRecord>, bool), String> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = store
            .list_page(scope, cursor.as_deref(), PAGE)
            .await
            .map_err(|e| e.to_string())?;
        for record in page.records {
            if keep(&record) {
                if out.len() == limit {
                    return Ok((out, true));
                }
                out.push(record);
            }
        }
        match page.next {
            Some(next) => cursor = Some(next),
            None => return Ok((out, false)),
        }
    }
}

/// A short human duration: `850ms`, `12.5s`, `4m05s`, `3h07m`, `2d05h`.
pub(crate) fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => format!("{}ms", d.as_millis()),
        1..=59 => format!("{:.1}s", d.as_secs_f64()),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

fn age(record: &Record) -> Option<Duration> {
    record
        .updated_at
        .map(|at| SystemTime::now().duration_since(at).unwrap_or_default())
}

fn ms(d: Option<Duration>) -> Value {
    d.map_or(Value::Null, |d| {
        json!(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    })
}

fn or_dash(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".to_owned(), human)
}

/// Prints a table in the demo's style; columns after the first `left` are right-aligned.
fn table(headers: &[&str], rows: &[Vec<String>], left: usize) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::from("|");
        for (i, (cell, w)) in cells.zip(&widths).enumerate() {
            if i < left {
                out.push_str(&format!(" {cell:<w$} |"));
            } else {
                out.push_str(&format!(" {cell:>w$} |"));
            }
        }
        out
    };
    println!("{}", line(&mut headers.iter().copied()));
    let rule: String = widths
        .iter()
        .map(|w| format!("|{}", "-".repeat(w + 2)))
        .collect();
    println!("{rule}|");
    for row in rows {
        println!("{}", line(&mut row.iter().map(String::as_str)));
    }
}

fn state_of(name: Option<&str>) -> Option<RecordState> {
    match name {
        Some("processing") => Some(RecordState::Processing),
        Some("completed") => Some(RecordState::Completed),
        _ => None,
    }
}

pub(crate) async fn keys(args: KeysArgs) -> ExitCode {
    let scheme = args.store.key_scheme;
    let scope = match scope(
        scheme,
        &args.store.prefix,
        args.service.as_deref(),
        args.event_type.as_deref(),
    ) {
        Ok(scope) => scope,
        Err(err) => return fail(err),
    };
    let connected = match open(&args.store).await {
        Ok(c) => c,
        Err(err) => return fail(err),
    };
    let want_state = state_of(args.state.as_deref());
    let prefix = args.store.prefix.as_str();
    // Checked by `scope` above; the segments of one type are equal.
    let segment = args
        .event_type
        .as_deref()
        .and_then(|t| scheme.event_type_segment(t).ok());
    let service = args.service.as_deref();
    let listed = collect(connected.store.as_ref(), &scope, args.limit, |r| {
        let Some(parts) = own_parts(scheme, prefix, service, &r.key) else {
            return false;
        };
        let type_ok = segment
            .as_deref()
            .is_none_or(|want| parts.event_type_segment == want);
        type_ok && want_state.is_none_or(|s| r.record.state == s)
    })
    .await;
    let (records, more) = match listed {
        Ok(listed) => listed,
        Err(err) => return fail(err),
    };
    if args.json {
        let items: Vec<Value> = records
            .iter()
            .map(|r| {
                let parts = KeyParts::parse_with(scheme, prefix, &r.key);
                json!({
                    "key": r.key,
                    "service": parts.as_ref().map(|p| p.service.clone()),
                    "event_type": parts.as_ref().map(|p| p.event_type_display().to_owned()),
                    "state": r.record.state.as_str(),
                    "owner": r.record.owner,
                    "age_ms": ms(age(&r.record)),
                    "ttl_left_ms": ms(r.record.ttl_left),
                })
            })
            .collect();
        println!("{}", Value::Array(items));
        return found(!records.is_empty());
    }
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|r| {
            vec![
                r.key.clone(),
                r.record.state.as_str().to_owned(),
                r.record.owner.clone().unwrap_or_else(|| "-".into()),
                or_dash(age(&r.record)),
                or_dash(r.record.ttl_left),
            ]
        })
        .collect();
    table(&["key", "state", "owner", "age", "ttl left"], &rows, 3);
    println!(
        "{} key(s) under {scope} in {}{}",
        records.len(),
        connected.target,
        if more {
            format!("; more left out (raise --limit {})", args.limit)
        } else {
            String::new()
        }
    );
    found(!records.is_empty())
}

/// Exit code 0 when something was found, [`EXIT_NO`] when nothing was.
fn found(anything: bool) -> ExitCode {
    if anything {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_NO)
    }
}

/// The store's error reading `key`, in plain words when the key holds no record at all: a
/// Redis key of another type than string (a list, a hash, ...) fails the read script.
fn read_error(key: &str, err: StoreError) -> String {
    if err.to_string().contains("WRONGTYPE") {
        format!(
            "{key:?} holds a Redis value that is not a string (a list, hash, set, ...): it is \
             not an eventonce record"
        )
    } else {
        err.to_string()
    }
}

/// The key `show` asks for: given (and under the prefix), or computed from the event.
fn show_key(args: &ShowArgs) -> Result<String, String> {
    if let Some(key) = &args.key {
        let prefix = &args.store.prefix;
        scope(KeyScheme::default(), prefix, None, None)?;
        if !key.starts_with(&format!("{prefix}:")) {
            return Err(format!(
                "refusing to show {key:?}: it is not a key under {prefix}: (use --prefix for \
                 another namespace)"
            ));
        }
        return Ok(key.clone());
    }
    let (Some(service), Some(event_type), Some(file)) =
        (&args.service, &args.event_type, &args.data_file)
    else {
        return Err("give a KEY, or --service, --event-type and --data-file".into());
    };
    let text = if file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .map_err(|e| format!("cannot read the data from standard input: {e}"))?;
        text
    } else {
        std::fs::read_to_string(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?
    };
    let data: Value = serde_json::from_str(&text).map_err(|e| {
        let source = if file.as_os_str() == "-" {
            "standard input".to_owned()
        } else {
            file.display().to_string()
        };
        format!(
            "the data in {source} is not JSON: {}",
            json_error(&text, &e)
        )
    })?;
    let mut envelope = EventEnvelope::new(event_type.clone(), data);
    if let Some(id) = &args.event_id {
        envelope = envelope.with_event_id(id.clone());
    }
    let config = IdempotencyConfig::builder(service.clone())
        .key_prefix(args.store.prefix.clone())
        .key_scheme(args.store.key_scheme)
        .build()
        .map_err(|e| e.to_string())?;
    config.event_key(&envelope).map_err(|e| e.to_string())
}

/// Where and why `text` is not JSON: `line L, column C: cause; the line reads: ...`.
fn json_error(text: &str, err: &serde_json::Error) -> String {
    let (line, column) = (err.line(), err.column());
    // serde_json's words end with " at line L column C": given separately here.
    let full = err.to_string();
    let cause = full
        .rsplit_once(" at line ")
        .map_or(full.as_str(), |(cause, _)| cause);
    let context = match text.lines().nth(line.saturating_sub(1)) {
        _ if text.trim().is_empty() => "the input is empty".to_owned(),
        Some(l) => format!(
            "the line reads: {}",
            l.chars().take(120).collect::<String>()
        ),
        None => "at the end of the input".to_owned(),
    };
    format!("line {line}, column {column}: {cause}; {context}")
}

fn describe(scheme: KeyScheme, prefix: &str, key: &str, record: &Record) -> Value {
    let parts = KeyParts::parse_with(scheme, prefix, key);
    json!({
        "key": key,
        "service": parts.as_ref().map(|p| p.service.clone()),
        "event_type": parts.as_ref().map(|p| p.event_type_display().to_owned()),
        "hash": parts.as_ref().map(|p| p.hash.clone()),
        "state": record.state.as_str(),
        "owner": record.owner,
        "fingerprint": record.fingerprint(),
        "written_by": if record.owner.is_some() { "eventonce" } else { "an older writer" },
        "age_ms": ms(age(record)),
        "ttl_left_ms": ms(record.ttl_left),
    })
}

fn print_record(scheme: KeyScheme, prefix: &str, key: &str, record: &Record) {
    let parts = KeyParts::parse_with(scheme, prefix, key);
    println!("key:        {key}");
    if let Some(p) = &parts {
        println!("service:    {}", p.service);
        println!("event type: {}", p.event_type_display());
        println!("hash:       {}", p.hash);
    } else {
        println!("(the key is not of the form {prefix}:<service>:<event type>:<hash>)");
    }
    println!("state:      {}", record.state.as_str());
    match &record.owner {
        Some(owner) => println!("owner:      {owner}"),
        None => println!("owner:      - (an older writer's value)"),
    }
    match record.fingerprint() {
        Some(fingerprint) => println!("fingerprint: {fingerprint} (of the payload)"),
        None => println!("fingerprint: - (none recorded)"),
    }
    println!("age:        {}", or_dash(age(record)));
    println!("ttl left:   {}", or_dash(record.ttl_left));
}

/// Whether `key` is a whole key of `scheme` under `prefix`: service, event type and a hash
/// of the scheme's length in lowercase hex (a key cut short anywhere is not).
fn whole_key(scheme: KeyScheme, prefix: &str, key: &str) -> bool {
    let Some(parts) = KeyParts::parse_with(scheme, prefix, key) else {
        return false;
    };
    // The scheme's hash length, from a key it makes.
    let sample = IdempotencyConfig::builder("s")
        .key_scheme(scheme)
        .build()
        .ok()
        .and_then(|config| config.event_key(&EventEnvelope::new("t", json!({}))).ok())
        .and_then(|k| {
            KeyParts::parse_with(scheme, eventonce::config::defaults::DEFAULT_KEY_PREFIX, &k)
        });
    sample.is_none_or(|sample| {
        parts.hash.len() == sample.hash.len()
            && parts
                .hash
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Prints that `key` holds no record, and, when it is not a whole key of the form the
/// consumers write (a shortened or mistyped one), says so: it can never hold one.
fn absent(scheme: KeyScheme, prefix: &str, key: &str, json: bool) {
    let form = (!whole_key(scheme, prefix, key))
        .then(|| format!("the key is not of the form {prefix}:<service>:<event type>:<hash>"));
    if json {
        let mut out = json!({"key": key, "state": "absent"});
        if let Some(note) = form {
            out["note"] = json!(note);
        }
        println!("{out}");
        return;
    }
    println!("key:        {key}");
    println!("state:      absent (never processed, or expired)");
    if let Some(note) = form {
        println!(
            "({note}: a shortened or mistyped key finds nothing; copy it whole from `eventonce keys`)"
        );
    }
}

pub(crate) async fn show(args: ShowArgs) -> ExitCode {
    let key = match show_key(&args) {
        Ok(key) => key,
        Err(err) => return fail(err),
    };
    let connected = match open(&args.store).await {
        Ok(c) => c,
        Err(err) => return fail(err),
    };
    let found = match connected.store.get_with_result(&key).await {
        Ok(found) => found,
        Err(err) => return fail(read_error(&key, err)),
    };
    let (scheme, prefix) = (args.store.key_scheme, &args.store.prefix);
    match (found, args.json) {
        (Some((record, result)), true) => {
            let mut shown = describe(scheme, prefix, &key, &record);
            add_result(&mut shown, result.as_deref());
            println!("{shown}");
        }
        (Some((record, result)), false) => {
            print_record(scheme, prefix, &key, &record);
            println!("result:     {}", result_text(result.as_deref()));
        }
        (None, json) => {
            absent(scheme, prefix, &key, json);
            return ExitCode::from(EXIT_NO);
        }
    }
    ExitCode::SUCCESS
}

/// The hex digits of a result's first bytes shown for one that is not JSON.
const RESULT_PREFIX_BYTES: usize = 32;

/// A stored result as `show` prints it: its JSON on one line, or its size and a hex
/// prefix when it is not JSON.
fn result_text(result: Option<&[u8]>) -> String {
    match result {
        None => "- (none stored)".to_owned(),
        Some(bytes) => match serde_json::from_slice::<Value>(bytes) {
            Ok(value) => value.to_string(),
            Err(_) => format!("{} bytes, not JSON: {}", bytes.len(), hex_prefix(bytes)),
        },
    }
}

/// `show --json`'s fields of a stored result: `result` (its JSON, or null), and for a
/// result that is not JSON `result_bytes` and `result_hex_prefix`.
fn add_result(shown: &mut Value, result: Option<&[u8]>) {
    let Some(fields) = shown.as_object_mut() else {
        return;
    };
    let parsed = result.map(serde_json::from_slice::<Value>);
    match (result, parsed) {
        (Some(_), Some(Ok(value))) => {
            fields.insert("result".into(), value);
        }
        (Some(bytes), _) => {
            fields.insert("result".into(), Value::Null);
            fields.insert("result_bytes".into(), json!(bytes.len()));
            fields.insert("result_hex_prefix".into(), json!(hex_prefix(bytes)));
        }
        (None, _) => {
            fields.insert("result".into(), Value::Null);
        }
    }
}

/// The first bytes of `bytes` in lowercase hex, `...` after them when there are more.
fn hex_prefix(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(RESULT_PREFIX_BYTES * 2 + 3);
    for byte in bytes.iter().take(RESULT_PREFIX_BYTES) {
        let _ = write!(out, "{byte:02x}");
    }
    if bytes.len() > RESULT_PREFIX_BYTES {
        out.push_str("...");
    }
    out
}

/// What removing a record in `state` does, for the confirmation prompt.
fn consequence(state: RecordState) -> &'static str {
    match state {
        RecordState::Completed => {
            "The event was processed; releasing it lets its next delivery be processed again \
             (except by a consumer with a CachedStore that completed it: its local cache \
             answers Duplicate until the cache's max_ttl passes or the consumer restarts)."
        }
        RecordState::Processing => {
            "A consumer holds this claim and may be running the handler now. Releasing it lets \
             the next delivery run concurrently; the holder's completion then fails \
             (CLAIM_LOST) and its record is not written."
        }
    }
}

pub(crate) async fn release(args: ReleaseArgs) -> ExitCode {
    let (scheme, prefix) = (args.store.key_scheme, &args.store.prefix);
    if let Err(err) = scope(scheme, prefix, None, None) {
        return fail(err);
    }
    if !args.key.starts_with(&format!("{prefix}:"))
        || KeyParts::parse_with(scheme, prefix, &args.key).is_none()
    {
        return fail(format!(
            "refusing to release {:?}: it is not a key under {prefix}: (of the form \
             {prefix}:<service>:<event type>:<hash>); use --prefix for another namespace",
            args.key
        ));
    }
    let connected = match open(&args.store).await {
        Ok(c) => c,
        Err(err) => return fail(err),
    };
    let record = match connected.store.get(&args.key).await {
        Ok(Some(record)) => record,
        Ok(None) => {
            println!("no live record at {}; nothing to release", args.key);
            return ExitCode::from(EXIT_NO);
        }
        Err(err) => return fail(read_error(&args.key, err)),
    };
    print_record(scheme, prefix, &args.key, &record);
    if record.owner.is_none() {
        return fail(
            "refusing: this value was written by an older writer, not by eventonce; it is left untouched",
        );
    }
    println!();
    println!("{}", consequence(record.state));
    if !args.yes {
        print!("Release {}? [y/N] ", args.key);
        let _ = std::io::stdout().flush();
        let mut answer = String::new();
        if std::io::stdin().lock().read_line(&mut answer).is_err() {
            answer.clear();
        }
        if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
            // The answer was not echoed: end the prompt's line.
            println!();
        }
        let answer = answer.trim().to_ascii_lowercase();
        if answer != "y" && answer != "yes" {
            println!("not released");
            return ExitCode::from(EXIT_NO);
        }
    }
    match connected
        .store
        .remove_if_unchanged(&args.key, &record)
        .await
    {
        Ok(true) => {
            println!("released {} (it was {})", args.key, record.state.as_str());
            ExitCode::SUCCESS
        }
        Ok(false) => {
            println!(
                "not released: the record changed or expired since it was read; run `show` again"
            );
            ExitCode::from(EXIT_NO)
        }
        Err(err) => fail(err),
    }
}

#[derive(Default)]
struct Group {
    processing: u64,
    completed: u64,
    sample: Vec<String>,
    sampled_bytes: u64,
    measured: u64,
}

impl Group {
    fn total(&self) -> u64 {
        self.processing + self.completed
    }

    /// The measured average times the count, rounded.
    fn estimate(&self) -> Option<u64> {
        (self.measured > 0).then(|| {
            let avg = self.sampled_bytes as f64 / self.measured as f64;
            (avg * self.total() as f64).round() as u64
        })
    }
}

/// `1.5 KiB`, `3.2 MiB`.
fn bytes(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", units[unit])
    }
}

pub(crate) async fn stats(args: StatsArgs) -> ExitCode {
    let scheme = args.store.key_scheme;
    let scope = match scope(scheme, &args.store.prefix, args.service.as_deref(), None) {
        Ok(scope) => scope,
        Err(err) => return fail(err),
    };
    let connected = match open(&args.store).await {
        Ok(c) => c,
        Err(err) => return fail(err),
    };
    let store = connected.store.as_ref();
    let groups = match count_groups(store, &args, &scope).await {
        Ok(groups) => groups,
        Err(err) => return fail(err),
    };
    let totals = Totals::of(&groups);
    let report = StatsReport {
        args: &args,
        backend: Backend::for_admin(&args.store),
        target: &connected.target,
        scope: &scope,
        measure: store.memory_measure(),
    };
    if args.json {
        report.print_json(&groups, &totals);
    } else {
        report.print_table(&groups, &totals);
    }
    found(totals.processing + totals.completed > 0)
}

/// Records per (service, event type), each group's sample measured.
type Groups = BTreeMap<(String, String), Group>;

/// Lists every record under `scope` into its group, then measures each group's sample.
async fn count_groups(
    store: &dyn crate::connect::Store,
    args: &StatsArgs,
    scope: &str,
) -> Result<Groups, StoreError> {
    let (scheme, prefix) = (args.store.key_scheme, args.store.prefix.as_str());
    let mut groups = Groups::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = store.list_page(scope, cursor.as_deref(), PAGE).await?;
        for r in page.records {
            let Some(parts) = own_parts(scheme, prefix, args.service.as_deref(), &r.key) else {
                continue;
            };
            let event_type = parts.event_type_display().to_owned();
            let group = groups.entry((parts.service, event_type)).or_default();
            match r.record.state {
                RecordState::Processing => group.processing += 1,
                RecordState::Completed => group.completed += 1,
            }
            if group.sample.len() < args.samples {
                group.sample.push(r.key);
            }
        }
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    for group in groups.values_mut() {
        for size in store
            .memory_usage(&group.sample)
            .await?
            .into_iter()
            .flatten()
        {
            group.sampled_bytes += size;
            group.measured += 1;
        }
    }
    Ok(groups)
}

/// The sums over every group.
struct Totals {
    processing: u64,
    completed: u64,
    estimate: u64,
    measured: u64,
}

impl Totals {
    fn of(groups: &Groups) -> Totals {
        let sum = |f: &dyn Fn(&Group) -> u64| groups.values().map(f).sum::<u64>();
        Totals {
            processing: sum(&|g| g.processing),
            completed: sum(&|g| g.completed),
            estimate: sum(&|g| g.estimate().unwrap_or(0)),
            measured: sum(&|g| g.measured),
        }
    }
}

/// What `stats` prints besides the groups.
struct StatsReport<'a> {
    args: &'a StatsArgs,
    backend: Backend,
    target: &'a str,
    scope: &'a str,
    measure: &'static str,
}

impl StatsReport<'_> {
    fn print_json(&self, groups: &Groups, totals: &Totals) {
        let items: Vec<Value> = groups
            .iter()
            .map(|((service, event_type), g)| {
                json!({
                    "service": service,
                    "event_type": event_type,
                    "processing": g.processing,
                    "completed": g.completed,
                    "records": g.total(),
                    "memory_keys_sampled": g.measured,
                    "memory_bytes_estimate": g.estimate(),
                })
            })
            .collect();
        let out = json!({
            "backend": self.backend.name(),
            "target": self.target,
            "prefix": self.args.store.prefix,
            "scope": self.scope,
            "memory": {
                "measure": self.measure,
                "sampled": true,
                "samples_per_group": self.args.samples,
                "keys_sampled": totals.measured,
            },
            "groups": items,
            "total": {
                "processing": totals.processing,
                "completed": totals.completed,
                "records": totals.processing + totals.completed,
                "memory_bytes_estimate": totals.estimate,
            },
        });
        println!("{out}");
    }

    fn print_table(&self, groups: &Groups, totals: &Totals) {
        println!(
            "eventonce stats: {} {}, keys under {}",
            self.backend.name(),
            self.target,
            self.scope
        );
        println!();
        let mut rows: Vec<Vec<String>> = groups
            .iter()
            .map(|((service, event_type), g)| {
                vec![
                    service.clone(),
                    event_type.clone(),
                    g.processing.to_string(),
                    g.completed.to_string(),
                    g.estimate().map_or_else(|| "-".to_owned(), bytes),
                ]
            })
            .collect();
        rows.push(vec![
            "total".into(),
            String::new(),
            totals.processing.to_string(),
            totals.completed.to_string(),
            bytes(totals.estimate),
        ]);
        table(
            &[
                "service",
                "event type",
                "processing",
                "completed",
                "memory (est.)",
            ],
            &rows,
            2,
        );
        println!();
        println!(
            "memory is sampled: {} of up to {} keys per service and event type ({} keys measured), \
             averaged and multiplied by the group's count",
            self.measure, self.args.samples, totals.measured
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(human(Duration::from_millis(850)), "850ms");
        assert_eq!(human(Duration::from_millis(12_500)), "12.5s");
        assert_eq!(human(Duration::from_secs(245)), "4m05s");
        assert_eq!(human(Duration::from_secs(3 * 3600 + 7 * 60)), "3h07m");
        assert_eq!(human(Duration::from_secs(2 * 86_400 + 5 * 3600)), "2d05h");
    }

    #[test]
    fn sizes_read_at_a_glance() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 * 1024 * 1024), "3.0 MiB");
    }

    #[test]
    fn scopes_are_literal_prefixes_and_validated() {
        let e = KeyScheme::Eventonce;
        assert_eq!(scope(e, "p:q", None, None).as_deref(), Ok("p:q:"));
        assert_eq!(
            scope(e, "p", Some("svc"), Some("a.b")).as_deref(),
            Ok("p:svc:a_b:")
        );
        assert_eq!(
            scope(e, "p", Some("svc"), Some("a.b_c")).as_deref(),
            Ok("p:svc:a_b%5Fc:")
        );
        assert!(scope(e, "p*", None, None).is_err());
        assert!(scope(e, "p", Some("a:b"), None).is_err());
    }

    #[test]
    fn python_v2_scopes_use_the_decorators_segment_and_refuse_what_it_cannot_key() {
        let v2 = KeyScheme::PythonV2;
        assert_eq!(
            scope(v2, "p", Some("svc"), Some("a.b_c")).as_deref(),
            Ok("p:svc:a_b_c:")
        );
        for bad in ["a:b", "a*", "a b"] {
            let err = scope(v2, "p", Some("svc"), Some(bad)).expect_err(bad);
            assert!(err.contains("python-v2"), "{err}");
            assert!(scope(v2, "p", None, Some(bad)).is_err());
        }
    }

    #[test]
    fn the_estimate_extrapolates_the_sampled_average() {
        let g = Group {
            processing: 10,
            completed: 90,
            sample: Vec::new(),
            sampled_bytes: 300,
            measured: 3,
        };
        assert_eq!(g.estimate(), Some(10_000));
        assert_eq!(Group::default().estimate(), None);
    }
}
