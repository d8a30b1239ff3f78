//! The stability monitor: the MoCo v3 paper traces unstable training (sudden loss spikes and
//! accuracy dips, seen with Vision Transformers) to gradient spikes in the first layer. Every
//! metric record carries the largest gradient norm of its interval, for the whole encoder and
//! for the first layer; a value far above its running median is reported as a warning, naming
//! the step, the layer and the ratio.
use super::events::metric;
use crate::config::RunConfig;
use std::collections::{BTreeMap, VecDeque};

/// Records the running median is taken over.
const WINDOW: usize = 20;
/// Records seen before spikes are judged (the first steps' gradients are unrepresentative).
const WARM_UP: usize = 5;

#[derive(Default)]
pub(crate) struct StabilityWatch {
    whole: VecDeque<f64>,
    first: VecDeque<f64>,
}

impl StabilityWatch {
    /// Warnings for the gradient norms of this record that exceed `grad_spike_factor` × the
    /// median of the previous records (the spike itself does not join the median's window
    /// until it is judged).
    pub(crate) fn check(
        &mut self,
        values: &BTreeMap<String, f64>,
        cfg: &RunConfig,
        step: i64,
    ) -> Vec<String> {
        let mut warnings = Vec::new();
        let series = [
            (metric::GRAD_NORM, "the encoder's", &mut self.whole),
            (
                metric::GRAD_NORM_FIRST,
                "the first layer's",
                &mut self.first,
            ),
        ];
        for (name, what, history) in series {
            let Some(&value) = values.get(name).filter(|v| v.is_finite()) else {
                continue;
            };
            if history.len() >= WARM_UP {
                let median = median(history);
                if median > 0.0 && value > cfg.grad_spike_factor * median {
                    warnings.push(format!(
                        "gradient spike at step {step}: {what} gradient norm is {value:.3e}, \
                         {:.1}× its running median {median:.3e} (threshold {}×). The MoCo v3 \
                         paper traces unstable training to such spikes; if the loss jumps or the \
                         kNN dips after them, lower base_lr or lengthen the warm-up.",
                        value / median,
                        cfg.grad_spike_factor
                    ));
                }
            }
            history.push_back(value);
            if history.len() > WINDOW {
                history.pop_front();
            }
        }
        warnings
    }
}

fn median(values: &VecDeque<f64>) -> f64 {
    let mut sorted: Vec<f64> = values.iter().copied().collect();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Preset;

    fn record(whole: f64, first: f64) -> BTreeMap<String, f64> {
        [(metric::GRAD_NORM, whole), (metric::GRAD_NORM_FIRST, first)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect()
    }

    #[test]
    fn a_first_layer_spike_above_the_factor_times_the_median_is_named() {
        let cfg = RunConfig::preset(Preset::Demo);
        assert_eq!(cfg.grad_spike_factor, 5.0);
        let mut watch = StabilityWatch::default();
        // Below WARM_UP records nothing is judged, however large.
        for (i, first) in [1.0, 1.2, 0.8, 100.0, 1.0].into_iter().enumerate() {
            assert!(watch.check(&record(2.0, first), &cfg, i as i64).is_empty());
        }
        // The median of 1.0, 1.2, 0.8, 100, 1.0 is 1.0 (the old outlier does not move it): 5.1 is
        // a spike.
        let warnings = watch.check(&record(2.0, 5.1), &cfg, 6);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with("gradient spike at step 6: the first layer's gradient norm"),
            "{}",
            warnings[0]
        );
        assert!(
            warnings[0].contains("5.1× its running median"),
            "{}",
            warnings[0]
        );
        // The whole encoder's norm is watched the same way.
        let warnings = watch.check(&record(50.0, 1.0), &cfg, 7);
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("the encoder's gradient norm"));
        // Median now 1.0 over 1.0, 1.2, 0.8, 100, 1.0, 5.1, 1.0: 4.9 stays below 5×.
        assert!(watch.check(&record(2.0, 4.9), &cfg, 8).is_empty());
    }
}
