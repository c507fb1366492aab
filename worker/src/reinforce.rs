//! Stage rl's REINFORCE loss for the gates (docs/method.md, "Stage rl").

use camp_proto::spec::RlTaskReward;
use tch::{Kind, Reduction, Tensor};

use crate::error::{EngineError, Result};

/// The knobs of the REINFORCE loss, from the job's spec.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reinforce {
    /// Energy reward, shared out over the gates: each gate that picks 1 bit earns `alpha / G`.
    pub alpha: f64,
    /// Discount between gates.
    pub gamma: f64,
    /// Weight of the REINFORCE loss against the task's cross-entropy.
    pub rl_weight: f64,
    pub task_reward: RlTaskReward,
}

/// The REINFORCE loss of one batch with G gates in forward order:
/// task reward `R_G` (no gradient) is `-CE` of each image (`per_image`), or
/// the batch's mean `-CE` for every image (`batch_mean`, the reference's
/// arithmetic: its [B,1] task reward and [B] gate rewards broadcast to [B,B]
/// before the mean); from the last gate to the first,
/// `r_i = (1 - a_i) * alpha / G` and `R_i = r_i + gamma * R_{i+1}`; the loss is
/// `sum_i mean_over_batch(-log pi(a_i) * rl_weight * R_i)`.
/// `actions[i]` and `log_probs[i]` are gate i's sampled 0/1 actions and their
/// log-probabilities, each of shape (N,).
pub fn rl_loss(logits: &Tensor, targets: &Tensor, actions: &[Tensor], log_probs: &[Tensor], knobs: Reinforce) -> Result<Tensor> {
    let Reinforce { alpha, gamma, rl_weight, task_reward } = knobs;
    if actions.len() != log_probs.len() || actions.is_empty() {
        return Err(EngineError::Model(format!(
            "REINFORCE needs one log-probability per gate action, got {} actions and {} log-probabilities",
            actions.len(),
            log_probs.len()
        )));
    }
    let reward_per_skip = alpha / actions.len() as f64;
    let mut returns = Vec::with_capacity(actions.len());
    tch::no_grad(|| -> Result<()> {
        let per_image = logits.f_cross_entropy_loss::<Tensor>(targets, None, Reduction::None, -100, 0.0)?.f_neg()?;
        let mut ret = match task_reward {
            RlTaskReward::PerImage => per_image,
            RlTaskReward::BatchMean => per_image.f_mean(Kind::Float)?.f_expand_as(&per_image)?,
        };
        for action in actions.iter().rev() {
            // (1 - a) * alpha / G + gamma * R
            let reward = action.f_mul_scalar(-reward_per_skip)?.f_add_scalar(reward_per_skip)?;
            ret = reward.f_add(&ret.f_mul_scalar(gamma)?)?;
            returns.push(ret.shallow_clone());
        }
        returns.reverse();
        Ok(())
    })?;
    let terms = log_probs
        .iter()
        .zip(&returns)
        .map(|(log_prob, ret)| log_prob.f_mul(ret)?.f_mean(Kind::Float)?.f_mul_scalar(-rl_weight))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(Tensor::f_stack(&terms, 0)?.f_sum(Kind::Float)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two images, two classes, two gates, every number chosen so the loss can be worked out by hand.
    fn case(task_reward: RlTaskReward) -> f64 {
        // Image 0's logits (0, ln 3): p(class 1) = 3/4; image 1's (0, 0): p = 1/2. Both targets are class 1.
        let logits = Tensor::from_slice2(&[[0.0f32, 3f32.ln()], [0.0, 0.0]]);
        let targets = Tensor::from_slice(&[1i64, 1]);
        // Gate 1 skips (0) for image 0 and runs 4 bits (1) for image 1; gate 2 the other way round.
        let actions = [Tensor::from_slice(&[0.0f32, 1.0]), Tensor::from_slice(&[1.0f32, 0.0])];
        let log_probs = [Tensor::from_slice(&[-0.5f32, -1.0]), Tensor::from_slice(&[-2.0f32, -0.25])];
        let knobs = Reinforce { alpha: 0.4, gamma: 0.5, rl_weight: 0.1, task_reward };
        rl_loss(&logits, &targets, &actions, &log_probs, knobs).unwrap().double_value(&[])
    }

    #[test]
    fn the_loss_is_the_hand_computed_one_for_either_task_reward() {
        // CE: image 0 ln(4/3), image 1 ln 2. alpha / G = 0.2.
        let (ce0, ce1) = ((4.0f64 / 3.0).ln(), 2f64.ln());
        let per_image = |task0: f64, task1: f64| {
            // Gate 2: r = (1 - a) * 0.2 -> image 0: 0, image 1: 0.2; R2 = r + 0.5 * task.
            let (r2_0, r2_1) = (0.0 + 0.5 * task0, 0.2 + 0.5 * task1);
            // Gate 1: image 0 skips (r = 0.2), image 1 does not (r = 0); R1 = r + 0.5 * R2.
            let (r1_0, r1_1) = (0.2 + 0.5 * r2_0, 0.0 + 0.5 * r2_1);
            // sum over gates of mean over images of -log_prob * 0.1 * R.
            let gate1 = (0.5 * 0.1 * r1_0 + 1.0 * 0.1 * r1_1) / 2.0;
            let gate2 = (2.0 * 0.1 * r2_0 + 0.25 * 0.1 * r2_1) / 2.0;
            gate1 + gate2
        };
        let want = per_image(-ce0, -ce1);
        assert!((case(RlTaskReward::PerImage) - want).abs() < 1e-6, "{} vs {want}", case(RlTaskReward::PerImage));

        // The reference's broadcast, literally: R starts as the [B,1] column -CE, the
        // [B] gate rewards add as rows, and the mean runs over the [B,B] result.
        let task = [-ce0, -ce1];
        let rewards = [[0.2, 0.0], [0.0, 0.2]]; // per gate (forward order), per image
        let log_probs = [[-0.5, -1.0], [-2.0, -0.25]];
        let mut cum = [[[0.0f64; 2]; 2]; 2]; // gate, row i, column j
        let mut r_next: [[f64; 2]; 2] = [[task[0], task[0]], [task[1], task[1]]];
        for g in (0..2).rev() {
            for i in 0..2 {
                for j in 0..2 {
                    cum[g][i][j] = rewards[g][j] + 0.5 * r_next[i][j];
                }
            }
            r_next = cum[g];
        }
        let reference: f64 = (0..2)
            .map(|g| {
                let sum: f64 = (0..2).flat_map(|i| (0..2).map(move |j| (i, j))).map(|(i, j)| -log_probs[g][j] * 0.1 * cum[g][i][j]).sum();
                sum / 4.0
            })
            .sum();
        let got = case(RlTaskReward::BatchMean);
        assert!((got - reference).abs() < 1e-6, "batch_mean {got} vs the reference's arithmetic {reference}");
        let mean = (-ce0 - ce1) / 2.0;
        assert!((got - per_image(mean, mean)).abs() < 1e-6, "which is the batch-mean task reward for every image");
        assert!((got - want).abs() > 1e-3, "and differs from per_image here");
    }
}
