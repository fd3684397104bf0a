//! The draining state: set when a stop signal arrives (`/readyz` answers 503 from then on) and
//! expired when the grace period is over (open streams end with a final error event).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;

#[derive(Debug)]
pub struct Drain {
    draining: AtomicBool,
    expired: watch::Sender<bool>,
}

impl Default for Drain {
    fn default() -> Self {
        Self {
            draining: AtomicBool::new(false),
            expired: watch::Sender::new(false),
        }
    }
}

impl Drain {
    pub fn begin(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Tells every open stream to end now.
    pub fn expire(&self) {
        self.expired.send_replace(true);
    }

    /// Resolves when the grace period is over; never resolves otherwise.
    pub fn expired(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut receiver = self.expired.subscribe();
        async move {
            if receiver.wait_for(|expired| *expired).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}
