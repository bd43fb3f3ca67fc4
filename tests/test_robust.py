"""`run.py robust`, environment perturbations, learned adversaries and SA-PPO."""
import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import envs
import run
from agents import ppo, sac
from commands import robust
from envs import perturbations
from meta import adversary as adv
from robustness import attacks
from src import checkpoint, rundir
from src import config as cfg
from src.config import ConfigError
from tests.helpers import check_golden, tree_equal

TINY = ["--total-steps", "1024", "--seeds", "2", "--no-progress", "--set", "num_steps=64", "--set", "hidden=[16]"]
# a victim worth attacking: the same small program trained 100 times longer
# (compiling dominates; the 2 x 102k steps run in about 4 s on 2 cores) with a
# 10x learning rate; clean returns 350-500 (mean over the 2 members) for seeds 0, 2 and 4
VICTIM = [*TINY, "--total-steps", "102400", "--set", "lr=0.0025"]
ATTACK_EPS = (0.0, 0.2)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("robust") / "run")
    run.main(["train", *VICTIM, "--out", out])
    return out


@pytest.fixture(scope="module")
def attacked(run_dir):
    """`run.py robust` with three attacks on the trained victim."""
    return run.main(["robust", run_dir, "--attacks", "random,fgsm,pgd", "--eps", ",".join(map(str, ATTACK_EPS)),
                     "--episodes", "16", "--pgd-steps", "3", "--no-progress"])


def check_table(out, names):
    with open(os.path.join(out, "robust.json")) as f:
        stored = json.load(f)
    table = stored["table"]
    assert set(table) == {*names, "min_over_attacks"}
    for name in names:
        per_member = np.array(table[name]["per_member"])
        assert per_member.shape == (2, 2)
        # eps = 0 is the clean policy whatever the attack (no attack may move it, nor make a NaN of 0 / 0)
        np.testing.assert_allclose(per_member[:, 0], np.array(table[names[0]]["per_member"])[:, 0])
    assert set(stored["seconds_per_attack"]) == set(names)
    return stored


def test_robust_cli_writes_table_plot_and_json_and_certificates(run_dir, attacked):
    out = os.path.join(run_dir, "robust")
    assert {"robust.json", "robust.md", "robust.png"} <= set(os.listdir(out))
    assert check_table(out, ["random", "fgsm", "pgd"])["eps"] == list(ATTACK_EPS)
    assert "min over attacks" in open(os.path.join(out, "robust.md")).read()
    with open(os.path.join(out, "robust.json")) as f:
        check_golden("robust_attacks", json.load(f)["table"])

    # sigma 0.05 keeps the smoothed victim near its clean return; budgets of 0, 1 and 2 sigma
    episodes, alpha, thresholds = 64, 0.05, 100
    cert = run.main(["robust", run_dir, "--certify", "--sigma", "0.05", "--budget", "0,0.05,0.1", "--episodes",
                     str(episodes), "--alpha", str(alpha), "--thresholds", str(thresholds), "--pgd-steps", "2",
                     "--no-progress"])
    certified, smoothed = np.asarray(cert["certified"]), np.asarray(cert["smoothed_return"])
    assert certified.shape == (2, 3) and np.all(np.diff(certified, axis=1) <= 0)
    # at budget 0, a lower confidence bound on the smoothed return from the
    # same episodes: below their mean (the lower bound on each P(R > t) is
    # below its frequency), and above the mean less Hoeffding's deviation at
    # level alpha / thresholds, sqrt(log(thresholds / alpha) / (2 episodes)) of
    # the range 500 (the exact binomial bound is tighter), less one threshold
    # spacing (the sum over thresholds rounds each return down to one)
    assert np.all(certified[:, 0] <= smoothed + 1e-3), (certified, smoothed)
    hoeffding = 500.0 * np.sqrt(np.log(thresholds / alpha) / (2 * episodes))
    assert np.all(certified[:, 0] >= smoothed - hoeffding - 500.0 / thresholds), (certified, smoothed)
    # a member whose every noisy episode reached 500: each threshold below 500
    # was exceeded n times out of n, a lower bound of (alpha / T)^(1 / n), shifted by B / sigma
    p = (alpha / thresholds) ** (1.0 / episodes)
    closed_form = 500.0 * (thresholds - 1) / thresholds * stats.norm.cdf(stats.norm.ppf(p) - np.array([0, 1, 2]))
    for member in np.flatnonzero(smoothed == 500.0):
        np.testing.assert_allclose(certified[member], closed_form, rtol=1e-4)
    assert os.path.exists(os.path.join(out, "certificate.json"))

    shifted = run.main(["robust", run_dir, "--shift", "length=0.5,2", "--episodes", "3", "--no-progress"])
    assert np.asarray(shifted["per_member"]).shape == (2, 2) and os.path.exists(os.path.join(out, "shift.json"))
    with pytest.raises(ConfigError, match="cannot shift 'lenght'"):
        robust.main([run_dir, "--shift", "lenght=2"])


