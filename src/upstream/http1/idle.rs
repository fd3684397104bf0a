//! Idle keep-alive connections of one backend, newest first, bounded in count and age.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::conn::Conn;

#[derive(Debug)]
pub struct IdleConns {
    conns: Mutex<Vec<(Conn, Instant)>>,
    max_idle: usize,
    max_age: Duration,
}

impl IdleConns {
    pub fn new(max_idle: usize, max_age: Duration) -> Self {
        Self {
            conns: Mutex::new(Vec::new()),
            max_idle,
            max_age,
        }
    }

    /// The most recently used connection that is still open, if any.
    pub fn take(&self) -> Option<Conn> {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((conn, since)) = conns.pop() {
            if since.elapsed() < self.max_age && conn.is_reusable() {
                return Some(conn);
            }
        }
        None
    }

    /// Keeps `conn` for reuse, unless the pool is full.
    pub fn put(&self, conn: Conn) {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        if conns.len() < self.max_idle {
            conns.push((conn, Instant::now()));
        }
    }
}
