"""SA-PPO's state-adversarial regulariser (Zhang et al. 2020) as an extra
loss term for PPO (`ppo.make(config, extra_loss=regulariser(...))`):

    kappa * max over the L-inf ball of radius eps of KL(pi(.|s) || pi(.|s + nu)),

the max found by PGD on frozen parameters, then differentiated at that point
(Danskin); eps ramps linearly from 0 over the first `ramp` fraction of
training. PPO builds it from its config's `sa_*` keys when `sa_kappa > 0`."""
import jax
import jax.numpy as jnp

from robustness import attacks


def regulariser(kappa: float, eps: float, pgd_steps: int, ramp: float):
    """extra_loss(policy, params, obs, key, progress_frac, discrete) -> (loss to add, metrics)."""

    def extra_loss(policy, params, obs, key, progress_frac, discrete):
        scale = jnp.minimum(1.0, progress_frac / ramp) if ramp > 0 else 1.0
        radius = eps * scale
        clean = jax.lax.stop_gradient(policy(params, obs))
        frozen = jax.lax.stop_gradient(params)
        delta = attacks.pgd_maximise(lambda x: attacks.kl(clean, policy(frozen, x), discrete),
                                     key, obs, radius, "linf", pgd_steps)
        reg = attacks.kl(clean, policy(params, obs + delta), discrete).mean()
        return kappa * reg, {"sa_kl": reg}

    return extra_loss
