//! The failure watch: a run whose loss is no longer finite, or whose representation collapsed,
//! cannot recover and is stopped as failed with the reason.
use super::events::metric;
use crate::config::RunConfig;
use std::collections::BTreeMap;

/// Mean positive minus mean negative logit below which positives no longer stand out.
const COLLAPSED_LOGIT_GAP: f64 = 0.02;

/// Watches the metric records for a run that cannot recover.
#[derive(Default)]
pub(crate) struct FailureWatch {
    /// Consecutive records that looked collapsed.
    collapsed_reads: u32,
}

impl FailureWatch {
    /// Why the run must stop as failed, if it must: a non-finite loss, or a collapsed
    /// representation: the queue, once full of real keys, holds nearly identical vectors and the
    /// positive key no longer stands out from the negatives, in two records in a row.
    pub(crate) fn check(
        &mut self,
        values: &BTreeMap<String, f64>,
        cfg: &RunConfig,
        step: i64,
    ) -> Option<String> {
        let get = |name: &str| values.get(name).copied().unwrap_or(f64::NAN);
        let loss = get(metric::LOSS);
        if !loss.is_finite() {
            return Some(format!(
                "training diverged: the loss became {loss} at step {step}. Lower base_lr (now {}), \
                 or check the data",
                cfg.base_lr
            ));
        }
        let similarity = get(metric::QUEUE_SIMILARITY);
        let gap = get(metric::POS_LOGIT) - get(metric::NEG_LOGIT);
        let collapsed = get(metric::QUEUE_FILL) >= 1.0
            && similarity > cfg.collapse_threshold
            && gap < COLLAPSED_LOGIT_GAP;
        self.collapsed_reads = if collapsed {
            self.collapsed_reads + 1
        } else {
            0
        };
        if self.collapsed_reads < 2 {
            return None;
        }
        let hint = if cfg.momentum < 0.5 {
            format!(
                " With momentum m = {} the key encoder follows the query encoder at once, the keys \
                 in the queue stop being consistent and training cannot converge; MoCo needs m \
                 close to 1 (0.99–0.999).",
                cfg.momentum
            )
        } else {
            " Try a lower base_lr or a higher momentum.".to_string()
        };
        Some(format!(
            "the representation collapsed: at step {step} the keys in the queue have a mean \
             similarity of {similarity:.3} (threshold {}) and the positive key scores only \
             {gap:.3} above the negatives, so every image maps to nearly the same vector.{hint}",
            cfg.collapse_threshold
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Preset;

    fn record(similarity: f64, pos: f64, neg: f64, fill: f64) -> BTreeMap<String, f64> {
        [
            (metric::LOSS, 5.0),
            (metric::QUEUE_SIMILARITY, similarity),
            (metric::POS_LOGIT, pos),
            (metric::NEG_LOGIT, neg),
            (metric::QUEUE_FILL, fill),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    #[test]
    fn two_collapsed_records_in_a_row_fail_the_run_with_the_momentum_named() {
        let cfg = RunConfig {
            momentum: 0.0,
            ..RunConfig::preset(Preset::Demo)
        };
        let collapsed = record(0.97, 0.50, 0.49, 1.0);
        let mut watch = FailureWatch::default();
        assert_eq!(watch.check(&collapsed, &cfg, 10), None);
        // A healthy record in between starts the count again.
        assert_eq!(watch.check(&record(0.70, 0.6, 0.3, 1.0), &cfg, 20), None);
        assert_eq!(watch.check(&collapsed, &cfg, 30), None);
        let reason = watch.check(&collapsed, &cfg, 40).expect("collapsed twice");
        assert!(reason.contains("at step 40"), "{reason}");
        assert!(reason.contains("m = 0"), "{reason}");
        // A queue not yet full of real keys is not judged; a high momentum gets another hint.
        let mut watch = FailureWatch::default();
        let filling = record(0.97, 0.50, 0.49, 0.5);
        assert_eq!(watch.check(&filling, &cfg, 10), None);
        assert_eq!(watch.check(&filling, &cfg, 20), None);
        let steady = RunConfig::preset(Preset::Demo);
        let mut watch = FailureWatch::default();
        watch.check(&collapsed, &steady, 10);
        let reason = watch.check(&collapsed, &steady, 20).unwrap();
        assert!(reason.contains("higher momentum"), "{reason}");
    }

    #[test]
    fn a_non_finite_loss_fails_at_once() {
        let cfg = RunConfig::preset(Preset::Demo);
        let mut values = record(0.5, 0.6, 0.3, 1.0);
        values.insert(metric::LOSS.into(), f64::NAN);
        let reason = FailureWatch::default().check(&values, &cfg, 7).unwrap();
        assert!(
            reason.contains("diverged") && reason.contains("step 7"),
            "{reason}"
        );
    }
}
