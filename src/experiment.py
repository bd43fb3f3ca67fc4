"""The experiment layer: one run directory for every command.

    run = experiment.start(args, config, config_cls, name="ppo-CartPole-v1", members=members)
    state, done = run.restore(fresh_state)             # (fresh_state, 0) unless --resume found a checkpoint
    while done < stop_at:
        state, metrics = chunk(state)
        run.append_rows("metrics.csv", rows)
        watch.check(metrics, state.params, done)        # raises Diverged: the last good checkpoint stays
        done += chunk_length
        run.save(state, done)
    run.write_json("summary.json", summary)

A run directory holds `config.yaml` (the resolved config: `--config
RUN_DIR/config.yaml` runs it again), `members.json` (seed and swept values of
each vmapped member), CSV files of metrics, `summary.json`, `checkpoint/`
(orbax) with `checkpoint.json` (how far the checkpoint is), plots, and
TensorBoard events with `--logger tensorboard`. A run resumed with `--out DIR
--resume` restores the checkpoint, cuts every CSV back to it and continues
bit-identically: each loop draws its randomness from its state, never from the
Python process.
"""
import argparse
import csv
import datetime
import json
import math
import os

import numpy as np
import yaml

from src import config as cfg
from src import rundir
from src.config import ConfigError


class Diverged(RuntimeError):
    """A loss or a parameter became NaN or infinite; the message says where."""


