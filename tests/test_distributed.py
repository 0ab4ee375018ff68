"""Data-parallel training (backends/comm/, llm/training/ranks.py) under `mpiexec -n 2` with the PyPI MPI.

The MPI tests launch tests/mpi_scripts/dp_worker.py through the mpiexec next to this Python (where the `mpich`
wheel puts it), one BLAS thread per rank. They are skipped, with the reason, when mpi4py or mpiexec is missing, and
fail instead when ARRAYGPT_REQUIRE_BACKENDS names "mpi" (as CI does).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from backends.base_errors import BackendUnavailableError, ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "mpi_scripts", "dp_worker.py")
TIMEOUT = 60  # seconds for any one job: a hang fails the test instead of the CI run
TOL = 1e-10


def _mpi_problem() -> str | None:
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return 'mpi4py is not installed (pip install -e ".[mpi]")'
    if _mpiexec() is None:
        return "no mpiexec next to this Python or on PATH (pip install mpich)"
    return None


def _mpiexec() -> str | None:
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if os.path.exists(here):
        return here
    from shutil import which

    return which("mpiexec")


@pytest.fixture(scope="module")
def mpi() -> str:
    problem = _mpi_problem()
    if problem is not None:
        required = [b.strip() for b in os.environ.get("ARRAYGPT_REQUIRE_BACKENDS", "").split(",") if b.strip()]
        if "mpi" in required:
            pytest.fail(f"MPI is required here (ARRAYGPT_REQUIRE_BACKENDS) but unavailable: {problem}")
        pytest.skip(f"MPI unavailable: {problem}")
    return _mpiexec()


def _env() -> dict[str, str]:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = "1"
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _run(cmd: list[str]) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{' '.join(cmd[:4])} ... hung: no exit within {TIMEOUT} s\n{exc.stderr}")
    return proc, time.monotonic() - t0


def _dp(mpiexec: str, spec: dict, n: int = 2) -> tuple[subprocess.CompletedProcess, float]:
    return _run([mpiexec, "-n", str(n), sys.executable, WORKER, json.dumps(spec)])


def _single(spec: dict) -> tuple[subprocess.CompletedProcess, float]:
    return _run([sys.executable, WORKER, json.dumps(spec)])


def _compare(mpi: str, tmp_path, spec: dict) -> None:
    ref, got = tmp_path / "single.npz", tmp_path / "dp.npz"
    p, _ = _single({**spec, "mode": "single", "out": str(ref)})
    assert p.returncode == 0, p.stderr
    p, _ = _dp(mpi, {**spec, "mode": "dp", "out": str(got)})
    assert p.returncode == 0, p.stdout + p.stderr
    a, b = np.load(ref), np.load(got)
    assert int(b["size"]) == 2
    assert len(a["losses"]) == spec.get("steps", 20)
    np.testing.assert_allclose(b["losses"], a["losses"], rtol=0, atol=TOL)
    np.testing.assert_allclose(b["norms"], a["norms"], rtol=0, atol=TOL)
    np.testing.assert_allclose(b["params"], a["params"], rtol=0, atol=TOL)


# -- (a) the floor: 2 ranks x batch 2 == 1 process x batch 4, float64, 20 steps --------------------------------------
def test_two_ranks_match_one_process_with_the_doubled_batch(mpi, tmp_path):
    # the worker also checks that both ranks hold bit-identical parameters and report the same losses
    _compare(mpi, tmp_path, {"batch": 4, "steps": 20, "dtype": "float64"})


# -- (b) uneven and empty shards, masks (including steps where one rank or every rank counts nothing) --------------
@pytest.mark.parametrize("spec", [
    {"batch": 3, "masked": True},
    {"batch": 1, "steps": 5},  # rank 1 holds no row at all
    {"batch": 3, "masked": True, "backend": "strict", "steps": 5},  # its arrays reach MPI through DLPack views
    {"batch": 3, "masked": True, "backend": "torch", "steps": 5},  # Tensor.numpy() views
    {"batch": 3, "masked": True, "backend": "torch", "engine": "gloo", "steps": 5},  # torch.distributed's code path
], ids=["uneven-masked", "empty-rank", "strict", "torch", "torch-gloo"])
def test_uneven_and_masked_shards_match_one_process(mpi, tmp_path, spec):
    if spec.get("backend") in ("strict", "torch"):
        from tests.conftest import require_backend

        require_backend(spec["backend"])
    _compare(mpi, tmp_path, {"dtype": "float64", "steps": 20, **spec})


# -- (c) ranks that disagree: an error on every rank, no hang ------------------------------------------------------
def test_fingerprint_mismatch_fails_on_every_rank(mpi):
    p, seconds = _dp(mpi, {"mode": "dp", "bad_fingerprint_rank": 1})
    assert p.returncode != 0
    for rank in (0, 1):
        assert f"[rank {rank}/2] ranks disagree on corpus: rank 0 has" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr  # an LLMError is one line
    assert seconds < 20


def test_fingerprint_mismatch_caught_by_a_cli_exits_with_its_code(mpi):
    # a CLI prints `error: ...` and returns 2 on every rank: they all leave together, so the job ends at once
    p, seconds = _dp(mpi, {"mode": "dp", "bad_fingerprint_rank": 1, "catch": True})
    assert p.returncode == 2, p.stderr
    assert p.stderr.count("error: ranks disagree on corpus") == 2, p.stderr
    assert seconds < 20


# -- (d) a rank that dies, leaves, or hangs: the job ends ------------------------------------------------------------
@pytest.mark.parametrize("how, extra, says", [
    ("raise", {}, "[rank 1/2] RuntimeError: rank 1 failed on purpose at step 3 (traceback above): ending the job"),
    ("exit", {"exit_timeout": 2}, "[rank 1/2] rank 1 is exiting but other ranks did not follow within 2 s"),
    ("hang", {"timeout": 2}, "[rank 0/2] an all-reduce waited more than 2 s (the timeout)"),
], ids=["raise", "exit", "hang"])
def test_a_failing_rank_ends_the_job(mpi, how, extra, says):
    p, seconds = _dp(mpi, {"mode": "dp", "fail_rank": 1, "fail_step": 3, "fail_how": how, **extra})
    assert p.returncode != 0
    assert says in p.stderr, p.stderr
    assert "done" not in p.stdout  # no rank finished training
    assert seconds < 30


def test_one_rank_under_mpiexec_is_allowed(mpi, tmp_path):
    ref = tmp_path / "single.npz"
    p, _ = _single({"mode": "single", "out": str(ref), "steps": 3})
    assert p.returncode == 0, p.stderr
    p, _ = _dp(mpi, {"mode": "dp", "out": str(tmp_path / "one.npz"), "steps": 3}, n=1)
    assert p.returncode == 0, p.stderr
    a, b = np.load(ref), np.load(tmp_path / "one.npz")
    np.testing.assert_allclose(b["losses"], a["losses"], rtol=0, atol=TOL)


# -- (e) set-up errors: one line naming the fix ----------------------------------------------------------------------
def _init_in_subprocess(env_extra: dict[str, str]) -> subprocess.CompletedProcess:
    code = ("import sys\nfrom backends.comm import init_distributed\nfrom backends.base_errors import LLMError\n"
            "try:\n    init_distributed('cpu')\nexcept LLMError as e:\n    print(f'error: {e}', file=sys.stderr)\n"
            "    sys.exit(2)\n")
    env = _env()
    for var in ("PMI_SIZE", "PMI_RANK", "PMI_FD", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MV2_COMM_WORLD_SIZE",
                "WORLD_SIZE", "RANK", "MASTER_ADDR"):
        env.pop(var, None)
    env.update(env_extra)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=TIMEOUT)


def test_not_under_a_launcher_names_mpiexec(mpi):
    p = _init_in_subprocess({})
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "no MPI launcher started this process" in lines[0] and "mpiexec -n 2" in lines[0], \
        p.stderr


def test_a_launcher_of_another_mpi_is_named(mpi):
    # Open MPI's mpirun sets OMPI_COMM_WORLD_SIZE; mpi4py's MPICH then sees a job of one: every rank would be rank 0
    p = _init_in_subprocess({"OMPI_COMM_WORLD_SIZE": "2"})
    assert p.returncode == 2
    assert "the launcher belongs to another MPI" in p.stderr and "mpiexec" in p.stderr, p.stderr


def test_missing_mpi4py_names_the_install(monkeypatch):
    import backends.comm as comm_package

    monkeypatch.setitem(sys.modules, "mpi4py", None)  # `from mpi4py import MPI` now raises ImportError
    monkeypatch.setattr(comm_package, "_CURRENT", None)
    with pytest.raises(BackendUnavailableError) as info:
        comm_package.init_distributed("cpu")
    message = str(info.value)
    assert 'pip install -e ".[mpi]"' in message and "\n" not in message


@pytest.mark.parametrize("kwargs, says", [
    ({"engine": "bogus"}, "unknown distributed engine"),
    ({"backend": "auto"}, 'say which backend'),
    ({"backend": "cpu", "engine": "nccl"}, "nccl engine runs on the GPU backends"),
    ({"backend": "cpu", "timeout": 0}, "timeout must be a positive number"),
    ({"backend": "torch:cuda:1"}, "each rank takes its own"),
    ({"backend": "torch:mps", "engine": "nccl"}, "nccl engine runs on the GPU backends"),
    ({"backend": "torch:cuda", "engine": "gloo"}, "gloo engine reduces CPU arrays"),
    ({"backend": "tpu"}, "or torch:DEVICE"),
])
def test_bad_settings_are_config_errors(monkeypatch, kwargs, says):
    import backends.comm as comm_package

    monkeypatch.setattr(comm_package, "_CURRENT", None)
    with pytest.raises(ConfigError, match=says):
        comm_package.init_distributed(**kwargs)


# -- pieces that need no MPI -------------------------------------------------------------------------------------------
def test_another_torch_device_is_reduced_through_host_copies():
    # No mps or xpu device here: what can be checked is the choice. Any torch device type other than cpu and cuda is
    # its own library name, has no host view (so MPI and gloo stage it) and takes the mpi engine by default.
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    import backends.comm as comm_package
    from backends.comm.buffers import array_library, host_view

    meta = torch.zeros(4, device="meta")
    assert array_library(meta) == "torch:meta" and host_view(meta) is None
    assert array_library(torch.zeros(4)) == "torch"
    assert comm_package._backend_name("torch:mps") == "torch:mps"
    assert comm_package._check_engine("auto", "torch:xpu", None, 60.0) == "mpi"
    assert comm_package._check_engine("gloo", "torch:mps", None, 60.0) == "gloo"


def test_shard_bounds_cover_the_batch_once():
    from llm.training.ranks import shard_bounds

    for batch in range(0, 12):
        for size in range(1, 6):
            bounds = [shard_bounds(batch, r, size) for r in range(size)]
            assert bounds[0][0] == 0 and bounds[-1][1] == batch
            assert all(bounds[i][1] == bounds[i + 1][0] for i in range(size - 1))
            sizes = [hi - lo for lo, hi in bounds]
            assert max(sizes) - min(sizes) <= 1
    assert shard_bounds(3, 0, 2) == (0, 2) and shard_bounds(3, 1, 2) == (2, 3)


def test_fingerprints_are_stable_and_name_their_parts():
    from llm.training.ranks import run_fingerprints

    a = run_fingerprints(config={"d_model": 8, "vocab": 5}, corpus=["x", "y"], seed=np.int64(0))
    b = run_fingerprints(config={"vocab": 5, "d_model": 8}, corpus=["x", "y"], seed=0)
    assert a == b and set(a) == {"config", "corpus", "seed"} and len(a["corpus"]) == 64
    assert run_fingerprints(corpus=["x", "z"])["corpus"] != a["corpus"]


class _FakeComm:
    """check_same's logic without MPI: allgather returns what the 'other ranks' would have sent."""

    def __init__(self, others: list[dict], rank: int = 0) -> None:
        from backends.comm import Communicator

        self.others, self.rank = others, rank
        self.check_same = Communicator.check_same.__get__(self)

    def allgather_str(self, text: str) -> list[str]:
        return [text] + [json.dumps(o, sort_keys=True) for o in self.others]


