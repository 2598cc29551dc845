//! Which OpenAI-compatible model server the worker talks to, chosen from settings.
//!
//! Precedence, most explicit first: a custom base URL (`LLM_BASE_URL` + `LLM_MODEL`,
//! for Ollama, vLLM, llama.cpp …), then `OPENAI_API_KEY`, then `GEMINI_API_KEY`
//! (through Gemini's OpenAI-compatible endpoint), and with none of them the
//! rule-based offline-llm stand-in at its default address. Selection is pure, so it is
//! unit-tested without touching the environment.

use std::fmt;

use secrecy::SecretString;

/// OpenAI's API.
pub(crate) const OPENAI_BASE_URL: &str = "https://api.openai.com/v1";
/// Gemini's OpenAI-compatible endpoint.
pub(crate) const GEMINI_BASE_URL: &str = "https://generativelanguage.googleapis.com/v1beta/openai/";
/// Where offline-llm listens by default.
pub(crate) const OFFLINE_BASE_URL: &str = "http://127.0.0.1:8089/v1";
/// The model name offline-llm reports (it accepts any).
pub(crate) const OFFLINE_MODEL: &str = "offline-llm";
pub(crate) const DEFAULT_OPENAI_MODEL: &str = "gpt-4.1-mini";
pub(crate) const DEFAULT_GEMINI_MODEL: &str = "gemini-2.0-flash";

/// The model provider settings, as flags and environment variables.
#[derive(clap::Args, Debug, Clone)]
pub struct ProviderArgs {
    /// Base URL of any OpenAI-compatible server (Ollama, vLLM, llama.cpp …); takes
    /// precedence over the API keys below. Needs LLM_MODEL (or --model).
    #[arg(long = "llm-base-url", env = "LLM_BASE_URL")]
    pub llm_base_url: Option<String>,
    /// Model name on the LLM_BASE_URL server.
    #[arg(long = "llm-model", env = "LLM_MODEL")]
    pub llm_model: Option<String>,
    /// API key for the LLM_BASE_URL server, if it needs one.
    #[arg(long = "llm-api-key", env = "LLM_API_KEY", hide_env_values = true, value_parser = parse_secret)]
    pub llm_api_key: Option<SecretString>,
    /// OpenAI API key: selects OpenAI when no LLM_BASE_URL is set.
    #[arg(long = "openai-api-key", env = "OPENAI_API_KEY", hide_env_values = true, value_parser = parse_secret)]
    pub openai_api_key: Option<SecretString>,
    /// Model used with OpenAI.
    #[arg(long = "openai-model", env = "OPENAI_MODEL", default_value = DEFAULT_OPENAI_MODEL)]
    pub openai_model: String,
    /// Gemini API key: selects Gemini's OpenAI-compatible endpoint when neither
    /// LLM_BASE_URL nor OPENAI_API_KEY is set.
    #[arg(long = "gemini-api-key", env = "GEMINI_API_KEY", hide_env_values = true, value_parser = parse_secret)]
    pub gemini_api_key: Option<SecretString>,
    /// Model used with Gemini.
    #[arg(long = "gemini-model", env = "GEMINI_MODEL", default_value = DEFAULT_GEMINI_MODEL)]
    pub gemini_model: String,
    /// offline-llm's OpenAI base URL, used when no provider is configured.
    #[arg(long = "offline-llm-url", env = "OFFLINE_LLM_URL", default_value = OFFLINE_BASE_URL)]
    pub offline_llm_url: String,
    /// Model name overriding the selected provider's model.
    #[arg(long = "model", env = "AGENT_MODEL")]
    pub model: Option<String>,
}

// clap needs a parser for types that are not `FromStr`; a secret is any string.
fn parse_secret(raw: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(raw))
}

/// Which kind of server was selected (for logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    OpenAi,
    Gemini,
    /// Any OpenAI-compatible server named by base URL.
    Custom,
    /// The rule-based stand-in: not a language model.
    Offline,
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::OpenAi => "openai",
            Self::Gemini => "gemini",
            Self::Custom => "openai-compatible",
            Self::Offline => "offline-llm (rule-based stand-in)",
        })
    }
}

