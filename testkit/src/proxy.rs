//! A TCP proxy on loopback between a client library and a real server, which a test
//! switches between faults: added latency, a black hole (accepts, never answers), refused
//! connections, and dropping every open connection at once.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does to traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    /// Forwards everything at once.
    Pass,
    /// Forwards everything after a delay per chunk.
    Latency(Duration),
    /// Accepts connections and reads requests, but forwards nothing until the mode changes.
    BlackHole,
    /// Closes every new connection at once (a server that is down).
    Refuse,
}

/// A running proxy; stops when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    mode: watch::Sender<ProxyMode>,
    generation: watch::Sender<u64>,
    accepted: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Starts a proxy on a free loopback port in front of `upstream`.
    pub async fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (mode, mode_rx) = watch::channel(ProxyMode::Pass);
        let (generation, gen_rx) = watch::channel(0u64);
        let accepted = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&accepted);
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                counter.fetch_add(1, Ordering::Relaxed);
                let (mode_rx, gen_rx) = (mode_rx.clone(), gen_rx.clone());
                tokio::spawn(serve(client, upstream, mode_rx, gen_rx));
            }
        });
        FaultProxy {
            addr,
            mode,
            generation,
            accepted,
            task,
        }
    }

    /// The proxy's address: point the client here.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Switches the fault.
    pub fn set(&self, mode: ProxyMode) {
        let _ = self.mode.send(mode);
    }

    /// Drops every open connection (the client sees a reset).
    pub fn drop_connections(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.drop_connections();
    }
}

async fn wait_while_black_hole(mode: &mut watch::Receiver<ProxyMode>) -> ProxyMode {
    loop {
        let current = *mode.borrow_and_update();
        if current != ProxyMode::BlackHole {
            return current;
        }
        if mode.changed().await.is_err() {
            return ProxyMode::Refuse;
        }
    }
}

async fn serve(
    client: TcpStream,
    upstream: SocketAddr,
    mut mode: watch::Receiver<ProxyMode>,
    mut generation: watch::Receiver<u64>,
) {
    let born = *generation.borrow_and_update();
    if *mode.borrow() == ProxyMode::Refuse {
        return;
    }
    let mut hold = mode.clone();
    // A black hole accepts but does not even connect upstream until it ends.
    tokio::select! {
        m = wait_while_black_hole(&mut hold) => if m == ProxyMode::Refuse { return },
        _ = generation.changed() => return,
    }
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let up = pump(&mut cr, &mut sw, mode.clone());
    let down = pump(&mut sr, &mut cw, mode.clone());
    tokio::select! {
        _ = up => {}
        _ = down => {}
        _ = async {
            while generation.changed().await.is_ok() {
                if *generation.borrow() != born { break }
            }
        } => {}
        _ = async {
            loop {
                if *mode.borrow_and_update() == ProxyMode::Refuse { break }
                if mode.changed().await.is_err() { break }
            }
        } => {}
    }
}

async fn pump<R, W>(
    from: &mut R,
    to: &mut W,
    mut mode: watch::Receiver<ProxyMode>,
) -> std::io::Result<()>
where
    R: AsyncReadExt + Unpin,
    W: AsyncWriteExt + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        match wait_while_black_hole(&mut mode).await {
            ProxyMode::Latency(d) => tokio::time::sleep(d).await,
            ProxyMode::Refuse => return Ok(()),
            _ => {}
        }
        to.write_all(&buf[..n]).await?;
    }
}
