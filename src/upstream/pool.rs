//! Model name -> the pool of backends that serve it, and the choice of backend: power of two
//! choices on in-flight requests per unit of weight, among backends whose breaker may permit a
//! call, that are not cooling down after a 429 and are under their in-flight cap.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::time::Instant;

use super::Backend;
use super::breaker::{Outcome, Permit, PermitKind};
use super::tls::TlsSetupError;
use crate::config::{Api, Model, Tokenizer, UpstreamConfig};
use crate::error::GatewayError;
use crate::telemetry::metrics;

/// How far apart (requests per unit of weight) two backends' totals may be for the lower one to
/// win a tie.
const TIE_BREAK_GAP: u64 = 64;

/// A client-facing model, its backends in configured order, and its fallback models.
#[derive(Debug)]
pub struct Pool {
    pub name: String,
    backends: Vec<Arc<Backend>>,
    pub fallbacks: Vec<String>,
    pub hedge_after: Option<Duration>,
    /// Counts this model's tokens when a backend reports no usage.
    pub tokenizer: Tokenizer,
}

/// A call in progress on one backend: counted in flight, holding its breaker permit, and
/// recording its outcome exactly once.
///
/// | how the attempt ends | outcome |
/// | --- | --- |
/// | an error before the first byte (`finish`) | the error's (`GatewayError::breaker_outcome`) |
/// | dropped before the first byte (client left, hedge lost elsewhere) | neutral, or a failure when it waited far longer than the backend usually takes (`BackendHealth::abandoned_after`) |
/// | its first bytes arrived (`answered`) | a probe is decided then: success |
/// | the answer failed later (its `Verdict` says so) | that failure |
/// | the answer ended, or its client left it | success |
#[derive(Debug)]
pub struct Attempt {
    pub backend: Arc<Backend>,
    pub index: usize,
    permit: Permit,
    started: Instant,
    answered: bool,
    /// A probe's success was recorded at its first byte; only a later failure still counts.
    success_recorded: bool,
    verdict: Verdict,
    finished: bool,
}

/// How an answer that began ended, told by whoever consumes it (the relay sees failures the
/// byte stream cannot: an idle timeout, an in-band error, an end without `[DONE]`). Unset means
/// it ended well or its client left.
pub type Verdict = Arc<OnceLock<Outcome>>;

impl Attempt {
    /// Ends an attempt that failed before its first byte with `outcome`.
    pub fn finish(mut self, outcome: Outcome) {
        self.record(outcome);
    }

    /// The first bytes of the answer arrived: nothing can be retried from here. A half-open
    /// circuit's probe is decided now, not when its (possibly long) stream ends, so a
    /// recovered backend is usable at once.
    pub fn answered(&mut self) {
        self.answered = true;
        self.backend.health.first_byte_after(self.started.elapsed());
        if self.permit.kind == PermitKind::Probe {
            self.backend
                .health
                .breaker
                .record(self.permit, Outcome::Success);
            self.permit.kind = PermitKind::Normal;
            self.success_recorded = true;
        }
    }

    /// Where the consumer of the answer reports how it ended.
    pub fn verdict(&self) -> Verdict {
        self.verdict.clone()
    }

    fn record(&mut self, outcome: Outcome) {
        if !self.finished {
            self.finished = true;
            self.backend.health.breaker.record(self.permit, outcome);
            self.backend.health.leave();
            let label = match outcome {
                Outcome::Success => "success",
                Outcome::Failure => "failure",
                Outcome::Neutral => "neutral",
            };
            metrics::record_attempt(&self.backend.name, label);
        }
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        let outcome = if self.answered {
            match self.verdict.get().copied().unwrap_or(Outcome::Success) {
                Outcome::Success if self.success_recorded => Outcome::Neutral,
                outcome => outcome,
            }
        } else {
            self.backend.health.abandoned_after(self.started.elapsed())
        };
        self.record(outcome);
    }
}

/// Which of a pool's backends a request may go to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Eligible {
    /// The API it calls: backends that serve it (themselves or through translation).
    pub api: Api,
    /// Only backends that serve `api` themselves: a request that cannot be translated.
    pub native_only: bool,
    /// Only the backend of this name: where a stored response lives.
    pub backend: Option<Arc<str>>,
}

impl Eligible {
    /// Any backend that serves `api`.
    pub fn api(api: Api) -> Self {
        Self {
            api,
            native_only: false,
            backend: None,
        }
    }

    /// Backends that serve `api` as asked, untranslated.
    pub fn native(api: Api) -> Self {
        Self {
            native_only: true,
            ..Self::api(api)
        }
    }

    pub fn admits(&self, backend: &Backend) -> bool {
        let serves = if self.native_only {
            backend.native(self.api)
        } else {
            backend.serves(self.api)
        };
        serves
            && self
                .backend
                .as_deref()
                .is_none_or(|name| name == backend.name)
    }
}

