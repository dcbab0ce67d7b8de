//! The PostgreSQL servers of the TLS tests: one with `ssl=on` and a certificate authority
//! of its own, and one with `ssl=off`, both started by `scripts/postgres-tls.sh`.

use std::sync::OnceLock;

/// Where the TLS tests' servers are (see `scripts/postgres-tls.sh`).
#[derive(Debug, Clone)]
pub struct PostgresTls {
    /// The server with `ssl=on`, as `postgres://postgres@localhost:PORT/postgres` (no
    /// `sslmode`): its certificate names `localhost` only, the server listens on 127.0.0.1.
    pub url: String,
    /// The file of the authority that signed the server's certificate.
    pub ca: String,
    /// The file of an authority that signed nothing of the server's.
    pub wrong_ca: String,
    /// A server with `ssl=off`, as `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub plain_url: String,
}

/// The servers: from `POSTGRES_TLS_URL`, `POSTGRES_TLS_CA`, `POSTGRES_TLS_WRONG_CA` and
/// `POSTGRES_PLAIN_URL` (`make test` starts them and sets these), else started once per
/// process with `scripts/postgres-tls.sh start` (it finds servers already running).
pub fn postgres_tls() -> &'static PostgresTls {
    static SERVERS: OnceLock<PostgresTls> = OnceLock::new();
    SERVERS.get_or_init(|| from_env().unwrap_or_else(start))
}

const NAMES: [&str; 4] = [
    "POSTGRES_TLS_URL",
    "POSTGRES_TLS_CA",
    "POSTGRES_TLS_WRONG_CA",
    "POSTGRES_PLAIN_URL",
];

fn from_settings(get: impl Fn(&str) -> Option<String>) -> Option<PostgresTls> {
    let [url, ca, wrong_ca, plain_url] = NAMES.map(|n| get(n).filter(|v| !v.trim().is_empty()));
    Some(PostgresTls {
        url: url?,
        ca: ca?,
        wrong_ca: wrong_ca?,
        plain_url: plain_url?,
    })
}

fn from_env() -> Option<PostgresTls> {
    from_settings(|name| std::env::var(name).ok())
}

fn start() -> PostgresTls {
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/postgres-tls.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .arg("start")
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "scripts/postgres-tls.sh start failed: {stdout}"
    );
    from_settings(|name| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .map(str::to_owned)
    })
    .unwrap_or_else(|| panic!("scripts/postgres-tls.sh start did not print {NAMES:?}: {stdout}"))
}
