"""envs/env_rewards.py: each hand-written environment reward, as a function
of (obs, action, next_obs), is the environment's own reward on a random
policy's rollouts."""
import pytest

from envs import env_rewards
from envs.reward_distances import random_rollouts


@pytest.mark.slow   # one rollout program per environment
@pytest.mark.parametrize("name", env_rewards.ENV_REWARDS)
def test_env_reward_models_are_the_environments_rewards(name):
    import jax

    import envs
    env, params = envs.make(name)
    reward = env_rewards.env_reward_model(name, env, params)
    error = jax.jit(lambda k: env_rewards.env_reward_error(reward, random_rollouts(env, params, k, 16, 256)))
    assert float(error(jax.random.PRNGKey(0))) < env_rewards.ENV_REWARD_RTOL
