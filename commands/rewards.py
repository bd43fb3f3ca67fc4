"""`python run.py rewards compare`: distances between reward functions (EPIC, STARC and a naive baseline).

    python run.py rewards compare --env Pendulum-v1 --rewards env,shaped,scaled,random --seeds 3
    python run.py rewards compare --env gridworld/tomato --rewards env,proxy,shaped,random
    python run.py rewards compare --rewards env,rm:RUN_DIR:100,rm:RUN_DIR:10000:wco    # reward models vs gold

Reward sources (`--rewards`, a comma list; each becomes a row and a column):

    env                      the environment's own reward
    shaped[:SCALE]           env + gamma Phi(s') - Phi(s), Phi a random tanh network on the observation
                             times SCALE (default 10), drawn per seed: every distance to env should be 0
                             except the naive one
    scaled[:FACTOR]          FACTOR * env, FACTOR > 0 (default 3): every distance to env should be 0
    random                   a frozen random network over (s, a, s') drawn per seed: unrelated to env
    proxy                    gridworld/tomato only: its farmable bucket proxy (envs/tomato.py)
    rm:RUN_DIR[:PAIRS[:AGG]] the reward models of a `run.py meta reward-model` run, trained from PAIRS
                             preference pairs (default its largest count), aggregated by AGG (mean, wco,
                             uwo or single, the first member; default mean); seed i of this comparison uses
                             the run's seed i. The run directory stores no parameters: they are recomputed
                             from its config.yaml (reference PPO, rollouts, reward models, each as
                             `run.py meta reward-model` made them) and checked against its accuracy.json.
    gold:RUN_DIR             that run's gold reward (the environment's, or its random gold network)

Distances, each in [0, 1] (0: the same up to potential shaping and a positive factor):

- finite MDPs (gridworld/barfi, gridworld/tomato; `--method auto` or `exact`): every reward is
  tabulated on all (s, a, s') of the environment's table (envs/finite_mdps.py) and EPIC, STARC
  (value-adjusted levelling, L2) and the naive L2 distance are exact (envs/reward_distances.py), with
  D_S and D_A uniform and the coverage D(s, a, s') = uniform(s) uniform(a) P(s' | s, a); also the
  normalised regret, under the column's reward, of the policy optimal for the row's.
- any other environment (`--method sampled`): sampled EPIC and the naive distance on `--samples`
  transitions of a uniformly random policy's rollouts (`--coverage rollout`), or of the product of
  visited observations, uniform actions and visited observations (`--coverage product`); the
  canonicalisation averages over `--canon-samples` visited observations paired with uniform actions.
  STARC needs the dynamics and is not computed.

Writes config.yaml, distances.json (every matrix per seed, their mean and std over seeds, the checks),
comparison.md (a table per distance) and distances.png (heatmaps). Bad input (an unknown source or
environment, a directory that is not a finished reward-model run) stops before anything compiles.
"""
import argparse
import dataclasses
import json
import os
import time
import zlib
from typing import NamedTuple

from src import experiment

SOURCES_HELP = ("env, shaped[:SCALE], scaled[:FACTOR], random, proxy (gridworld/tomato), "
                "rm:RUN_DIR[:PAIRS[:AGG]], gold:RUN_DIR")
RM_AGGREGATIONS = ("mean", "wco", "uwo", "single")
NEEDS_ENV_REWARD = ("env", "shaped", "scaled")
METHODS = ("auto", "exact", "sampled")
COVERAGES = ("rollout", "product")
DEFAULT_ENV = "Pendulum-v1"
DEFAULT_SEEDS = 3
SHAPING_SCALE, SCALE_FACTOR = 10.0, 3.0
POTENTIAL_HIDDEN, RANDOM_WIDTH = 32, 64
ROLLOUT_ENVS = 64


