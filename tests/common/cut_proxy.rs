//! A TCP proxy in front of a real server whose connections the test cuts at a moment it
//! chooses: what a broken network, a load balancer's restart or a NAT timeout does to the
//! connections between the daemon and DVCR. It forwards bytes as they are, so TLS passes
//! through untouched.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct CutProxy {
    addr: SocketAddr,
    /// Bytes per second each direction of each connection may carry (0: no limit).
    rate: Arc<AtomicU64>,
    /// Both ends of every connection forwarded so far.
    open: Arc<Mutex<Vec<TcpStream>>>,
    /// Bytes the server sent through the proxy, over all connections.
    down: Arc<AtomicU64>,
}

impl CutProxy {
    /// Listens on a free port of 127.0.0.1 and forwards every connection to `target`.
    pub fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let registered = open.clone();
        let rate: Arc<AtomicU64> = Arc::default();
        let paced = rate.clone();
        let down: Arc<AtomicU64> = Arc::default();
        let counted = down.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(target) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let (Ok(client_copy), Ok(server_copy)) = (client.try_clone(), server.try_clone())
                else {
                    continue;
                };
                {
                    let mut open = registered.lock().unwrap();
                    open.push(client.try_clone().unwrap());
                    open.push(server.try_clone().unwrap());
                }
                let (up_rate, down_rate, counted) = (paced.clone(), paced.clone(), counted.clone());
                let uncounted = AtomicU64::new(0);
                std::thread::spawn(move || pipe(client, server_copy, &up_rate, &uncounted));
                std::thread::spawn(move || pipe(server, client_copy, &down_rate, &counted));
            }
        });
        Self {
            addr,
            rate,
            open,
            down,
        }
    }

    /// Bytes the server has sent to clients through the proxy so far.
    pub fn bytes_down(&self) -> u64 {
        self.down.load(Ordering::Relaxed)
    }

    /// From now on, at most `bytes_per_second` each way per connection: a server far away.
    pub fn set_rate(&self, bytes_per_second: u64) {
        self.rate.store(bytes_per_second, Ordering::Relaxed);
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Cuts every connection opened since the last cut (both directions, both ends; those
    /// already closed are unaffected); new ones still go through. Returns their number.
    pub fn cut_all(&self) -> usize {
        let mut open = self.open.lock().unwrap();
        for stream in open.iter() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        let cut = open.len() / 2;
        open.clear();
        cut
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream, rate: &AtomicU64, forwarded: &AtomicU64) {
    let mut buffer = vec![0u8; 16 << 10];
    let started = Instant::now();
    let mut sent = 0u64;
    loop {
        match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buffer[..n]).is_err() {
                    break;
                }
                sent += n as u64;
                forwarded.fetch_add(n as u64, Ordering::Relaxed);
                let rate = rate.load(Ordering::Relaxed);
                if rate > 0 {
                    let due = Duration::from_secs_f64(sent as f64 / rate as f64);
                    if let Some(wait) = due.checked_sub(started.elapsed()) {
                        std::thread::sleep(wait);
                    }
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
