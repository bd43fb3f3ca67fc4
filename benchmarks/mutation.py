"""Mutation run: plant one small bug at a time in the core numerics and check
that the default tests catch it.

    python benchmarks/mutation.py                      # every target, writes benchmarks/results/mutation.{json,md}
    python benchmarks/mutation.py --only gae,ppo       # some targets
    python benchmarks/mutation.py --list               # the mutants, without running anything

Each mutant changes one expression in one function of a covered module: a sign
(+/-, unary minus, a comparison turned round), a min/max (or argmin/argmax), an
index or integer constant (k -> k+1), a float constant (0 <-> 1, c -> -c), a
discount factor (gamma or lambda -> 1), a boolean, or a dropped stop_gradient.
The mutant is written into a copy of the repository (never the working tree),
the target's fast tests run there with `-x`, and the mutant counts as killed
when they fail or time out. Survivors are listed with the reason from
EQUIVALENT where one has been worked out; every other survivor is a missing test.
"""
import argparse
import ast
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


@dataclass(frozen=True)
class Target:
    name: str
    path: str
    functions: tuple      # qualified names; nested functions as "make.actor_loss"
    tests: tuple          # pytest arguments: files, or file::test, and optionally "-k", "expr"


TARGETS = (
    Target("gae", "src/gae.py", ("gae",), ("tests/test_gae.py",)),
    Target("ppo", "agents/ppo.py", ("ppo_clip", "normalize_advantages", "clipped_value_loss", "ppo_losses"),
           ("tests/test_ppo.py",)),
    Target("sac", "agents/sac.py",
           ("squashed_sample", "polyak_update", "temperature_loss", "soft_value_discrete", "soft_value_continuous",
            "soft_q_target", "q_of_actions", "critic_loss_of", "actor_loss_discrete", "actor_loss_continuous"),
           ("tests/test_sac.py",)),
    Target("rewards", "envs/rewards.py",
           ("env_reward", "scaled_reward", "shaping_term", "potential_shaping.reward_fn", "naive_sum.reward_fn",
            "weighted_blend.reward_fn", "learned_gamma", "linear_head", "learned_reward.reward_fn"),
           ("tests/test_rewards.py",)),
    Target("attacks", "robustness/attacks.py",
           ("project", "steepest", "uniform_in_ball", "kl", "action_deviation", "pgd_maximise", "fgsm"),
           ("tests/test_attacks.py",)),
    Target("certificates", "robustness/certificates.py", ("clopper_pearson_lower", "thresholds", "certified_return"),
           ("tests/test_certificates.py",)),
    Target("barfi", "meta/reward_alignment.py",
           ("neumann_inverse_hvp", "implicit_gradient", "discounted_returns",
            "primary_advantage",
            "make.primary_surrogate", "make.estimate_implicit", "make.estimate_unrolled", "make.estimate_es",
            "make.block"),
           ("tests/test_reward_alignment.py",)),
    Target("es", "meta/es.py", ("antithetic_gradient",), ("tests/test_reward_alignment.py",)),
    Target("ued", "meta/env_design.py",
           ("score_probs", "staleness_probs", "replay_probs", "insert", "update", "positive_value_loss", "max_mc",
            "algorithmic_regret", "paired_regret"),
           ("tests/test_env_design.py",)),
)