/// The selected server, model and key.
#[derive(Debug, Clone)]
pub struct Provider {
    pub kind: ProviderKind,
    /// The OpenAI base URL, without a trailing slash (async-openai appends
    /// `/chat/completions`).
    pub base_url: String,
    pub model: String,
    pub api_key: Option<SecretString>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    #[error("LLM_BASE_URL is set to {base_url} but no model is named: set LLM_MODEL (or --model)")]
    MissingModel { base_url: String },
}

/// A setting counts as given only when it is not blank: compose files and Kubernetes
/// manifests often set `KEY=""` to mean "off".
fn given(value: Option<&str>) -> Option<&str> {
    value.map(str::trim).filter(|value| !value.is_empty())
}

fn given_secret(value: Option<&SecretString>) -> Option<SecretString> {
    use secrecy::ExposeSecret as _;
    value
        .filter(|secret| !secret.expose_secret().trim().is_empty())
        .cloned()
}

impl ProviderArgs {
    /// Picks the provider by the precedence described in the module docs.
    pub fn select(&self) -> Result<Provider, ProviderError> {
        let override_model = given(self.model.as_deref()).map(str::to_owned);
        if let Some(base_url) = given(self.llm_base_url.as_deref()) {
            let model = override_model
                .or_else(|| given(self.llm_model.as_deref()).map(str::to_owned))
                .ok_or_else(|| ProviderError::MissingModel {
                    base_url: base_url.to_owned(),
                })?;
            return Ok(Provider {
                kind: ProviderKind::Custom,
                base_url: trim_base(base_url),
                model,
                api_key: given_secret(self.llm_api_key.as_ref()),
            });
        }
        if let Some(key) = given_secret(self.openai_api_key.as_ref()) {
            return Ok(Provider {
                kind: ProviderKind::OpenAi,
                base_url: trim_base(OPENAI_BASE_URL),
                model: override_model.unwrap_or_else(|| self.openai_model.clone()),
                api_key: Some(key),
            });
        }
        if let Some(key) = given_secret(self.gemini_api_key.as_ref()) {
            return Ok(Provider {
                kind: ProviderKind::Gemini,
                base_url: trim_base(GEMINI_BASE_URL),
                model: override_model.unwrap_or_else(|| self.gemini_model.clone()),
                api_key: Some(key),
            });
        }
        Ok(Provider {
            kind: ProviderKind::Offline,
            base_url: trim_base(&self.offline_llm_url),
            model: override_model.unwrap_or_else(|| OFFLINE_MODEL.to_owned()),
            api_key: None,
        })
    }
}

