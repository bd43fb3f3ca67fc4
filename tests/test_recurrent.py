"""PPO with memory (`memory: gru|lstm`): a recurrent core whose carry lives in
the train state and the rollout, updates by backpropagation through time over
whole rollouts, minibatches split over envs.

The memory task is bsuite's MemoryChain (gymnax): the context bit is shown at
the episode's start only, and the one rewarded action (+1 if it matches the
bit, -1 if not) comes 5 steps later, so a memoryless policy scores 0 in
expectation whatever it learns."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agents import ppo
from src import checkpoint
from src.config import ConfigError
from src.networks import ActorCritic, RecurrentActorCritic, reset_carry
from tests.helpers import TraceCounter

# 16 iterations of 16 envs x 32 steps (about 5 episodes per env per rollout);
# a GRU solves it on every seed tried (8 of 8) within these 8192 steps
MEMORY = ppo.PPOConfig(env="MemoryChain-bsuite", total_steps=16 * 32 * 16, num_envs=16, num_steps=32,
                       num_epochs=4, num_minibatches=4, hidden=(32, 32), memory="gru", memory_size=32, lr=1e-3)
SEEDS = 3
EVAL_EPISODES = 64
SOLVED = 0.8   # mean return per seed; chance is 0, perfect is 1


def bits_equal(a, b):
    """Bit for bit, on the host (jnp comparisons would compile a program per leaf shape)."""
    a, b = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(a) == len(b) and all(np.asarray(x).dtype == np.asarray(y).dtype and np.shape(x) == np.shape(y)
                                    and np.asarray(x).tobytes() == np.asarray(y).tobytes() for x, y in zip(a, b))


def seed_keys(n, first=0):
    return jax.vmap(jax.random.PRNGKey)(jnp.arange(first, first + n, dtype=jnp.uint32))


@pytest.fixture(scope="module")
def memory_runs():
    """Recurrent PPO over SEEDS seeds, trained in two chunks of the same jitted
    `run` (as run.py trains), the half-way state kept for the resume test;
    then one program that evaluates it and collects a rollout from it. Few
    programs: compiling is most of this module's time."""
    agent = ppo.make(MEMORY)
    hp = ppo.hparams_from(MEMORY)
    half = MEMORY.num_iterations // 2
    counted = TraceCounter(lambda ts, hp: agent.run(ts, hp, num_iterations=half))
    run_half = jax.jit(jax.vmap(counted, in_axes=(0, None)))
    start = jax.jit(jax.vmap(agent.init, in_axes=(0, None)))(seed_keys(SEEDS), hp)
    halfway, first = run_half(start, hp)
    trained, second = run_half(halfway, hp)

    def evaluate_and_collect(trained, eval_keys):
        returns, lengths = jax.vmap(lambda ts, k: agent.evaluate(ts, k, EVAL_EPISODES))(trained, eval_keys)
        return returns.mean(1), lengths, agent.collect(jax.tree.map(lambda x: x[0], trained))

    returns, lengths, collected = jax.jit(evaluate_and_collect)(trained, seed_keys(SEEDS, 100))
    return dict(agent=agent, hp=hp, counted=counted, run_half=run_half, halfway=halfway, trained=trained,
                metrics=jax.tree.map(lambda a, b: np.concatenate([a, b], axis=1), first, second),
                returns=np.asarray(returns), lengths=np.asarray(lengths), collected=collected)


def test_recurrent_ppo_solves_the_memory_chain_on_every_seed(memory_runs):
    """Per seed, the mean return of the episodes that ended in the last
    iteration (about 85: 16 envs x 32 steps of 6-step episodes), and the
    deterministic evaluation (carry reset at each episode's start). A
    memoryless policy scores 0 in expectation (the slow test below trains
    one on the same config)."""
    trained = memory_runs["metrics"]["finished_return"][:, -1]
    evaluated = memory_runs["returns"]
    print(f"MemoryChain, memory=gru: last iteration {trained}, evaluated {evaluated}")
    assert (trained >= SOLVED).all(), trained
    assert (evaluated >= SOLVED).all(), evaluated
    # whole episodes of memory_length + 1 = 6 steps
    np.testing.assert_array_equal(memory_runs["lengths"], 6)
    assert np.isfinite(memory_runs["metrics"]["value_loss"]).all()


