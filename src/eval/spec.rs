//! One evaluation as a whole: its method with its settings (`EvalSpec`), built from a request's
//! overrides with every error naming its field, stored as JSON, and run on a loaded encoder. The
//! server's evaluation jobs go through here; `cli` calls the two methods directly.
use super::feature_cache::FeatureCache;
use super::knn::run_knn;
use super::linear::{run_probe, ProbeObserver, ProbeRequest, Stopped};
use super::FrozenEncoder;
use crate::config::{DatasetConfig, EvalMethod, FieldError, KnnConfig, ProbeConfig, Protocol};
use crate::data::DatasetSplits;
use anyhow::Context;
use serde_json::Value;
use tch::Device;

/// What an evaluation does.
#[derive(Debug, Clone, PartialEq)]
pub enum EvalSpec {
    Linear(ProbeConfig),
    Knn(KnnConfig),
}

/// Where an evaluation ended: held-out accuracy in percent and the whole result as JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalScores {
    pub top1: f64,
    /// kNN has no top-5.
    pub top5: Option<f64>,
    pub best_top1: f64,
    pub result: Value,
}

impl EvalSpec {
    /// The method's defaults (a linear probe's from its protocol) on `dataset`, then
    /// `overrides` (`field` or dotted `dataset.field`). Errors name `settings.<field>`.
    pub fn with_overrides(
        method: EvalMethod,
        protocol: Protocol,
        dataset: DatasetConfig,
        overrides: &[(String, Value)],
    ) -> Result<EvalSpec, Vec<FieldError>> {
        let pairs = overrides.iter().map(|(k, v)| (k.as_str(), v.clone()));
        let spec = match method {
            EvalMethod::Linear => ProbeConfig::for_protocol(protocol, dataset)
                .with_overrides(pairs)
                .map(EvalSpec::Linear),
            EvalMethod::Knn => KnnConfig::new(dataset)
                .with_overrides(pairs)
                .map(EvalSpec::Knn),
        };
        spec.map_err(|errors| {
            errors
                .into_iter()
                .map(|e| FieldError::new(&format!("settings.{}", e.field), e.message))
                .collect()
        })
    }

    /// Reads the settings stored with an evaluation of `method`.
    pub fn from_stored(method: EvalMethod, json: &str) -> anyhow::Result<EvalSpec> {
        Ok(match method {
            EvalMethod::Linear => EvalSpec::Linear(
                serde_json::from_str(json).context("the stored probe settings are unreadable")?,
            ),
            EvalMethod::Knn => EvalSpec::Knn(
                serde_json::from_str(json).context("the stored kNN settings are unreadable")?,
            ),
        })
    }

    pub fn to_json(&self) -> Value {
        match self {
            EvalSpec::Linear(cfg) => serde_json::to_value(cfg),
            EvalSpec::Knn(cfg) => serde_json::to_value(cfg),
        }
        .expect("evaluation settings serialise")
    }

    pub fn method(&self) -> EvalMethod {
        match self {
            EvalSpec::Linear(_) => EvalMethod::Linear,
            EvalSpec::Knn(_) => EvalMethod::Knn,
        }
    }

    pub fn protocol(&self) -> Option<Protocol> {
        match self {
            EvalSpec::Linear(cfg) => Some(cfg.protocol),
            EvalSpec::Knn(_) => None,
        }
    }

    pub fn dataset(&self) -> &DatasetConfig {
        match self {
            EvalSpec::Linear(cfg) => &cfg.dataset,
            EvalSpec::Knn(cfg) => &cfg.dataset,
        }
    }

    /// Epochs it trains (a kNN is one pass).
    pub fn epochs(&self) -> i64 {
        match self {
            EvalSpec::Linear(cfg) => cfg.epochs,
            EvalSpec::Knn(_) => 1,
        }
    }

    pub fn label(&self) -> String {
        self.method().label(self.protocol())
    }

    /// Runs the evaluation on a loaded encoder. A stop asked for through `observer` ends it with
    /// [`Stopped`] (a kNN, one pass, checks before and after).
    pub fn run(
        &self,
        encoder: &FrozenEncoder,
        splits: &DatasetSplits,
        device: Device,
        feature_cache: Option<&FeatureCache>,
        observer: &mut dyn ProbeObserver,
    ) -> anyhow::Result<EvalScores> {
        match self {
            EvalSpec::Linear(cfg) => {
                let result = run_probe(
                    &ProbeRequest {
                        encoder,
                        splits,
                        config: cfg,
                        device,
                        feature_cache,
                    },
                    observer,
                )?;
                Ok(EvalScores {
                    top1: result.top1,
                    top5: Some(result.top5),
                    best_top1: result.best_top1,
                    result: serde_json::to_value(&result)?,
                })
            }
            EvalSpec::Knn(cfg) => {
                if observer.should_stop() {
                    return Err(Stopped.into());
                }
                let result = run_knn(encoder, splits, cfg, device)?;
                if observer.should_stop() {
                    return Err(Stopped.into());
                }
                Ok(EvalScores {
                    top1: result.top1,
                    top5: None,
                    best_top1: result.top1,
                    result: serde_json::to_value(&result)?,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_errors_name_the_settings_field_and_round_trip() {
        let errors = EvalSpec::with_overrides(
            EvalMethod::Linear,
            Protocol::Fast,
            DatasetConfig::synthetic(),
            &[("epochs".into(), Value::from(0))],
        )
        .unwrap_err();
        assert_eq!(errors[0].field, "settings.epochs");
        let spec = EvalSpec::with_overrides(
            EvalMethod::Linear,
            Protocol::V3,
            DatasetConfig::synthetic(),
            &[("epochs".into(), Value::from(3))],
        )
        .unwrap();
        assert_eq!((spec.epochs(), spec.label()), (3, "linear (v3)".into()));
        let stored = spec.to_json().to_string();
        assert_eq!(
            EvalSpec::from_stored(EvalMethod::Linear, &stored).unwrap(),
            spec
        );
        let knn = EvalSpec::with_overrides(
            EvalMethod::Knn,
            Protocol::Moco,
            DatasetConfig::synthetic(),
            &[("k".into(), Value::from(20))],
        )
        .unwrap();
        assert_eq!((knn.label(), knn.protocol()), ("knn".into(), None));
        assert!(EvalSpec::from_stored(EvalMethod::Knn, &stored).is_err());
    }
}
