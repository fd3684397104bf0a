//! What faces the client's network: the proxies whose `X-Forwarded-For` is believed, and the
//! browser origins allowed to call the API (CORS).

use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use super::ConfigError;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsFile {
    pub allowed_origins: Vec<String>,
    #[serde(default)]
    pub allow_credentials: bool,
    #[serde(default = "default_max_age", with = "humantime_serde")]
    pub max_age: Duration,
}

fn default_max_age() -> Duration {
    Duration::from_secs(600)
}

/// Browser origins allowed to call the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorsConfig {
    /// Exact origins (`https://app.example.com`); `None` = any origin (`*`).
    pub allowed_origins: Option<Vec<String>>,
    /// Cookies and `Authorization` from the browser's own store (never with any origin).
    pub allow_credentials: bool,
    /// How long a browser may reuse a preflight answer.
    pub max_age: Duration,
}

/// Addresses (`10.0.0.0/8`, `127.0.0.1`) of the proxies in front of the gateway.
pub(super) fn trusted_proxies(entries: &[String]) -> Result<Vec<IpNet>, ConfigError> {
    entries
        .iter()
        .enumerate()
        .map(|(i, entry)| {
            entry
                .parse::<IpNet>()
                .or_else(|_| entry.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    ConfigError::invalid(
                        format!("server.trusted_proxies[{i}]"),
                        "must be an address or a network such as 10.0.0.0/8",
                    )
                })
        })
        .collect()
}

pub(super) fn cors(file: CorsFile) -> Result<CorsConfig, ConfigError> {
    let invalid = |field: &str, message: &str| {
        ConfigError::invalid(format!("server.cors.{field}"), message.to_owned())
    };
    if file.allowed_origins.is_empty() {
        return Err(invalid(
            "allowed_origins",
            "must list the origins allowed (leave `cors` out to allow none)",
        ));
    }
    let any = file.allowed_origins.iter().any(|o| o == "*");
    if any && file.allowed_origins.len() > 1 {
        return Err(invalid(
            "allowed_origins",
            "`*` cannot be listed with origins",
        ));
    }
    if any && file.allow_credentials {
        return Err(invalid(
            "allow_credentials",
            "cannot be true with `*`: any site could then call the API as the user",
        ));
    }
    let mut origins = Vec::with_capacity(file.allowed_origins.len());
    if !any {
        for origin in &file.allowed_origins {
            let parsed = reqwest::Url::parse(origin).ok();
            let plain = parsed.as_ref().is_some_and(|url| {
                matches!(url.scheme(), "http" | "https")
                    && url.host_str().is_some()
                    && url.path() == "/"
                    && url.query().is_none()
                    && !origin.ends_with('/')
            });
            let Some(url) = parsed.filter(|_| plain) else {
                return Err(invalid(
                    "allowed_origins",
                    "each origin is a scheme and host such as https://app.example.com",
                ));
            };
            // As browsers send it: lower-case host, no default port.
            origins.push(url.origin().ascii_serialization());
        }
    }
    if file.max_age > Duration::from_secs(24 * 60 * 60) {
        return Err(invalid("max_age", "must be at most 24h"));
    }
    Ok(CorsConfig {
        allowed_origins: (!any).then_some(origins),
        allow_credentials: file.allow_credentials,
        max_age: file.max_age,
    })
}
