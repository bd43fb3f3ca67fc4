"""The run directory: config.yaml, members.json, metrics.csv, summary.json,
checkpoint/, plots, and optional TensorBoard events."""
import csv
import json
import math
import os

import numpy as np

FIRST_COLUMNS = ("iteration", "env_steps", "member", "seed")


def write_members(path, members):
    with open(os.path.join(path, "members.json"), "w") as f:
        json.dump(members, f, indent=1)


def read_members(path):
    with open(os.path.join(path, "members.json")) as f:
        return json.load(f)


def metric_rows(metrics, members, first_iteration):
    """metrics: {name: array [member, iteration]} -> one dict per (iteration, member)."""
    names = sorted(k for k in metrics if k != "env_steps")
    arrays = {k: np.asarray(v) for k, v in metrics.items()}
    num_members, num_iters = arrays[names[0]].shape
    rows = []
    for i in range(num_iters):
        for m in range(num_members):
            row = {"iteration": first_iteration + i + 1, "env_steps": int(arrays["env_steps"][m, i]),
                   "member": m, "seed": members[m]["seed"]}
            row.update(members[m]["hparams"])
            row.update({k: float(arrays[k][m, i]) for k in names})
            rows.append(row)
    return rows


def read_metrics(path):
    with open(os.path.join(path, "metrics.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    out = []
    for row in rows:
        out.append({k: (int(v) if k in FIRST_COLUMNS else float(v)) for k, v in row.items()})
    return out


def _finite(x):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


def write_json(path, name, data):
    with open(os.path.join(path, name), "w") as f:
        json.dump(jsonable(data), f, indent=1)


def jsonable(data):
    if isinstance(data, dict):
        return {k: jsonable(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [jsonable(v) for v in data]
    if isinstance(data, (np.floating, float)):
        return _finite(float(data))
    if isinstance(data, np.integer):
        return int(data)
    return data


class TensorBoard:
    """One event stream per member, under RUN_DIR/tensorboard/member_M."""

    def __init__(self, path, num_members):
        from tensorboardX import SummaryWriter
        self.writers = [SummaryWriter(os.path.join(path, "tensorboard", f"member_{m}")) for m in range(num_members)]

    def write(self, rows):
        for row in rows:
            writer = self.writers[row["member"]]
            for key, value in row.items():
                if key not in FIRST_COLUMNS and isinstance(value, float) and not math.isnan(value):
                    writer.add_scalar(key, value, row["env_steps"])

    def close(self):
        for writer in self.writers:
            writer.close()