@pytest.mark.slow   # 2 more whole programs to compile (~40 s on 2 cores); the default suite keeps the recurrent half
def test_the_same_config_solves_the_memory_chain_with_memory_and_stays_at_chance_without():
    """memory: gru and memory: none, same config and seeds, each vmapped over
    the seeds, both in one program: every recurrent seed passes, every
    memoryless one fails (deterministic evaluation, EVAL_EPISODES episodes)."""
    recurrent, plain = ppo.make(MEMORY), ppo.make(dataclasses.replace(MEMORY, memory="none"))
    hp = ppo.hparams_from(MEMORY)

    def trained_returns(agent, keys, eval_keys):
        states, metrics = jax.vmap(agent.train, in_axes=(0, None))(keys, hp)
        returns, _ = jax.vmap(lambda ts, k: agent.evaluate(ts, k, EVAL_EPISODES))(states, eval_keys)
        return returns.mean(1), metrics["finished_return"][:, -1]

    both = jax.jit(lambda keys, eval_keys: (trained_returns(recurrent, keys, eval_keys),
                                            trained_returns(plain, keys, eval_keys)))
    (with_memory, with_memory_trained), (without, without_trained) = jax.tree.map(
        np.asarray, both(seed_keys(SEEDS), seed_keys(SEEDS, 100)))
    print(f"MemoryChain per seed, evaluated: memory=gru {with_memory}, memory=none {without}; last iteration: "
          f"memory=gru {with_memory_trained}, memory=none {without_trained}")
    assert (with_memory >= SOLVED).all() and (with_memory_trained >= SOLVED).all(), with_memory
    assert (without < SOLVED).all() and abs(without.mean()) < 0.5, without
    assert (without_trained < SOLVED).all() and abs(without_trained.mean()) < 0.5, without_trained


def test_recurrent_train_is_traced_once_across_chunks_seeds_and_hyperparameters(memory_runs):
    counted, hp = memory_runs["counted"], memory_runs["hp"]
    memory_runs["run_half"](memory_runs["halfway"], hp.replace(lr=jnp.float32(3e-4), ent_coef=jnp.float32(0.0)))
    assert counted.count == 1


def test_resume_from_a_checkpoint_is_bit_identical(memory_runs, tmp_path):
    """The carry is part of the train state: a checkpoint half way through,
    restored and run on, ends exactly where the uninterrupted run did."""
    halfway, hp = memory_runs["halfway"], memory_runs["hp"]
    assert halfway.carry.shape == (SEEDS, MEMORY.num_envs, MEMORY.memory_size)
    checkpoint.save(tmp_path / "ckpt", halfway)
    # shapes and dtypes only (no values to fall back on; zeros_like would compile a program per leaf)
    restored = checkpoint.restore(tmp_path / "ckpt", jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                                                                  halfway))
    assert bits_equal(restored, halfway)
    # restored arrays are committed to a device, which jit keys its cache on;
    # the same bits as fresh arrays run the compiled program again
    restored = jax.tree.map(lambda x: jnp.asarray(np.asarray(x)), restored)
    resumed, _ = memory_runs["run_half"](restored, hp)
    assert bits_equal(resumed, memory_runs["trained"])


def test_the_rollout_stores_the_carry_each_step_acted_with_reset_where_an_episode_ended(memory_runs):
    """A rollout from a trained state: the network on (stored carry, obs)
    gives the rollout's log-probabilities and values as acting did; the carry
    after a step that ended an episode is the initial one, and after any
    other step it is the core's output. A rollout that kept the carry through
    episode ends, or stored another carry, fails one of these."""
    network = memory_runs["agent"].network
    ts = jax.tree.map(lambda x: x[0], memory_runs["trained"])
    after, rollout = memory_runs["collected"]

    def replay(params, rollout):   # every step at once from the stored carries: no loop
        next_carry, (dist, value) = network.apply(params, rollout.carry, rollout.obs)
        logp = jnp.take_along_axis(jax.nn.log_softmax(dist), rollout.action[..., None], -1)[..., 0]
        return logp, value, reset_carry(next_carry, network.initial_carry(rollout.done.shape), rollout.done)

    logp, value, want_next = jax.jit(replay)(ts.params, rollout)
    np.testing.assert_array_equal(rollout.carry[0], ts.carry)
    np.testing.assert_allclose(logp, rollout.log_prob, atol=1e-5)
    np.testing.assert_allclose(value, rollout.value, atol=1e-5)
    np.testing.assert_allclose(rollout.carry[1:], want_next[:-1], atol=1e-6)
    np.testing.assert_allclose(after.carry, want_next[-1], atol=1e-6)
    done = np.asarray(rollout.done[:-1])
    assert done.any() and not np.asarray(rollout.carry[1:][done]).any()   # episodes ended, carries reset
    assert np.abs(np.asarray(rollout.carry[1:][~done])).max() > 0.1       # elsewhere the memory is kept