@dataclasses.dataclass(frozen=True)
class CompareConfig:
    rewards: tuple[str, ...] = ("env", "shaped", "scaled", "random")
    env: str = ""                      # "": the rm/gold runs' environment, else Pendulum-v1
    env_kwargs: dict = dataclasses.field(default_factory=dict)
    method: str = "auto"               # exact on finite MDPs, sampled elsewhere
    gamma: float = 0.99
    seed: int = 0
    seeds: int = 0                     # 0: the rm/gold runs' seed count, else 3
    samples: int = 2048                # sampled: coverage transitions N
    canon_samples: int = 256           # sampled: canonicalisation samples M (cost (2N + M) M per reward)
    coverage: str = "rollout"
    batch_size: int = 64               # states per block of the sampled canonicalisation
    regret_iters: int = 1000           # exact: value-iteration sweeps of the regret

    def validate(self):
        from src.config import ConfigError
        if not self.rewards:
            raise ConfigError(f"--rewards: no sources given; choose from {SOURCES_HELP}")
        if self.method not in METHODS:
            raise ConfigError(f"unknown --method {self.method!r}; choose from {', '.join(METHODS)}")
        if self.coverage not in COVERAGES:
            raise ConfigError(f"unknown --coverage {self.coverage!r}; choose from {', '.join(COVERAGES)}")
        if not 0.0 < self.gamma < 1.0:
            raise ConfigError(f"--gamma must be in (0, 1) (shaping and regret need a discount), got {self.gamma}")
        if self.samples < 2 or self.canon_samples < 1:
            raise ConfigError(f"need --samples >= 2 and --canon-samples >= 1, got {self.samples}, {self.canon_samples}")
        if self.seeds < 0 or self.batch_size < 1 or self.regret_iters < 1:
            raise ConfigError("seeds must be >= 0 (0: automatic), batch_size and regret_iters >= 1")
        return self


# ----------------------------------------------------------------------------- reward sources

class Source(NamedTuple):
    spec: str                 # as given on the command line
    kind: str                 # env, shaped, scaled, random, proxy, rm, gold
    value: float = 0.0        # shaped: the potential's scale; scaled: the factor
    run_dir: str = ""
    pairs: int = 0
    aggregate: str = "mean"
    full: bool = False        # rm, gold: label by the whole path (two runs share a directory name)

    @property
    def label(self):
        if self.kind not in ("rm", "gold"):
            return self.spec
        run = os.path.normpath(self.run_dir) if self.full else os.path.basename(os.path.normpath(self.run_dir))
        return f"gold:{run}" if self.kind == "gold" else f"rm:{run}:{self.pairs}:{self.aggregate}"


def _positive(text, spec):
    from src.config import ConfigError
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"reward source {spec!r}: {text!r} is not a number") from None
    if not value > 0:
        raise ConfigError(f"reward source {spec!r}: the scale must be > 0 (a factor <= 0 changes which policies "
                          f"are best, so it is not a nuisance the distances should ignore)")
    return value


def parse_source(spec: str) -> Source:
    """One `--rewards` entry, checked for syntax (run directories are read later)."""
    from src.config import ConfigError
    spec = spec.strip()
    head, _, rest = spec.partition(":")
    if head in ("env", "random", "proxy") and not rest:
        return Source(spec, head)
    if head == "shaped":
        return Source(spec, head, _positive(rest, spec) if rest else SHAPING_SCALE)
    if head == "scaled":
        return Source(spec, head, _positive(rest, spec) if rest else SCALE_FACTOR)
    if head in ("rm", "gold") and rest:
        parts = rest.split(":")
        aggregate, pairs = "mean", 0
        if head == "rm":
            if len(parts) > 1 and parts[-1] in RM_AGGREGATIONS:
                aggregate = parts.pop()
            elif len(parts) > 1 and not parts[-1].isdigit() and not os.path.exists(rest):
                raise ConfigError(f"reward source {spec!r}: unknown aggregation {parts[-1]!r}; "
                                  f"choose from {', '.join(RM_AGGREGATIONS)}")
            if len(parts) > 1 and parts[-1].isdigit():
                pairs = int(parts.pop())
        return Source(spec, head, run_dir=os.path.normpath(":".join(parts)), pairs=pairs, aggregate=aggregate)
    raise ConfigError(f"unknown reward source {spec!r}; choose from {SOURCES_HELP}")


