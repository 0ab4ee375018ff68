"""Pictures of training and of attention, drawn with matplotlib (an optional extra: ``pip install -e ".[plot]"``).

    from llm.plotting import plot_history, plot_attention
    plot_history(trainer, "runs/demo/curves.png")          # also writes runs/demo/curves.csv
    plot_attention(model.attention_maps(ids), [tok.id_to_token(i) for i in ids], "attention.png")

matplotlib is imported only when a function here runs; without it they raise :class:`PlotUnavailableError` (one
line naming the install). Figures are drawn with matplotlib's object API on the Agg canvas: no window opens and the
caller's pyplot state and backend are left alone.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any, Sequence

from llm.errors import BackendUnavailableError, ConfigError, LLMError

INSTALL = 'pip install -e ".[plot]"'


class PlotUnavailableError(BackendUnavailableError):
    """matplotlib is not installed; the message names the install."""


class PlotError(LLMError):
    """A figure that could not be written (the disk refused); the message names the file."""


def require_matplotlib() -> None:
    """Raise PlotUnavailableError (one line naming the install) when matplotlib cannot be imported."""
    try:
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
        from matplotlib.figure import Figure  # noqa: F401
    except ImportError:
        raise PlotUnavailableError(f"plotting needs matplotlib, which is not installed: {INSTALL} "
                                   "(or pip install matplotlib)") from None


def check_plot_path(path: str | os.PathLike, what: str | None = None, *, param: str | None = None,
                    checkpoint: str | os.PathLike | None = None) -> Path:
    """Check, before any work, that a PNG can be written at `path` (and its CSV beside it); returns it as a Path.

    ConfigError for a path that is empty, not ``.png``, a directory (or its CSV one), the run's `checkpoint`
    directory itself, or in a directory that is missing (other than `checkpoint`, which the run creates) or not
    writable; PlotUnavailableError when matplotlib is missing. The messages call the path `what`, by default the
    parameter it was given as (`param`, which the errors carry: ``check_plot_path(p, param="plot")``).
    """
    what = what or param or "the plot path"
    text = os.fspath(path)
    if not str(text).strip():
        raise ConfigError(f"{what} is empty: give a file name ending in .png", param=param)
    p = Path(text)
    if p.suffix.lower() != ".png":
        raise ConfigError(f"{what} {text} does not end in .png: the figure is written as a PNG (its numbers go to "
                          "a .csv beside it)", param=param)
    ckpt = Path(os.path.realpath(checkpoint)) if checkpoint is not None and str(checkpoint).strip() else None
    for file in (p, p.with_suffix(".csv")):
        if file.is_dir():
            raise ConfigError(f"{what} {text}: {file} is a directory: give a file name ending in .png", param=param)
        if ckpt is not None and Path(os.path.realpath(file)) == ckpt:
            raise ConfigError(f"{what} {text}: {file} is the checkpoint directory of this run: give another file "
                              "name (a plot inside the checkpoint directory is fine)", param=param)
    parent = p.parent if str(p.parent) else Path(".")
    if ckpt is not None and Path(os.path.realpath(parent)) == ckpt and not parent.exists():
        require_matplotlib()  # the run creates its checkpoint directory before the plot is drawn there
        return p
    if not parent.exists():
        raise ConfigError(f"{what} {text}: directory {parent} does not exist; create it first", param=param)
    if not parent.is_dir():
        raise ConfigError(f"{what} {text}: {parent} is not a directory", param=param)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {text}: directory {parent} is not writable; choose another path", param=param)
    require_matplotlib()
    return p


# -- training history ---------------------------------------------------------------------------------------------------
def _records(history: Any) -> tuple[list[dict], list[dict]]:
    """(step records, epoch records) from a Trainer, a TrainState, a dict (a TrainState's, or training.json's) or a
    list of step records."""
    if hasattr(history, "state") and hasattr(history.state, "steps"):  # a Trainer
        history = history.state
    if hasattr(history, "steps"):  # a TrainState
        return list(history.steps), list(getattr(history, "history", []) or [])
    if isinstance(history, dict):
        if "state" in history and isinstance(history["state"], dict):  # training.json
            history = history["state"]
        return list(history.get("steps") or []), list(history.get("history") or [])
    if isinstance(history, (list, tuple)):
        return list(history), []
    raise ConfigError(f"plot_history takes a Trainer, a TrainState, its dict or a list of step records, "
                      f"not {type(history).__name__}")


def _epoch_means(steps: list[dict], epochs: list[dict]) -> list[tuple[int, float, str, int]]:
    """(step at the epoch's end, mean loss, phase, epoch) for every completed epoch."""
    last_step: dict[tuple[str, int], int] = {}
    for r in steps:
        key = (r.get("phase"), r.get("epoch"))
        last_step[key] = max(last_step.get(key, 0), int(r["step"]))
    out = []
    for e in epochs:
        step = e.get("step", last_step.get((e.get("phase"), e.get("epoch"))))
        if step is not None and e.get("loss") is not None:
            out.append((int(step), float(e["loss"]), e.get("phase", ""), int(e.get("epoch", 0))))
    return out


def _phase_starts(steps: list[dict]) -> list[tuple[int, str]]:
    """(first step, phase name) of each run of steps in one phase."""
    out, previous = [], None
    for r in steps:
        if r.get("phase") != previous:
            out.append((int(r["step"]), str(r.get("phase"))))
            previous = r.get("phase")
    return out


def write_history_csv(history: Any, path: str | os.PathLike) -> Path:
    """The numbers behind :func:`plot_history`, one row per step: step, phase, epoch, loss, lr, grad_norm,
    tokens_per_s, epoch_loss (the epoch's mean, on its last step), val_loss (on the steps where the validation loss
    was measured), then ``grad_norm:<tensor>`` columns when per-tensor norms were logged (filled on the steps that
    have them)."""
    steps, epochs = _records(history)
    means = {step: loss for step, loss, _, _ in _epoch_means(steps, epochs)}
    vals = {int(e["step"]): e["val_loss"] for e in epochs if e.get("val_loss") is not None and "step" in e}
    names: list[str] = []
    for r in steps:
        for name in r.get("grad_norms") or {}:
            if name not in names:
                names.append(name)
    base = ["step", "phase", "epoch", "loss", "lr", "grad_norm", "tokens_per_s", "epoch_loss", "val_loss"]
    path = Path(path)
    try:
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(base + [f"grad_norm:{n}" for n in names])
            for r in steps:
                per = r.get("grad_norms") or {}
                w.writerow([r.get("step"), r.get("phase"), r.get("epoch"), _num(r.get("loss")), _num(r.get("lr")),
                            _num(r.get("grad_norm")), _num(r.get("tokens_per_s")), _num(means.get(r.get("step"))),
                            _num(vals.get(r.get("step")))]
                           + [_num(per.get(n)) for n in names])
    except OSError as exc:
        raise PlotError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


def _num(v: Any) -> str:
    return "" if v is None else repr(float(v))


def plot_history(history: Any, path: str | os.PathLike, *, clip_norm: float | None = None,
                 title: str | None = None) -> tuple[Path, Path]:
    """Draw a run's history into one PNG at `path` and write its numbers to a CSV beside it (same stem, ``.csv``).

    `history`: a :class:`~llm.training.Trainer` (then `clip_norm` defaults to its recipe's), its ``state``, that
    state's dict (or a ``training.json``'s), or a list of step records. Panels, sharing the step axis: training
    loss per step on a log scale with each epoch's mean; the learning rate; the global gradient norm before
    clipping (with the clipping threshold); each tensor's gradient norm when they were logged. Phase boundaries
    are dashed lines. Returns (png path, csv path).
    """
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if clip_norm is None and hasattr(history, "recipe"):
        clip_norm = getattr(history.recipe, "clip_norm", None)
    path = Path(path)
    steps, epochs = _records(history)
    per_tensor = [r for r in steps if r.get("grad_norms")]
    rows = 4 if per_tensor else 3
    fig = Figure(figsize=(10, 2.6 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, 1, sharex=True)
    fig.suptitle(title or "training history")
    ax_loss, ax_lr, ax_norm = axes[0], axes[1], axes[2]
    if not steps:
        ax_loss.text(0.5, 0.5, "no training steps recorded", ha="center", va="center", transform=ax_loss.transAxes)
    else:
        _draw_losses(ax_loss, steps, epochs)
        _draw_learning_rate(ax_lr, steps)
        _draw_global_norm(ax_norm, steps, clip_norm)
    ax_loss.set_ylabel("loss")
    ax_lr.set_ylabel("learning rate")
    ax_norm.set_ylabel("gradient norm")
    if per_tensor:
        _draw_tensor_norms(axes[3], per_tensor)
    _mark_phases(axes, steps)
    axes[-1].set_xlabel("optimizer step")
    for ax in axes:
        ax.grid(True, alpha=0.3)
    csv_path = path.with_suffix(".csv")
    _save(fig, path)
    write_history_csv(history, csv_path)
    return path, csv_path


def _draw_losses(ax: Any, steps: list[dict], epochs: list[dict]) -> None:
    """The loss per step, each phase's epoch means and the validation losses, on a log scale when positive."""
    ax.plot([int(r["step"]) for r in steps], [r["loss"] for r in steps], lw=0.8, alpha=0.6, color="tab:blue",
            label="loss per step")
    means = _epoch_means(steps, epochs)
    for i, phase in enumerate(dict.fromkeys(m[2] for m in means)):  # one line per phase: no jump between
        mine = [m for m in means if m[2] == phase]
        ax.plot([m[0] for m in mine], [m[1] for m in mine], "o-", ms=3, lw=1.2, color="tab:orange",
                label="epoch mean" if i == 0 else None)
    val = [(int(e["step"]), float(e["val_loss"])) for e in epochs
           if e.get("val_loss") is not None and e.get("step") is not None]
    if val:
        ax.plot([v[0] for v in val], [v[1] for v in val], "s--", ms=3, lw=1.2, color="tab:purple",
                label="validation loss")
    if any(r["loss"] > 0 for r in steps):
        ax.set_yscale("log", nonpositive="mask")
    ax.legend(loc="upper right", fontsize=8)


def _draw_learning_rate(ax: Any, steps: list[dict]) -> None:
    """The learning rate per step."""
    ax.plot([int(r["step"]) for r in steps], [r["lr"] for r in steps], color="tab:green", lw=1.2)
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))


