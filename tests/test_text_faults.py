"""Issue 19 for both trainers, `arraygpt text` (the book trainer) above all: links inside a checkpoint, kill -9 and a
full disk during its saves, its training state in the manifest, memory checked before anything is allocated, an
overflowing perplexity, hand-edited training state, a closed stdin, --save-every with --resume, and the small ones
of item 14 (Ctrl-C while loading, --plot collisions, empty paths, a large --val-fraction, a checkpoint without a
manifest resumed in place). Each test reproduces the issue's command as closely as a test can.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from llm.checkpoint import load_checkpoint
from llm.errors import CheckpointError

ROOT = Path(__file__).resolve().parent.parent
TEXT = [sys.executable, "-m", "llm", "text"]
TRAIN = [sys.executable, "-m", "llm", "train"]
TINY = ["--max-seq-len", "16", "--d-model", "16", "--n-heads", "2", "--n-layers", "1", "--d-ff", "32",
        "--batch-size", "4", "--eval-batches", "1", "--sample-chars", "1"]
TINY_TRAIN = ["--d-model", "16", "--n-heads", "2", "--n-layers", "1", "--d-ff", "32", "--max-seq-len", "40",
              "--no-progress"]


def _env(**extra: str) -> dict:
    return dict(os.environ, PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8", **extra)


def _run(cmd: list[str], cwd: Path, timeout: int = 120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=_env(), **kw)


def _ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, (proc.returncode, proc.stderr)
    return proc


def _one_error(proc: subprocess.CompletedProcess, code: int) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


@pytest.fixture(scope="module")
def book(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("book") / "book.txt"
    path.write_text("the quick brown fox jumps over the lazy dog. " * 30, encoding="utf-8")
    return path


def _params(path: Path) -> np.ndarray:
    model = load_checkpoint(path, "numpy").model
    return model.backend.to_numpy(model.flat.param_buffer)


# -- item 2: a link inside a checkpoint is never written through, never carried into the new one ----------------------

def test_links_inside_a_book_checkpoint_are_not_written_through_or_carried(book, tmp_path):
    _ok(_run([*TEXT, "--text", str(book), *TINY, "--steps", "2", "--out", "ck"], tmp_path))
    target = tmp_path / "target"
    target.write_text("precious")
    for name in (".text_run.safetensors.tmp", "text_run.safetensors.tmp", "training.json.tmp", "notes-link"):
        os.symlink(target, tmp_path / "ck" / name)  # as a tar received from someone else keeps them
    proc = _ok(_run([*TEXT, "--text", str(book), *TINY, "--steps", "4", "--resume", "ck"], tmp_path))
    assert target.read_text() == "precious"
    assert not any(p.is_symlink() for p in (tmp_path / "ck").iterdir())
    assert "symbolic link" in proc.stderr  # the warning says where the links were left
    assert load_checkpoint(tmp_path / "ck", "numpy").train_state.step == 4


# -- item 3: kill -9 during the book trainer's saves; a full disk ------------------------------------------------------

KILLS = 30


def test_kill_9_during_30_saves_of_arraygpt_text_always_leaves_a_resumable_checkpoint(book, tmp_path):
    """The Floor: kill -9 at random moments of 30 runs that save at every step leaves a resumable checkpoint 30 times
    in 30, and each resumed run ends bit for bit (float64) where the uninterrupted run ends."""
    steps = ["--steps", "60", "--eval-every", "1", "--dtype", "float64", "--workers", "1"]
    _ok(_run([*TEXT, "--text", str(book), *TINY, *steps, "--out", "whole"], tmp_path))
    whole = _params(tmp_path / "whole")
    delays = random.Random(19)
    resumes, killed_at = [], []
    for i in range(KILLS):
        run = subprocess.Popen([*TEXT, "--text", str(book), *TINY, *steps, "--out", f"k{i}"], cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=_env())
        for line in run.stdout:  # the first save is complete: from here on, every step saves
            if line.startswith("saved checkpoint"):
                break
        time.sleep(delays.uniform(0.0, 0.1))
        run.send_signal(signal.SIGKILL)
        run.wait()
        run.stdout.close()
        assert run.returncode == -signal.SIGKILL  # killed before it finished
        killed_at.append(_saved_step(tmp_path / f"k{i}"))
        resumes.append(subprocess.Popen([*TEXT, "--text", str(book), *TINY, *steps, "--resume", f"k{i}"],
                                        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                        env=_env()))
        if len(resumes) >= 2:  # two at a time: the kills go on while earlier runs resume
            _check_resumed(resumes.pop(0), whole, tmp_path)
    for proc in resumes:
        _check_resumed(proc, whole, tmp_path)
    assert len(set(killed_at)) >= 5, killed_at  # the kills fell at many different steps


def _saved_step(path: Path) -> int:
    """The step of the checkpoint a killed run left (at `path`, or in the sibling a save between its renames left)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ckpt = load_checkpoint(path, "numpy")
    assert ckpt.resumable
    return ckpt.train_state.step