fn trim_base(url: &str) -> String {
    url.trim().trim_end_matches('/').to_owned()
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret as _;

    use super::*;

    fn none() -> ProviderArgs {
        ProviderArgs {
            llm_base_url: None,
            llm_model: None,
            llm_api_key: None,
            openai_api_key: None,
            openai_model: DEFAULT_OPENAI_MODEL.into(),
            gemini_api_key: None,
            gemini_model: DEFAULT_GEMINI_MODEL.into(),
            offline_llm_url: OFFLINE_BASE_URL.into(),
            model: None,
        }
    }

    fn secret(value: &str) -> Option<SecretString> {
        Some(SecretString::from(value))
    }

    #[test]
    fn nothing_set_means_offline_llm_at_its_default_address() {
        let provider = none().select().unwrap();
        assert_eq!(provider.kind, ProviderKind::Offline);
        assert_eq!(provider.base_url, "http://127.0.0.1:8089/v1");
        assert_eq!(provider.model, "offline-llm");
        assert!(provider.api_key.is_none());
    }

    #[test]
    fn openai_key_selects_openai_with_its_default_model() {
        let args = ProviderArgs {
            openai_api_key: secret("sk-test"),
            ..none()
        };
        let provider = args.select().unwrap();
        assert_eq!(provider.kind, ProviderKind::OpenAi);
        assert_eq!(provider.base_url, "https://api.openai.com/v1");
        assert_eq!(provider.model, "gpt-4.1-mini");
        assert_eq!(provider.api_key.unwrap().expose_secret(), "sk-test");

        let args = ProviderArgs {
            openai_api_key: secret("sk-test"),
            openai_model: "gpt-4o".into(),
            ..none()
        };
        assert_eq!(args.select().unwrap().model, "gpt-4o");
    }

    #[test]
    fn gemini_key_selects_the_openai_compatible_gemini_endpoint() {
        let args = ProviderArgs {
            gemini_api_key: secret("g-key"),
            ..none()
        };
        let provider = args.select().unwrap();
        assert_eq!(provider.kind, ProviderKind::Gemini);
        assert_eq!(
            provider.base_url,
            "https://generativelanguage.googleapis.com/v1beta/openai"
        );
        assert_eq!(provider.model, "gemini-2.0-flash");
        assert_eq!(provider.api_key.unwrap().expose_secret(), "g-key");
    }

    #[test]
    fn openai_wins_over_gemini() {
        let args = ProviderArgs {
            openai_api_key: secret("sk"),
            gemini_api_key: secret("g"),
            ..none()
        };
        assert_eq!(args.select().unwrap().kind, ProviderKind::OpenAi);
    }

    #[test]
    fn custom_base_url_wins_over_keys_and_needs_a_model() {
        let args = ProviderArgs {
            llm_base_url: Some("http://ollama:11434/v1/".into()),
            llm_model: Some("llama3.1".into()),
            openai_api_key: secret("sk"),
            gemini_api_key: secret("g"),
            ..none()
        };
        let provider = args.select().unwrap();
        assert_eq!(provider.kind, ProviderKind::Custom);
        assert_eq!(provider.base_url, "http://ollama:11434/v1");
        assert_eq!(provider.model, "llama3.1");
        assert!(
            provider.api_key.is_none(),
            "the OpenAI key is not sent to another server"
        );

        let args = ProviderArgs {
            llm_base_url: Some("http://vllm:8000/v1".into()),
            llm_api_key: secret("local-key"),
            ..none()
        };
        assert_eq!(
            args.select().unwrap_err(),
            ProviderError::MissingModel {
                base_url: "http://vllm:8000/v1".into()
            }
        );
        let args = ProviderArgs {
            model: Some("qwen2.5".into()),
            ..args
        };
        let provider = args.select().unwrap();
        assert_eq!(provider.model, "qwen2.5");
        assert_eq!(provider.api_key.unwrap().expose_secret(), "local-key");
    }

    #[test]
    fn blank_settings_count_as_unset() {
        let args = ProviderArgs {
            llm_base_url: Some("  ".into()),
            openai_api_key: secret(""),
            gemini_api_key: secret("g"),
            model: Some(String::new()),
            ..none()
        };
        let provider = args.select().unwrap();
        assert_eq!(provider.kind, ProviderKind::Gemini);
        assert_eq!(provider.model, "gemini-2.0-flash");
    }

    #[test]
    fn model_override_applies_to_any_provider() {
        let args = ProviderArgs {
            model: Some("gpt-5".into()),
            openai_api_key: secret("sk"),
            ..none()
        };
        assert_eq!(args.select().unwrap().model, "gpt-5");
        let args = ProviderArgs {
            model: Some("my-rules".into()),
            ..none()
        };
        assert_eq!(args.select().unwrap().model, "my-rules");
    }

    #[test]
    fn keys_stay_out_of_debug_output() {
        let args = ProviderArgs {
            openai_api_key: secret("sk-very-secret"),
            ..none()
        };
        assert!(!format!("{args:?}").contains("sk-very-secret"));
        assert!(!format!("{:?}", args.select().unwrap()).contains("sk-very-secret"));
    }
}
