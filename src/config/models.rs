//! Models, their backends and fallbacks: where requests go.

use std::num::NonZeroU32;

use super::Dialect;
use super::file::{BackendFile, BackendKindFile, ModelFile};
use super::validate::{MAX_DURATION, at_most, non_zero, positive, unique};
use tiktoken_rs::tokenizer::get_tokenizer;

use super::{
    Api, Apis, BackendConfig, BackendKind, ConfigError, MockConfig, Model, Secret, Tokenizer,
};

/// The largest embedding the mock makes.
const MAX_MOCK_DIMENSIONS: u32 = 1 << 16;

pub(super) fn model(file: ModelFile, path: &str) -> Result<Model, ConfigError> {
    if file.name.is_empty() {
        return Err(ConfigError::invalid(
            format!("{path}.name"),
            "must not be empty",
        ));
    }
    if file.backends.is_empty() {
        return Err(ConfigError::invalid(
            format!("{path}.backends"),
            "needs at least one backend",
        ));
    }
    let default_upstream_model = file.name.clone();
    let backends = file
        .backends
        .into_iter()
        .enumerate()
        .map(|(i, b)| backend(b, &format!("{path}.backends[{i}]"), &default_upstream_model))
        .collect::<Result<Vec<_>, _>>()?;
    unique(
        backends.iter().map(|b| b.name.as_str()),
        &format!("{path}.backends"),
        "name",
    )?;
    let tokenizer = tokenizer(file.tokenizer.as_deref(), &file.name, &backends, path)?;
    Ok(Model {
        tokenizer,
        name: file.name,
        backends,
        fallbacks: file.fallbacks,
        hedge_after: file
            .hedge_after
            .map(|after| positive(after, &format!("{path}.hedge_after")))
            .transpose()?,
    })
}

/// The configured encoding, else the one OpenAI uses for the model's name or its first
/// backend's upstream model, else `o200k_base` (today's OpenAI models).
fn tokenizer(
    configured: Option<&str>,
    name: &str,
    backends: &[BackendConfig],
    path: &str,
) -> Result<Tokenizer, ConfigError> {
    let Some(configured) = configured else {
        return Ok(get_tokenizer(name)
            .or_else(|| {
                backends
                    .first()
                    .and_then(|b| get_tokenizer(&b.upstream_model))
            })
            .unwrap_or(Tokenizer::O200kBase));
    };
    Ok(match configured {
        "o200k_base" => Tokenizer::O200kBase,
        "o200k_harmony" => Tokenizer::O200kHarmony,
        "cl100k_base" => Tokenizer::Cl100kBase,
        "p50k_base" => Tokenizer::P50kBase,
        "r50k_base" => Tokenizer::R50kBase,
        _ => {
            return Err(ConfigError::invalid(
                format!("{path}.tokenizer"),
                "must be o200k_base, o200k_harmony, cl100k_base, p50k_base or r50k_base",
            ));
        }
    })
}

/// Every fallback names another configured model.
pub(super) fn fallbacks(models: &[Model]) -> Result<(), ConfigError> {
    for (i, model) in models.iter().enumerate() {
        for (j, fallback) in model.fallbacks.iter().enumerate() {
            if fallback == &model.name || !models.iter().any(|m| &m.name == fallback) {
                return Err(ConfigError::invalid(
                    format!("models[{i}].fallbacks[{j}]"),
                    format!("`{fallback}` is not another configured model"),
                ));
            }
        }
    }
    Ok(())
}

fn backend(
    file: BackendFile,
    path: &str,
    default_upstream_model: &str,
) -> Result<BackendConfig, ConfigError> {
    let kind = match file.kind {
        BackendKindFile::Openai | BackendKindFile::Azure | BackendKindFile::Anthropic => {
            if file.mock.is_some() {
                return Err(ConfigError::invalid(
                    format!("{path}.mock"),
                    "only allowed with `kind: mock`",
                ));
            }
            let dialect = dialect(&file, path)?;
            let base_url = file.base_url.ok_or_else(|| {
                ConfigError::invalid(
                    format!("{path}.base_url"),
                    "required for a backend reached over HTTP",
                )
            })?;
            let base_url = base_url_with_slash(&base_url, &format!("{path}.base_url"))?;
            let tls = match file.tls {
                Some(_) if !base_url.starts_with("https://") => {
                    return Err(ConfigError::invalid(
                        format!("{path}.tls"),
                        "only for an https:// base_url",
                    ));
                }
                Some(tls) => Some(super::tls::tls(tls, &format!("{path}.tls"))?),
                None => None,
            };
            BackendKind::Http {
                dialect,
                base_url,
                api_key: file
                    .api_key_env
                    .map(|var| secret_from_env(&var, path))
                    .transpose()?,
                tls,
            }
        }
        BackendKindFile::Mock => {
            for (field, set) in [
                ("base_url", file.base_url.is_some()),
                ("api_key_env", file.api_key_env.is_some()),
                ("tls", file.tls.is_some()),
                ("deployment", file.deployment.is_some()),
                ("api_version", file.api_version.is_some()),
            ] {
                if set {
                    return Err(ConfigError::invalid(
                        format!("{path}.{field}"),
                        "not used by `kind: mock`",
                    ));
                }
            }
            let mock = file.mock.unwrap_or_default();
            BackendKind::Mock(MockConfig {
                tokens: mock.tokens,
                pace: at_most(mock.pace, MAX_DURATION, &format!("{path}.mock.pace"))?,
                first_token_delay: at_most(
                    mock.first_token_delay,
                    MAX_DURATION,
                    &format!("{path}.mock.first_token_delay"),
                )?,
                dimensions: match mock.dimensions {
                    1..=MAX_MOCK_DIMENSIONS => mock.dimensions,
                    _ => {
                        return Err(ConfigError::invalid(
                            format!("{path}.mock.dimensions"),
                            format!("must be from 1 to {MAX_MOCK_DIMENSIONS}"),
                        ));
                    }
                },
            })
        }
    };
    let apis = apis(file.apis, path)?;
    if let BackendKind::Http { dialect, .. } = &kind {
        served_by(dialect, apis, path)?;
    }
    Ok(BackendConfig {
        name: file.name,
        upstream_model: file
            .upstream_model
            .unwrap_or_else(|| default_upstream_model.to_owned()),
        kind,
        weight: NonZeroU32::new(file.weight)
            .ok_or_else(|| ConfigError::invalid(format!("{path}.weight"), "must be at least 1"))?,
        max_inflight: file
            .max_inflight
            .map(|n| non_zero(n, &format!("{path}.max_inflight")))
            .transpose()?,
        apis,
    })
}

