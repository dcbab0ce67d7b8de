//! Which store a command talks to, and connecting to it.

use std::sync::Arc;

use clap::Args;
#[cfg(any(feature = "redis", feature = "postgres"))]
use eventonce::StoreError;
use eventonce::{AdminStore, IdempotencyStore};

/// Where an admin command finds the records.
#[derive(Args, Clone, Debug)]
pub(crate) struct StoreArgs {
    /// Redis URL [default: $EVENTONCE_REDIS_URL, else redis://127.0.0.1:6379 when no
    /// PostgreSQL URL is given either].
    #[arg(long, value_name = "URL", conflicts_with = "postgres")]
    pub redis: Option<String>,
    /// PostgreSQL URL [default: $EVENTONCE_POSTGRES_URL when no Redis URL is set].
    #[arg(long, value_name = "URL")]
    pub postgres: Option<String>,
    /// PostgreSQL schema of the records table.
    #[arg(long, value_name = "NAME", default_value = "public")]
    pub pg_schema: String,
    /// PostgreSQL records table.
    #[arg(long, value_name = "NAME", default_value = "eventonce_records")]
    pub pg_table: String,
    /// Key prefix of the records.
    #[arg(long, value_name = "PREFIX", default_value = eventonce::config::defaults::DEFAULT_KEY_PREFIX)]
    pub prefix: String,
    /// How the consumers compute keys: `eventonce` (the default) or `python-v2` (the Python
    /// "idempotency v2" decorator's keys, as `KeyScheme::PythonV2`).
    #[arg(long, value_name = "SCHEME", default_value = "eventonce",
          value_parser = |s: &str| s.parse::<eventonce::KeyScheme>())]
    pub key_scheme: eventonce::KeyScheme,
}

/// A backend chosen on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Backend {
    /// The embedded in-memory store (the demo only).
    Memory,
    /// A Redis server.
    Redis(String),
    /// A PostgreSQL database, with schema and table.
    Postgres {
        url: String,
        schema: String,
        table: String,
    },
}

impl Backend {
    /// The admin commands' choice: the flags, else `EVENTONCE_REDIS_URL`, else
    /// `EVENTONCE_POSTGRES_URL`, else the local Redis.
    pub(crate) fn for_admin(args: &StoreArgs) -> Backend {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let postgres = |url| Backend::Postgres {
            url,
            schema: args.pg_schema.clone(),
            table: args.pg_table.clone(),
        };
        if let Some(url) = &args.redis {
            Backend::Redis(url.clone())
        } else if let Some(url) = &args.postgres {
            postgres(url.clone())
        } else if let Some(url) = env("EVENTONCE_REDIS_URL") {
            Backend::Redis(url)
        } else if let Some(url) = env("EVENTONCE_POSTGRES_URL") {
            postgres(url)
        } else {
            Backend::Redis("redis://127.0.0.1:6379".into())
        }
    }

    /// `memory`, `redis` or `postgres`.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Backend::Memory => "memory",
            Backend::Redis(_) => "redis",
            Backend::Postgres { .. } => "postgres",
        }
    }
}

/// A store that both the guard and the admin commands can use.
pub(crate) trait Store: IdempotencyStore + AdminStore {}
impl<S: IdempotencyStore + AdminStore> Store for S {}

/// A connected store and a description of it without credentials.
pub(crate) struct Connected {
    pub store: Arc<dyn Store>,
    pub target: String,
}

/// Connects to `backend`. `migrate`: create the PostgreSQL table if missing (the demo
/// does; the admin commands never write a schema).
pub(crate) async fn connect(backend: &Backend, migrate: bool) -> Result<Connected, String> {
    match backend {
        Backend::Memory => Err(
            "the in-memory store is private to one process; give --redis URL or --postgres URL"
                .into(),
        ),
        Backend::Redis(url) => redis(url).await,
        Backend::Postgres { url, schema, table } => postgres(url, schema, table, migrate).await,
    }
}