def test_attacks_lower_a_trained_victims_return_and_pgd_le_fgsm_le_random(attacked):
    """The fast proxy for tests/test_attacks.py's slow claim on a bigger victim."""
    means = {name: np.asarray(attacked["table"][name]["mean"]) for name in ("random", "fgsm", "pgd")}
    clean = means["random"][0]
    assert clean > 250, means                              # the victim has learned something to lose
    assert means["pgd"][1] < 0.5 * clean, means            # and PGD at eps 0.2 takes most of it
    tol = 0.01 * clean                                     # (PGD may trail FGSM by a step in one episode)
    assert means["pgd"][1] <= means["fgsm"][1] + tol and means["fgsm"][1] <= means["random"][1] + tol, means


@pytest.mark.slow   # 36 s
def test_robust_cli_learned_adversary_takes_most_of_the_clean_return(run_dir):
    """The fast proxy for the learned-adversary figures (about 20 s on 2 cores,
    most of it compiling the adversary's PPO): 16384 adversary steps do not yet
    move this victim (member returns 500 and 204 stay), 32768 take 80-90% of
    each member's clean return (34 and 60 left)."""
    stored = run.main(["robust", run_dir, "--attacks", "learned", "--eps", "0,0.2", "--episodes", "8",
                       "--adversary-steps", "32768", "--out", os.path.join(run_dir, "learned"), "--no-progress"])
    assert check_table(os.path.join(run_dir, "learned"), ["learned"])["adversary_steps"] == 32768
    per_member = np.asarray(stored["table"]["learned"]["per_member"])
    assert per_member[:, 0].mean() > 250, per_member                 # a victim with something to lose
    assert (per_member[:, 1] < 0.5 * per_member[:, 0]).all(), per_member   # each member loses most of it


@pytest.mark.slow   # the clipped objective's numbers: tests/test_attacks.py; its flags' checks: the bad-input test below
def test_robust_cli_clipped_action_objective_on_a_continuous_victim(tmp_path):
    out = str(tmp_path / "pendulum")
    run.main(["train", "--env", "Pendulum-v1", *TINY, "--out", out])
    stored = run.main(["robust", out, "--attacks", "pgd,mad", "--eps", "0,0.3", "--episodes", "2", "--pgd-steps", "2",
                       "--pgd-step-scale", "1", "--action-objective", "clipped", "--no-progress"])
    assert stored["action_objective"] == "clipped" and stored["pgd_step_scale"] == 1.0
    assert "on the clipped action" in open(os.path.join(out, "robust", "robust.md")).read()
    check_table(os.path.join(out, "robust"), ["pgd", "mad"])