def _check_resumed(proc: subprocess.Popen, whole: np.ndarray, tmp_path: Path) -> None:
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "Traceback" not in err, err
    out = proc.args[proc.args.index("--resume") + 1]
    np.testing.assert_array_equal(_params(tmp_path / out), whole)


def test_a_full_disk_during_a_book_save_keeps_the_previous_checkpoint_and_rescues_the_run(book, tmp_path, monkeypatch,
                                                                                           capsys):
    import tempfile

    import llm.checkpoint.writer as writer
    from llm.cli import cmd_text

    real_write, calls = writer._write_file, []
    runs = tmp_path / "runs"

    def full_disk(path, data):  # the first save (at step 2) fits; the next one finds the disk full
        calls.append(path)
        if str(runs) in str(path) and any("manifest.json" in str(p) for p in calls[:-1]):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_write(path, data)

    monkeypatch.setattr(writer, "_write_file", full_disk)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "scratch"))
    (tmp_path / "scratch").mkdir()
    code = cmd_text.main(["--text", str(book), *TINY, "--steps", "4", "--eval-every", "2", "--out", str(runs / "ck")])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1 and len(errors) == 1 and "No space left on device" in errors[0], err
    previous = load_checkpoint(runs / "ck", "numpy")
    assert previous.resumable and previous.train_state.step == 2  # the checkpoint before the full disk
    rescue = Path(errors[0].split("--resume ")[1].split()[0])
    assert rescue.parent == tmp_path / "scratch"
    assert load_checkpoint(rescue, "numpy").train_state.step == 4


# -- item 4: every file of a book checkpoint is checksummed --------------------------------------------------------------

@pytest.fixture()
def book_checkpoint(book, tmp_path) -> Path:
    _ok(_run([*TEXT, "--text", str(book), *TINY, "--steps", "2", "--out", "ck"], tmp_path))
    return tmp_path / "ck"


