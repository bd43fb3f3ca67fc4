"""Distances between reward functions that ignore what does not change behaviour.

Two rewards that differ by potential shaping, R + gamma Phi(s') - Phi(s), or
by a positive factor order all policies the same way, so a distance meant to
predict regret should call them equal. Both distances here first map a reward
to a canonical representative of its shaping class, then compare the
canonical rewards in a scale-free way:

- EPIC (Gleave et al. 2021, "Quantifying differences in reward functions"):
  canonicalise with coverage distributions D_S over states and D_A over
  actions (no dynamics needed), then take the Pearson distance
  sqrt((1 - rho) / 2) under a coverage distribution D over transitions.
- STARC (Skalse et al. 2024, "STARC: a general framework for quantifying
  differences between reward functions"): canonicalise with the MDP's own
  dynamics and a fixed policy (value-adjusted levelling), divide by the L2
  norm, and take half the L2 distance between the results.

Finite MDPs are arrays: P[s, a, s'] (rows sum to 1 over s'), R[s, a, s'],
discount gamma. Everything is jax.numpy, so it jits and vmaps over MDPs and
rewards; `gamma`, distributions and policies may be traced. Both distances
lie in [0, 1]: 0 for rewards with the same canonical form up to a positive
factor, 1 for R against -R.

`sampled_epic_distance` is EPIC for environments too large to enumerate
(gymnax observations), on a reward function with the agent contract
`reward_fn(reward_params, transition)` (envs/rewards.py).

`normalised_regret` is the yardstick the distances are meant to predict.

Between a reward function and these arrays: `tabulate` writes one out as
R[s, a, s'] on a finite MDP's states (envs/finite_mdps.py), `random_rollouts`
draws a uniformly random policy's transitions (a coverage for sampled EPIC),
and `tanh_potential` is a random potential Phi for checking that a distance
ignores shaping.
"""
import jax
import jax.numpy as jnp

from envs.rewards import Transition

# A canonical reward smaller than this fraction of the raw reward's largest
# magnitude is float noise left by cancelling shaping: the reward is shaping of
# the zero reward. In float32 that noise measured about 5e-8 of max |R| for
# both canonicalisations (16-state MDPs, potentials of size 5, gamma up to
# 0.999), so the threshold has a wide margin; the price is that a reward whose
# non-shaping part is under 1e-5 of its size counts as zero.
ZERO_RTOL = 1e-5


# ----------------------------------------------------------------------------- shared helpers

def uniform(n: int):
    return jnp.full((n,), 1.0 / n)


def weighted_mean(x, weights):
    return jnp.sum(weights * x)


def weighted_norm(x, weights):
    return jnp.sqrt(jnp.sum(weights * jnp.square(x)))


def transition_weights(shape, transition_dist):
    """D over (s, a, s') as weights summing to 1 (uniform when None)."""
    if transition_dist is None:
        size = 1
        for n in shape:
            size *= n
        return jnp.full(shape, 1.0 / size)
    weights = jnp.asarray(transition_dist)
    return weights / jnp.sum(weights)


def unit_or_zero(x, norm, scale):
    """x / norm, or 0 when x is float noise relative to `scale`: normalising the
    zero reward must give 0, not a random direction."""
    is_zero = norm <= ZERO_RTOL * scale
    return jnp.where(is_zero, 0.0, x / jnp.where(is_zero, 1.0, norm))


# ----------------------------------------------------------------------------- EPIC, exact on finite MDPs

def epic_canonicalize(R, gamma, state_dist=None, action_dist=None):
    """C(R)(s, a, s') = R(s, a, s') + E[gamma R(s', A, S') - R(s, A, S') - gamma R(S, A, S')]
    with S, S' ~ D_S and A ~ D_A independent (`state_dist`, `action_dist`;
    uniform when None). The dynamics do not enter: shaping cancels for any
    choice of D_S and D_A; they decide how much rewards on transitions the MDP
    never makes still count."""
    R = jnp.asarray(R)
    n_states, n_actions, _ = R.shape
    d_s = uniform(n_states) if state_dist is None else jnp.asarray(state_dist)
    d_a = uniform(n_actions) if action_dist is None else jnp.asarray(action_dist)
    mean_reward_from = jnp.einsum("xau,a,u->x", R, d_a, d_s)     # E[R(x, A, S')]
    mean_reward = jnp.dot(d_s, mean_reward_from)                   # E[R(S, A, S')]
    return (R + gamma * mean_reward_from[None, None, :] - mean_reward_from[:, None, None]
            - gamma * mean_reward)