def core_flags(parser: argparse.ArgumentParser, *, seeds=True, resume=True, logger=True, stop_at=True,
               out_help="run directory (default runs/<name>-<time>)"):
    """The flags every command takes where they make sense."""
    parser.add_argument("--config", default=None, help="YAML preset (see configs/) or a run's config.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (repeatable)")
    if seeds:
        parser.add_argument("--seeds", type=int, default=None, help="seeds (vmapped)")
    parser.add_argument("--out", default=None, help=out_help)
    if resume:
        parser.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    if stop_at:
        parser.add_argument("--stop-at", type=int, default=None,
                            help="stop after this many iterations (a multiple of the checkpoint interval)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    if logger:
        parser.add_argument("--logger", default="csv", choices=("csv", "tensorboard"),
                            help="also write TensorBoard events")
    return parser


def comma_list(text, kind, flag):
    """`kind` values of a comma-separated flag ("0,0.1,1"), refusing an empty
    or malformed list with the flag's name."""
    try:
        values = [kind(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{flag} expects a comma list of {kind.__name__}s, got {text!r}") from None
    if not values:
        raise ConfigError(f"{flag}: no values given")
    return values


def parse_with_presets(parser: argparse.ArgumentParser, argv):
    """Parse a command whose settings are its flags (no config dataclass):
    `--config FILE` (YAML whose keys are the flags' names, `-` or `_`) and
    `--set KEY=VALUE` become the flags' defaults, so flags given on the command
    line still win. Unknown keys fail, naming the known ones."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    pre.add_argument("--set", dest="overrides", action="append", default=[])
    known, _ = pre.parse_known_args(argv)
    dests = {a.dest: a for a in parser._actions if a.dest not in ("help", "config", "overrides")}
    settings = cfg.load_yaml(known.config) if known.config else {}
    for item in known.overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        settings[key.strip()] = yaml.safe_load(value)
    defaults = {}
    for key, value in settings.items():
        dest = key.replace("-", "_")
        if dest not in dests or not dests[dest].option_strings:
            raise ConfigError(f"unknown setting {key!r}; known: {', '.join(sorted(d for d, a in dests.items() if a.option_strings))}")
        if isinstance(value, list):    # a YAML list for a comma-list flag
            value = ",".join(str(v) for v in value)
        defaults[dest] = value
    parser.set_defaults(**defaults)
    args = parser.parse_args(argv)
    for dest, action in dests.items():   # YAML gives numbers as they are; argparse types apply to strings only
        value = getattr(args, dest)
        if action.type is not None and dest in defaults and value is not None and not isinstance(value, str):
            setattr(args, dest, action.type(value))
    return args


def default_out(name: str) -> str:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return os.path.join("runs", f"{name.replace('/', '_')}-{stamp}")


class Run:
    """An open run directory. `done` counts the loop's units (iterations,
    blocks, generations) already in the checkpoint; `unit` names them in
    checkpoint.json."""

    def __init__(self, path, config, members, resumed, unit):
        self.path, self.config, self.members, self.resumed, self.unit = path, config, members, resumed, unit
        self.tensorboard = None

    # ------------------------------------------------------------------ files
    def file(self, name):
        return os.path.join(self.path, name)

    def write_json(self, name, data):
        rundir.write_json(self.path, name, data)

    def append_rows(self, name, rows):
        """Append rows to a CSV file; its header is the union of the first
        rows' keys, in order (later rows must have the same keys)."""
        if not rows:
            return
        path = self.file(name)
        new = not os.path.exists(path)
        fields = list(dict.fromkeys(k for row in rows for k in row))
        if not new:
            with open(path, newline="") as f:
                reader = csv.DictReader(f)
                old_fields, old_rows = reader.fieldnames or [], list(reader)
            if set(fields) <= set(old_fields):
                fields = old_fields
            else:   # new columns (another method's metrics): rewrite under the union of the headers
                fields = list(dict.fromkeys([*old_fields, *fields]))
                rows, new = old_rows + list(rows), True
        with open(path, "a" if not new else "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            if new:
                writer.writeheader()
            writer.writerows(rows)

    def read_rows(self, name, numbers=True):
        """A CSV file's rows (numbers parsed to float where they parse)."""
        path = self.file(name)
        if not os.path.exists(path):
            return []
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        return [{k: _number(v) for k, v in row.items()} for row in rows] if numbers else rows

    def cut_rows(self, name, keep=lambda row: True, sort_key=None):
        """Keep only the rows of a CSV file for which `keep(row)` (string
        values) is true, in the order of `sort_key(row)` if given."""
        path = self.file(name)
        if not os.path.exists(path):
            return
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            fields, rows = reader.fieldnames, [r for r in reader if keep(r)]
        if sort_key is not None:
            rows.sort(key=sort_key)
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)

    # ------------------------------------------------------------------ checkpoints
    def progress(self) -> dict:
        path = self.file("checkpoint.json")
        if not os.path.exists(path):
            return {}
        with open(path) as f:
            return json.load(f)

    def save(self, state, done, name="checkpoint", **extra):
        """Checkpoint `state` (orbax) as having finished `done` units."""
        from src import checkpoint
        checkpoint.save(self.file(name), state)
        progress = self.progress()
        progress[_progress_key(name, self.unit)] = done
        progress.update(extra)
        self.write_json("checkpoint.json", progress)

    def restore(self, like, name="checkpoint"):
        """(state, done): the checkpoint read into the structure of `like`, or
        `like` and 0 where there is none (a fresh run, or resumed before its
        first checkpoint)."""
        done = self.progress().get(_progress_key(name, self.unit), 0)
        if not done:
            return like, 0
        from src import checkpoint
        return checkpoint.restore(self.file(name), like), done

    def rows_by_chunk(self, csv, total, chunk, stop_at, label, resumed_keeps=None):
        """For a loop that checkpoints and writes CSV rows after every chunk
        (`loop(..., restore=run.restore, on_chunk=on_chunk, stop_at=stop)`):
        where this session stops, and the `on_chunk(state, done, rows)` that
        appends the rows and saves the state. A resumed run first has `csv`
        cut back to the checkpoint: rows kept where `resumed_keeps(row, done)`
        (string values), by default those whose `self.unit` <= done."""
        stop = stop_point(total, chunk, stop_at, what=f"{self.unit}s")
        if self.resumed:
            done = self.progress().get(self.unit, 0)
            keeps = resumed_keeps or (lambda row, d: int(float(row[self.unit])) <= d)
            self.cut_rows(csv, lambda row: keeps(row, done))
            print(f"resuming {self.path} at {label} {done}")

        def on_chunk(state, done, rows):
            self.append_rows(csv, rows)
            self.save(state, done)
        return stop, on_chunk

    def stopped(self, result, stop, total, label):
        """True (after saying how to continue) when the loop stopped early."""
        if result["complete"]:
            return False
        print(f"stopped at {label} {stop} of {total}: continue with --resume --out {self.path}")
        return True

    def continue_from(self, like, total, csvs=("metrics.csv",)):
        """(state, done) to go on from: the checkpoint (or `like` and 0). A
        complete run is refused; a resumed one has its CSVs cut back to the
        checkpoint (rows after it are computed again)."""
        state, done = self.restore(like)
        if done >= total:
            raise ConfigError(f"the run in {self.path} is already complete ({done} {self.unit}s)")
        if self.resumed:
            for name in csvs:
                self.cut_rows(name, lambda row: int(float(row[self.unit])) <= done)
            print(f"resuming from {self.unit} {done}")
        return state, done

    # ------------------------------------------------------------------ loggers
    def open_logger(self, kind, num_members):
        if kind == "tensorboard":
            self.tensorboard = rundir.TensorBoard(self.path, num_members)
        return self

    def log(self, rows):
        if self.tensorboard is not None:
            self.tensorboard.write(rows)

    def close(self):
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None


def _progress_key(name, unit):
    return unit if name == "checkpoint" else f"{name}/{unit}"


def _number(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def start(out, name, config, config_cls, *, resume=False, given=True, members=None, unit="iteration",
          saved_config=None) -> Run:
    """Open the run directory: a new one (refusing a non-empty directory), or
    with `resume` the one in `out`, whose stored config wins. `given`: whether
    the command line set anything; a resumed run refuses a config that
    differs from its own. `saved_config` is what config.yaml gets, where it
    differs from `config` (defaults to it)."""
    if resume:
        if not out:
            raise ConfigError("--resume needs --out RUN_DIR")
        path = os.path.join(out, "config.yaml")
        if not os.path.exists(path):
            raise ConfigError(f"--resume: no run to resume in {out} (no config.yaml)")
        stored = cfg.from_dict(config_cls, cfg.load_yaml(path))
        if given and stored != (saved_config or config):
            changed = [k for k in cfg.field_names(config_cls)
                       if getattr(stored, k) != getattr(saved_config or config, k)]
            raise ConfigError(f"--resume: the run in {out} has a different config ({', '.join(changed)}); "
                              "a resumed run keeps its own config, so pass only --out and --resume")
        members = rundir.read_members(out) if os.path.exists(os.path.join(out, "members.json")) else members
        return Run(out, stored, members, True, unit)
    out = out or default_out(name)
    if os.path.exists(out) and os.listdir(out):
        raise ConfigError(f"run directory {out} is not empty: pass --resume to continue it or another --out")
    os.makedirs(out, exist_ok=True)
    cfg.save_yaml(saved_config or config, os.path.join(out, "config.yaml"))
    if members is not None:
        rundir.write_members(out, members)
    return Run(out, config, members, False, unit)


def stop_point(total, chunk, stop_at, what="iterations"):
    """Where this session stops: `stop_at` (a multiple of `chunk` in 1..total) or the end."""
    if total % chunk:
        raise ConfigError(f"the checkpoint interval ({chunk}) must divide the number of {what} ({total}), "
                          "so one compiled program runs every chunk")
    if stop_at is None:
        return total
    if stop_at % chunk or not 0 < stop_at <= total:
        raise ConfigError(f"--stop-at must be a multiple of the checkpoint interval ({chunk}) in 1..{total}")
    return stop_at


# ------------------------------------------------------------------ divergence

def _bad_members(params, member_axis=0):
    """Members (along `member_axis` of every leaf) whose parameters hold a NaN or an infinity."""
    import jax
    bad = set()
    for x in jax.tree.leaves(params):
        x = np.asarray(x)
        if np.issubdtype(x.dtype, np.inexact) and x.ndim > member_axis:
            x = np.moveaxis(x, member_axis, 0).reshape(x.shape[member_axis], -1)
            bad |= set(np.flatnonzero(~np.isfinite(x).all(axis=1)).tolist())
    return sorted(bad)


class FiniteWatch:
    """Stops a run whose losses or parameters turn NaN or infinite.

    A metric counts once it has been finite for a member: losses are NaN by
    design before any update (SAC's warm-up), and returns before the first
    episode ends. `check` names the first (iteration, member, metric) that
    went non-finite after being finite, and the parameters' state."""

    def __init__(self, member_axis=0, names=lambda name: "loss" in name):   # member_axis: of the metrics
        self.member_axis, self.names, self.seen = member_axis, names, {}

    def check(self, metrics, params, first_iteration, unit="iteration"):
        """metrics: {name: [member, iteration]} (member_axis 0) for the chunk
        that ended after `first_iteration` earlier units; `params`: the
        learned parameters (not the whole state: buffers and returns hold NaN
        by design)."""
        first = None
        for name in sorted(k for k in metrics if self.names(k)):
            values = np.asarray(metrics[name], np.float64)
            if self.member_axis:
                values = np.moveaxis(values, self.member_axis, 0)
            values = values.reshape(values.shape[0], -1)
            for member in range(values.shape[0]):
                seen = self.seen.get((name, member), False)
                for i, v in enumerate(values[member]):
                    if math.isfinite(v):
                        seen = True
                    elif seen:
                        if first is None or (i, member) < first[:2]:
                            first = (i, member, name, v)
                        break
                self.seen[(name, member)] = seen
        bad = _bad_members(params)   # (the state is vmapped: its members are on axis 0)
        if first is None and not bad:
            return
        if first is not None:
            i, member, name, value = first
            where = f"{name} of member {member} became {value} at {unit} {first_iteration + i + 1}"
        else:
            chunk = np.shape(next(iter(metrics.values())))[1 - self.member_axis]
            where = f"the parameters of member{'s' * (len(bad) > 1)} {', '.join(map(str, bad))} hold NaN or " \
                    f"infinite values by {unit} {first_iteration + chunk}"
        raise Diverged(f"the run diverged: {where}; it stops here, its last good checkpoint (at {unit} "
                       f"{first_iteration}) kept. Lower the learning rate or look at that member's rows in the CSV.")