def test_robust_cli_bad_input_fails_before_compiling(run_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:   # as a user sees it: a message and exit status 2
        run.main(["robust", run_dir, "--eps", "0,-0.1"])
    assert exit_info.value.code == 2 and "error: eps must be >= 0, got -0.1" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="unknown attack 'fgms'.*random, fgsm, pgd, critic, mad, learned"):
        robust.main([run_dir, "--attacks", "pgd,fgms"])
    with pytest.raises(ConfigError, match="sigma must be > 0"):
        robust.main([run_dir, "--certify", "--sigma", "0"])
    with pytest.raises(ConfigError, match="pgd-step-scale must be > 0"):
        robust.main([run_dir, "--pgd-step-scale", "0"])
    with pytest.raises(ConfigError, match="clipped needs a Gaussian policy.*discrete"):
        robust.main([run_dir, "--action-objective", "clipped", "--no-progress"])
    no_ckpt = tmp_path / "no_checkpoint"
    no_ckpt.mkdir()
    for name in ("config.yaml", "members.json"):
        with open(os.path.join(run_dir, name)) as src, open(no_ckpt / name, "w") as dst:
            dst.write(src.read())
    with pytest.raises(ConfigError, match="has no checkpoint"):
        robust.main([str(no_ckpt)])
    with pytest.raises(ConfigError, match="not a run directory"):
        robust.main([str(tmp_path)])


def test_robust_settings_come_from_a_preset_and_set_and_flags_win(tmp_path):
    """`run.py robust` takes --config and --set like every command: YAML keys
    are the flags' names (lists for comma lists), --set overrides the preset
    and a flag on the command line overrides both; a misspelt key fails."""
    preset = tmp_path / "attack.yaml"
    preset.write_text("attacks: [random, pgd]\neps: [0, 0.1]\nepisodes: 3\npgd-steps: 2\nsigma: 0.3\n")
    args = robust.parse_args(["RUN", "--config", str(preset), "--set", "episodes=4", "--pgd-steps", "5"])
    assert (args.attacks, args.eps, args.episodes, args.pgd_steps, args.sigma) == ("random,pgd", "0,0.1", 4, 5, 0.3)
    assert isinstance(args.episodes, int) and args.norm == "linf"        # untouched flags keep their defaults
    with pytest.raises(ConfigError, match="unknown setting 'epsilon'.*eps"):
        robust.parse_args(["RUN", "--set", "epsilon=0.1"])


def test_critic_attack_on_an_agent_without_a_state_value_critic_fails_clearly(tmp_path):
    # a SAC run directory (its initial state as the checkpoint): SAC has Q(s, a) critics, no V(s)
    config = dataclasses.replace(sac.SACConfig(), env="CartPole-v1", seeds=1, hidden=(8,), buffer_size=64,
                                 num_envs=1, total_steps=64, learning_starts=0, sgd_batch_size=16)
    config = config.validate()
    out = tmp_path / "sac_run"
    out.mkdir()
    cfg.save_yaml(config, str(out / "config.yaml"))
    rundir.write_members(str(out), [{"seed": 0, "hparams": {}}])
    agent = sac.make(config)
    shapes = jax.eval_shape(jax.vmap(agent.init), jax.random.PRNGKey(0)[None],
                            jax.tree.map(lambda x: x[None], sac.hparams_from(config)))
    state = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)   # any values: only loaded
    checkpoint.save(str(out / "checkpoint"), state)
    with pytest.raises(ConfigError, match="no state-value critic"):
        robust.main([str(out), "--attacks", "pgd,critic", "--no-progress"])


# ----------------------------------------------------------------------------- perturbations

def test_pole_length_shift_changes_the_dynamics_consistently():
    env, params = envs.make("CartPole-v1")
    longer = perturbations.shift_params(params, length=2.0)
    assert float(longer.length) == pytest.approx(1.0)
    assert float(longer.polemass_length) == pytest.approx(params.masspole * 1.0)
    heavier = perturbations.shift_params(params, masspole=3.0)
    assert float(heavier.total_mass) == pytest.approx(params.masscart + 0.3)
    levels = perturbations.shifted_levels(params, "length", [0.5, 1.0, 2.0])
    obs, state = env.reset(jax.random.PRNGKey(0), params)

    def theta_acc(p):
        _, s, *_ = env.step(jax.random.PRNGKey(1), state, 1, p)
        return s.env_state.theta_dot - state.env_state.theta_dot

    acc = jax.vmap(theta_acc)(levels)
    assert float(acc[1]) == pytest.approx(float(theta_acc(params)))
    assert abs(float(acc[0])) > abs(float(acc[1])) > abs(float(acc[2]))   # a longer pole falls more slowly
    with pytest.raises(ConfigError, match="cannot shift 'lenght'.*length"):
        perturbations.shift_params(params, lenght=2.0)


