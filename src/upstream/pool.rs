//! Model name -> the pool of backends that serve it.

use std::collections::HashMap;
use std::sync::Arc;

use super::Backend;
use crate::config::{Model, UpstreamConfig};
use crate::error::GatewayError;

/// A client-facing model and its backends, in configured order.
#[derive(Debug)]
pub struct Pool {
    pub name: String,
    backends: Vec<Arc<Backend>>,
}

impl Pool {
    /// The backend to call. Every backend is usable until breakers exist, so this is the first.
    pub fn pick(&self) -> Arc<Backend> {
        self.backends[0].clone()
    }

    /// Whether any backend can currently take a request (readiness).
    pub fn is_usable(&self) -> bool {
        !self.backends.is_empty()
    }
}

/// All configured models, looked up by client-facing name.
#[derive(Debug, Default)]
pub struct ModelTable {
    by_name: HashMap<String, Arc<Pool>>,
    names: Vec<String>,
}

impl ModelTable {
    pub fn new(models: &[Model], http: &reqwest::Client, timeouts: &UpstreamConfig) -> Self {
        let by_name = models
            .iter()
            .map(|model| {
                let backends = model
                    .backends
                    .iter()
                    .map(|b| Arc::new(Backend::new(b, http, timeouts)))
                    .collect();
                let pool = Pool {
                    name: model.name.clone(),
                    backends,
                };
                (model.name.clone(), Arc::new(pool))
            })
            .collect();
        Self {
            by_name,
            names: models.iter().map(|m| m.name.clone()).collect(),
        }
    }

    pub fn get(&self, name: &str) -> Result<&Arc<Pool>, GatewayError> {
        self.by_name
            .get(name)
            .ok_or_else(|| GatewayError::ModelNotFound {
                model: name.to_owned(),
            })
    }

    /// Model names in configured order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(String::as_str)
    }

    pub fn any_usable(&self) -> bool {
        self.by_name.values().any(|pool| pool.is_usable())
    }
}
