//! Idle keep-alive connections of one backend, newest first, bounded in count and age. Expired
//! connections are reaped whenever the pool is used and by the periodic reaper, and every
//! connection is closed after the lock is released.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::conn::Conn;

#[derive(Debug)]
pub struct IdleConns {
    /// Oldest first.
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

    /// The most recently used connection that is still open and young enough, if any.
    pub fn take(&self) -> Option<Conn> {
        let mut closing = Vec::new();
        let found = {
            let mut conns = self.lock();
            loop {
                match conns.pop() {
                    None => break None,
                    Some((mut conn, since)) if since.elapsed() < self.max_age => {
                        if conn.is_reusable() {
                            break Some(conn);
                        }
                        closing.push(conn);
                    }
                    // The newest is too old, so all are.
                    Some((conn, _)) => {
                        closing.push(conn);
                        closing.extend(conns.drain(..).map(|(conn, _)| conn));
                        break None;
                    }
                }
            }
        };
        drop(closing);
        found
    }

    /// Keeps `conn` for reuse, unless the pool is full.
    pub fn put(&self, conn: Conn) {
        let mut closing = self.expired();
        {
            let mut conns = self.lock();
            if conns.len() < self.max_idle {
                conns.push((conn, Instant::now()));
            } else {
                closing.push(conn);
            }
        }
        drop(closing);
    }

    /// Closes every connection idle for longer than the maximum age.
    pub fn reap(&self) {
        drop(self.expired());
    }

    /// Takes the expired connections out of the pool, for the caller to close unlocked.
    fn expired(&self) -> Vec<Conn> {
        let mut conns = self.lock();
        let fresh = conns
            .iter()
            .position(|(_, since)| since.elapsed() < self.max_age)
            .unwrap_or(conns.len());
        conns.drain(..fresh).map(|(conn, _)| conn).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(Conn, Instant)>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }
}
