//! `GET /usage?day=YYYY-MM-DD&key=ID`: a day's per-key totals (today's by default) as JSON,
//! served on the metrics listener, or without one to loopback clients of the main listener.
//! `sluicegate usage` reads it when the totals live in the process.

use http::{Response, Uri};

use super::json::json_response;
use crate::body::Body;
use crate::error::GatewayError;
use crate::state::AppState;
use crate::telemetry::usage::Day;

/// How long a read of the totals may take (Redis: one call per key of the day).
const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

pub async fn usage(uri: &Uri, state: &AppState) -> Result<Response<Body>, GatewayError> {
    let (day, key) = query(uri)?;
    let read = state.usage.read(day, key.as_deref());
    let totals = match tokio::time::timeout(READ_TIMEOUT, read).await {
        Ok(Ok(totals)) => totals,
        Ok(Err(error)) => {
            tracing::warn!(%error, "usage totals could not be read");
            return Err(GatewayError::UsageUnavailable);
        }
        Err(_) => return Err(GatewayError::UsageUnavailable),
    };
    let body = serde_json::to_vec(&totals).expect("invariant: usage totals serialise");
    Ok(json_response(body))
}

/// `day` (default today) and `key` from the query string; anything else is a 400.
fn query(uri: &Uri) -> Result<(Day, Option<String>), GatewayError> {
    let mut day = Day::today();
    let mut key = None;
    let pairs = uri.query().unwrap_or_default();
    for (name, value) in reqwest::Url::parse(&format!("http://query/?{pairs}"))
        .map_err(|_| invalid("day", "the query string is malformed"))?
        .query_pairs()
    {
        match &*name {
            "day" => {
                day = Day::parse(&value)
                    .ok_or_else(|| invalid("day", "day must be a date such as 2026-11-30"))?;
            }
            "key" => key = Some(value.into_owned()),
            _ => return Err(invalid("query", "only `day` and `key` are accepted")),
        }
    }
    Ok((day, key))
}

fn invalid(param: &str, message: &str) -> GatewayError {
    GatewayError::invalid(param, "invalid_value", message)
}