class RunInfo(NamedTuple):
    """A `run.py meta reward-model` run directory, read (nothing computed)."""
    path: str
    config: object            # its RewardModelConfig
    accuracy: dict            # its accuracy.json


def read_reward_model_run(source: Source) -> RunInfo:
    from meta import reward_model as rmod
    from src import config as cfg
    from src.config import ConfigError

    path = source.run_dir
    fix = "pass the --out directory of a finished `run.py meta reward-model` run"
    if not os.path.isdir(path):
        raise ConfigError(f"reward source {source.spec!r}: {path} is not a directory; {fix}")
    if not os.path.exists(os.path.join(path, "config.yaml")):
        raise ConfigError(f"reward source {source.spec!r}: {path} is not a run directory (no config.yaml); {fix}")
    try:
        config = cfg.from_dict(rmod.RewardModelConfig, cfg.load_yaml(os.path.join(path, "config.yaml"))).validate()
    except ConfigError as error:
        raise ConfigError(f"reward source {source.spec!r}: {path} is not a `run.py meta reward-model` run "
                          f"({error}); {fix}") from None
    accuracy_path = os.path.join(path, "accuracy.json")
    if not os.path.exists(accuracy_path):
        raise ConfigError(f"reward source {source.spec!r}: {path} has no accuracy.json, so its reward models "
                          f"cannot be checked: finish the run (`run.py meta reward-model --resume --out {path}`)")
    with open(accuracy_path) as f:
        accuracy = json.load(f)
    if source.kind == "rm" and source.pairs and source.pairs not in config.pairs:
        raise ConfigError(f"reward source {source.spec!r}: the run trained reward models on "
                          f"{', '.join(map(str, config.pairs))} pairs, not {source.pairs}")
    return RunInfo(path, config, accuracy)


def needs_env_reward(source: Source, runs) -> bool:
    if source.kind == "gold":
        return runs[source.run_dir].config.gold == "env"
    return source.kind in NEEDS_ENV_REWARD


class Built(NamedTuple):
    fns: list          # reward_fn per source
    params: list       # its params per source, each with a leading seed axis (None: no params)
    checks: dict       # per source label: what was verified while building


def build_sources(sources, runs, config, env, env_params, seed_keys, log=print):
    """reward_fn and per-seed params of every source (reward-model runs are
    recomputed here: the expensive part)."""
    import jax
    import jax.numpy as jnp

    import envs
    from envs import reward_distances as rd
    from envs import reward_models as rm
    from envs import rewards

    obs_dim = envs.obs_size(env, env_params)
    action_size = envs.action_dim(env, env_params)
    discrete = envs.is_discrete(env, env_params)
    seeds = seed_keys.shape[0]
    fns, params, checks = [], [], {}
    recomputed = {}
    for source in sources:
        # this source's draw per seed, from its spec: the same whatever else is compared
        tag = zlib.crc32(source.spec.encode()) & 0x7FFFFFFF
        keys = jax.vmap(lambda k: jax.random.fold_in(k, tag))(seed_keys)
        if source.kind == "env":
            fn, p = rewards.env_reward, None
        elif source.kind == "shaped":
            fn = rewards.potential_shaping(rd.tanh_potential(source.value), config.gamma)
            p = jax.jit(jax.vmap(lambda k: rd.init_tanh_potential(k, obs_dim, POTENTIAL_HIDDEN)))(keys)
        elif source.kind == "scaled":
            fn = rewards.scaled_reward
            p = {"scale": jnp.full((seeds,), source.value, jnp.float32), "shift": jnp.zeros((seeds,), jnp.float32)}
        elif source.kind == "random":
            drawn = []        # the reward function (the same closure for every key), kept while tracing

            def draw(k):
                fn, params = rm.random_gold(k, obs_dim, action_size, discrete, RANDOM_WIDTH)
                drawn.append(fn)
                return params
            p = jax.jit(jax.vmap(draw))(keys)
            fn = drawn[0]
        elif source.kind == "proxy":
            from envs import tomato
            fn, p = tomato.tomato_proxy, None
        else:
            run = runs[source.run_dir]
            if source.run_dir not in recomputed:
                recomputed[source.run_dir] = recompute(run, log=log)
            models = recomputed[source.run_dir]
            if source.kind == "gold":
                fn, p = models["gold"]
                p = jax.tree.map(lambda x: jnp.broadcast_to(x, (seeds, *jnp.shape(x))), p)
                checks[source.label] = {"gold_reproduced_on_rollouts": True}
            else:
                pairs = source.pairs
                ensembles = jax.tree.map(lambda x: x[:seeds], models["ensembles"][pairs])     # [seeds, K, ...]
                if source.aggregate == "single":
                    ensembles = jax.tree.map(lambda x: x[:, :1], ensembles)
                fn = rm.aggregate("mean" if source.aggregate == "single" else source.aggregate,
                                  run.config.uwo_lambda)
                p = ensembles
                checks[source.label] = {"pairs": pairs, "members": int(jax.tree.leaves(ensembles)[0].shape[1]),
                                        "accuracy_gold_recomputed": models["accuracy"][pairs],
                                        "accuracy_gold_in_run": run.accuracy[str(pairs)]["accuracy_gold"]}
        fns.append(fn)
        params.append(p)
    return Built(fns, params, checks)