# Survivors that cannot be killed because the mutant computes the same function
# (or differs only where no input can reach), keyed by mutant id, with why.
EQUIVALENT = {
    "gae:gae:index:0 -> 1#0": "the scan's initial carry is zeros_like(deltas[1]) instead of deltas[0]: same shape and "
                              "dtype, so the same zeros (differs only for a one-step rollout, which raises)",
    "sac:squashed_sample:sign:mean + jnp.exp(log_std) * noise -> mean - jnp.exp(log_std) * noise#0":
        "noise and -noise have the same standard normal law, and the log-density uses noise**2: the mutant samples "
        "the same distribution of (action, log-prob); only a test pinned to one key's draw could tell them apart",
    "sac:q_of_actions:index:0 -> 1#0": "take_along_axis leaves a last axis of size 1 and JAX clamps an out-of-range "
                                       "static index, so [..., 1] reads element 0",
    "sac:critic_loss_of:sign:-1 -> 1#0": "the documented shape is [2, B]: axis 1 is axis -1 (the function is "
                                         "defined for that shape only)",
    "certificates:clopper_pearson_lower:constant:1.0 -> 0.0#0":
        "safe_k is read only where k > 0, where it equals k; at k = 0 the where returns 0 whatever beta_ppf gives",
    "barfi:implicit_gradient:stop_gradient:jax.lax.stop_gradient(neumann_inverse_hvp(hvp, v, alpha, terms)) -> "
    "neumann_inverse_hvp(hvp, v, alpha, terms)#0":
        "w is computed outside the function jax.grad differentiates (it does not depend on phi there), so the "
        "stop_gradient changes no derivative; it guards against a caller differentiating the estimate itself",
    "barfi:discounted_returns:index:0 -> 1#0": "the scan's initial carry is zeros_like(rewards[1]) instead of "
                                               "rewards[0]: the same zeros (as gae's)",
    "barfi:primary_advantage:sign:adv.std() + 1e-8 -> adv.std() - 1e-08#0":
        "the guard moves the scale by a relative 2e-8 / std, below float32's resolution; where std is 0 every "
        "advantage is 0 and both give 0",
    "barfi:make.primary_surrogate:stop_gradient:jax.lax.stop_gradient(primary_advantage(batch, config.gamma)) -> "
    "primary_advantage(batch, config.gamma)#0":
        "the advantage is built from the batch's rewards and done flags only, and `collect` stop_gradients the "
        "rollout policy's parameters, so nothing in it depends on theta or phi; the guard is a second one",
    "attacks:action_deviation:index:0 -> 1#0": "take_along_axis leaves a last axis of size 1 and JAX clamps an "
                                               "out-of-range static index, so [..., 1] reads element 0",
    "attacks:pgd_maximise:sign:x + delta -> x - delta#0": "`first` is used only for the shape and dtype of the "
                                                          "-inf starting value",
    "attacks:pgd_maximise:stop_gradient:jax.lax.stop_gradient(x) -> x#0":
        "the returned delta is stop_gradient'ed and the inner vjp differentiates in delta only, so no derivative "
        "in x can reach a caller either way",
    "attacks:fgsm:stop_gradient:jax.lax.stop_gradient(x) -> x#0":
        "the returned delta is stop_gradient'ed and the inner grad is in the offset only, so no derivative in x "
        "can reach a caller either way",
    "ppo:normalize_advantages:sign:advantage.std() + 1e-8 -> advantage.std() - 1e-08#0":
        "the guard moves the scale by a relative 2e-8 / std, below float32's resolution; where std is 0 every "
        "centred advantage is 0 and both give 0",
}

SWAPPED_NAMES = {"minimum": "maximum", "maximum": "minimum", "min": "max", "max": "min",
                 "argmin": "argmax", "argmax": "argmin", "nanmin": "nanmax", "nanmax": "nanmin"}
DISCOUNTS = {"gamma", "lam", "gae_lambda", "discount"}
# Only the sign of a sum: x*y -> x/y makes many mutants that any test kills, and a
# mutant costs one test run (about 10 s on 2 cores).
SWAPPED_BINOPS = {ast.Add: ast.Sub, ast.Sub: ast.Add}
SWAPPED_COMPARE = {ast.Lt: ast.Gt, ast.Gt: ast.Lt, ast.LtE: ast.GtE, ast.GtE: ast.LtE, ast.Eq: ast.NotEq,
                   ast.NotEq: ast.Eq}


@dataclass
class Mutant:
    target: str
    function: str
    line: int
    kind: str
    before: str
    after: str
    span: tuple           # (lineno, col, end_lineno, end_col) of the replaced expression
    occurrence: int = 0   # tells apart identical edits in one function

    @property
    def id(self):
        return f"{self.target}:{self.function}:{self.kind}:{self.before} -> {self.after}#{self.occurrence}"