def test_check_same_names_every_part_that_differs():
    mine = {"config": "aaaa", "corpus": "bbbb", "seed": "cccc"}
    _FakeComm([mine, mine]).check_same(mine)  # all agree: nothing raised
    with pytest.raises(ConfigError) as info:
        _FakeComm([mine, {**mine, "corpus": "dddd", "seed": "eeee"}]).check_same(mine, "the run")
    msg = str(info.value)
    assert "corpus: rank 0 has bbbb, rank 2 has dddd" in msg and "seed: rank 0 has cccc, rank 2 has eeee" in msg
    assert "config" not in msg.split("(")[0] and "\n" not in msg


# -- the Trainer and the CLI on 2 ranks (issue 12 item 2) ----------------------------------------------------------
TRAINER = os.path.join(ROOT, "tests", "mpi_scripts", "trainer_worker.py")
CLI = ["-m", "llm", "train"]  # `arraygpt train` after sys.executable


def _trainer(mpi: str | None, spec: dict) -> dict:
    cmd = ([mpi, "-n", "2"] if mpi else []) + [sys.executable, TRAINER, json.dumps(spec)]
    p, _ = _run(cmd)
    assert p.returncode == 0, p.stdout + p.stderr
    if "out" in spec:
        with open(spec["out"], encoding="utf-8") as f:
            return json.load(f)
    return {}