def recompute(run: RunInfo, log=print):
    """A reward-model run's reward models, rebuilt from its config.yaml by
    meta/reward_model.py's own stages (`learned_rewards`: deterministic in
    the seed) and checked against the run's accuracy.json, with its gold
    reward. Returns {"ensembles": {pairs: params [seeds, K, ...]},
    "accuracy": {pairs: held-out gold accuracy per seed}, "gold": (fn, params)}."""
    import numpy as np

    from meta import reward_model as rmod
    from src.config import ConfigError

    c = run.config
    start = time.time()
    programs = rmod.make(c)
    _, _, ensembles, stats, _ = rmod.learned_rewards(programs, log=lambda *a: None)
    accuracy = {}
    for pairs in c.pairs:
        accuracy[pairs] = stats[pairs]["accuracy_gold"]
        stored = run.accuracy.get(str(pairs), {}).get("accuracy_gold")
        if stored is None or not np.allclose(accuracy[pairs], stored, rtol=0, atol=1e-6):
            raise ConfigError(f"{run.path}: the reward models recomputed from its config.yaml do not reproduce "
                              f"its accuracy.json ({pairs} pairs: held-out gold accuracy {accuracy[pairs]} here, "
                              f"{stored} in the run): it was made by other code or on another kind of device; "
                              f"run `run.py meta reward-model --config {run.path}/config.yaml` again here")
    log(f"{run.path}: reward models recomputed ({c.seeds} seeds, pairs {', '.join(map(str, c.pairs))}; held-out "
        f"accuracy matches accuracy.json) in {time.time() - start:.0f} s")
    return {"ensembles": ensembles, "accuracy": accuracy, "gold": programs.gold}


# ----------------------------------------------------------------------------- the distances

def pair_indices(k):
    import jax.numpy as jnp
    rows, cols = jnp.meshgrid(jnp.arange(k), jnp.arange(k), indexing="ij")
    return rows.ravel(), cols.ravel()


