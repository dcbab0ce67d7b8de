//! A throwaway `redis-server` process on a free loopback port, which tests stop, pause
//! and restart to inject real outages, or start locked down (password, ACL, TLS).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisProcess {
    pub port: u16,
    pub dir: PathBuf,
    extra: Vec<String>,
    tls: bool,
    child: Option<Child>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

impl RedisProcess {
    /// Starts a plain server on a free port and waits until it accepts connections.
    pub fn start() -> Self {
        Self::start_with(&[], false)
    }

    /// A fresh working directory for a server (certificates may be written there first).
    pub fn new_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "eventonce-redis-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    /// Starts a server with extra arguments; with `tls`, it listens with TLS only.
    pub fn start_with(extra: &[&str], tls: bool) -> Self {
        Self::start_in(Self::new_dir(), extra, tls)
    }

    /// Starts a server working in `dir`.
    pub fn start_in(dir: PathBuf, extra: &[&str], tls: bool) -> Self {
        let mut p = RedisProcess {
            port: free_port(),
            dir,
            extra: extra.iter().map(std::string::ToString::to_string).collect(),
            tls,
            child: None,
        };
        p.spawn();
        p
    }

    /// Starts redis-server on `self.port` and waits until it serves there. Returns `false`
    /// when it could not (the port was taken meanwhile): the open port then belongs to
    /// another process, so the pid file the server writes is what proves it is ours.
    fn try_spawn(&mut self) -> bool {
        let port = self.port.to_string();
        let ports: Vec<&str> = if self.tls {
            vec!["--port", "0", "--tls-port", &port]
        } else {
            vec!["--port", &port]
        };
        let pidfile = self.dir.join(format!("redis-{port}.pid"));
        let _ = std::fs::remove_file(&pidfile);
        let mut child = Command::new("redis-server")
            .args(&ports)
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(&self.extra)
            .arg("--dir")
            .arg(&self.dir)
            .arg("--pidfile")
            .arg(&pidfile)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/services.sh installs it)");
        let ours = child.id().to_string();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            let written = std::fs::read_to_string(&pidfile).unwrap_or_default();
            if written.trim() == ours && port_open(self.port) {
                self.child = Some(child);
                return true;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts the server on a free port, trying another one if the port was taken.
    fn spawn(&mut self) {
        for _ in 0..5 {
            if self.try_spawn() {
                return;
            }
            self.port = free_port();
        }
        panic!("redis-server did not start on five free ports");
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    fn pid(&self) -> String {
        self.child
            .as_ref()
            .map(|c| c.id().to_string())
            .expect("running")
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.pid()])
            .status()
            .map(|s| s.success());
        assert_eq!(ok.ok(), Some(true), "kill {sig}");
    }

    /// SIGKILL: the server is gone, its port refuses connections.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (empty unless it was given persistence).
    pub fn restart(&mut self) {
        self.kill();
        assert!(
            self.try_spawn(),
            "redis-server did not start again on port {}",
            self.port
        );
    }

    /// SIGSTOP: connections stay open but nothing answers (a black hole).
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT: the server answers again.
    pub fn resume(&self) {
        self.signal("-CONT");
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = Command::new("kill").args(["-CONT", &self.pid()]).status();
        }
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