def test_a_flipped_byte_in_adams_moments_of_a_book_checkpoint_is_refused(book, book_checkpoint):
    data = bytearray((book_checkpoint / "optimizer.safetensors").read_bytes())
    data[-3] ^= 0x10  # inside the last moment's float
    (book_checkpoint / "optimizer.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_checkpoint(book_checkpoint, "numpy")
    proc = _run([*TEXT, "--text", str(book), *TINY, "--steps", "4", "--resume", str(book_checkpoint)], book.parent)
    assert "optimizer.safetensors" in _one_error(proc, 1)


def test_an_edited_learning_rate_of_a_book_checkpoint_is_refused(book_checkpoint):
    state = json.loads((book_checkpoint / "training.json").read_text())
    state["settings"]["lr"] = 0.5
    (book_checkpoint / "training.json").write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_checkpoint(book_checkpoint, "numpy")


# -- item 6: the memory check comes before anything is allocated ---------------------------------------------------------

GB = 1 << 30


@pytest.fixture()
def small_machine(monkeypatch):
    """8 GB available, whatever this machine has; building a model fails the test (nothing may be allocated)."""
    import backends.host_memory as memory  # what the machine has left, read by every memory check
    from llm.nn.model import GPT

    monkeypatch.setattr(memory, "available_memory", lambda: 8 * GB)

    def never(*args, **kwargs):
        raise AssertionError("a model was built before the memory check refused it")

    monkeypatch.setattr(GPT, "__init__", never)


@pytest.mark.parametrize("command, flags", [
    ("train", ["--max-seq-len", "10000000"]),
    ("text", ["--batch-size", "100000"]),
    ("text", ["--n-layers", "100000"]),
    ("text", ["--d-model", "8192", "--n-layers", "6"]),
    ("text", ["--max-seq-len", "10000000"]),
    ("train", ["--n-layers", "100000"]),
    ("train", ["--d-model", "8192", "--n-layers", "6"]),
])
def test_a_run_too_large_for_memory_is_refused_at_once(command, flags, book, small_machine, capsys):
    from llm.cli import cmd_text, cmd_train

    start = time.perf_counter()
    if command == "train":
        code = cmd_train.main(["--no-chat", "--no-progress", *flags])
    else:
        code = cmd_text.main(["--text", str(book), *flags])
    took = time.perf_counter() - start
    err = capsys.readouterr().err
    assert code == 2 and err.count("error:") == 1 and "out of memory" in err, err
    assert took < 1.0, took


def _edit_config(path: Path, **model) -> None:
    config = json.loads((path / "config.json").read_text())
    config["model"].update(model)
    (path / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("edit", [dict(n_layers=100000), dict(d_model=8192, n_heads=2), dict(max_seq_len=10 ** 9)])
def test_a_checkpoint_whose_config_is_too_large_is_refused_before_building(edit, book_checkpoint, small_machine):
    _edit_config(book_checkpoint, **edit)  # the manifest is left as it was: the config is read first
    start = time.perf_counter()
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(book_checkpoint, "numpy")
    assert "config.json" in str(info.value) and time.perf_counter() - start < 1.0


def test_a_model_too_large_for_this_machine_is_refused_on_load(book_checkpoint, monkeypatch):
    import backends.host_memory as memory  # what the machine has left, read by every memory check

    monkeypatch.setattr(memory, "available_memory", lambda: 1000)
    with pytest.raises(CheckpointError, match="out of memory.*n_layers 1"):
        load_checkpoint(book_checkpoint, "numpy")


@pytest.mark.parametrize("command", ["chat", "attention"])
def test_chat_and_attention_refuse_an_edited_huge_config_at_once(command, book_checkpoint):
    _edit_config(book_checkpoint, n_layers=10 ** 7)
    args = (["--checkpoint", str(book_checkpoint), "--prompt", "hi"] if command == "chat" else
            ["--checkpoint", str(book_checkpoint), "--prompt", "hi", "--out", "a.png"])
    start = time.perf_counter()
    proc = _run([sys.executable, "-m", "llm", command, *args], book_checkpoint.parent, timeout=60)
    if command == "attention" and "matplotlib" in proc.stderr:
        pytest.skip("attention needs matplotlib")
    assert "config.json" in _one_error(proc, 1) and time.perf_counter() - start < 30


# -- item 7: a perplexity above the float range is inf ----------------------------------------------------------------

def test_perplexity_past_the_float_range_is_inf():
    from llm.cli.session import perplexity_text
    from llm.infer.evaluation import perplexity

    assert perplexity(710.0) == float("inf") and perplexity(3.4e12) == float("inf")
    assert perplexity_text(3.4e12) == "inf" and perplexity_text(1.0) == "2.72"


def test_a_diverging_book_run_evaluates_saves_and_prints_inf(book, tmp_path, monkeypatch, capsys):
    """`arraygpt text --steps 20 --eval-every 10 --lr 10 --grad-clip 1000`: the validation loss passes 709."""
    from llm.cli import cmd_text
    from llm.training.sources import TokenWindows

    monkeypatch.setattr(TokenWindows, "validation_loss", lambda self, model, phase: 1000.0)  # exp(1000): past floats
    code = cmd_text.main(["--text", str(book), *TINY, "--steps", "20", "--eval-every", "10", "--lr", "10",
                          "--grad-clip", "1000", "--out", str(tmp_path / "ck")])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "val perplexity inf" in out.out and "saved checkpoint" in out.out
    assert load_checkpoint(tmp_path / "ck", "numpy").train_state.step == 20


# -- item 10: hand-edited training state is one CheckpointError line, for both trainers -------------------------------

@pytest.fixture(scope="module")
def recipe_checkpoint(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("recipe")
    _ok(_run([*TRAIN, *TINY_TRAIN, "--no-chat", "--pretrain-steps", "2", "--chat-steps", "2", "--out", "ck"], cwd))
    return cwd / "ck"


EDITS = {
    "missing step": lambda t: t["state"].pop("step"),
    "missing state": lambda t: t.pop("state"),
    "missing settings": lambda t: t.pop("settings" if "settings" in t else "recipe"),
    "wrong rng kind": lambda t: t["state"]["rng_state"].update(bit_generator="MT19937"),
    "rng not an object": lambda t: t["state"].update(rng_state="PCG64"),
    "string step": lambda t: t["state"].update(step="3"),
    "negative step": lambda t: t["state"].update(step=-1),
    "junk step records": lambda t: t["state"].update(steps=[{"loss": "x"}, 7]),
    "junk history": lambda t: t["state"].update(history=["epoch"]),
}


@pytest.mark.parametrize("edit", sorted(EDITS))
@pytest.mark.parametrize("kind", ["text", "recipe"])
def test_hand_edited_training_state_is_one_checkpoint_error(kind, edit, book, tmp_path, recipe_checkpoint):
    import shutil

    from llm.checkpoint.writer import _manifest_bytes

    if kind == "text":
        _ok(_run([*TEXT, "--text", str(book), *TINY, "--steps", "2", "--out", "ck"], tmp_path))
        path = tmp_path / "ck"
    else:
        path = Path(shutil.copytree(recipe_checkpoint, tmp_path / "ck"))
    state = json.loads((path / "training.json").read_text())
    EDITS[edit](state)
    (path / "training.json").write_text(json.dumps(state))
    files = {name: (path / name).read_bytes() for name in json.loads((path / "manifest.json").read_text())["files"]}
    (path / "manifest.json").write_bytes(_manifest_bytes(files, None))  # edited by someone who re-did the checksums
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, "numpy")
    assert "\n" not in str(info.value) and "training.json" in str(info.value)


# -- item 11: a closed stdin is the end of input ------------------------------------------------------------------------

def _closed_stdin() -> None:
    os.close(0)


@pytest.mark.skipif(os.name != "posix", reason="closes fd 0 in the child")
@pytest.mark.parametrize("command", ["chat", "train"])
def test_a_closed_stdin_ends_the_chat_as_end_of_input(command, recipe_checkpoint):
    args = ([sys.executable, "-m", "llm", "chat", "--checkpoint", str(recipe_checkpoint)] if command == "chat" else
            [*TRAIN, *TINY_TRAIN, "--pretrain-steps", "1", "--chat-steps", "1"])
    proc = subprocess.run(args, cwd=recipe_checkpoint.parent, capture_output=True, text=True, timeout=120,
                          env=_env(), preexec_fn=_closed_stdin)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr and "lost sys.stdin" not in proc.stderr, \
        proc.stderr


def _kill_after_first_save(cmd: list[str], cwd: Path) -> None:
    """Run `cmd` and kill -9 it as soon as it says it saved a checkpoint."""
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=_env())
    for line in proc.stdout:
        if line.startswith("saved checkpoint"):
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()


# -- item 12: --save-every with --resume saves back into the resumed directory ------------------------------------------

def test_train_resume_with_save_every_saves_back_into_it(tmp_path):
    _kill_after_first_save([*TRAIN, *TINY_TRAIN, "--no-chat", "--pretrain-steps", "30", "--chat-steps", "30",
                            "--save-every", "1", "--out", "ck"], tmp_path)
    before = load_checkpoint(tmp_path / "ck", "numpy").train_state.step
    proc = _ok(_run([*TRAIN, "--no-chat", "--no-progress", "--resume", "ck", "--save-every", "5"], tmp_path))
    assert "saved checkpoint ck" in proc.stdout
    assert before < 60 and load_checkpoint(tmp_path / "ck", "numpy").train_state.step == 60


# -- item 14: the rest ---------------------------------------------------------------------------------------------------

@pytest.mark.skipif(os.name != "posix", reason="sends SIGINT")
@pytest.mark.parametrize("how", ["python -m llm", "arraygpt"])
def test_ctrl_c_while_the_package_loads_prints_no_traceback(how, tmp_path):
    fake = tmp_path / "fake" / "numpy"  # the first heavy import: a Ctrl-C arrives while it loads
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("import os, signal, time\nos.kill(os.getpid(), signal.SIGINT)\ntime.sleep(30)\n")
    script = tmp_path / "arraygpt"  # what the console script does (pip writes one like it)
    script.write_text("import sys\nfrom llm.__main__ import console\nsys.exit(console())\n")
    cmd = [sys.executable, "-m", "llm", "train"] if how == "python -m llm" else [sys.executable, str(script), "train"]
    env = _env(PYTHONPATH=os.pathsep.join([str(tmp_path / "fake"), str(ROOT)]))
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=60, env=env)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 130 and proc.stderr.strip() == "interrupted", proc.stderr


