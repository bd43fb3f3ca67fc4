"""Learning curves: mean +- std over seeds, one line per sweep setting."""
import os

import numpy as np


def groups_of(rows, hparam_keys):
    groups = {}
    for row in rows:
        label = ", ".join(f"{k}={row[k]:g}" for k in hparam_keys) or "all seeds"
        groups.setdefault(label, []).append(row)
    return groups


def curve(rows, metric="episode_return"):
    """(env_steps, mean, std, count) over members, per iteration."""
    by_iteration = {}
    for row in rows:
        by_iteration.setdefault(row["iteration"], []).append(row)
    iterations = sorted(by_iteration)
    steps = np.array([by_iteration[i][0]["env_steps"] for i in iterations])
    values = [np.array([r[metric] for r in by_iteration[i]], dtype=float) for i in iterations]
    with np.errstate(all="ignore"):
        mean = np.array([np.nanmean(v) if np.isfinite(v).any() else np.nan for v in values])
        std = np.array([np.nanstd(v) if np.isfinite(v).any() else np.nan for v in values])
    return steps, mean, std, len(values[0]) if values else 0


def warm_up():
    """Import matplotlib with the file-only backend (run.py calls this from a
    background thread while a run trains)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plt.get_backend()   # pyplot may be a deferred module (envs/__init__.py): load it now


def band_plot(path, curves, xlabel, ylabel, title="", legend_fontsize=8):
    """One line per label with a shaded band: curves = {label: (x, mean, spread, count)}.
    The caller says what the band is (std or standard error) in ylabel."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, (x, mean, spread, count) in curves.items():
        line, = ax.plot(x, mean, label=f"{label} ({count} seeds)")
        ax.fill_between(x, mean - spread, mean + spread, color=line.get_color(), alpha=0.2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_fontsize)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def learning_curves(rows, hparam_keys, path, title="", metric="episode_return"):
    curves = {label: curve(group, metric) for label, group in groups_of(rows, hparam_keys).items()}
    return band_plot(path, curves, "environment steps",
                     metric.replace("_", " ") + " (mean ± std over seeds)", title)


def plot_run(run_dir, rows, hparam_keys, title):
    paths = [learning_curves(rows, hparam_keys, os.path.join(run_dir, "learning_curve.png"), title)]
    if rows and "entropy" in rows[0]:
        paths.append(learning_curves(rows, hparam_keys, os.path.join(run_dir, "entropy.png"), title, "entropy"))
    return paths