/// The dialect of a backend reached over HTTP; `deployment` and `api_version` are Azure's
/// (both required there, path-safe), and only Azure's.
fn dialect(file: &BackendFile, path: &str) -> Result<Dialect, ConfigError> {
    let azure = file.kind == BackendKindFile::Azure;
    let field = |name: &str, value: &Option<String>| -> Result<Option<String>, ConfigError> {
        let path = format!("{path}.{name}");
        match value {
            None if azure => Err(ConfigError::invalid(path, "required for `kind: azure`")),
            None => Ok(None),
            Some(_) if !azure => Err(ConfigError::invalid(path, "only for `kind: azure`")),
            Some(v)
                if v.is_empty()
                    || !v
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) =>
            {
                Err(ConfigError::invalid(
                    path,
                    "letters, digits, '-', '_' and '.' only",
                ))
            }
            Some(v) => Ok(Some(v.clone())),
        }
    };
    let deployment = field("deployment", &file.deployment)?;
    let api_version = field("api_version", &file.api_version)?;
    if let Some(version) = &api_version
        && !reports_stream_usage(version)
    {
        return Err(ConfigError::invalid(
            format!("{path}.api_version"),
            "must be 2024-09-01-preview or later: earlier versions refuse stream_options, which \
             streams need for their usage",
        ));
    }
    Ok(match (file.kind, deployment, api_version) {
        (BackendKindFile::Azure, Some(deployment), Some(api_version)) => Dialect::Azure {
            deployment,
            api_version,
        },
        (BackendKindFile::Anthropic, _, _) => Dialect::Anthropic,
        _ => Dialect::OpenAi,
    })
}

/// Whether an Azure `api-version` (`YYYY-MM-DD`, maybe `-preview`) takes
/// `stream_options.include_usage`: from 2024-09-01 on.
fn reports_stream_usage(version: &str) -> bool {
    let date = version.get(..10).unwrap_or_default();
    let shaped = date.len() == 10
        && date.bytes().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        });
    shaped && date >= "2024-09-01"
}

/// Refuses an API the dialect has no route for: Azure's deployments serve chat, embeddings and
/// legacy completions; Anthropic's Messages API serves chat completions (translated).
fn served_by(dialect: &Dialect, apis: Apis, path: &str) -> Result<(), ConfigError> {
    let (allowed, message) = match dialect {
        Dialect::OpenAi => return Ok(()),
        Dialect::Azure { .. } => (
            [Api::Chat, Api::Embeddings, Api::Completions].as_slice(),
            "`kind: azure` serves chat, embeddings and completions",
        ),
        Dialect::Anthropic => ([Api::Chat].as_slice(), "`kind: anthropic` serves chat only"),
    };
    let all = [Api::Chat, Api::Responses, Api::Embeddings, Api::Completions];
    if all
        .iter()
        .any(|api| apis.contains(*api) && !allowed.contains(api))
    {
        return Err(ConfigError::invalid(format!("{path}.apis"), message));
    }
    Ok(())
}

/// A backend's `apis`: chat completions when absent; never empty, no API twice.
fn apis(listed: Option<Vec<Api>>, path: &str) -> Result<Apis, ConfigError> {
    match listed {
        None => Ok(Apis::CHAT),
        Some(apis) if apis.is_empty() => Err(ConfigError::invalid(
            format!("{path}.apis"),
            "must name at least one API (chat, responses, embeddings, completions)",
        )),
        Some(apis) => Apis::of(&apis)
            .ok_or_else(|| ConfigError::invalid(format!("{path}.apis"), "names an API twice")),
    }
}

fn base_url_with_slash(raw: &str, path: &str) -> Result<String, ConfigError> {
    let url = reqwest::Url::parse(raw)
        .map_err(|e| ConfigError::invalid(path, format!("not an absolute URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(ConfigError::invalid(
            path,
            "must be an http:// or https:// URL with a host",
        ));
    }
    if url.query().is_some()
        || url.fragment().is_some()
        || !url.username().is_empty()
        || url.password().is_some()
    {
        return Err(ConfigError::invalid(
            path,
            "must not carry a query, fragment or credentials",
        ));
    }
    let mut text = url.to_string();
    if !text.ends_with('/') {
        text.push('/');
    }
    Ok(text)
}

fn secret_from_env(var: &str, path: &str) -> Result<Secret, ConfigError> {
    match std::env::var(var) {
        Ok(value) if value.bytes().any(|b| b.is_ascii_control()) => Err(ConfigError::invalid(
            format!("{path}.api_key_env"),
            format!("environment variable `{var}` contains control characters"),
        )),
        Ok(value) if !value.is_empty() => Ok(Secret(value)),
        _ => Err(ConfigError::invalid(
            format!("{path}.api_key_env"),
            format!("environment variable `{var}` is not set"),
        )),
    }
}