/// How long a command waits for the first connection to its store.
#[cfg(any(feature = "redis", feature = "postgres"))]
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// A failure to connect, for the terminal: the store's own words (they name the store, the
/// target without its password, the cause and what to check), without the `store
/// unavailable:` of the error's type.
#[cfg(any(feature = "redis", feature = "postgres"))]
fn connect_failure(store: &str, err: StoreError) -> String {
    match err {
        StoreError::Unavailable { message, .. } => message,
        other => format!("{store}: {other}"),
    }
}

#[cfg(feature = "redis")]
async fn redis(url: &str) -> Result<Connected, String> {
    use std::time::Duration;
    let options =
        eventonce::RedisOptions::default().timeouts(CONNECT_TIMEOUT, Duration::from_secs(10));
    let store = eventonce::RedisStore::connect_with(url, options)
        .await
        .map_err(|e| connect_failure("Redis", e))?;
    Ok(Connected {
        target: store.target().to_owned(),
        store: Arc::new(store),
    })
}

#[cfg(not(feature = "redis"))]
async fn redis(_url: &str) -> Result<Connected, String> {
    Err(concat!(
        "this eventonce binary was built without the `redis` feature; ",
        "reinstall it with the feature: `cargo install --path cli --features full` in a clone of the repository, or `cargo install --git https://github.com/eventonce/eventonce eventonce-cli --features full`"
    )
    .into())
}

#[cfg(feature = "postgres")]
async fn postgres(
    url: &str,
    schema: &str,
    table: &str,
    migrate: bool,
) -> Result<Connected, String> {
    use eventonce::{PostgresOptions, PostgresStore};
    let options = PostgresOptions::default()
        .schema(schema)
        .table(table)
        .max_connections(8)
        .acquire_timeout(CONNECT_TIMEOUT);
    let store = if migrate {
        PostgresStore::connect_with(url, options).await
    } else {
        PostgresStore::connect_existing(url, options).await
    }
    .map_err(|e| connect_failure("PostgreSQL", e))?;
    if !migrate {
        check_table(&store, url, schema, table).await?;
    }
    Ok(Connected {
        target: format!("table {}", store.table()),
        store: Arc::new(store),
    })
}

/// The admin commands never create the records table: when it is missing (another
/// schema or table, or no consumer has run the migration yet), say which flags name it
/// and what creates it, instead of the database's "relation does not exist".
#[cfg(feature = "postgres")]
async fn check_table(
    store: &eventonce::PostgresStore,
    url: &str,
    schema: &str,
    table: &str,
) -> Result<(), String> {
    let Err(err) = store.get("eventonce:table-check").await else {
        return Ok(());
    };
    // 42P01 undefined_table; other failures are the command's to report.
    if !err.to_string().contains("42P01") {
        return Ok(());
    }
    let defaults = eventonce::PostgresOptions::default();
    Err(format!(
        "there is no records table {schema}.{table} in {}: give the schema and table your \
         consumers use (--pg-schema, --pg-table; the defaults are {}.{}, as \
         PostgresOptions::default()), or create the table by running the migration (a \
         consumer's PostgresStore::connect runs it, PostgresStore::migrate on its own)",
        eventonce::backend::redact_url(url),
        defaults.schema,
        defaults.table
    ))
}

#[cfg(not(feature = "postgres"))]
async fn postgres(
    _url: &str,
    _schema: &str,
    _table: &str,
    _migrate: bool,
) -> Result<Connected, String> {
    Err(concat!(
        "this eventonce binary was built without the `postgres` feature; ",
        "reinstall it with the feature: `cargo install --path cli --features full` in a clone of the repository, or `cargo install --git https://github.com/eventonce/eventonce eventonce-cli --features full`"
    )
    .into())
}

#[cfg(all(test, feature = "postgres"))]
mod tests {
    use clap::Parser;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        store: super::StoreArgs,
    }

    #[test]
    fn the_pg_schema_and_table_defaults_are_the_librarys() {
        let flags = Flags::parse_from(["eventonce"]);
        let library = eventonce::PostgresOptions::default();
        assert_eq!(
            (
                flags.store.pg_schema.as_str(),
                flags.store.pg_table.as_str()
            ),
            (library.schema.as_str(), library.table.as_str())
        );
    }
}