def _draw_global_norm(ax: Any, steps: list[dict], clip_norm: float | None) -> None:
    """The global gradient norm before clipping, with the clipping threshold when there is one."""
    norms = [r["grad_norm"] for r in steps]
    ax.plot([int(r["step"]) for r in steps], norms, lw=0.8, color="tab:red", label="global norm (before clipping)")
    if clip_norm is not None:
        ax.axhline(clip_norm, color="gray", ls=":", lw=1, label=f"clip at {clip_norm:g}")
    if any(n > 0 for n in norms if math.isfinite(n)):
        ax.set_yscale("log", nonpositive="mask")
    ax.legend(loc="upper right", fontsize=8)


def _draw_tensor_norms(ax: Any, per_tensor: list[dict]) -> None:
    """Each tensor's gradient norm on the steps that logged them (a legend only when it stays readable)."""
    names = list(per_tensor[0]["grad_norms"])
    xs = [int(r["step"]) for r in per_tensor]
    for name in names:
        ax.plot(xs, [r["grad_norms"].get(name, float("nan")) for r in per_tensor], lw=0.8, marker=".",
                ms=3, label=name)
    ax.set_yscale("log", nonpositive="mask")
    ax.set_ylabel("per-tensor norm")
    if len(names) <= 12:
        ax.legend(loc="upper right", fontsize=6, ncol=2)
    else:
        ax.text(0.01, 0.97, f"{len(names)} tensors (names in the CSV)", transform=ax.transAxes,
                va="top", fontsize=7)