def _functions(tree, wanted):
    """(qualified name, FunctionDef) for each wanted function, nested ones included."""
    found = {}

    def walk(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                if name in wanted:
                    found[name] = child
                walk(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                walk(child, f"{prefix}{child.name}.")
            else:
                walk(child, prefix)

    walk(tree, "")
    return found


def _own_nodes(function):
    """The nodes of `function`'s body, without nested functions (they are targets of their own)
    and without the docstring."""
    body = function.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    stack = list(reversed(body))
    while stack:
        node = stack.pop()
        yield node
        for child in reversed(list(ast.iter_child_nodes(node))):
            if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
                stack.append(child)
            elif isinstance(child, ast.Lambda):   # lambdas are part of the function's arithmetic
                stack.append(child.body)


def _edits(node):
    """(kind, replacement node) for each mutation of `node` itself."""
    import copy
    if isinstance(node, ast.BinOp) and type(node.op) in SWAPPED_BINOPS:
        new = copy.deepcopy(node)
        new.op = SWAPPED_BINOPS[type(node.op)]()
        yield "sign", new
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        yield "sign", copy.deepcopy(node.operand)
    elif isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in SWAPPED_COMPARE:
        new = copy.deepcopy(node)
        new.ops = [SWAPPED_COMPARE[type(node.ops[0])]()]
        yield "comparison", new
    elif isinstance(node, ast.Attribute) and node.attr in SWAPPED_NAMES and isinstance(node.ctx, ast.Load):
        new = copy.deepcopy(node)
        new.attr = SWAPPED_NAMES[node.attr]
        yield "min/max", new
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("min", "max"):
        new = copy.deepcopy(node)
        new.func.id = SWAPPED_NAMES[node.func.id]
        yield "min/max", new
    elif isinstance(node, ast.Call) and _dotted(node.func).endswith("stop_gradient") and len(node.args) == 1:
        yield "stop_gradient", copy.deepcopy(node.args[0])
    elif isinstance(node, ast.Constant) and isinstance(node.value, bool):
        yield "constant", ast.Constant(not node.value)
    elif isinstance(node, ast.Constant) and isinstance(node.value, int):
        yield "index", ast.Constant(node.value + 1)
    elif isinstance(node, ast.Constant) and isinstance(node.value, float) and not 0.0 < abs(node.value) < 1e-3:
        value = node.value   # (tiny constants are numerical guards, 1e-8 -> -1e-8 changes nothing testable)
        yield "constant", ast.Constant(1.0 if value == 0.0 else 0.0 if value == 1.0 else -value)
    elif isinstance(node, (ast.Name, ast.Attribute)) and isinstance(node.ctx, ast.Load) and \
            (node.id if isinstance(node, ast.Name) else node.attr) in DISCOUNTS:
        yield "discount", ast.Constant(1.0)


def _dotted(node):
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def mutants_of(target: Target):
    source = (ROOT / target.path).read_text()
    tree = ast.parse(source)
    functions = _functions(tree, set(target.functions))
    missing = set(target.functions) - set(functions)
    if missing:
        raise SystemExit(f"{target.path}: no function(s) {sorted(missing)}; update TARGETS")
    out, seen = [], {}
    for qualname in target.functions:
        for node in _own_nodes(functions[qualname]):
            if not hasattr(node, "lineno"):
                continue
            for kind, new in _edits(node):
                before = ast.get_source_segment(source, node)
                after = ast.unparse(new)
                if before is None or before == after:
                    continue
                mutant = Mutant(target.name, qualname, node.lineno, kind, " ".join(before.split()), after,
                                (node.lineno, node.col_offset, node.end_lineno, node.end_col_offset))
                mutant.occurrence = seen.get(mutant.id, 0)
                seen[mutant.id] = mutant.occurrence + 1
                out.append(mutant)
    return out


def apply(source: str, mutant: Mutant) -> str:
    """`source` with the mutant's span replaced; the rest of the file is byte-identical."""
    lines = source.splitlines(keepends=True)
    start_line, start_col, end_line, end_col = mutant.span
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))

    def offset(line, col):   # ast columns are UTF-8 byte offsets
        return offsets[line - 1] + len(lines[line - 1].encode()[:col].decode())

    start, end = offset(start_line, start_col), offset(end_line, end_col)
    replacement = f"({mutant.after})"
    mutated = source[:start] + replacement + source[end:]
    ast.parse(mutated)   # a mutant that does not parse is a bug of this script
    return mutated


