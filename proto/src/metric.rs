//! The metric series a training run reports, by name, and the two typed
//! groups they come in: a step's progress every `print_freq` steps and an
//! epoch's summary after each epoch's evaluation (docs/method.md, "Stage
//! baseline and stage qat"). The worker sends them as `Metric` rows
//! (`name`, `value`); every reader (the CLI's `watch`, tables and plots, the
//! dashboard) names a series through [`MetricName`], never by a literal.

use std::borrow::Cow;
use std::fmt;

/// One metric series. `BlockFullbitShare(b)` is block `b`'s (forward order)
/// share of test images routed to the 4-bit path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MetricName {
    /// Mean training loss of the steps since the epoch began (every `print_freq` steps).
    Loss,
    /// Training top-1 of the steps since the epoch began.
    Top1,
    /// The learning rate (with the step's progress, or at the epoch's end when no step reported it).
    Lr,
    /// Training images per second over the steps since the last report.
    ImagesPerS,
    /// The epoch's mean training loss and top-1.
    TrainLoss,
    TrainTop1,
    /// The epoch's evaluation on the test set.
    TestLoss,
    TestTop1,
    TestTop5,
    /// The best test top-1 so far.
    BestTop1,
    /// Training images per second over the whole epoch.
    EpochImagesPerS,
    /// Blocks' energy per test image (pJ), and normalised to the all-4-bit network.
    EnergyPj,
    NormalizedEnergy,
    /// Dual path: share of (test image, block) decisions that took the 4-bit path.
    FullbitShare,
    BlockFullbitShare(u32),
}

impl MetricName {
    /// Every series with a fixed name, in the order a reader lists them.
    pub const FIXED: [MetricName; 14] = [
        MetricName::Loss,
        MetricName::Top1,
        MetricName::Lr,
        MetricName::ImagesPerS,
        MetricName::TrainLoss,
        MetricName::TrainTop1,
        MetricName::TestLoss,
        MetricName::TestTop1,
        MetricName::TestTop5,
        MetricName::BestTop1,
        MetricName::EpochImagesPerS,
        MetricName::EnergyPj,
        MetricName::NormalizedEnergy,
        MetricName::FullbitShare,
    ];

    /// The name stored and sent (`Metric.name`).
    pub fn as_str(self) -> Cow<'static, str> {
        Cow::Borrowed(match self {
            MetricName::Loss => "loss",
            MetricName::Top1 => "top1",
            MetricName::Lr => "lr",
            MetricName::ImagesPerS => "images_per_s",
            MetricName::TrainLoss => "train_loss",
            MetricName::TrainTop1 => "train_top1",
            MetricName::TestLoss => "test_loss",
            MetricName::TestTop1 => "test_top1",
            MetricName::TestTop5 => "test_top5",
            MetricName::BestTop1 => "best_top1",
            MetricName::EpochImagesPerS => "epoch_images_per_s",
            MetricName::EnergyPj => "energy_pj",
            MetricName::NormalizedEnergy => "normalized_energy",
            MetricName::FullbitShare => "fullbit_share",
            MetricName::BlockFullbitShare(block) => return Cow::Owned(format!("block{block}_fullbit_share")),
        })
    }

    /// The series a stored name denotes; `None` for a name camp does not report.
    pub fn parse(name: &str) -> Option<MetricName> {
        if let Some(fixed) = MetricName::FIXED.into_iter().find(|m| m.as_str() == name) {
            return Some(fixed);
        }
        let block = name.strip_prefix("block")?.strip_suffix("_fullbit_share")?;
        if block.is_empty() || !block.bytes().all(|b| b.is_ascii_digit()) || (block.len() > 1 && block.starts_with('0')) {
            return None;
        }
        block.parse().ok().map(MetricName::BlockFullbitShare)
    }

    /// Reported once per epoch, after its evaluation (its `step` is the global
    /// step at the epoch's end); the others come with a step's progress.
    pub fn is_epoch_summary(self) -> bool {
        !matches!(self, MetricName::Loss | MetricName::Top1 | MetricName::Lr | MetricName::ImagesPerS)
    }
}

impl fmt::Display for MetricName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_str())
    }
}

/// A training step's progress, every `print_freq` steps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepMetrics {
    /// Global step (1-based, over all epochs) and 1-based epoch.
    pub step: i64,
    pub epoch: u32,
    pub loss: f64,
    pub top1: f64,
    pub lr: f64,
    pub images_per_s: f64,
}

