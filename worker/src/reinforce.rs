//! Stage rl's REINFORCE loss for the gates (ALGORITHMS 6).

use tch::{Kind, Reduction, Tensor};

use crate::error::{EngineError, Result};

/// The REINFORCE loss of one batch with G gates in forward order:
/// task reward `R_G = -CE(logits, targets)` per image (no gradient); from the
/// last gate to the first, `r_i = (1 - a_i) * alpha / G` and
/// `R_i = r_i + gamma * R_{i+1}`; the loss is
/// `sum_i mean_over_batch(-log pi(a_i) * rl_weight * R_i)`.
/// `actions[i]` and `log_probs[i]` are gate i's sampled 0/1 actions and their
/// log-probabilities, each of shape (N,).
pub fn rl_loss(
    logits: &Tensor,
    targets: &Tensor,
    actions: &[Tensor],
    log_probs: &[Tensor],
    alpha: f64,
    gamma: f64,
    rl_weight: f64,
) -> Result<Tensor> {
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
        let mut ret = logits.f_cross_entropy_loss::<Tensor>(targets, None, Reduction::None, -100, 0.0)?.f_neg()?;
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