def standardize(x, weights, scale):
    """((x - mean) / std under `weights`, is_constant); a constant x (std within
    ZERO_RTOL of `scale`) standardises to 0 (see unit_or_zero)."""
    centred = x - weighted_mean(x, weights)
    std = weighted_norm(centred, weights)
    return unit_or_zero(centred, std, scale), std <= ZERO_RTOL * scale


def pearson_distance(x, y, weights=None, x_scale=None, y_scale=None):
    """sqrt((1 - rho) / 2) for the weighted Pearson correlation rho of x and y.

    Computed as half the weighted L2 distance of the standardised arrays (the
    same number, since 1 - rho = |x_hat - y_hat|^2 / 2), which stays accurate
    near rho = 1 where sqrt(1 - rho) would amplify rounding. A constant array
    (std below ZERO_RTOL of its `scale`, default its own largest magnitude)
    has no direction: against a non-constant one the distance is sqrt(1/2)
    (rho = 0), against another constant one it is 0.
    """
    x, y = jnp.asarray(x), jnp.asarray(y)
    weights = transition_weights(x.shape, weights)
    x_scale = jnp.max(jnp.abs(x)) if x_scale is None else x_scale
    y_scale = jnp.max(jnp.abs(y)) if y_scale is None else y_scale
    (x_hat, x_constant), (y_hat, y_constant) = standardize(x, weights, x_scale), standardize(y, weights, y_scale)
    distance = 0.5 * weighted_norm(x_hat - y_hat, weights)
    return jnp.where(x_constant != y_constant, jnp.sqrt(0.5), distance)


def epic_distance(R1, R2, gamma, state_dist=None, action_dist=None, transition_dist=None):
    """EPIC: the Pearson distance of the canonicalised rewards under the
    coverage D over (s, a, s') (`transition_dist`, an [S, A, S] array of
    weights; uniform when None). D_S and D_A as in `epic_canonicalize`."""
    c1 = epic_canonicalize(R1, gamma, state_dist, action_dist)
    c2 = epic_canonicalize(R2, gamma, state_dist, action_dist)
    return pearson_distance(c1, c2, transition_dist, jnp.max(jnp.abs(R1)), jnp.max(jnp.abs(R2)))


# ----------------------------------------------------------------------------- STARC, exact on finite MDPs

def uniform_policy(n_states: int, n_actions: int):
    return jnp.full((n_states, n_actions), 1.0 / n_actions)


def policy_values(P, R, gamma, policy):
    """V^pi exactly, by solving V = r_pi + gamma P_pi V (policy[s, a] = pi(a | s))."""
    P, R = jnp.asarray(P), jnp.asarray(R)
    expected_reward = jnp.einsum("sa,sat,sat->s", policy, P, R)
    state_transitions = jnp.einsum("sa,sat->st", policy, P)
    n_states = P.shape[0]
    return jnp.linalg.solve(jnp.eye(n_states, dtype=P.dtype) - gamma * state_transitions, expected_reward)


def starc_canonicalize(P, R, gamma, policy=None):
    """Value-adjusted levelling: c(R)(s, a, s') = E_{S' ~ P(s, a)}[R(s, a, S') - V^pi(s) + gamma V^pi(S')]
    with V^pi the value of R under `policy` (uniform random when None).

    Shaping by Phi moves V^pi by -Phi, which cancels it exactly; the
    expectation over S' also merges rewards that differ only in how they
    share a (s, a)'s reward among its successors (S'-redistribution), which no
    policy can tell apart. The result does not depend on s', and is broadcast
    over it so it is a reward of R's shape."""
    P, R = jnp.asarray(P), jnp.asarray(R)
    policy = uniform_policy(*P.shape[:2]) if policy is None else policy
    values = policy_values(P, R, gamma, policy)
    levelled = jnp.einsum("sat,sat->sa", P, R + gamma * values[None, None, :]) - values[:, None]
    return jnp.broadcast_to(levelled[:, :, None], R.shape)