def _same_run(a: dict, b: dict) -> None:
    assert [(r["step"], r["phase"], r["lr"]) for r in a["steps"]] == [(r["step"], r["phase"], r["lr"])
                                                                     for r in b["steps"]]
    for key in ("loss", "grad_norm"):
        np.testing.assert_allclose([r[key] for r in b["steps"]], [r[key] for r in a["steps"]], rtol=0, atol=TOL)
    np.testing.assert_allclose([h["val_loss"] for h in b["history"]], [h["val_loss"] for h in a["history"]],
                               rtol=0, atol=TOL)
    np.testing.assert_allclose(b["params"], a["params"], rtol=0, atol=TOL)


def test_the_trainer_on_two_ranks_trains_like_one_process_and_resumes_with_another_n(mpi, tmp_path):
    one = _trainer(None, {"mode": "full", "out": str(tmp_path / "one.json")})
    two = _trainer(mpi, {"mode": "full", "out": str(tmp_path / "two.json")})
    assert len(one["steps"]) == 11  # 6 + 5 steps, the global batch of 4 split 2 + 2
    _same_run(one, two)
    # a checkpoint written by 2 ranks is a single-process one: continue it on 1, and the reverse
    _trainer(mpi, {"mode": "stop", "ckpt": str(tmp_path / "ck2")})
    _same_run(one, _trainer(None, {"mode": "resume", "ckpt": str(tmp_path / "ck2"), "out": str(tmp_path / "r1.json")}))
    _trainer(None, {"mode": "stop", "ckpt": str(tmp_path / "ck1")})
    _same_run(one, _trainer(mpi, {"mode": "resume", "ckpt": str(tmp_path / "ck1"), "out": str(tmp_path / "r2.json")}))