def sampled_program(env, env_params, fns, env_reward, config):
    """seed key, [params per source] -> ({"epic", "naive"}: [k, k], the env
    reward model's relative error on the rollouts)."""
    import jax
    import jax.numpy as jnp

    from envs import reward_distances as rd
    from envs.env_rewards import env_reward_error

    k = len(fns)
    n, m = config.samples, config.canon_samples
    num_envs = min(ROLLOUT_ENVS, n)
    num_steps = -(-n // num_envs)
    space = env.action_space(env_params)

    def one_seed(key, params):
        roll_key, pick_key, canon_key, action_key = jax.random.split(key, 4)
        rollout = rd.random_rollouts(env, env_params, roll_key, num_envs, num_steps)
        obs, action, next_obs, _ = rollout
        if config.coverage == "rollout":
            pick = jax.random.permutation(pick_key, obs.shape[0])[:n]
            transitions = (obs[pick], action[pick], next_obs[pick])
        else:
            product_key, act_key = jax.random.split(pick_key)
            transitions = rd.product_coverage(product_key, obs, rd.sample_actions(act_key, space, n), n)
        canon_obs = obs[jax.random.randint(canon_key, (m,), 0, obs.shape[0])]
        canon_actions = rd.sample_actions(action_key, space, m)
        canonical, scales, raw = [], [], []
        for fn, p in zip(fns, params):
            c, scale = rd.sampled_canonical_and_scale(fn, p, config.gamma, transitions, canon_obs, canon_actions,
                                                      env_reward, config.batch_size)
            canonical.append(c)
            scales.append(scale)
            raw.append(rd.rewards_on(fn, p, *transitions, env_reward))
        canonical, scales, raw = jnp.stack(canonical), jnp.stack(scales), jnp.stack(raw)
        i, j = pair_indices(k)
        epic = jax.vmap(lambda a, b: rd.pearson_distance(canonical[a], canonical[b], None, scales[a], scales[b]))(i, j)
        naive = jax.vmap(lambda a, b: rd.naive_distance(raw[a], raw[b]))(i, j)
        error = env_reward_error(env_reward, rollout) if env_reward is not None else jnp.float32(0.0)
        return {"epic": epic.reshape(k, k), "naive": naive.reshape(k, k)}, error

    # seeds one after another (a loop over the seeds compiles the rollout once, a vmap over them
    # compiles a batched copy that takes twice as long)
    return jax.jit(lambda keys, params: jax.lax.map(lambda x: one_seed(*x), (keys, params)))


def exact_program(mdp, fns, env_reward, config):
    """[params per source] -> {"epic", "starc", "naive", "regret"}: [k, k]
    (regret[i, j]: under reward j, of the policy optimal for reward i) on
    `mdp`, an envs.finite_mdps.FiniteMDP."""
    import jax
    import jax.numpy as jnp

    from envs import reward_distances as rd

    k = len(fns)
    P = jnp.asarray(mdp.P)
    obs = jnp.asarray(mdp.obs)
    states, actions = P.shape[:2]
    coverage = P / (states * actions)                       # uniform (s, a), then the dynamics

    def one_seed(params):
        R = jnp.stack([rd.tabulate(fn, p, obs, actions, env_reward) for fn, p in zip(fns, params)])
        i, j = pair_indices(k)
        out = {"epic": jax.vmap(lambda a, b: rd.epic_distance(R[a], R[b], config.gamma,
                                                              transition_dist=coverage))(i, j),
               "starc": jax.vmap(lambda a, b: rd.starc_distance(P, R[a], R[b], config.gamma,
                                                                weights=coverage))(i, j),
               "naive": jax.vmap(lambda a, b: rd.naive_distance(R[a], R[b], coverage))(i, j),
               "regret": jax.vmap(lambda a, b: rd.normalised_regret(P, R[a], R[b], config.gamma,
                                                                    iters=config.regret_iters))(i, j)}
        return {name: value.reshape(k, k) for name, value in out.items()}

    return jax.jit(jax.vmap(one_seed))


# ----------------------------------------------------------------------------- the command

def parser():
    p = argparse.ArgumentParser(prog="run.py rewards compare", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.split("\n")[6:]))
    p.add_argument("--rewards", default=None, help=f"comma list of reward sources: {SOURCES_HELP}")
    p.add_argument("--env", default=None, help=f"environment (default: the rm runs', else {DEFAULT_ENV})")
    p.add_argument("--env-kwargs", default=None, metavar="YAML", help="options of envs.make, e.g. '{size: 3}'")
    p.add_argument("--method", default=None, choices=METHODS,
                   help="exact on finite MDPs (gridworld/barfi, gridworld/tomato), sampled EPIC elsewhere")
    p.add_argument("--gamma", type=float, default=None, help="discount of the shaping and the distances (0.99)")
    p.add_argument("--samples", type=int, default=None, help="sampled: coverage transitions (2048)")
    p.add_argument("--canon-samples", type=int, default=None, help="sampled: canonicalisation samples (256)")
    p.add_argument("--coverage", default=None, choices=COVERAGES,
                   help="sampled: a random policy's transitions, or the product of visited observations, "
                        "uniform actions and visited observations")
    p.add_argument("--seed", type=int, default=None)
    return experiment.core_flags(p, resume=False, logger=False, stop_at=False)


