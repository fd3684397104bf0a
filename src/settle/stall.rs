//! The stall watch: the HTTP/2 streams in flight, swept every second by the server, so a
//! stream whose client stopped taking frames is cut after `stream.client_stall_timeout`. Over
//! HTTP/1.1 a stalled client stalls its socket, which `server::stall` already catches; over
//! HTTP/2 one stream's window can stay shut on a healthy connection, and only this notices.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use super::body::Guarded;

#[derive(Debug)]
pub struct StallWatch {
    streams: Mutex<Vec<Weak<Guarded>>>,
    timeout: Duration,
}

impl StallWatch {
    pub fn new(timeout: Duration) -> Self {
        Self {
            streams: Mutex::new(Vec::new()),
            timeout,
        }
    }

    /// Watches a stream until it ends.
    pub fn watch(&self, stream: &Arc<Guarded>) {
        self.lock().push(Arc::downgrade(stream));
    }

    /// Cuts the streams stalled past the timeout and forgets the ended ones. The list is
    /// taken out of the lock while it is swept, so requests never wait on a sweep.
    pub fn sweep(&self) {
        let streams = std::mem::take(&mut *self.lock());
        let live: Vec<Weak<Guarded>> = streams
            .into_iter()
            .filter(|weak| {
                weak.upgrade()
                    .is_some_and(|stream| !stream.cut_if_stalled(self.timeout))
            })
            .collect();
        self.lock().extend(live);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Weak<Guarded>>> {
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }
}
