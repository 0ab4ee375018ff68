"""Micro-batches (llm/training/accumulate.py): a batch run as slices of M sequences, gradients summed, one update,
equals the whole batch at once in float64 (1e-12), masks included, on every backend, with threads and ranks."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from backends.comm import Communicator
from backends.comm.communicator import Request
from llm import GPT, Adam, GPTConfig, TrainStep
from llm.errors import ConfigError
from llm.training import accumulate as acc
from llm.training.batch import HostShard, host_shards, split_shard
from llm.training.loop import build_step
from llm.training.ranks import DistributedStep
from tests.conftest import require_backend

CFG = dict(vocab_size=13, d_model=8, n_heads=2, n_layers=2, d_ff=16, max_seq_len=7)
TOL = 1e-12


def _model(be, **cfg):
    model = GPT(GPTConfig(**{**CFG, **cfg}), be, seed=5)
    return model, Adam(model, lr=1e-2, weight_decay=0.01, clip_norm=0.5)


def _batches(seed, B, T, masked, steps=3):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(steps):
        T_i = T - i % 2  # two lengths: two shapes of every slice
        tok, tgt = rng.integers(0, CFG["vocab_size"], (B, T_i)), rng.integers(0, CFG["vocab_size"], (B, T_i))
        mask = None
        if masked:
            mask = rng.random((B, T_i)) < 0.5
            mask[0, :] = True
            if B > 2:
                mask[1, :] = False  # a sequence with nothing counted
            tgt = np.where(mask, tgt, 10_000)  # ids outside the vocabulary where nothing counts: ignored
        out.append((tok, tgt, mask))
    return out


def _host(be, a):
    return np.asarray(be.to_numpy(a), dtype=np.float64)


def _close(a, b, what):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    err = float(np.max(np.abs(a - b))) if a.size else 0.0
    assert err <= TOL, f"{what}: max difference {err:.3g} > {TOL}"


def _same_state(be, pairs, what):
    (m1, o1), (m2, o2) = pairs
    _close(_host(be, m1.flat.grad_buffer), _host(be, m2.flat.grad_buffer), f"gradients {what}")
    _close(_host(be, m1.flat.param_buffer), _host(be, m2.flat.param_buffer), f"parameters {what}")
    _close(_host(be, o1.state.m), _host(be, o2.state.m), f"Adam m {what}")
    _close(_host(be, o1.state.v), _host(be, o2.state.v), f"Adam v {what}")
    _close(_host(be, o1.last_grad_norm), _host(be, o2.last_grad_norm), f"gradient norm {what}")
    assert o1.counters() == o2.counters()


# -- equality with the whole batch --------------------------------------------------------------------------------
@pytest.mark.parametrize("B,M,masked", [(6, 2, False), (7, 3, True), (5, 2, True), (4, 1, True), (5, 4, False)])
def test_micro_batches_equal_the_whole_batch_in_float64(backend_name, B, M, masked):
    be = require_backend(backend_name, "float64")
    whole, micro = _model(be), _model(be)
    s1, s2 = TrainStep(*whole), TrainStep(*micro, micro_batch=M)
    assert s2.micro_batch == M
    for i, (tok, tgt, mask) in enumerate(_batches(B * 10 + M, B, CFG["max_seq_len"], masked)):
        l1, l2 = s1(tok, tgt, mask, lr=1e-2), s2(tok, tgt, mask, lr=1e-2)
        _close(float(l1), float(l2), f"loss at step {i}")
        _same_state(be, (whole, micro), f"after step {i}")


def test_a_batch_of_at_most_m_takes_the_usual_path_bit_for_bit():
    be = require_backend("numpy", "float64")
    whole, micro = _model(be), _model(be)
    s1, s2 = TrainStep(*whole), TrainStep(*micro, micro_batch=4)
    for tok, tgt, mask in _batches(3, 4, 6, True):
        assert float(s1(tok, tgt, mask)) == float(s2(tok, tgt, mask))
    assert np.array_equal(whole[0].flat.param_buffer, micro[0].flat.param_buffer)


def test_the_slices_hold_m_sequences_and_their_weights_sum_to_one():
    be = require_backend("numpy", "float64")
    tok, tgt, mask = _batches(1, 7, 5, True, steps=1)[0]
    whole = host_shards(be, GPTConfig(**CFG), tok, tgt, mask, 1)
    parts = split_shard(whole.shards[0], 2)
    assert [p.tokens.shape[0] for p in parts] == [2, 2, 2]  # 6 sequences count (row 1 counts nothing): 2 + 2 + 2
    assert abs(sum(float(p.weights.sum()) for p in parts) - 1.0) < 1e-15
    assert all(np.all(p.weights == 1.0 / whole.count) for p in parts)
    assert sum(p.targets.shape[0] for p in parts) == whole.count == int(mask.sum())
    full = HostShard(tok[:3], tgt[:3].reshape(-1), None, np.full(15, 1 / 15))
    assert [p.rows for p in split_shard(full, 2)] == [None, None]


def test_nothing_counted_takes_a_zero_step_like_the_whole_batch():
    be = require_backend("numpy", "float64")
    whole, micro = _model(be), _model(be)
    s1, s2 = TrainStep(*whole), TrainStep(*micro, micro_batch=2)
    tok, tgt, _ = _batches(2, 5, 6, False, steps=1)[0]
    nothing = np.zeros((5, 6), dtype=bool)
    assert float(s1(tok, tgt, nothing)) == float(s2(tok, tgt, nothing)) == 0.0
    _same_state(be, (whole, micro), "after a step where nothing counts")


# -- with threads, with ranks, through the graphed path -------------------------------------------------------------
@pytest.mark.parametrize("B,M,masked", [(7, 2, True), (6, 1, False), (3, 2, True)])
def test_micro_batches_with_two_workers_equal_the_whole_batch(B, M, masked):
    be = require_backend("numpy", "float64")
    whole, micro = _model(be), _model(be)
    s1, s2 = TrainStep(*whole), TrainStep(*micro, workers=2, micro_batch=M)
    assert s2.workers == 2
    for i, (tok, tgt, mask) in enumerate(_batches(B + M, B, 6, masked)):
        _close(float(s1(tok, tgt, mask)), float(s2(tok, tgt, mask)), f"loss at step {i}")
        _same_state(be, (whole, micro), f"after step {i}")


class ThreadComm(Communicator):
    """An in-process communicator: `size` ranks on threads, summing through shared slots (in rank order)."""

    engine = "threads"

    def __init__(self, rank: int, shared: dict) -> None:
        super().__init__(rank, shared["size"], rank, None, 0.0)
        self.shared = shared

    def iallreduce_sum_(self, a):
        sh, xp_copy = self.shared, np.array(np.asarray(a), copy=True)
        sh["barrier"].wait()  # everyone has read the last reduction's slots
        sh["slots"][self.rank] = xp_copy
        sh["barrier"].wait()
        total = sh["slots"][0].copy()
        for part in sh["slots"][1:]:
            total += part
        a[...] = total
        return Request(self)


def test_micro_batches_on_two_ranks_equal_the_whole_batch_on_one():
    be = require_backend("numpy", "float64")
    batches = _batches(11, 7, 6, True, steps=4)
    whole = _model(be)
    single = TrainStep(*whole)
    expected = [float(single(*b, lr=3e-3)) for b in batches]
    shared = {"size": 2, "slots": [None, None], "barrier": threading.Barrier(2, timeout=60)}

    def rank(r):
        model, opt = _model(be)
        step = DistributedStep(model, opt, ThreadComm(r, shared), micro_batch=2)
        return [float(step(*b, lr=3e-3)) for b in batches], (model, opt)

    with ThreadPoolExecutor(2) as pool:
        results = [f.result() for f in [pool.submit(rank, r) for r in range(2)]]
    for losses, state in results:
        _close(losses, expected, "losses")
        _same_state(be, (whole, state), "after 4 steps on 2 ranks")
    assert np.array_equal(results[0][1][0].flat.param_buffer, results[1][1][0].flat.param_buffer)


def test_the_graphed_path_equals_the_whole_batch_with_capture_replaced_by_a_call(monkeypatch):
    # No GPU here: the captured path's host layout (padded slices, weights of the whole batch, one update after
    # the slices) runs with StepGraphs replaced by a plain call of the function it would record.
    be = require_backend("numpy", "float64")
    monkeypatch.setattr(acc, "StepGraphs", lambda fn, state: fn)
    whole, micro = _model(be), _model(be)
    s1, s2 = TrainStep(*whole), TrainStep(*micro)
    s2.graphed, s2.micro_batch = True, 2
    s2._micro = acc.MicroBatches(s2, 2)
    for i, (tok, tgt, mask) in enumerate(_batches(4, 5, 5, True)):
        _close(float(s1(tok, tgt, mask)), float(s2(tok, tgt, mask)), f"loss at step {i}")
        _same_state(be, (whole, micro), f"after step {i}")


# -- bad settings ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [0, -2, True, False, 1.5, "2"])
def test_a_bad_micro_batch_is_a_config_error_naming_it(bad):
    be = require_backend("numpy", "float64")
    model, opt = _model(be)
    for make in (lambda: TrainStep(model, opt, micro_batch=bad),
                 lambda: build_step(model, opt, micro_batch=bad),
                 lambda: DistributedStep(model, opt, object(), micro_batch=bad)):
        with pytest.raises(ConfigError) as info:
            make()
        assert info.value.param == "micro_batch" and "micro_batch must be a positive integer" in str(info.value)


# -- the command lines ------------------------------------------------------------------------------------------------
def _train(monkeypatch, capsys, tmp_path, *flags):
    from llm.cli import cmd_train
    import llm.training.loop as loop

    (tmp_path / "p.json").write_text(json.dumps(["Ice floats on water. </s>", "The sun is a star. </s>",
                                                 "Water boils at one hundred degrees. </s>"]))
    (tmp_path / "c.json").write_text(json.dumps(["User: Does ice float? Assistant: Ice floats. </s>",
                                                 "User: What is the sun? Assistant: A star. </s>"]))
    built, real = [], loop.build_step
    monkeypatch.setattr(loop, "build_step", lambda *a, **k: built.append(real(*a, **k)) or built[-1])
    code = cmd_train.main(["--d-model", "16", "--n-heads", "2", "--n-layers", "2", "--d-ff", "32", "--no-progress",
                           "--pretrain-data", str(tmp_path / "p.json"), "--chat-data", str(tmp_path / "c.json"),
                           "--pretrain-epochs", "2", "--chat-epochs", "1", "--batch-size", "3", "--dtype", "float64",
                           "--workers", "1", "--no-chat", "--json", *flags])
    out = capsys.readouterr().out
    assert code == 0
    return built[0], [json.loads(line)["loss"] for line in out.splitlines() if '"loss"' in line]


def test_train_with_micro_batch_and_recompute_trains_like_without(monkeypatch, capsys, tmp_path):
    plain, expected = _train(monkeypatch, capsys, tmp_path)
    step, losses = _train(monkeypatch, capsys, tmp_path, "--micro-batch", "2", "--recompute")
    assert (plain.micro_batch, plain.recompute) == (None, False)
    assert (step.micro_batch, step.recompute) == (2, True)
    assert len(losses) == len(expected) == 3
    _close(losses, expected, "epoch losses")


@pytest.mark.parametrize("command", ["cmd_train", "cmd_text"])
@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5"])
def test_a_bad_micro_batch_flag_is_a_usage_error(command, value, capsys):
    import importlib

    main = importlib.import_module(f"llm.cli.{command}").main
    with pytest.raises(SystemExit) as info:  # argparse's own report: usage and one error line
        main(["--micro-batch", value, *(["--text", "x.txt"] if command == "cmd_text" else [])])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "--micro-batch" in err and "Traceback" not in err, err


def test_text_command_passes_micro_batch_and_recompute(monkeypatch, capsys, tmp_path):
    from llm.cli import cmd_text
    import llm.training.loop as loop

    book = tmp_path / "book.txt"
    book.write_text("the cat sat on the mat. " * 40)
    built, real = [], loop.build_step
    monkeypatch.setattr(loop, "build_step", lambda *a, **k: built.append(real(*a, **k)) or built[-1])
    code = cmd_text.main(["--text", str(book), "--d-model", "16", "--n-heads", "2", "--n-layers", "2", "--d-ff",
                          "32", "--max-seq-len", "16", "--steps", "2", "--batch-size", "4", "--eval-every", "2",
                          "--sample-chars", "0", "--micro-batch", "3", "--recompute", "--workers", "1"])
    capsys.readouterr()
    assert code == 0 and (built[0].micro_batch, built[0].recompute) == (3, True)