def test_act_takes_and_returns_the_carry_and_stateless_callers_are_refused(memory_runs):
    agent = memory_runs["agent"]
    ts = jax.tree.map(lambda x: x[0], memory_runs["trained"])
    obs = jnp.zeros((5, 3))
    act = jax.jit(lambda ts, obs, carry: agent.act(ts.params, obs, jax.random.PRNGKey(0), True, ts.obs_stats,
                                                   carry=carry))
    action, carry = act(ts, obs, agent.initial_carry((5,)))
    assert action.shape == (5,) and carry.shape == (5, MEMORY.memory_size)
    # the carry is the memory: one episode's observations by hand (gymnax's
    # MemoryChain shows the context +-1 twice, then time remaining only), for
    # both contexts side by side; the last, rewarded action matches the context
    context = jnp.array([1.0, -1.0])
    carry = agent.initial_carry((2,))
    for time_left, shown in [(1.0, context), (1.0, context), (0.8, 0), (0.6, 0), (0.4, 0), (0.2, 0)]:
        obs = jnp.stack([jnp.full((2,), time_left), jnp.zeros((2,)), jnp.zeros((2,)) + shown], axis=1)
        action, carry = act(ts, obs, carry)
    np.testing.assert_array_equal(action, [1, 0])
    with pytest.raises(ConfigError, match="act needs carry="):
        agent.act(ts.params, obs, jax.random.PRNGKey(0), True, ts.obs_stats)
    with pytest.raises(ConfigError, match="log pi\\(a\\|s\\) of a single transition"):
        agent.log_prob(ts.params, obs, action, ts.obs_stats)
    # attacks and BARFI call the stateless ActorCritic methods on agent.network
    with pytest.raises(ConfigError, match="this policy has memory"):
        agent.network.apply(ts.params, obs, method=ActorCritic.policy)
    assert ppo.make(dataclasses.replace(MEMORY, memory="none")).initial_carry is None


def test_attacks_on_a_recurrent_victim_thread_its_carry_through_the_attacked_episode(memory_runs):
    """`run.py robust`'s episode loop with a recurrent victim: at radius 0 it
    returns exactly what the agent's own evaluation does (same keys); a
    victim whose carry never moves (the loop dropping it) falls to chance on
    the memory chain; and PGD at a large radius, attacking each step given
    the history the victim saw, takes most of the clean return."""
    from meta import adversary as adv
    from robustness import attacks
    agent, trained = memory_runs["agent"], memory_runs["trained"]
    victim, to_vparams = adv.victim_of(agent)
    assert victim.memory is not None
    forgetful = victim._replace(memory=victim.memory._replace(advance=lambda vp, x: vp["carry"]))
    threat = attacks.ThreatModel()
    key = jax.random.PRNGKey(5)

    def returns(trained):
        vp = to_vparams(trained)

        def run(victim, name, eps):
            attack = attacks.make_attack(name, threat, victim, steps=10)
            return attacks.evaluate(agent.env, agent.env_params, victim, vp, attack, threat, key, eps,
                                    EVAL_EPISODES, 6)[0]
        return (run(victim, "random", 0.0), agent.evaluate(trained, key, EVAL_EPISODES)[0],
                run(forgetful, "random", 0.0), run(victim, "pgd", 2.0))

    clean, evaluated, forgot, pgd = (np.asarray(r).mean(-1) for r in jax.jit(jax.vmap(returns))(trained))
    print(f"memory chain: clean {clean}, agent.evaluate {evaluated}, carry never moved {forgot}, pgd eps 2 {pgd}")
    np.testing.assert_array_equal(clean, evaluated)
    assert (clean >= SOLVED).all()
    assert (np.abs(forgot) <= 0.5).all(), forgot
    assert (pgd <= clean - 1.0).all(), pgd