def copy_tree(dest: Path):
    """The repository's files (tracked and untracked, not ignored) into `dest`."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def run_tests(tree: Path, tests, timeout: float, junit: Path | None = None):
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-n", "0", *tests]   # in order: quickest first
    if junit is not None:
        cmd += ["--junitxml", str(junit)]
    # Programs the mutant does not touch come from XLA's persistent cache, so a
    # mutant pays only for recompiling what it changed.
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "JAX_COMPILATION_CACHE_DIR": str(tree / ".jax_cache"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
    start = time.time()
    try:
        proc = subprocess.run(cmd, cwd=tree, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return "timeout", time.time() - start, ""
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or [""]
    if proc.returncode == 0:
        return "survived", time.time() - start, tail[0]
    if proc.returncode in (2, 3, 4):     # interrupted, internal or usage error: not a test failing
        return "error", time.time() - start, tail[0]
    return "killed", time.time() - start, tail[0]


def fastest_first(junit: Path, max_seconds: float):
    """The node ids of a passing run's tests, quickest first, so that `-x` stops a
    killed mutant early; tests slower than `max_seconds` (learning runs) are left
    out, which can only let more mutants survive."""
    import xml.etree.ElementTree as ET
    cases = []
    for case in ET.parse(junit).iter("testcase"):
        if case.find("skipped") is not None:
            continue
        parts = case.get("classname").split(".")   # "tests.test_x" or "tests.test_x.TestClass"
        node = "/".join(parts[:2]) + ".py::" + "::".join(parts[2:] + [case.get("name")])
        cases.append((float(case.get("time", 0.0)), node))
    return [node for seconds, node in sorted(cases, key=lambda c: c[0]) if seconds <= max_seconds]


def report(results, targets, seconds):
    rows, survivors = [], []
    for target in targets:
        mine = [r for r in results if r["target"] == target.name]
        killed = sum(r["status"] in ("killed", "timeout") for r in mine)
        rows.append(f"| {target.name} | `{target.path}` | {len(mine)} | {killed} | "
                    f"{100.0 * killed / max(len(mine), 1):.0f}% |")
        survivors += [r for r in mine if r["status"] not in ("killed", "timeout")]
    total = len(results)
    killed = sum(r["status"] in ("killed", "timeout") for r in results)
    lines = [
        "| target | module | mutants | killed | kill rate |", "|---|---|---:|---:|---:|", *rows,
        f"| **all** | | **{total}** | **{killed}** | **{100.0 * killed / max(total, 1):.1f}%** |", "",
        f"Run time {seconds / 60:.0f} min. Survivors ({len(survivors)}):", "",
    ]
    for r in survivors:
        reason = EQUIVALENT.get(r["id"], "no test catches it yet")
        lines.append(f"- `{r['path']}:{r['line']}` {r['function']}, {r['kind']}: `{r['before']}` -> "
                     f"`{r['after']}` ({r['status']}): {reason}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help="comma-separated target names: " +
                        ", ".join(t.name for t in TARGETS))
    parser.add_argument("--list", action="store_true", help="list the mutants and stop")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per mutant's test run")
    parser.add_argument("--jobs", type=int, default=2, help="mutants tested at once, each in its own copy")
    parser.add_argument("--max-test-seconds", type=float, default=60.0,
                        help="leave out tests slower than this in the unmutated run (learning runs)")
    parser.add_argument("--out", default=str(RESULTS / "mutation"), help="writes OUT.json and OUT.md")
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n]
    unknown = set(names) - {t.name for t in TARGETS}
    if unknown:
        parser.error(f"unknown target(s) {sorted(unknown)}; choose from {', '.join(t.name for t in TARGETS)}")
    targets = [t for t in TARGETS if not names or t.name in names]
    plan = [(t, m) for t in targets for m in mutants_of(t)]
    if args.list:
        for target, m in plan:
            print(f"{target.path}:{m.line}  {m.id}")
        print(f"{len(plan)} mutants")
        return 0

    start = time.time()
    with tempfile.TemporaryDirectory(prefix="mutation-") as tmp:
        # one copy of the repository per job: a mutant is written into its job's copy
        trees = [Path(tmp) / f"job{j}" for j in range(args.jobs)]
        for tree in trees:
            tree.mkdir()
            copy_tree(tree)
        ordered = {}
        for target in targets:
            junit = trees[0] / f"{target.name}.xml"
            status, seconds, tail = run_tests(trees[0], target.tests, args.timeout, junit)
            if status != "survived":
                raise SystemExit(f"{target.name}: the unmutated tests do not pass ({status}: {tail})")
            ordered[target.name] = fastest_first(junit, args.max_test_seconds)
            print(f"{target.name}: unmutated tests pass in {seconds:.0f} s ({len(ordered[target.name])} tests)",
                  flush=True)
        free_trees = queue.Queue()
        for tree in trees:
            free_trees.put(tree)
        done = iter(range(1, len(plan) + 1))

        def one(item):
            target, mutant = item
            tree = free_trees.get()
            try:
                path = tree / target.path
                original = path.read_text()
                path.write_text(apply(original, mutant))
                try:
                    status, seconds, _ = run_tests(tree, ordered[target.name], args.timeout)
                finally:
                    path.write_text(original)
            finally:
                free_trees.put(tree)
            print(f"[{next(done)}/{len(plan)}] {status:8s} {seconds:5.0f}s {target.path}:{mutant.line} "
                  f"{mutant.function} {mutant.before} -> {mutant.after}", flush=True)
            return {"id": mutant.id, "target": target.name, "path": target.path, "function": mutant.function,
                    "line": mutant.line, "kind": mutant.kind, "before": mutant.before, "after": mutant.after,
                    "status": status, "seconds": round(seconds, 1)}

        with ThreadPoolExecutor(args.jobs) as pool:
            results = list(pool.map(one, plan))
    seconds = time.time() - start
    text = report(results, targets, seconds)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"results": results, "seconds": seconds}, indent=1))
    out.with_suffix(".md").write_text(text + "\n")
    print(text)
    errors = [r for r in results if r["status"] == "error"]
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
