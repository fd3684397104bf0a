//! `Day`: a UTC calendar day, `YYYY-MM-DD`, which also sorts as text.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String")]
pub struct Day(String);

impl Day {
    pub fn today() -> Self {
        Self::of(SystemTime::now())
    }

    /// The day `ago` before now.
    pub fn before_now(ago: Duration) -> Self {
        Self::of(
            SystemTime::now()
                .checked_sub(ago)
                .unwrap_or(SystemTime::UNIX_EPOCH),
        )
    }

    fn of(time: SystemTime) -> Self {
        let stamp = humantime::format_rfc3339_seconds(time).to_string();
        Self(stamp[..10].to_owned())
    }

    /// A `YYYY-MM-DD` that names a real day.
    pub fn parse(text: &str) -> Option<Self> {
        let well_formed = text.len() == 10
            && text.bytes().enumerate().all(|(i, b)| {
                if i == 4 || i == 7 {
                    b == b'-'
                } else {
                    b.is_ascii_digit()
                }
            });
        (well_formed && humantime::parse_rfc3339(&format!("{text}T00:00:00Z")).is_ok())
            .then(|| Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Day {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        Self::parse(&text).ok_or_else(|| format!("{text:?} is not a YYYY-MM-DD day"))
    }
}

impl std::fmt::Display for Day {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_real_days_parse() {
        assert!(Day::parse("2026-11-30").is_some());
        for bad in [
            "2026-02-30",
            "2026-1-30",
            "20261130",
            "2026-11-30T",
            "",
            "abcd-ef-gh",
        ] {
            assert!(Day::parse(bad).is_none(), "{bad}");
        }
        assert_eq!(Day::today().as_str().len(), 10);
        assert!(Day::before_now(Duration::from_secs(86_400 * 2)) < Day::today());
    }
}