def test_the_cli_with_distributed_prints_once_and_trains_like_one_process(mpi, tmp_path):
    args = [*CLI, "--dtype", "float64", "--pretrain-steps", "4", "--chat-steps", "3", "--batch-size", "4", "--json",
            "--no-progress", "--no-chat", "--d-model", "16", "--n-heads", "2", "--n-layers", "1", "--d-ff", "32"]
    single, _ = _run([sys.executable, *args])
    assert single.returncode == 0, single.stderr
    dist, _ = _run([mpi, "-n", "2", sys.executable, *args, "--distributed", "--out", str(tmp_path / "run")])
    assert dist.returncode == 0, dist.stderr
    a = [json.loads(line) for line in single.stdout.splitlines()]
    b = [json.loads(line) for line in dist.stdout.splitlines()]
    assert len(a) == len(b)  # rank 0 alone wrote its JSON lines
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        if "loss" in x:
            assert abs(x["loss"] - y["loss"]) <= TOL
    assert dist.stderr.count("data-parallel over 2 ranks") == 1
    assert (tmp_path / "run" / "model.safetensors").exists()


def test_dist_timeout_without_distributed_is_a_usage_error():
    p, _ = _run([sys.executable, *CLI, "--dist-timeout", "5", "--no-chat"])
    assert p.returncode == 2 and "--dist-timeout needs --distributed" in p.stderr


