//! Who answers on a port that does not answer as PostgreSQL: a Redis server reads the
//! PostgreSQL start-up message as an unfinished command and waits for the rest of it, so
//! a PostgreSQL URL aimed at Redis would wait out the whole connect timeout.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long the first connection may go unanswered before the port is probed. A local
/// server answers in milliseconds; a distant one may take longer, and then sees the probe
/// (see [`PROBE`]).
pub(crate) const PROBE_AFTER: Duration = Duration::from_millis(250);

/// A Redis `PING` in the inline form. A Redis (or Valkey) server answers at once (`+PONG`,
/// or an error such as `-NOAUTH ...`). A PostgreSQL server reads its first four bytes as
/// an impossible packet length, closes the connection and logs one line
/// (`invalid length of startup packet`); nothing else happens there. (A probe that a
/// PostgreSQL server would take silently must start with a zero byte, and Redis answers
/// nothing to a line holding one.)
const PROBE: &[u8] = b"PING\r\n";

/// The first line a Redis server at `host:port` answers the probe with, if what answers
/// there is one; `None` for anything else (a PostgreSQL server, silence, an error).
pub(crate) async fn redis_answer(host: &str, port: u16) -> Option<String> {
    let mut socket = TcpStream::connect((host, port)).await.ok()?;
    socket.write_all(PROBE).await.ok()?;
    let mut buf = [0u8; 256];
    let n = socket.read(&mut buf).await.ok()?;
    let answer = buf.get(..n)?;
    // A RESP error (`-`) or simple string (`+`) up to CR LF.
    let line = answer.split(|&b| b == b'\r').next()?;
    let redis_like = matches!(line.first(), Some(b'-' | b'+'))
        && answer.len() > line.len()
        && line.get(1).is_some_and(u8::is_ascii_uppercase);
    redis_like.then(|| {
        String::from_utf8_lossy(line)
            .chars()
            .filter(|c| !c.is_control())
            .take(80)
            .collect()
    })
}