def build_config(args):
    import yaml

    from src import config as cfg
    from src.config import ConfigError

    config = cfg.from_dict(CompareConfig, cfg.load_yaml(args.config) if args.config else {})
    env_kwargs = None
    if args.env_kwargs is not None:
        try:
            env_kwargs = yaml.safe_load(args.env_kwargs)
        except yaml.YAMLError:
            env_kwargs = None
        if not isinstance(env_kwargs, dict):
            raise ConfigError(f"--env-kwargs expects a YAML mapping such as '{{size: 3}}', got {args.env_kwargs!r}")
    rewards = args.rewards and tuple(s.strip() for s in experiment.comma_list(args.rewards, str, "--rewards"))
    flags = {"rewards": rewards,
             "env": args.env, "env_kwargs": env_kwargs, "method": args.method, "gamma": args.gamma,
             "samples": args.samples, "canon_samples": args.canon_samples, "coverage": args.coverage,
             "seed": args.seed, "seeds": args.seeds}
    config = dataclasses.replace(config, **{k: v for k, v in flags.items() if v is not None})
    return cfg.override(config, args.overrides).validate()


def resolve(config):
    """Everything that can be checked before compiling: the sources, the
    runs they name, the environment and the method. Returns (config with env
    and seeds filled in, sources, runs)."""
    import envs
    from src.config import ConfigError

    from envs.env_rewards import ENV_REWARDS
    from envs.finite_mdps import FINITE_MDPS

    sources = [parse_source(s) for s in config.rewards]
    labels = [s.label for s in sources]
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        raise ConfigError(f"--rewards names {', '.join(twice)} twice")
    runs = {}
    for source in sources:
        if source.kind in ("rm", "gold") and source.run_dir not in runs:
            runs[source.run_dir] = read_reward_model_run(source)
    # an rm source without a pair count takes its run's largest
    sources = [s._replace(pairs=max(runs[s.run_dir].config.pairs)) if s.kind == "rm" and not s.pairs else s
               for s in sources]
    if len({os.path.basename(os.path.normpath(d)) for d in runs}) < len(runs):
        sources = [s._replace(full=s.kind in ("rm", "gold")) for s in sources]
    labels = [s.label for s in sources]
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        raise ConfigError(f"--rewards names {', '.join(twice)} twice")
    env_name = config.env
    if runs:
        kinds = {(r.config.env, json.dumps(r.config.env_kwargs, sort_keys=True)) for r in runs.values()}
        if len(kinds) > 1:
            raise ConfigError(f"the reward-model runs were made on different environments ({sorted(kinds)}): "
                              f"compare runs of one environment at a time")
        run = next(iter(runs.values()))
        if env_name and (env_name, config.env_kwargs) != (run.config.env, run.config.env_kwargs):
            raise ConfigError(f"--env {env_name} {config.env_kwargs or ''} is not the environment of "
                              f"{run.path} ({run.config.env} {run.config.env_kwargs or ''}): leave --env out")
        config = dataclasses.replace(config, env=run.config.env, env_kwargs=dict(run.config.env_kwargs))
        most = min(r.config.seeds for r in runs.values())
        if config.seeds > most:
            raise ConfigError(f"--seeds {config.seeds}: the reward-model runs have only {most} seed(s) (seed i "
                              f"here uses their seed i): pass --seeds {most} or fewer")
        config = dataclasses.replace(config, seeds=config.seeds or most)
    config = dataclasses.replace(config, env=config.env or DEFAULT_ENV, seeds=config.seeds or DEFAULT_SEEDS)
    envs.check_name(config.env)
    env, env_params = envs.make(config.env, **config.env_kwargs)   # builds, compiles nothing
    if config.method == "exact" and config.env not in FINITE_MDPS:
        raise ConfigError(f"--method exact needs a finite MDP ({', '.join(FINITE_MDPS)}); {config.env} is not "
                          f"one: use --method sampled (sampled EPIC)")
    for source in sources:
        if needs_env_reward(source, runs) and config.env not in ENV_REWARDS:
            raise ConfigError(f"reward source {source.spec!r} needs the environment's reward as a function of "
                              f"(obs, action, next_obs), which is known for {', '.join(ENV_REWARDS)}, not for "
                              f"{config.env}: compare rm:, gold: (with a random gold) and random sources there")
        if source.kind == "proxy" and config.env != "gridworld/tomato":
            raise ConfigError(f"reward source 'proxy' is gridworld/tomato's bucket proxy; the environment is "
                              f"{config.env}: pass --env gridworld/tomato or drop it")
    return config, sources, runs, env, env_params