def test_observation_and_action_noise():
    env, params = envs.make("CartPole-v1")
    noisy = perturbations.ObservationNoise(env, sigma=0.5)
    p = noisy.default_params
    keys = jax.random.split(jax.random.PRNGKey(0), 2000)
    clean, _ = jax.vmap(env.reset, in_axes=(0, None))(keys, params)
    obs, _ = jax.vmap(lambda k: noisy.reset(k, p))(keys)
    # same underlying states (the reset key is split the same way) plus N(0, 0.25) noise
    diff = obs - jax.vmap(lambda k: env.reset(jax.random.split(k)[0], params)[0])(keys)
    assert abs(float(diff.std()) - 0.5) < 0.03 and abs(float(diff.mean())) < 0.03
    assert float(jnp.abs(clean).max()) <= 0.05 + 1e-6
    still = jax.vmap(lambda k: noisy.reset(k, p.replace(sigma=jnp.float32(0.0)))[0])(keys)
    assert float(jnp.abs(still).max()) <= 0.05 + 1e-6
    # discrete action noise: a random action with probability sigma (half of them the chosen one)
    shaky = perturbations.ActionNoise(env, sigma=0.4)
    _, state = env.reset(jax.random.PRNGKey(0), params)
    moved = jax.vmap(lambda k: shaky.step(k, state, 1, shaky.default_params)[1].env_state.x_dot)(keys)
    pushed_right = float((moved > 0).mean())
    assert abs(pushed_right - 0.8) < 0.04


# ----------------------------------------------------------------------------- adversaries

def test_adversary_env_perturbs_the_victims_input_and_pays_minus_reward():
    config = ppo.PPOConfig(hidden=(8,))
    agent = ppo.make(config)
    ts = jax.jit(agent.init)(jax.random.PRNGKey(0), ppo.hparams_from(config))
    victim, to_vp = adv.victim_of(agent)
    vp = to_vp(ts)
    env = adv.AdversaryEnv(agent.env, agent.env_params, victim, vp, eps=0.3)
    params = env.default_params
    obs, state = env.reset(jax.random.PRNGKey(1), params)
    a = jnp.array([5.0, -5.0, 0.2, -0.1])
    _, new_state, reward, *_ = env.step(jax.random.PRNGKey(2), state, a, params)
    # the victim saw obs + 0.3 * tanh(a) and acted greedily on it
    expected_action = jnp.argmax(victim.policy(vp, obs + 0.3 * jnp.tanh(a)))
    _, direct, r, *_ = agent.env.step(jax.random.split(jax.random.PRNGKey(2))[1], state.env_state,
                                      expected_action, agent.env_params)
    assert tree_equal(new_state.env_state, direct) and float(reward) == -float(r)