impl Pool {
    /// Chooses an `eligible` backend not yet `tried`, and takes its permit.
    pub fn acquire(&self, eligible: &Eligible, tried: &[usize]) -> Result<Attempt, GatewayError> {
        let mut excluded: Vec<usize> = (0..self.backends.len())
            .filter(|i| tried.contains(i) || !eligible.admits(&self.backends[*i]))
            .collect();
        loop {
            let candidates: Vec<usize> = (0..self.backends.len())
                .filter(|i| !excluded.contains(i) && self.backends[*i].health.is_usable())
                .collect();
            let Some(index) = self.choose(&candidates) else {
                return Err(self.unavailable(eligible, tried));
            };
            let backend = &self.backends[index];
            // Another request may have taken the last in-flight slot or the half-open probe
            // since the candidates were listed; then this backend is skipped.
            if !backend.health.try_enter() {
                excluded.push(index);
                continue;
            }
            match backend.health.breaker.try_acquire() {
                Some(permit) => {
                    return Ok(Attempt {
                        backend: backend.clone(),
                        index,
                        permit,
                        started: Instant::now(),
                        answered: false,
                        success_recorded: false,
                        verdict: Verdict::default(),
                        finished: false,
                    });
                }
                None => {
                    backend.health.leave();
                    excluded.push(index);
                }
            }
        }
    }

    /// Power of two choices: two distinct candidates drawn by weight, the less loaded wins.
    fn choose(&self, candidates: &[usize]) -> Option<usize> {
        match candidates {
            [] => None,
            [only] => Some(*only),
            _ => {
                let first = self.draw(candidates, None);
                let second = self.draw(candidates, Some(first));
                Some(self.less_loaded(first, second))
            }
        }
    }

    /// The backend with fewer requests in flight per unit of weight. On a tie, the one that served
    /// fewer per weight while the two are within `TIE_BREAK_GAP` of each other, so steady traffic
    /// splits evenly but a backend back from an outage does not take every request until it
    /// catches up; beyond that gap the first drawn (a random one) wins.
    fn less_loaded(&self, first: usize, second: usize) -> usize {
        let (a, b) = (&self.backends[first].health, &self.backends[second].health);
        let per_weight = |n: u64, weight: u64| n * 1_000 / weight;
        let (wa, wb) = (u64::from(a.weight.get()), u64::from(b.weight.get()));
        let (load_a, load_b) = (
            per_weight(a.in_flight() as u64 + 1, wa),
            per_weight(b.in_flight() as u64 + 1, wb),
        );
        if load_a != load_b {
            return if load_b < load_a { second } else { first };
        }
        let (served_a, served_b) = (per_weight(a.served(), wa), per_weight(b.served(), wb));
        if served_b < served_a && served_a - served_b <= TIE_BREAK_GAP * 1_000 {
            second
        } else {
            first
        }
    }

    /// A candidate drawn with probability proportional to its weight, other than `not`.
    fn draw(&self, candidates: &[usize], not: Option<usize>) -> usize {
        let weight = |i: &usize| u64::from(self.backends[*i].health.weight.get());
        let eligible = || candidates.iter().filter(|i| Some(**i) != not);
        let mut ticket = fastrand::u64(0..eligible().map(weight).sum::<u64>());
        for i in eligible() {
            if ticket < weight(i) {
                return *i;
            }
            ticket -= weight(i);
        }
        unreachable!("the ticket is below the total weight")
    }

    /// Why no backend could be chosen: all cooling down after 429s (the client may retry when
    /// the first cools off), or none usable at all.
    fn unavailable(&self, eligible: &Eligible, tried: &[usize]) -> GatewayError {
        let untried = || {
            self.backends
                .iter()
                .enumerate()
                .filter(|(i, b)| !tried.contains(i) && eligible.admits(b))
        };
        let cooling: Option<Duration> = untried().filter_map(|(_, b)| b.health.cooling()).min();
        match cooling {
            Some(wait) if untried().all(|(_, b)| b.health.cooling().is_some()) => {
                GatewayError::UpstreamRejected {
                    status: http::StatusCode::TOO_MANY_REQUESTS,
                    message: "every backend of this model is rate limited; retry later".into(),
                    retry_after: Some(wait),
                }
            }
            _ => GatewayError::NoUsableBackend,
        }
    }

    /// Whether any backend can currently take a request (readiness).
    pub fn is_usable(&self) -> bool {
        self.backends.iter().any(|b| b.health.breaker.may_permit())
    }

    /// Whether every backend can produce `n` choices per request.
    pub fn supports_choices(&self, n: u64) -> bool {
        self.backends.iter().all(|b| b.supports_choices(n))
    }