def method_of(config):
    from envs.finite_mdps import FINITE_MDPS
    if config.method == "auto":
        return "exact" if config.env in FINITE_MDPS else "sampled"
    return config.method


def coverage_text(config, method):
    if method == "exact":
        return ("exact on the finite MDP: D_S, D_A uniform; coverage D(s, a, s') = uniform(s) uniform(a) "
                "P(s' | s, a); STARC with the uniform policy's values; regret from uniform start states")
    what = ("transitions of a uniformly random policy's rollouts" if config.coverage == "rollout" else
            "the product of visited observations, uniform actions and visited observations")
    return (f"sampled EPIC: D = {config.samples} {what}; D_S x D_A = {config.canon_samples} visited "
            f"observations paired with uniform actions; {min(ROLLOUT_ENVS, config.samples)} random-policy "
            f"environments from reset. No STARC (it needs the dynamics)")


DESCRIPTIONS = {
    "epic": "EPIC (Gleave et al. 2021): Pearson distance of the canonicalised rewards",
    "starc": "STARC (Skalse et al. 2024): value-adjusted levelling, L2 normalisation, half the L2 distance",
    "naive": "naive baseline: half the L2 distance of the L2-normalised raw rewards (blind to shaping)",
    "regret": "normalised regret, under the column's reward, of the policy optimal for the row's "
              "(0: optimal, 1: the worst policy); not symmetric",
}


def summarise(per_seed):
    """{distance: {"per_seed": [seeds, k, k], "mean", "std": [k, k] over seeds}}, in DESCRIPTIONS' order."""
    import numpy as np
    return {name: {"per_seed": np.asarray(per_seed[name]).tolist(),
                   "mean": np.asarray(per_seed[name]).mean(axis=0).tolist(),
                   "std": np.asarray(per_seed[name]).std(axis=0).tolist()} for name in DESCRIPTIONS if name in per_seed}


def number(x):
    """Three decimals, or one significant digit below 0.001 (rounding-level distances stay visible)."""
    return f"{x:.3f}" if x == 0 or abs(x) >= 1e-3 else f"{x:.0e}"