def test_cheap_talk_appends_the_message_and_its_sgd_es_step_is_the_centred_rank_estimate():
    """Cheap talk's ES (meta/es.py's OpenES with optimizer sgd): one step
    moves the mean by lr * sum_i w_i eps_i / (pop * sigma), w the centred
    ranks of the fitness, eps_i the members' noise, computed here by hand."""
    from meta import es as es_lib
    target = jnp.array([1.0, -2.0, 0.5])
    es = es_lib.make(es_lib.ESConfig("openes", 8, sigma=0.1, lr=0.05, optimizer="sgd"), jnp.zeros(3))
    state = es.init(jax.random.PRNGKey(0), jnp.zeros(3))
    population, state = es.ask(jax.random.PRNGKey(1), state)
    returns = -jnp.sum((population - target) ** 2, axis=1)
    new_state, _ = es.tell(jax.random.PRNGKey(2), population, returns, state)
    ranks = np.argsort(np.argsort(np.asarray(returns))) / 7.0 - 0.5
    eps = (np.asarray(population) - 0.0) / 0.1
    expected = 0.05 * (ranks[:, None] * eps).sum(0) / (8 * 0.1)
    np.testing.assert_allclose(es.mean(new_state), expected, rtol=1e-4, atol=1e-6)
    assert float(expected @ np.asarray(target)) > 0      # towards the target

    env, params = envs.make("CartPole-v1")
    talk = adv.CheapTalkEnv(env, params, message_size=2)
    p = adv.CheapTalkParams(params, talk.init_adversary(jax.random.PRNGKey(3)))
    obs, _ = talk.reset(jax.random.PRNGKey(0), p)
    base, _ = env.reset(jax.random.PRNGKey(0), params)
    assert obs.shape == (6,) and envs.obs_size(talk, p) == 6
    np.testing.assert_array_equal(obs[:4], base)
    np.testing.assert_allclose(obs[4:], jnp.tanh(talk.network.apply(p.adversary, base)), rtol=1e-6)


# ----------------------------------------------------------------------------- SA-PPO

def test_sa_ppo_regulariser_trains_deterministically_and_validates():
    config = ppo.PPOConfig(total_steps=4 * 32 * 3, num_envs=4, num_steps=32, hidden=(16,), sa_kappa=1.0,
                           sa_eps=0.1, sa_pgd_steps=2)
    agent = ppo.make(config)
    train = jax.jit(agent.train)
    a = train(jax.random.PRNGKey(0), ppo.hparams_from(config))
    b = train(jax.random.PRNGKey(0), ppo.hparams_from(config))
    assert tree_equal(a, b)
    kl = np.asarray(a[1]["sa_kl"])
    assert np.all(np.isfinite(kl)) and np.all(kl >= 0)
    # eps ramps up from 0: the first iteration's ball is a point, later ones are not
    assert kl[0] == pytest.approx(0.0, abs=1e-7) and kl[-1] > 1e-6
    with pytest.raises(ConfigError, match="sa_kappa >= 0"):
        dataclasses.replace(config, sa_kappa=-1.0).validate()
    # kappa = 0 is plain PPO: no regulariser metric at all
    _, plain = jax.eval_shape(ppo.make(dataclasses.replace(config, sa_kappa=0.0)).train,
                              jax.random.PRNGKey(0), ppo.hparams_from(config))
    assert "sa_kl" not in plain


@pytest.mark.slow   # 20 s
def test_alternating_adversarial_training_runs_and_gives_a_plain_victim_state():
    """ATLA's mechanics in the default suite (about 18 s on 2 cores): two rounds
    run, the same inputs give the same numbers, the victim ends after all its
    iterations in a plain PPO state that `run.py eval` and the attacks take."""
    config = ppo.PPOConfig(total_steps=4 * 32 * 4, num_envs=4, num_steps=32, hidden=(16,))
    small_adv = dataclasses.replace(adv.ADVERSARY_CONFIG, num_envs=4, num_steps=32, hidden=(16,))
    init, one_round, plain = adv.adversarial_training(config, eps=0.1, rounds=2, adversary_config=small_adv)
    step = jax.jit(one_round)
    v, a = jax.jit(init)(jax.random.PRNGKey(0))
    v1, a1, metrics = step(v, a)
    v2, a2, _ = step(v1, a1)
    again = step(v, a)
    assert tree_equal((v1, a1, metrics), again)
    assert int(v2.iteration) == config.num_iterations
    like = plain.init(jax.random.PRNGKey(0), ppo.hparams_from(config))
    assert jax.tree.structure(like) == jax.tree.structure(v2)
    with pytest.raises(ConfigError, match="rounds"):
        adv.adversarial_training(config, eps=0.1, rounds=3, adversary_config=small_adv)