def test_the_learned_adversarys_env_carries_a_recurrent_victims_carry_and_resets_it(memory_runs):
    """`AdversaryEnv` (the learned attack's and ATLA's adversary environment)
    with a recurrent victim: with a zero perturbation the victim's carry
    follows `agent.act` on the same observations step by step, starts afresh
    when the episode ends, and the victim solves the chain (the adversary is
    paid -1)."""
    from meta import adversary as adv
    agent = memory_runs["agent"]
    trained = jax.tree.map(lambda x: x[0], memory_runs["trained"])
    victim, to_vparams = adv.victim_of(agent)
    env = adv.AdversaryEnv(agent.env, agent.env_params, victim, to_vparams(trained), eps=0.5)
    params = env.default_params
    obs, state = env.reset(jax.random.PRNGKey(3), params)
    carry = agent.initial_carry()
    zero = jnp.zeros(env.action_space(params).shape)
    rewards = []
    for t in range(6):   # one whole episode of the chain
        _, carry = agent.act(trained.params, obs, jax.random.PRNGKey(0), True, trained.obs_stats, carry=carry)
        obs, state, reward, terminated, truncated, _ = env.step(jax.random.PRNGKey(10 + t), state, zero, params)
        rewards.append(float(reward))
        if t < 5:
            assert not bool(terminated | truncated)
            np.testing.assert_allclose(state.victim_carry, carry, atol=1e-6)
    assert bool(terminated | truncated) and rewards[-1] == -1.0
    assert bits_equal(state.victim_carry, agent.initial_carry())


def test_lstm_and_continuous_actions_trace_with_the_same_contract():
    """Shapes only (traced, not compiled): an LSTM's carry is a (c, h) pair,
    and a Gaussian head works behind the core too."""
    for changes, carry_shapes in [(dict(memory="lstm"), [(16, 32), (16, 32)]),
                                  (dict(env="Pendulum-v1", normalize_obs=True), [(16, 32)])]:
        config = dataclasses.replace(MEMORY, **changes)
        agent = ppo.make(config)
        ts, metrics = jax.eval_shape(agent.train, jax.random.PRNGKey(0), ppo.hparams_from(config))
        assert [c.shape for c in jax.tree.leaves(ts.carry)] == carry_shapes
        assert metrics["policy_loss"].shape == (config.num_iterations,)
        returns, _ = jax.eval_shape(lambda t: agent.evaluate(t, jax.random.PRNGKey(1), 4), ts)
        assert returns.shape == (4,)