impl StepMetrics {
    pub fn points(&self) -> Vec<(MetricName, f64)> {
        vec![
            (MetricName::Loss, self.loss),
            (MetricName::Top1, self.top1),
            (MetricName::Lr, self.lr),
            (MetricName::ImagesPerS, self.images_per_s),
        ]
    }
}

/// An epoch's summary: its training totals and the evaluation that ends it.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochMetrics {
    /// The global step at the epoch's end, and the 1-based epoch.
    pub step: i64,
    pub epoch: u32,
    pub train_loss: f64,
    pub train_top1: f64,
    pub test_loss: f64,
    pub test_top1: f64,
    pub test_top5: f64,
    pub best_top1: f64,
    pub epoch_images_per_s: f64,
    pub energy_pj: f64,
    pub normalized_energy: f64,
    /// The epoch's lr, where the epoch's last step did not report it already
    /// (one row per name and step).
    pub lr: Option<f64>,
    /// Dual path: the overall and per-block shares of the 4-bit path (none otherwise).
    pub fullbit_share: Option<f64>,
    pub block_fullbit_shares: Vec<f64>,
}

impl EpochMetrics {
    pub fn points(&self) -> Vec<(MetricName, f64)> {
        let mut points = vec![
            (MetricName::TrainLoss, self.train_loss),
            (MetricName::TrainTop1, self.train_top1),
            (MetricName::TestLoss, self.test_loss),
            (MetricName::TestTop1, self.test_top1),
            (MetricName::TestTop5, self.test_top5),
            (MetricName::BestTop1, self.best_top1),
            (MetricName::EpochImagesPerS, self.epoch_images_per_s),
            (MetricName::EnergyPj, self.energy_pj),
            (MetricName::NormalizedEnergy, self.normalized_energy),
        ];
        points.extend(self.lr.map(|lr| (MetricName::Lr, lr)));
        if let Some(share) = self.fullbit_share {
            points.push((MetricName::FullbitShare, share));
            points.extend(self.block_fullbit_shares.iter().enumerate().map(|(b, &s)| (MetricName::BlockFullbitShare(b as u32), s)));
        }
        points
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_parses_back_to_its_series() {
        for name in MetricName::FIXED.into_iter().chain([MetricName::BlockFullbitShare(0), MetricName::BlockFullbitShare(26)]) {
            assert_eq!(MetricName::parse(&name.as_str()), Some(name), "{name}");
        }
        assert_eq!(MetricName::BlockFullbitShare(3).to_string(), "block3_fullbit_share");
        for unknown in
            ["", "Loss", "block_fullbit_share", "block-1_fullbit_share", "block01_fullbit_share", "blockx_fullbit_share", "odd,name"]
        {
            assert_eq!(MetricName::parse(unknown), None, "{unknown}");
        }
    }

    #[test]
    fn names_are_distinct_and_within_the_contract_limit() {
        let mut names: Vec<String> = MetricName::FIXED.iter().map(|m| m.to_string()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), MetricName::FIXED.len());
        assert!(MetricName::BlockFullbitShare(u32::MAX).as_str().len() <= crate::limits::MAX_METRIC_NAME_BYTES);
    }

    #[test]
    fn step_progress_is_not_an_epoch_summary_and_the_evaluation_is() {
        let step = StepMetrics { step: 50, epoch: 1, loss: 1.0, top1: 0.5, lr: 0.1, images_per_s: 300.0 };
        assert!(step.points().iter().all(|(name, _)| !name.is_epoch_summary()));
        let epoch = EpochMetrics {
            step: 157,
            epoch: 1,
            train_loss: 0.9,
            train_top1: 0.6,
            test_loss: 0.8,
            test_top1: 0.66,
            test_top5: 0.99,
            best_top1: 0.66,
            epoch_images_per_s: 290.0,
            energy_pj: 1e6,
            normalized_energy: 0.5,
            lr: Some(0.1),
            fullbit_share: Some(0.25),
            block_fullbit_shares: vec![0.5, 0.0],
        };
        let points = epoch.points();
        assert_eq!(points.len(), 9 + 1 + 1 + 2);
        assert!(points.iter().filter(|(name, _)| *name != MetricName::Lr).all(|(name, _)| name.is_epoch_summary()));
        assert!(points.contains(&(MetricName::BlockFullbitShare(1), 0.0)));
        let plain = EpochMetrics { lr: None, fullbit_share: None, block_fullbit_shares: vec![], ..epoch };
        assert_eq!(plain.points().len(), 9, "no lr when a step reported it, no shares without gates");
    }
}
