//! The draining state: set when a stop signal arrives (`/readyz` answers 503 from then on) and
//! expired when the grace period is over (open streams end with a final error event).

use std::future::Future;

use tokio::sync::watch;

#[derive(Debug)]
pub struct Drain {
    draining: watch::Sender<bool>,
    expired: watch::Sender<bool>,
}

impl Default for Drain {
    fn default() -> Self {
        Self {
            draining: watch::Sender::new(false),
            expired: watch::Sender::new(false),
        }
    }
}

impl Drain {
    pub fn begin(&self) {
        self.draining.send_replace(true);
    }

    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// Resolves when draining begins; never resolves otherwise.
    pub fn began(&self) -> impl Future<Output = ()> + Send + 'static {
        turned_true(&self.draining)
    }

    /// Tells every open stream to end now.
    pub fn expire(&self) {
        self.expired.send_replace(true);
    }

    /// Resolves when the grace period is over; never resolves otherwise.
    pub fn expired(&self) -> impl Future<Output = ()> + Send + 'static {
        turned_true(&self.expired)
    }
}

/// Resolves once `flag` is true (at once if it already is).
fn turned_true(flag: &watch::Sender<bool>) -> impl Future<Output = ()> + Send + 'static {
    let mut receiver = flag.subscribe();
    async move {
        if receiver.wait_for(|set| *set).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