def test_the_fused_lstm_unroll_matches_the_cell_stepped_by_scan():
    """`lstm_unroll` (the update's LSTM: batched input projection, a hand-written
    backward loop) against flax's cell stepped by `lax.scan` with the carry
    reset where an episode began: the same hidden states, and the same
    gradients for every cell parameter, the inputs and the first carry."""
    import flax.linen as nn

    from src.networks import lstm_unroll
    time_steps, batch, features, units = 23, 3, 5, 4
    keys = jax.random.split(jax.random.PRNGKey(0), 6)
    normal = nn.initializers.normal(0.5)
    cell = nn.OptimizedLSTMCell(units, kernel_init=normal, recurrent_kernel_init=normal, bias_init=normal)
    x = jax.random.normal(keys[0], (time_steps, batch, features))
    starts = jax.random.uniform(keys[1], (time_steps, batch)) < 0.15
    starts = starts.at[0, 0].set(True).at[7, :].set(True)
    carry = (jax.random.normal(keys[2], (batch, units)), jax.random.normal(keys[3], (batch, units)))
    params = cell.init(keys[4], carry, x[0])["params"]
    weights = jax.random.normal(keys[5], (time_steps, batch, units))

    def stepped(params, x, carry):
        def step(carry, inputs):
            x_t, start = inputs
            carry = reset_carry(carry, jax.tree.map(jnp.zeros_like, carry), start)
            return cell.apply({"params": params}, carry, x_t)
        return jax.lax.scan(step, carry, (x, starts))[1]

    fused = lambda params, x, carry: lstm_unroll(params, carry, x, starts)  # noqa: E731
    np.testing.assert_allclose(fused(params, x, carry), stepped(params, x, carry), atol=1e-6)
    assert not np.allclose(fused(params, x, carry), lstm_unroll(params, carry, x, jnp.zeros_like(starts)))
    grad = lambda unroll: jax.grad(lambda *a: jnp.sum(weights * unroll(*a) ** 2), argnums=(0, 1, 2))(  # noqa: E731
        params, x, carry)
    reference, ours = jax.tree.leaves(grad(stepped)), jax.tree.leaves(grad(fused))
    assert len(reference) == len(ours) == 12 + 1 + 2
    for r, o in zip(reference, ours):
        np.testing.assert_allclose(o, r, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("changes, message", [
    (dict(num_minibatches=3), "num_envs \\(16\\) must be divisible by num_minibatches \\(3\\); set "
                              "num_minibatches to one of \\[1, 2, 4, 8, 16\\]"),
    (dict(num_envs=4, num_minibatches=8), "splits minibatches over environments"),
    (dict(sa_kappa=0.1), "does not combine with SA-PPO"),
    (dict(memory="rnn"), "memory must be one of none, gru, lstm"),
    (dict(memory_size=0), "memory_size must be >= 1"),
])
def test_recurrent_configs_that_would_split_sequences_fail_before_compiling(changes, message):
    with pytest.raises(ConfigError, match=message):
        ppo.make(dataclasses.replace(MEMORY, **changes))


def test_an_extra_loss_on_single_observations_is_refused():
    with pytest.raises(ConfigError, match="extra_loss terms act on single observations"):
        ppo.make(MEMORY, extra_loss=lambda *args: (0.0, {}))


def test_the_memory_free_network_is_untouched_by_the_option():
    """memory: none builds today's ActorCritic (the golden tests check its numbers)."""
    assert type(ppo.make(dataclasses.replace(MEMORY, memory="none")).network) is ActorCritic
    assert type(ppo.make(MEMORY).network) is RecurrentActorCritic


@pytest.mark.parametrize("loop", ["pbt", "lpo"])
def test_population_loops_train_a_recurrent_learner(loop, tmp_path):
    """`meta pbt` and `meta lpo` with `inner.memory=gru`: the learner they
    build is the recurrent network (a GRU cell in PBT's checkpointed members,
    with their carry), and a tiny run completes with finite numbers."""
    import json

    import run as cli
    tiny = ["--set", "inner.total_steps=256", "--set", "inner.num_envs=2", "--set", "inner.num_steps=16",
            "--set", "inner.hidden=[8]", "--set", "inner.num_epochs=1", "--set", "inner.memory=gru",
            "--no-progress", "--out", str(tmp_path / loop)]
    if loop == "pbt":
        summary = cli.main(["meta", "pbt", "--config", "configs/pbt_ppo_cartpole.yaml", "--population", "2",
                            "--ready", "2", "--truncation", "0.5", "--set", "inner.num_minibatches=1",
                            "--set", "eval_episodes=1", *tiny])
        assert np.isfinite(summary["methods"]["pbt"]["best_eval"]["mean"])
        with open(tmp_path / loop / "checkpoint" / "_METADATA") as f:
            stored = " ".join(json.load(f)["tree_metadata"])
        assert "'cell'" in stored and "'carry'" in stored
    else:
        from meta import lpo
        summary = cli.main(["meta", "lpo", "--pop", "2", "--generations", "1", "--seeds", "1", "--set", "init=random",
                            "--set", "eval_seeds=2", "--set", "inner.num_minibatches=2", *tiny])
        assert summary["complete"] and np.isfinite(summary["fitness_last_generation_mean"])
        config = lpo.LPOConfig(inner={"memory": "gru"}).validate()
        inner = lpo.inner_config(config, config.envs[0])
        assert inner.recurrent and isinstance(ppo.make(inner).network, RecurrentActorCritic)


def test_robust_cli_attacks_certifies_and_shifts_a_recurrent_run(tmp_path):
    """`run.py robust` on a run trained with memory (a GRU on CartPole):
    every attack kind (the learned adversary's environment carries the
    victim's carry), the certificate and a dynamics shift run from the
    checkpoint, and at eps 0 every attack leaves the clean return."""
    import json

    import run as cli
    out = str(tmp_path / "run")
    cli.main(["train", "--total-steps", "2048", "--seeds", "2", "--no-progress", "--out", out,
              "--set", "num_steps=64", "--set", "hidden=[16]", "--set", "memory=gru", "--set", "memory_size=8"])
    names = ["random", "fgsm", "pgd", "critic", "mad", "learned"]
    stored = cli.main(["robust", out, "--attacks", ",".join(names), "--eps", "0,0.5", "--episodes", "4",
                       "--pgd-steps", "2", "--adversary-steps", "512", "--no-progress"])
    for name in names:
        per_member = np.asarray(stored["table"][name]["per_member"])
        assert per_member.shape == (2, 2) and np.isfinite(per_member).all()
        np.testing.assert_allclose(per_member[:, 0], np.asarray(stored["table"]["random"]["per_member"])[:, 0])
    with open(tmp_path / "run" / "robust" / "robust.json") as f:
        assert set(json.load(f)["table"]) == {*names, "min_over_attacks"}
    cert = cli.main(["robust", out, "--certify", "--sigma", "0.05", "--budget", "0,0.05", "--episodes", "4",
                     "--pgd-steps", "1", "--no-progress"])
    assert np.asarray(cert["certified"]).shape == (2, 2)
    shifted = cli.main(["robust", out, "--shift", "length=0.5,2", "--episodes", "2", "--no-progress"])
    assert np.asarray(shifted["per_member"]).shape == (2, 2)


@pytest.mark.slow   # the ATLA pair's two programs, about 20 s on 2 cores
def test_alternating_adversarial_training_of_a_recurrent_victim():
    """ATLA with a victim that has memory: the victim learns on observations
    the adversary perturbs, the adversary against the frozen recurrent victim
    (its carry in the adversary's environment); two rounds give finite numbers
    and the victim's state keeps its carry."""
    from meta import adversary as adv
    config = ppo.PPOConfig(total_steps=4 * 32 * 4, num_envs=4, num_steps=32, hidden=(16,), memory="gru",
                           memory_size=8, num_minibatches=2)
    small_adv = dataclasses.replace(adv.ADVERSARY_CONFIG, num_envs=4, num_steps=32, hidden=(16,))
    init, one_round, plain = adv.adversarial_training(config, eps=0.1, rounds=2, adversary_config=small_adv)
    step = jax.jit(one_round)
    v, a = jax.jit(init)(jax.random.PRNGKey(0))
    for _ in range(2):
        v, a, metrics = step(v, a)
        assert all(np.isfinite(np.asarray(m)).all() for m in metrics.values())
    assert int(v.iteration) == config.num_iterations
    assert [c.shape for c in jax.tree.leaves(v.carry)] == [(4, 8)]
    returns, _ = jax.jit(lambda ts: plain.evaluate(ts, jax.random.PRNGKey(1), 4))(v)
    assert np.isfinite(np.asarray(returns)).all()


@pytest.mark.parametrize("memory, estimator", [("lstm", "implicit"), ("lstm", "unrolled"),
                                               pytest.param("gru", "es", marks=pytest.mark.slow)])
def test_reward_alignment_trains_a_recurrent_learner_with_each_estimator(memory, estimator):
    """BARFI with a learner that has memory: its policy-gradient terms unroll
    each env's window from the carry it started with (the log-probabilities
    equal those the learner acted with), and two blocks with an outer step
    each give a finite, non-zero outer gradient: through Hessian-vector
    products (jax.jvp), through a PPO iteration (reverse over reverse) or by
    ES."""
    from meta import reward_alignment as ra
    config = ra.AlignmentConfig(env="gridworld/barfi", env_kwargs={"size": 3}, heuristic="gridworld-bad", seeds=1,
                                total_steps=4 * 128, num_envs=8, num_steps=16, num_epochs=1, num_minibatches=2,
                                hidden=(8,), gamma=0.9, lr=3e-2, anneal_lr=False, estimator=estimator, unroll=1,
                                outer_every=2, warmup=0, es_pairs=4, es_sigma=0.5,
                                ppo={"memory": memory, "memory_size": 8})
    aligner = ra.make(config)
    assert type(aligner.agent.network) is RecurrentActorCritic
    state = jax.jit(aligner.init)(jax.random.PRNGKey(0))

    def on_policy(ts, reward_params):
        _, rollout = aligner.agent.collect(ts, reward_params)
        _, batch = aligner.collect_inner(ts)
        return aligner.policy_terms(ts.params, batch)[0], rollout.log_prob

    block = jax.jit(aligner.block)
    for _ in range(2):
        state, metrics = block(state)
        norms = np.asarray(metrics["outer_grad_norm"])
        assert np.isfinite(norms).all() and (norms > 0).all(), norms
    ours, acted = jax.jit(on_policy)(state.ts, state.reward_params)
    np.testing.assert_allclose(ours, acted, atol=1e-5)


def test_the_reward_model_loop_penalises_a_recurrent_learner_against_its_recurrent_reference():
    """`meta reward-model` with memory: the KL penalty's log pi_ref(a_t |
    history) follows each episode in the environment's state
    (`envs.wrappers.ReferenceLogProb`), so the learner, which starts as the
    reference, has log-ratio 0 on every step before optimising; beta then
    changes where it goes."""
    from meta import reward_model as rmod
    config = rmod.RewardModelConfig(
        env="gridworld/barfi", env_kwargs={"size": 3}, seeds=2, reference_steps=2048,
        ppo={"num_envs": 8, "num_steps": 32, "hidden": [16], "num_minibatches": 2, "num_epochs": 2,
             "memory": "gru", "memory_size": 8},
        data_envs=8, data_steps=64, pairs=(40,), held_out_pairs=50, segment_len=8, rm_steps=100, rm_hidden=(16,),
        rm_batch=16, ensemble=1, aggregate=("single",), beta=(0.0, 1.0), rl_steps=2048, eval_every=4,
        eval_episodes=8, bon=(1, 4), bon_episodes=16)
    result = rmod.sweep(config, show_progress=False, log=lambda *a: None)
    assert type(rmod.make(config).rl_agent.network) is RecurrentActorCritic
    rows = result["rl"]
    start = [r for r in rows if r["iteration"] == 0]
    assert len(start) == 4 and all(r["kl"] < 1e-6 for r in start), [r["kl"] for r in start]
    end = {(r["beta"], r["seed"]): r for r in rows if r["iteration"] == config.rl_iterations()}
    assert all(np.isfinite(r["gold"]) and r["kl"] >= 0 for r in end.values())
    assert any(end[(0.0, s)]["kl"] != end[(1.0, s)]["kl"] for s in range(2))


def test_orpo_regularises_a_recurrent_learner_towards_its_recurrent_reference():
    """ORPO with memory: the action-KL regulariser reads the reference's
    log pi_ref(a_t | history) from the environment (as the reward-model
    loop's penalty does), the occupancy regularisers work unchanged, and
    every run gives finite numbers with beta reaching the learner."""
    from jax.flatten_util import ravel_pytree

    from meta import orpo
    config = orpo.ORPOConfig(
        seeds=1, reference_steps=320, ppo={"num_envs": 4, "num_steps": 40, "num_minibatches": 2, "num_epochs": 1,
                                           "hidden": (8,), "lr": 1e-3, "memory": "gru", "memory_size": 8},
        betas={"action_kl": (1.0,), "chi2": (0.1,)}, rounds=2, ppo_per_round=2, episodes=4, disc_steps=5,
        disc_batch=16, disc_hidden=(8,))
    programs = orpo.build(config)
    assert type(programs.rl_agent.network) is RecurrentActorCritic
    runs = orpo.members(config)
    refs = jax.jit(jax.vmap(programs.ref_agent.init, in_axes=(0, None)))(
        jax.random.split(jax.random.PRNGKey(0), len(runs)), ppo.hparams_from(config.reference_config()))
    refs = jax.tree.map(lambda x: jnp.broadcast_to(x[:1], x.shape), refs)   # one reference for every run
    weights = jnp.stack([orpo.weights_for(r["regulariser"]) for r in runs])
    betas = jnp.asarray([r["beta"] for r in runs], jnp.float32)
    keys = jnp.broadcast_to(jax.random.PRNGKey(1), (len(runs), 2))
    ts, history = jax.jit(jax.vmap(programs.member))(refs, keys, betas, weights)
    history = jax.tree.map(np.asarray, history)
    assert all(np.isfinite(v).all() for v in history.values())
    assert [(r["regulariser"], r["beta"]) for r in runs] == [("none", 0.0), ("action_kl", 1.0), ("chi2", 0.1)]
    flat = np.asarray(jax.vmap(lambda p: ravel_pytree(p)[0])(ts.params))
    assert not np.allclose(flat[0], flat[1]) and not np.allclose(flat[0], flat[2])


@pytest.mark.parametrize("memory", ["none", "gru"])
def test_dno_scores_segments_on_the_inputs_the_rollout_acted_on(memory):
    """DNO's segment log-probabilities at the parameters that collected the
    rollout are the rollout's own, with observation normalisation on (the
    rollout stores normalised inputs: normalising them again was a bug) and
    with memory (the whole rollout unrolled from its first carry)."""
    from meta import spo
    config = ppo.PPOConfig(env="Pendulum-v1", num_envs=4, num_steps=32, hidden=(16,), normalize_obs=True,
                           memory=memory, memory_size=8, num_minibatches=2)
    agent = ppo.make(config)

    def logps(key):
        ts = agent.init(key, ppo.hparams_from(config))
        ts, _ = agent.collect(ts)            # observation statistics away from their start
        _, rollout = agent.collect(ts, update_obs_stats=False)
        ours = spo.segment_log_probs(agent.network, ts.params, rollout, 8, False)
        return ours, spo.windows(rollout.log_prob, 8).sum(axis=-1)

    ours, acted = jax.jit(logps)(jax.random.PRNGKey(0))
    assert ours.shape == (4, 4)
    np.testing.assert_allclose(ours, acted, rtol=1e-5, atol=1e-4)


@pytest.mark.slow   # four methods' programs, about a minute on 2 cores
def test_online_preference_methods_train_a_recurrent_learner():
    """SPO, P3O, DNO and reward model + PPO online with memory: before any
    update each learner is the reference (win rate one half, KL 0 through
    the environment's reference log-probs), and every row is finite."""
    from meta import spo
    config = spo.SPOConfig(
        env="gridworld/barfi", env_kwargs={"size": 3}, seeds=2, reference_steps=1024, oracle="bt",
        ppo={"num_envs": 8, "num_steps": 32, "hidden": [16], "num_minibatches": 2, "num_epochs": 2,
             "memory": "gru", "memory_size": 8},
        data_envs=8, data_steps=64, pairs=60, held_out_pairs=40, segment_len=8, rm_hidden=(16,), rm_steps=50,
        rl_steps=8 * 32 * 4, eval_every=2, eval_episodes=8)
    rows = spo.run(config, show_progress=False, log=lambda *a: None)["rows"]
    assert {r["method"] for r in rows} == set(spo.METHODS)
    start = [r for r in rows if r["iteration"] == 0]
    assert all(r["win_rate"] == pytest.approx(0.5) and r["kl"] == pytest.approx(0.0, abs=1e-5) for r in start)
    assert all(0.0 <= r["win_rate"] <= 1.0 and np.isfinite(r["gold"]) and r["kl"] >= 0.0 for r in rows)


def test_offline_preference_optimisation_of_a_recurrent_policy():
    """`meta prefopt` with memory: each pair keeps its segments' places in the
    reference's rollouts (the segments there are the pairs'), every loss step
    scores them by unrolling the policy over the whole rollouts from their
    fresh starts, the reference is the policy before training (KL 0 through
    the environment's reference log-probs) and DPO then moves it."""
    from envs import preferences as prefs
    from meta import prefopt as po
    from meta import reward_model as rmod
    config = po.PrefOptConfig(
        env="gridworld/barfi", env_kwargs={"size": 3}, seeds=2, reference_steps=2048,
        ppo={"num_envs": 8, "num_steps": 32, "hidden": [16], "num_minibatches": 2, "num_epochs": 2,
             "memory": "gru", "memory_size": 8},
        data_envs=8, data_steps=64, pairs=80, held_out_pairs=50, segment_len=8, losses=("dpo",),
        beta=(0.1,), steps=40, batch=16, lr=1e-2, eval_every=20, eval_episodes=8)
    result = po.sweep(config, show_progress=False, log=lambda *a: None)
    rows = result["rows"]
    start = [r for r in rows if r["step"] == 0]
    assert all(r["kl"] == pytest.approx(0.0, abs=1e-5) for r in start)
    final = [r for r in rows if r["step"] == config.steps]
    assert all(np.isfinite(r["gold"]) for r in rows) and all(r["kl"] > 1e-3 for r in final), final

    programs = po.make(config)
    ref_keys, data_keys, rm_keys, _, _ = rmod.stage_keys(programs.data.config)
    ref_ts, _ = programs.data.reference(ref_keys)
    rollouts = programs.data.data(ref_ts, data_keys)
    pairs, ((t1, s1), (t2, s2)) = programs.pairs(rollouts, rm_keys)
    for seed in range(2):
        for segments, traj, where in ((pairs.first, t1, s1), (pairs.second, t2, s2)):
            cut = prefs.windows_at(rollouts.obs[seed], traj[seed], where[seed], config.segment_len)
            np.testing.assert_array_equal(cut, segments.obs[seed])


@pytest.mark.slow   # GROOVE's programs, about 30 s on 2 cores
def test_groove_meta_learns_an_objective_for_a_recurrent_learner():
    """`meta ued --method groove` takes `ppo:` keys like the other UED methods:
    with memory its learner and reference are recurrent, and a generation of
    ES over the learned objective gives finite fitness and regret."""
    from meta import groove
    from src import config as cfg
    config = cfg.override(groove.GrooveConfig(
        seeds=1, generations=1, eval_every=1, levels_per_generation=2, capacity=4, lifetime_iterations=4,
        num_envs=4, num_steps=16, pop=4, drift_hidden=8), ["ppo.memory=gru", "ppo.memory_size=8"]).validate()
    assert config.ppo_config().recurrent
    g = groove.make(config)
    state = jax.jit(g.init)(jax.random.key(0))
    state, metrics = jax.jit(g.generation)(state, jax.random.key(1))
    assert all(np.isfinite(np.asarray(v)).all() for v in metrics.values())
    with pytest.raises(ConfigError, match="num_envs \\(4\\) must be divisible by num_minibatches \\(3\\)"):
        cfg.override(config, ["num_minibatches=3"]).validate()