def starc_normalize(canonical, weights=None, scale=None):
    """canonical / its (weighted) L2 norm; the zero reward normalises to 0."""
    canonical = jnp.asarray(canonical)
    weights = transition_weights(canonical.shape, weights)
    scale = jnp.max(jnp.abs(canonical)) if scale is None else scale
    return unit_or_zero(canonical, weighted_norm(canonical, weights), scale)


def starc_distance(P, R1, R2, gamma, policy=None, weights=None):
    """STARC with value-adjusted levelling, L2 normalisation and L2 metric,
    halved so it lies in [0, 1]. `weights` over (s, a, s') define the norm
    (uniform when None; the canonical reward is constant in s', so only the
    weight each (s, a) gets matters)."""
    s1 = starc_normalize(starc_canonicalize(P, R1, gamma, policy), weights, jnp.max(jnp.abs(R1)))
    s2 = starc_normalize(starc_canonicalize(P, R2, gamma, policy), weights, jnp.max(jnp.abs(R2)))
    return 0.5 * weighted_norm(s1 - s2, transition_weights(R1.shape, weights))


def naive_distance(R1, R2, weights=None):
    """Half the L2 distance of the L2-normalised raw rewards: scale-free but
    blind to shaping (the baseline the canonicalisations improve on)."""
    return 0.5 * weighted_norm(starc_normalize(R1, weights) - starc_normalize(R2, weights),
                               transition_weights(R1.shape, weights))


# ----------------------------------------------------------------------------- regret, the yardstick

def optimal_q(P, R, gamma, iters: int = 1000):
    """Q* by `iters` sweeps of value iteration from 0; the error is at most
    gamma^iters * max|R| / (1 - gamma)."""
    P, R = jnp.asarray(P), jnp.asarray(R)
    expected_reward = jnp.einsum("sat,sat->sa", P, R)

    def sweep(q, _):
        return expected_reward + gamma * jnp.einsum("sat,t->sa", P, jnp.max(q, axis=1)), None

    q, _ = jax.lax.scan(sweep, jnp.zeros(P.shape[:2], R.dtype), None, length=iters)
    return q


def greedy_policy(q):
    """The deterministic policy argmax_a Q(s, a) as one-hot rows (ties: lowest action)."""
    return jax.nn.one_hot(jnp.argmax(q, axis=1), q.shape[1], dtype=q.dtype)


def normalised_regret(P, R_proxy, R_true, gamma, start_dist=None, iters: int = 1000):
    """Regret under R_true of the policy optimal for R_proxy, as a fraction of
    R_true's whole range of policy values:

        E_{s0 ~ mu}[V*(s0) - V^{pi_proxy}(s0)] / E_{s0 ~ mu}[V*(s0) - V_worst(s0)]

    with V computed under R_true, V_worst = min over policies (the optimum of
    -R_true), mu = `start_dist` (uniform when None). The worst policy, not the
    uniform one, is the reference so the result lies in [0, 1]: 0 when pi_proxy
    is optimal, 1 when it is the worst possible. A reward under which every
    policy is equally good gives 0. Values are exact evaluations of the greedy
    policies of value iteration's Q. Needs gamma < 1."""
    P, R_proxy, R_true = jnp.asarray(P), jnp.asarray(R_proxy), jnp.asarray(R_true)
    mu = uniform(P.shape[0]) if start_dist is None else jnp.asarray(start_dist)

    def value_of_optimum(reward):
        return policy_values(P, R_true, gamma, greedy_policy(optimal_q(P, reward, gamma, iters)))

    best, worst, proxy = value_of_optimum(R_true), value_of_optimum(-R_true), value_of_optimum(R_proxy)
    gap, span = jnp.dot(mu, best - proxy), jnp.dot(mu, best - worst)
    # a span at rounding level means all policies tie
    tie = span <= ZERO_RTOL * jnp.max(jnp.abs(R_true)) / (1.0 - gamma)
    return jnp.where(tie, 0.0, jnp.clip(gap / jnp.where(tie, 1.0, span), 0.0, 1.0))