def test_importing_the_package_still_lets_a_program_catch_ctrl_c(tmp_path):
    fake = tmp_path / "fake" / "numpy"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("import os, signal, time\nos.kill(os.getpid(), signal.SIGINT)\ntime.sleep(30)\n")
    code = "try:\n    import llm\nexcept KeyboardInterrupt:\n    print('caught')\n"
    env = _env(PYTHONPATH=os.pathsep.join([str(tmp_path / "fake"), str(ROOT)]))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert proc.stdout.strip() == "caught", proc.stderr


@pytest.mark.parametrize("command", ["text", "train"])
@pytest.mark.parametrize("collision", ["csv is a directory", "plot is the checkpoint"])
def test_plot_collisions_are_refused_before_training(command, collision, book, tmp_path):
    pytest.importorskip("matplotlib")
    if collision == "csv is a directory":
        (tmp_path / "p.csv").mkdir()
        flags = ["--plot", "p.png"]
    else:
        flags = ["--plot", "ck.png", "--out", "ck.png"]
    cmd = ([*TEXT, "--text", str(book), *TINY, "--steps", "2"] if command == "text" else
           [*TRAIN, *TINY_TRAIN, "--no-chat", "--pretrain-steps", "1", "--chat-steps", "1"])
    proc = _run([*cmd, *flags], tmp_path)
    assert "--plot" in _one_error(proc, 2)
    assert "step" not in proc.stdout and "epoch" not in proc.stdout  # nothing trained
    assert not (tmp_path / "ck.png").exists()


