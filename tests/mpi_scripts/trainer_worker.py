"""The Trainer on one process or on the ranks of an MPI job (tests/test_distributed.py launches it).

    python trainer_worker.py '{"mode": "full", "out": "result.json"}'
    mpiexec -n 2 python trainer_worker.py '{"mode": "stop", "ckpt": "dir"}'        # save after 2 epochs, stop
    python trainer_worker.py '{"mode": "resume", "ckpt": "dir", "out": "r.json"}'  # continue it (any N)

Float64 on NumPy, a tiny model and corpus; ``--distributed``-style: a communicator whenever a launcher started us.
Writes (rank 0) the per-step losses and gradient norms and the final parameters as JSON.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import numpy as np  # noqa: E402

from backends import get_backend  # noqa: E402
from backends.comm import init_distributed  # noqa: E402
from llm import GPT, GPTConfig  # noqa: E402
from llm.checkpoint import load_checkpoint, restore_trainer, save_checkpoint  # noqa: E402
from llm.data.tokenizers import WordTokenizer  # noqa: E402
from llm.training.loop import build_step  # noqa: E402
from llm.training import Recipe, Trainer  # noqa: E402

FACTS = [f"Fact {i}: the {w} is {c}. </s>" for i, (w, c) in
         enumerate(zip(["sky", "sea", "grass", "sun", "snow", "coal", "rose"],
                       ["blue", "deep", "green", "hot", "white", "black", "red"]))]
CHATS = [f"User: What colour is the {w}? Assistant: The {w} is {c}. </s>" for w, c in
         zip(["sky", "grass", "snow", "coal", "rose"], ["blue", "green", "white", "black", "red"])]
RECIPE = Recipe(batch_size=4, pretrain_steps=6, chat_steps=5, warmup_steps=2, val_fraction=0.2)


class Stop(Exception):
    pass


def main() -> None:
    spec = json.loads(sys.argv[1])
    launched = any(v in os.environ for v in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE"))
    comm = init_distributed("numpy") if launched else None
    root = comm is None or comm.is_root
    be = get_backend("numpy", "float64")
    tok = WordTokenizer.from_texts(FACTS + CHATS)
    if spec["mode"] == "resume":
        ck = load_checkpoint(spec["ckpt"], be)
        trainer = restore_trainer(ck, FACTS, CHATS, progress=False,
                                  step=build_step(ck.model, ck.recipe.adam(ck.model), comm=comm))
    else:
        model = GPT(GPTConfig(vocab_size=tok.vocab_size, d_model=16, n_heads=2, n_layers=1, d_ff=32,
                              max_seq_len=24), be, seed=0)
        trainer = Trainer(model, tok, FACTS, CHATS, RECIPE, seed=0, progress=False,
                          step=build_step(model, RECIPE.adam(model), comm=comm))
    if spec["mode"] == "stop":
        def save_and_stop(tr):
            if (tr.state.phase, tr.state.epoch) == (0, 2):
                if root:
                    save_checkpoint(spec["ckpt"], tr.model, tr.tokenizer, tr)
                if comm is not None:
                    comm.barrier()
                raise Stop

        trainer.on_epoch = save_and_stop
        try:
            trainer.train()
        except Stop:
            return
        raise SystemExit("did not stop")
    trainer.train()
    if root:
        st = trainer.state
        result = {"steps": [{k: r[k] for k in ("step", "phase", "loss", "lr", "grad_norm")} for r in st.steps],
                  "history": st.history,
                  "params": be.to_numpy(trainer.model.flat.param_buffer).tolist()}
        with open(spec["out"], "w", encoding="utf-8") as f:
            json.dump(result, f)
    if comm is not None:
        comm.barrier()


if __name__ == "__main__":
    main()