def _mark_phases(axes: Sequence[Any], steps: list[dict]) -> None:
    """A dashed line on every panel where a new phase starts, and each phase's name at the top of the first."""
    for i, (start, phase) in enumerate(_phase_starts(steps)):
        for ax in axes:
            if i > 0:
                ax.axvline(start - 0.5, color="black", ls="--", lw=0.8, alpha=0.7)
        axes[0].annotate(phase, xy=(start - 0.5, 1.0), xycoords=("data", "axes fraction"), xytext=(3, -3),
                         textcoords="offset points", va="top", fontsize=8, color="black")


def _save(fig: Any, path: Path) -> None:
    try:
        fig.savefig(path, dpi=100)
    except OSError as exc:
        raise PlotError(f"cannot write {path}: {exc.strerror or exc}") from None


# -- attention ----------------------------------------------------------------------------------------------------------
def plot_attention(maps: Sequence[Any], tokens: Sequence[str], path: str | os.PathLike,
                   title: str | None = None) -> Path:
    """Draw attention maps as a grid of heatmaps (a row per layer, a column per head) into a PNG at `path`.

    `maps`: one (H, T, T) host array per layer (``model.attention_maps(ids)``): row t is what query t attends to.
    `tokens`: the T token strings, the labels of both axes.
    """
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not maps:
        raise ConfigError("no attention maps to draw (the model has no layers)")
    L, (H, T, _) = len(maps), tuple(maps[0].shape)
    if len(tokens) != T:
        raise ConfigError(f"{len(tokens)} token labels for attention maps over {T} positions")
    cell = min(max(2.0, 0.22 * T), 8.0)
    fs = max(3.0, min(8.0, 160.0 / max(T, 1)))
    fig = Figure(figsize=(cell * H + 1.2, cell * L + 0.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(L, H, squeeze=False)
    fig.suptitle(title or "attention (row: query token, column: key token)")
    image = None
    for layer in range(L):
        for head in range(H):
            ax = axes[layer][head]
            image = ax.imshow(maps[layer][head], vmin=0.0, vmax=1.0, cmap="viridis", interpolation="nearest")
            ax.set_title(f"layer {layer} head {head}", fontsize=8)
            ax.set_xticks(range(T))
            ax.set_yticks(range(T))
            ax.set_xticklabels(tokens if layer == L - 1 else [], rotation=90, fontsize=fs)
            ax.set_yticklabels(tokens if head == 0 else [], fontsize=fs)
            ax.tick_params(length=0)
    fig.colorbar(image, ax=axes, shrink=0.6, label="attention probability")
    path = Path(path)
    _save(fig, path)
    return path


__all__ = ["plot_history", "write_history_csv", "plot_attention", "check_plot_path", "require_matplotlib",
           "PlotUnavailableError", "PlotError", "INSTALL"]