# ----------------------------------------------------------------------------- a reward function as a table

def tabulate(fn, params, obs, num_actions, env_reward, block=16):
    """R[s, a, s'] = fn(params, Transition(obs[s], a, obs[s'], env reward, not terminated)):
    a reward function with the agent contract on every (s, a, s') of a finite
    MDP whose states have observations `obs` [S, obs_dim]; the environment
    reward from `env_reward(obs, action, next_obs)` (0 when None), `block`
    states at a time."""
    actions = jnp.arange(num_actions, dtype=jnp.int32)

    def row(o):
        def one(a, o2):
            r = jnp.float32(0.0) if env_reward is None else env_reward(o, a, o2)
            return fn(params, Transition(o, a, o2, r, jnp.bool_(False), {}))
        return jax.vmap(lambda a: jax.vmap(lambda o2: one(a, o2))(obs))(actions)

    return jax.lax.map(row, obs, batch_size=block)


# ----------------------------------------------------------------------------- EPIC, sampled

def sample_actions(key, action_space, n: int):
    """n actions uniform from a gymnax space (Discrete, or a Box with finite bounds)."""
    return jax.vmap(action_space.sample)(jax.random.split(key, n))


def product_coverage(key, obs_samples, action_samples, n: int):
    """n transitions (obs, action, next_obs) from D_S x D_A x D_S: obs and
    next_obs drawn independently, with replacement, from `obs_samples`,
    actions from `action_samples`."""
    k_obs, k_act, k_next = jax.random.split(key, 3)
    pick = lambda k, samples: samples[jax.random.randint(k, (n,), 0, samples.shape[0])]  # noqa: E731
    return pick(k_obs, obs_samples), pick(k_act, action_samples), pick(k_next, obs_samples)


def random_rollouts(env, env_params, key, num_envs: int, num_steps: int):
    """(obs, action, next_obs, reward) of a uniformly random policy in
    `num_envs` environments (an `envs.make` environment) for `num_steps`
    steps, flattened to [E * T, ...]; next_obs is the real one at episode
    ends (info["final_observation"])."""
    space = env.action_space(env_params)
    reset_key, run_key = jax.random.split(key)
    obs, state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(reset_key, num_envs), env_params)

    def step(carry, k):
        obs, state = carry
        act_key, step_key = jax.random.split(k)
        action = jax.vmap(space.sample)(jax.random.split(act_key, num_envs))
        next_obs, state, reward, _, _, info = jax.vmap(env.step, in_axes=(0, 0, 0, None))(
            jax.random.split(step_key, num_envs), state, action, env_params)
        return (next_obs, state), (obs, action, info["final_observation"], reward)

    _, out = jax.lax.scan(step, (obs, state), jax.random.split(run_key, num_steps))
    return tuple(jnp.reshape(x, (-1, *x.shape[2:])) for x in out)


def rewards_on(reward_fn, reward_params, obs, action, next_obs, env_reward=None):
    """reward_fn on a batch of (obs, action, next_obs). Sampled transitions are
    not ones the environment made, so they carry no termination and, unless
    `env_reward(obs, action, next_obs)` supplies it, an environment reward of 0
    (a reward model that adds to the environment's reward then sees 0 there)."""
    def one(o, a, o2):
        r = jnp.float32(0.0) if env_reward is None else env_reward(o, a, o2)
        return reward_fn(reward_params, Transition(o, a, o2, r, jnp.bool_(False), {}))
    return jax.vmap(one)(obs, action, next_obs)