    /// Whether any backend is `eligible`.
    pub fn has(&self, eligible: &Eligible) -> bool {
        self.backends.iter().any(|b| eligible.admits(b))
    }

    /// Whether any backend serves `api` only through translation.
    fn translates(&self, api: Api) -> bool {
        self.backends
            .iter()
            .any(|b| b.serves(api) && !b.native(api))
    }

    /// Whether any backend serves `api` (itself or through translation).
    pub fn serves(&self, api: Api) -> bool {
        self.backends.iter().any(|b| b.serves(api))
    }
}

/// All configured models, looked up by client-facing name.
#[derive(Debug, Default)]
pub struct ModelTable {
    by_name: HashMap<String, Arc<Pool>>,
    names: Vec<String>,
}

impl ModelTable {
    /// Fails only when an `https://` backend's TLS settings cannot be built.
    pub fn new(models: &[Model], timeouts: &UpstreamConfig) -> Result<Self, TlsSetupError> {
        let by_name = models
            .iter()
            .map(|model| {
                let backends = model
                    .backends
                    .iter()
                    .map(|b| Backend::new(&model.name, b, timeouts).map(Arc::new))
                    .collect::<Result<_, _>>()?;
                let pool = Pool {
                    name: model.name.clone(),
                    backends,
                    fallbacks: model.fallbacks.clone(),
                    hedge_after: model.hedge_after,
                    tokenizer: model.tokenizer,
                };
                Ok((model.name.clone(), Arc::new(pool)))
            })
            .collect::<Result<_, TlsSetupError>>()?;
        Ok(Self {
            by_name,
            names: models.iter().map(|m| m.name.clone()).collect(),
        })
    }

    /// The tokenizers the models count with, each once.
    pub fn tokenizers(&self) -> Vec<Tokenizer> {
        let mut tokenizers: Vec<Tokenizer> = Vec::new();
        for pool in self.by_name.values() {
            if !tokenizers.contains(&pool.tokenizer) {
                tokenizers.push(pool.tokenizer);
            }
        }
        tokenizers
    }

    /// The model `name`, when one of its backends serves `api` (else a 404 naming the API, as
    /// OpenAI answers for a model without that endpoint).
    pub fn get(&self, name: &str, api: Api) -> Result<&Arc<Pool>, GatewayError> {
        let pool = self.find(name)?;
        if !pool.serves(api) {
            return Err(GatewayError::ModelNotFound {
                model: name.to_owned(),
                api: Some(api.path()),
            });
        }
        Ok(pool)
    }

    /// The model `name`, whatever it serves.
    pub fn find(&self, name: &str) -> Result<&Arc<Pool>, GatewayError> {
        self.by_name
            .get(name)
            .ok_or_else(|| GatewayError::ModelNotFound {
                model: name.to_owned(),
                api: None,
            })
    }

    /// The pool of `name` followed by its fallbacks' with an `eligible` backend, in order; only
    /// the pool itself when one backend is named (a stored response lives in one place).
    pub fn route(&self, primary: &Arc<Pool>, eligible: &Eligible) -> Vec<Arc<Pool>> {
        if eligible.backend.is_some() {
            return vec![primary.clone()];
        }
        std::iter::once(primary.clone())
            .chain(
                primary
                    .fallbacks
                    .iter()
                    .filter_map(|name| self.by_name.get(name))
                    .filter(|pool| pool.has(eligible))
                    .cloned(),
            )
            .collect()
    }

    /// Which backends a request for `primary` on `api` may go to: any that serve it, unless
    /// `untranslatable` (asked only when some backend on the route would translate it) says
    /// why a translating backend cannot take it; then only those that serve it as asked, or,
    /// when there are none, that refusal.
    pub fn eligible(
        &self,
        primary: &Arc<Pool>,
        api: Api,
        untranslatable: impl FnOnce() -> Option<GatewayError>,
    ) -> Result<Eligible, GatewayError> {
        let route = || {
            std::iter::once(primary).chain(
                primary
                    .fallbacks
                    .iter()
                    .filter_map(|name| self.by_name.get(name)),
            )
        };
        if !route().any(|pool| pool.translates(api)) {
            return Ok(Eligible::api(api));
        }
        let Some(refusal) = untranslatable() else {
            return Ok(Eligible::api(api));
        };
        let native = Eligible::native(api);
        if route().any(|pool| pool.has(&native)) {
            Ok(native)
        } else {
            Err(refusal)
        }
    }

    /// Model names in configured order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(String::as_str)
    }

    /// Closes every backend's pooled connections idle for too long (the server's reaper).
    pub fn reap_idle_connections(&self) {
        for pool in self.by_name.values() {
            for backend in &pool.backends {
                backend.reap_idle_connections();
            }
        }
    }

    pub fn any_usable(&self) -> bool {
        self.by_name.values().any(|pool| pool.is_usable())
    }
}