def test_a_plot_inside_a_new_out_directory_is_accepted(book, tmp_path):
    pytest.importorskip("matplotlib")
    _ok(_run([*TEXT, "--text", str(book), *TINY, "--steps", "2", "--out", "ck", "--plot", "ck/curves.png"], tmp_path))
    assert (tmp_path / "ck" / "curves.png").exists() and load_checkpoint(tmp_path / "ck", "numpy").resumable


@pytest.mark.parametrize("cmd, words", [
    (TRAIN + ["--no-chat", "--pretrain-data", ""], "corpus path is empty"),
    (TRAIN + ["--no-chat", "--chat-data", " "], "corpus path is empty"),
    (TEXT + ["--text", ""], "--text is empty"),
])
def test_empty_paths_say_they_are_empty(cmd, words, tmp_path):
    line = _one_error(_run(cmd, tmp_path), 2)  # bad input: exit 2
    assert words in line and "'.'" not in line and "directory" not in line, line


def test_a_large_val_fraction_says_how_little_is_left_to_train_on(tmp_path):
    proc = _ok(_run([*TRAIN, *TINY_TRAIN, "--no-chat", "--pretrain-steps", "1", "--chat-steps", "1",
                     "--val-fraction", "0.99999"], tmp_path))
    assert "pretrain trains on 1 text, 114 held out; chat trains on 1 text, 115 held out" in proc.stdout, proc.stdout


@pytest.mark.parametrize("kind", ["text", "recipe"])
def test_a_checkpoint_without_a_manifest_resumes_in_place(kind, book, tmp_path):
    if kind == "text":
        first = [*TEXT, "--text", str(book), *TINY, "--steps", "2", "--eval-every", "2"]
        again = [*TEXT, "--text", str(book), *TINY, "--steps", "4", "--eval-every", "2"]
    else:
        import shutil

        first = [*TRAIN, *TINY_TRAIN, "--no-chat", "--pretrain-steps", "4", "--chat-steps", "4", "--save-every",
                 "2"]
        again = [*TRAIN, "--no-chat", "--no-progress"]
    run = _ok(_run([*first, "--out", "ck"], tmp_path)) if kind == "text" else None
    if kind == "recipe":  # stop after the first save so that the resumed run has steps left
        _kill_after_first_save([*first, "--out", "ck"], tmp_path)
        shutil.rmtree(tmp_path / "ck", ignore_errors=True) if not (tmp_path / "ck").exists() else None
    del run
    (tmp_path / "ck" / "manifest.json").unlink()  # as saved by a version before manifests
    (tmp_path / "ck" / "notes.txt").write_text("mine")
    if kind == "text":
        _ok(_run([*again, "--resume", "ck"], tmp_path))
        assert load_checkpoint(tmp_path / "ck", "numpy").train_state.step == 4
    else:
        _ok(_run([*again, "--resume", "ck"], tmp_path))
        assert load_checkpoint(tmp_path / "ck", "numpy").train_state.step == 8
    assert (tmp_path / "ck" / "manifest.json").exists() and (tmp_path / "ck" / "notes.txt").read_text() == "mine"