def markdown(config, method, labels, sources, distances):
    lines = [f"# Reward distances on {config.env}", "",
             f"{config.seeds} seed(s) (mean ± std over seeds), gamma {config.gamma}; {coverage_text(config, method)}.",
             "", "Sources: " + "; ".join(f"`{s.label}`" + ("" if s.label == s.spec else f" (`{s.spec}`)")
                                         for s in sources) + ".", ""]
    for name, values in distances.items():
        mean, std = values["mean"], values["std"]
        lines += [f"## {name}", "", DESCRIPTIONS[name] + ".", "",
                  "| | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
        for i, label in enumerate(labels):
            cells = [f"{number(mean[i][j])} ± {number(std[i][j])}" for j in range(len(labels))]
            lines.append(f"| **{label}** | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def heatmaps(path, labels, distances, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(distances)
    size = 1.2 + 0.55 * len(labels)
    fig, axes = plt.subplots(1, len(names), figsize=(size * len(names), size + 0.6), squeeze=False)
    for ax, name in zip(axes[0], names):
        mean = np.asarray(distances[name]["mean"])
        ax.imshow(mean, vmin=0.0, vmax=1.0, cmap="viridis")
        for i in range(len(labels)):
            for j in range(len(labels)):
                ax.text(j, i, f"{mean[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if mean[i, j] < 0.5 else "black")
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        ax.set_title(name)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def compare(argv):
    args = parser().parse_args(argv)
    config = build_config(args)
    config, sources, runs, env, env_params = resolve(config)
    method = method_of(config)
    labels = [s.label for s in sources]
    run = experiment.start(args.out, f"rewards-compare-{config.env}", config, CompareConfig)
    print(f"reward distances on {config.env} ({method}), {config.seeds} seed(s): {', '.join(labels)} -> {run.path}")

    import jax
    import numpy as np

    from envs.env_rewards import ENV_REWARD_RTOL, env_reward_error, env_reward_model
    from envs.finite_mdps import FINITE_MDPS
    from envs.reward_distances import random_rollouts
    from src.config import ConfigError

    timing = {}
    start = time.time()
    base = jax.random.PRNGKey(config.seed)
    seed_keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(jax.numpy.arange(config.seeds))
    built = build_sources(sources, runs, config, env, env_params, seed_keys)
    timing["sources_s"] = time.time() - start
    env_reward = env_reward_model(config.env, env, env_params)

    start = time.time()
    if method == "exact":
        mdp = FINITE_MDPS[config.env](env.unwrapped, env_params)
        per_seed = exact_program(mdp, built.fns, env_reward, config)(built.params)
        if env_reward is not None:   # (one rollout program: a vmap over the seeds compiles twice as long)
            check = jax.jit(lambda key: env_reward_error(env_reward, random_rollouts(env, env_params, key, 16, 64)))
            error = check(seed_keys[0])
    else:
        per_seed, error = sampled_program(env, env_params, built.fns, env_reward, config)(seed_keys, built.params)
    per_seed = jax.device_get(per_seed)
    timing["distances_s"] = time.time() - start
    checks = dict(built.checks)
    if env_reward is not None:   # the reward model of the environment, against the environment itself
        checks["env_reward_relative_error"] = error = float(np.max(error))
        if not error <= ENV_REWARD_RTOL:
            raise ConfigError(f"the reward model of {config.env} used here differs from the environment's reward by "
                              f"up to {error:g} of its size on a random policy's rollouts: envs/env_rewards.py's "
                              f"env_reward_model is out of date for it")
    distances = summarise(per_seed)
    result = {"env": config.env, "env_kwargs": config.env_kwargs, "method": method,
              "coverage": coverage_text(config, method), "gamma": config.gamma, "sources": labels,
              "specs": [s.spec for s in sources], "seed": config.seed, "seeds": config.seeds,
              "distances": distances, "checks": checks, "timing_s": timing,
              "device": str(jax.devices()[0].device_kind)}
    run.write_json("distances.json", result)
    text = markdown(config, method, labels, sources, distances)
    with open(run.file("comparison.md"), "w") as f:
        f.write(text)
    heatmaps(run.file("distances.png"), labels, distances,
             f"{config.env}: mean over {config.seeds} seed(s) ({method})")
    print(text)
    print(f"sources {timing['sources_s']:.1f} s, distances (compile + run) {timing['distances_s']:.1f} s -> {run.path}")
    return result


ACTIONS = {"compare": (compare, "distances between reward functions: EPIC, STARC, a naive baseline")}


def main(argv):
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in ACTIONS:
        p = argparse.ArgumentParser(prog="run.py rewards", description=__doc__.split("\n")[0])
        p.add_argument("action", choices=list(ACTIONS), help="; ".join(f"{k}: {v[1]}" for k, v in ACTIONS.items()))
        p.parse_args(argv[:1])     # prints help, or the choices for an unknown action, and exits
    return ACTIONS[argv[0]][0](argv[1:])
