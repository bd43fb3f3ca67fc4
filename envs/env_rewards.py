"""Environments' own rewards written out as functions of (obs, action, next_obs).

Why they exist: sampled EPIC (envs/reward_distances.py) canonicalises a
reward on transitions the environment never made (a visited observation, a
uniform action, another visited observation), so a reward source that
includes the environment's reward (`env`, shaping or scaling of it) needs
that reward as a function of the observations, not as a number the
environment returned. Exact distances on the finite gridworlds
(envs/finite_mdps.py) likewise tabulate it on every (s, a, s').

`env_reward_model(name, env, env_params)` gives it for the environments in
`ENV_REWARDS`, or None. They are written by hand from each environment's
source, so `env_reward_error` measures one against the environment's reward
on real transitions (a random policy's rollouts,
`envs.reward_distances.random_rollouts`); `run.py rewards compare` stops
when that error exceeds `ENV_REWARD_RTOL`.
"""
import jax
import jax.numpy as jnp

from envs import tomato

ENV_REWARDS = ("Pendulum-v1", "CartPole-v1", "MountainCar-v0", "Acrobot-v1", "MountainCarContinuous-v0",
               "gridworld/barfi", "gridworld/tomato")
# |env reward model - the environment's reward| / (1 + max |reward|) on a random policy's rollouts
# above which a model counts as out of date (float32 rounding is about 1e-7)
ENV_REWARD_RTOL = 1e-5


def env_reward_model(name: str, env, env_params):
    """The environment's reward as a function of (obs, action, next_obs), or
    None where it is not known (`name` not in ENV_REWARDS)."""
    p = env_params
    if name == "Pendulum-v1":          # -(theta^2 + 0.1 theta_dot^2 + 0.001 u^2) of the state before the step
        def pendulum(obs, action, next_obs):
            u = jnp.clip(action, -p.max_torque, p.max_torque)
            return -(jnp.arctan2(obs[1], obs[0]) ** 2 + 0.1 * obs[2] ** 2 + 0.001 * jnp.sum(jnp.square(u)))
        return pendulum
    if name == "CartPole-v1":          # 1 for every step (the autoreset never steps from a terminal state)
        return lambda obs, action, next_obs: jnp.float32(1.0)
    if name == "MountainCar-v0":
        return lambda obs, action, next_obs: jnp.float32(-1.0)
    if name == "Acrobot-v1":           # -1 until the tip is above the line: -cos(t1) - cos(t1 + t2) > 1
        def acrobot(obs, action, next_obs):
            c1, s1, c2, s2 = next_obs[0], next_obs[1], next_obs[2], next_obs[3]
            return -1.0 + (-c1 - (c1 * c2 - s1 * s2) > 1.0).astype(jnp.float32)
        return acrobot
    if name == "MountainCarContinuous-v0":
        def mountain_car(obs, action, next_obs):
            u = jnp.clip(action, p.min_action, p.max_action)
            at_goal = jnp.logical_and(next_obs[0] >= p.goal_position, next_obs[1] >= p.goal_velocity)
            return -0.1 * jnp.sum(jnp.square(u)) + 100.0 * at_goal.astype(jnp.float32)
        return mountain_car
    if name == "gridworld/barfi":      # goal_reward for a step that ends on the goal
        goal = int(env.index(env.goal))
        return lambda obs, action, next_obs: p.goal_reward * next_obs[goal]
    if name == "gridworld/tomato":     # tomato_reward per watered tomato after the step
        return lambda obs, action, next_obs: p.tomato_reward * jnp.sum(next_obs[tomato.NUM_CELLS:])
    return None


def env_reward_error(env_reward, rollout):
    """max |env_reward(o, a, o') - r| / (1 + max |r|) over the rollout's
    transitions (obs, action, next_obs, reward), e.g. `random_rollouts`' (traced)."""
    obs, action, next_obs, reward = rollout
    return jnp.max(jnp.abs(jax.vmap(env_reward)(obs, action, next_obs) - reward)) / (1.0 + jnp.max(jnp.abs(reward)))