def _book_on_one_and_two_ranks(mpi: str, tmp_path, *flags: str) -> None:
    # `arraygpt text` with `flags` in one process and on 2 ranks: the same printed lines (losses to 4 decimals,
    # validation, the sample), printed once; the run saved by rank 0
    text = tmp_path / "book.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 60, encoding="utf-8")
    args = ["-m", "llm", "text", "--text", str(text), "--steps", "8", "--eval-every", "4",
            "--log-every", "4", "--d-model", "16", "--n-layers", "1", "--n-heads", "2", "--d-ff", "32",
            "--max-seq-len", "16", "--batch-size", "6", "--sample-chars", "30", *flags]
    one, _ = _run([sys.executable, *args])
    two, _ = _run([mpi, "-n", "2", sys.executable, *args, "--distributed", "--out", str(tmp_path / "run")])
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    drop = lambda out: [ln for ln in out.splitlines() if "tokens/s" not in ln and "saved" not in ln]  # noqa: E731
    assert drop(two.stdout) == drop(one.stdout)
    assert two.stdout.count("val loss") == 2
    assert json.loads((tmp_path / "run" / "training.json").read_text())["trainer"] == "text"  # its resumable state


def test_the_book_trainer_with_distributed_matches_one_process(mpi, tmp_path):
    _book_on_one_and_two_ranks(mpi, tmp_path, "--dtype", "float64")


def test_the_book_trainer_in_fp16_with_micro_batches_on_two_ranks_matches_one_process(mpi, tmp_path):
    # mixed precision on ranks: each rank's slices on the float16 weights, the scaled float32 gradients summed,
    # one unscaled update; the loss scale saved
    _book_on_one_and_two_ranks(mpi, tmp_path, "--precision", "fp16", "--micro-batch", "2")
    saved = json.loads((tmp_path / "run" / "training.json").read_text())["loss_scale"]
    assert saved["good_steps"] == 8 and saved["overflows"] == 0


def test_distributed_without_a_launcher_is_one_line_naming_mpiexec():
    pytest.importorskip("mpi4py", reason="mpi4py is not installed")
    env = {k: v for k, v in _env().items() if k not in ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE")}
    p = subprocess.run([sys.executable, *CLI, "--distributed", "--no-chat"], capture_output=True, text=True, env=env,
                       cwd=ROOT, timeout=TIMEOUT)
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert p.returncode == 2 and len(errors) == 1 and "mpiexec" in errors[0], p.stderr
    assert "Traceback" not in p.stderr and "epoch" not in p.stdout


def test_the_cli_on_two_ranks_prints_each_epoch_once_and_ctrl_c_saves_once(mpi, tmp_path):
    import signal as _signal

    args = [*CLI, "--pretrain-steps", "100000", "--chat-steps", "0", "--batch-size", "4", "--no-progress",
            "--no-chat", "--d-model", "16", "--n-heads", "2", "--n-layers", "1", "--d-ff", "32", "--log-every", "2",
            "--distributed", "--out", str(tmp_path / "run")]
    proc = subprocess.Popen([mpi, "-n", "2", sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=_env(), cwd=ROOT)
    lines = []
    deadline = time.monotonic() + TIMEOUT
    try:
        for line in proc.stdout:  # wait until training runs: the second epoch's line
            lines.append(line)
            if line.startswith("pretrain epoch 2:") or time.monotonic() > deadline:
                break
        proc.send_signal(_signal.SIGINT)  # mpiexec passes it to every rank
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = "".join(lines) + out
    assert proc.returncode == 130, err
    assert out.count("pretrain epoch 1:") == 1 and out.count("pretrain epoch 2:") == 1, out  # rank 0 alone
    assert err.count("the run is saved: continue it with --resume") == 1, err
    saved = json.loads((tmp_path / "run" / "training.json").read_text())
    assert saved["state"]["step"] >= 2 and saved["state"]["step"] % 2 == 0  # the ranks stopped together at a read


def test_workers_with_a_communicator_is_refused():
    from llm import GPT, GPTConfig
    from llm.data.tokenizers import WordTokenizer
    from llm.training.loop import build_step
    from llm.training import Recipe
    from tests.conftest import require_backend

    class OneRank:  # no collective is reached: the check comes first
        rank, size, is_root = 0, 1, True

    tok = WordTokenizer.from_texts(["a b </s>", "User: a? Assistant: b </s>"])
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, d_model=8, n_heads=2, n_layers=1, d_ff=16, max_seq_len=8),
                require_backend("numpy"))
    with pytest.raises(ConfigError, match="launch more ranks"):
        build_step(model, Recipe().adam(model), comm=OneRank(), workers=2)
