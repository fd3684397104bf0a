//! Metric handles kept per worker thread, by series. The `metrics` macros build a `Key` (the
//! name and owned label strings) and look it up in the registry on every call; a request records
//! about a dozen series, so that was a measurable share of the gateway's own CPU. Here a series
//! is found by its label values in a thread-local map, through a reused key buffer: no
//! allocation and no shared lock once it was seen.
//!
//! Handles are taken only from the installed Prometheus recorder (before it is installed, the
//! macros' own path is used), and the maps stop growing at `MAX_SERIES` series per thread, past
//! which the macros' path is used too; label values come from the configuration and fixed sets,
//! so that bound is never reached in practice.

use std::cell::RefCell;
use std::collections::HashMap;

use metrics::{Counter, Gauge, Histogram, Label};

/// The most series one thread keeps handles for.
const MAX_SERIES: usize = 4096;

#[derive(Default)]
struct Handles {
    /// The lookup key being built: the name, then each label value, separated by NUL.
    key: String,
    counters: HashMap<String, Counter>,
    gauges: HashMap<String, Gauge>,
    histograms: HashMap<String, Histogram>,
}

thread_local! {
    static HANDLES: RefCell<Handles> = RefCell::new(Handles::default());
}

/// The handle of the series `name{labels}`, registered on first use.
fn with<H: Clone>(
    name: &'static str,
    labels: &[(&'static str, &str)],
    map: fn(&mut Handles) -> &mut HashMap<String, H>,
    register: fn(&'static str, Vec<Label>) -> H,
    apply: impl FnOnce(&H),
) {
    let owned = || -> Vec<Label> {
        labels
            .iter()
            .map(|(key, value)| Label::new(*key, (*value).to_owned()))
            .collect()
    };
    if !super::metrics::installed() {
        apply(&register(name, owned()));
        return;
    }
    HANDLES.with_borrow_mut(|handles| {
        let mut key = std::mem::take(&mut handles.key);
        key.clear();
        key.push_str(name);
        for (_, value) in labels {
            key.push('\0');
            key.push_str(value);
        }
        let series = map(handles);
        match series.get(key.as_str()) {
            Some(handle) => apply(handle),
            None => {
                let handle = register(name, owned());
                apply(&handle);
                if series.len() < MAX_SERIES {
                    series.insert(key.clone(), handle);
                }
            }
        }
        handles.key = key;
    });
}

/// Adds `n` to the counter `name{labels}`.
pub fn count(name: &'static str, labels: &[(&'static str, &str)], n: u64) {
    with(
        name,
        labels,
        |h| &mut h.counters,
        |name, labels| metrics::counter!(name, labels),
        |counter| counter.increment(n),
    );
}

/// Adds `delta` to the gauge `name{labels}`.
pub fn add(name: &'static str, labels: &[(&'static str, &str)], delta: f64) {
    with(
        name,
        labels,
        |h| &mut h.gauges,
        |name, labels| metrics::gauge!(name, labels),
        |gauge| gauge.increment(delta),
    );
}

/// Records `value` in the histogram `name{labels}`.
pub fn observe(name: &'static str, labels: &[(&'static str, &str)], value: f64) {
    with(
        name,
        labels,
        |h| &mut h.histograms,
        |name, labels| metrics::histogram!(name, labels),
        |histogram| histogram.record(value),
    );
}