def sampled_canonical_and_scale(reward_fn, reward_params, gamma, transitions, canon_obs, canon_actions,
                                env_reward=None, batch_size: int = 64):
    """`sampled_epic_canonical` and max |R| on the transitions (the scale that
    tells float noise from a reward)."""
    obs, action, next_obs = transitions
    n, m = obs.shape[0], canon_obs.shape[0]

    def mean_reward_from(y):
        return jnp.mean(rewards_on(reward_fn, reward_params, jnp.broadcast_to(y, canon_obs.shape),
                                   canon_actions, canon_obs, env_reward))

    # one pass over every state that needs g, in vmapped blocks so memory stays O(batch_size * M)
    g = jax.lax.map(mean_reward_from, jnp.concatenate([obs, next_obs, canon_obs]), batch_size=batch_size)
    g_obs, g_next, g_canon = g[:n], g[n:2 * n], g[2 * n:2 * n + m]
    raw = rewards_on(reward_fn, reward_params, obs, action, next_obs, env_reward)
    return raw + gamma * g_next - g_obs - gamma * jnp.mean(g_canon), jnp.max(jnp.abs(raw))


def sampled_epic_canonical(reward_fn, reward_params, gamma, transitions, canon_obs, canon_actions,
                           env_reward=None, batch_size: int = 64):
    """C(R) on N `transitions` = (obs, action, next_obs), with the expectations
    over S, S' ~ D_S and A ~ D_A replaced by means over M samples: (x_m, u_m)
    pairs, x_m from `canon_obs` (samples of D_S, e.g. observations visited by
    a policy) and u_m from `canon_actions` (samples of D_A, e.g. `sample_actions`):

        C(s, a, s') ~ R(s, a, s') + gamma g(s') - g(s) - gamma mean_m g(x_m),
        g(y) = mean_m R(y, u_m, x_m).

    Potential shaping cancels exactly in these sample means too, not only in
    expectation. Costs (2N + M) M reward evaluations, `batch_size` states at a time."""
    return sampled_canonical_and_scale(reward_fn, reward_params, gamma, transitions, canon_obs,
                                       canon_actions, env_reward, batch_size)[0]


def sampled_epic_distance(reward_fn_1, params_1, reward_fn_2, params_2, gamma, transitions,
                          canon_obs, canon_actions, env_reward=None, batch_size: int = 64):
    """EPIC from samples: both rewards canonicalised on the same samples (see
    `sampled_epic_canonical` for D_S and D_A), then the Pearson distance over
    the N `transitions`, which are samples of the coverage D (e.g. rollouts of
    a policy, or `product_coverage` for the independent product D_S x D_A x D_S,
    one of the coverages the EPIC paper evaluates). Not unbiased, but consistent: it tends to the exact EPIC of these
    coverage distributions as N and M grow, with error O(1/sqrt(N) + 1/sqrt(M))."""
    c1, scale_1 = sampled_canonical_and_scale(reward_fn_1, params_1, gamma, transitions, canon_obs,
                                              canon_actions, env_reward, batch_size)
    c2, scale_2 = sampled_canonical_and_scale(reward_fn_2, params_2, gamma, transitions, canon_obs,
                                              canon_actions, env_reward, batch_size)
    return pearson_distance(c1, c2, None, scale_1, scale_2)


# ----------------------------------------------------------------------------- a random potential

def tanh_potential(scale):
    """Phi(params, obs) = scale * w2 . tanh(obs W1 + b1): with
    `envs.rewards.potential_shaping`, a shaped reward every distance here
    should call equal to the unshaped one (and the naive distance should not)."""
    def potential(params, obs):
        hidden = jnp.tanh(obs.astype(jnp.float32) @ params["w1"] + params["b1"])
        return scale * jnp.dot(hidden, params["w2"])
    return potential


def init_tanh_potential(key, obs_dim, hidden: int):
    """Random parameters of `tanh_potential`: standard normal, W1 and w2 scaled by 1 / sqrt(fan-in)."""
    k1, k2, k3 = jax.random.split(key, 3)
    return {"w1": jax.random.normal(k1, (obs_dim, hidden)) / jnp.sqrt(jnp.float32(obs_dim)),
            "b1": jax.random.normal(k2, (hidden,)),
            "w2": jax.random.normal(k3, (hidden,)) / jnp.sqrt(jnp.float32(hidden))}
