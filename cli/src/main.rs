//! The `eventonce` command: `eventonce demo` shows the guard at work; `keys`, `show`,
//! `release` and `stats` let an operator look at and fix the records in Redis or PostgreSQL.

mod admin;
mod connect;
mod demo;
#[cfg(feature = "kafka")]
mod kafka_demo;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "eventonce", version, about = "Process each event once")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Push a stream of events with duplicates, failures and a crash through the guard,
    /// on the embedded in-memory store (or Redis, or PostgreSQL), and print what happened.
    Demo(demo::DemoArgs),
    /// List keys with their state, owner, age and TTL left (SCAN on Redis, paged SQL on
    /// PostgreSQL; never KEYS).
    Keys(admin::KeysArgs),
    /// Show one record, decoded: by key, or computed from an event.
    #[command(override_usage = "eventonce show [OPTIONS] <KEY>\n       \
        eventonce show [OPTIONS] --service <SERVICE> --event-type <EVENT_TYPE> \
        [--event-id <EVENT_ID>] --data-file <FILE>")]
    Show(admin::ShowArgs),
    /// Remove one record so that its event can be processed again (asks first).
    Release(admin::ReleaseArgs),
    /// Count records per service, event type and state, with their (sampled) memory.
    Stats(admin::StatsArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => return fail(format!("cannot start the runtime: {err}")),
    };
    match cli.command {
        Command::Demo(args) => runtime.block_on(demo::demo(args)),
        Command::Keys(args) => runtime.block_on(admin::keys(args)),
        Command::Show(args) => runtime.block_on(admin::show(args)),
        Command::Release(args) => runtime.block_on(admin::release(args)),
        Command::Stats(args) => runtime.block_on(admin::stats(args)),
    }
}

/// Exit code of a command that ran and whose answer is no: nothing found, declined, not
/// released, or the demo's exactly-once check failed. The rule for every command is in
/// docs/operations.md: 0 done, 1 no, 2 could not run.
pub(crate) const EXIT_NO: u8 = 1;
/// Exit code of a command that could not do its job: a usage error (clap exits 2 too), a
/// refused argument or key, a store that cannot be reached or fails.
pub(crate) const EXIT_ERROR: u8 = 2;

/// Prints `error: {message}` on standard error; exit code [`EXIT_ERROR`].
pub(crate) fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(EXIT_ERROR)
}
