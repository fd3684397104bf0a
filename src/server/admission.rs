//! `max_concurrent_requests`: take a permit or answer 503 at once. Never queue: a queue in
//! front of a saturated gateway only converts overload into latency.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::GatewayError;

/// What a refused client is told to wait before retrying.
const RETRY_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct Admission {
    permits: Arc<Semaphore>,
}

impl Admission {
    pub fn new(max_concurrent_requests: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max_concurrent_requests)),
        }
    }

    /// A permit held until the response body is finished or dropped.
    pub fn try_admit(&self) -> Result<OwnedSemaphorePermit, GatewayError> {
        self.permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| GatewayError::Overloaded {
                retry_after: RETRY_AFTER,
            })
    }
}
