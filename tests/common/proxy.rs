//! A TCP proxy in front of PostgreSQL that can lose one reply: the server
//! did the work, the client never hears of it (a COMMIT whose answer was
//! lost with the connection).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

pub struct Proxy {
    pub port: u16,
    sabotage: Arc<AtomicI64>,
    dropped: Arc<AtomicU64>,
}

impl Proxy {
    /// Forwards 127.0.0.1:`port` (chosen) to 127.0.0.1:`upstream`.
    pub fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().unwrap().port();
        let sabotage = Arc::new(AtomicI64::new(-1));
        let dropped = Arc::new(AtomicU64::new(0));
        let (s, d) = (sabotage.clone(), dropped.clone());
        std::thread::spawn(move || {
            for (n, client) in listener.incoming().enumerate() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else { continue };
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || pipe(c2, s2, None));
                let (s, d) = (s.clone(), d.clone());
                std::thread::spawn(move || pipe(server, client, Some((n as i64, s, d))));
            }
        });
        Proxy { port, sabotage, dropped }
    }

    /// The next reply on the `n`-th connection accepted (0-based) is lost,
    /// and that connection is closed.
    pub fn lose_next_reply_on(&self, n: i64) {
        self.sabotage.store(n, Ordering::SeqCst);
    }

    /// Replies lost so far.
    pub fn lost(&self) -> u64 {
        self.dropped.load(Ordering::SeqCst)
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream, sabotage: Option<(i64, Arc<AtomicI64>, Arc<AtomicU64>)>) {
    let mut buf = [0u8; 65536];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some((me, armed, dropped)) = &sabotage {
            if armed.compare_exchange(*me, -1, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
                dropped.fetch_add(1, Ordering::SeqCst);
                break;
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
