"""How training works: an explicit loop over GPT, Adam and TrainStep on the built-in facts, then a generation.

    python examples/training_loop.py --device cpu --steps 300

Each step takes a random batch of facts, pads them to one length and asks the model to predict every next word
(the mask leaves the padding out of the loss). `llm.train` does the same with more care (epochs, warmup, a chat
phase, checkpoints); this is the bare idea.
"""

import _program  # this checkout's llm and backends, without installing them

with _program.ctrl_c_exits():  # Ctrl-C while the libraries load: "interrupted", exit 130, no traceback
    import argparse

    import numpy as np

    import backends
    import llm

p = argparse.ArgumentParser(description="A bare training loop on the built-in facts.")
p.add_argument("--device", default="cpu", help="cpu, cuda, torch, torch:cuda or strict (default cpu)")
p.add_argument("--steps", type=int, default=300, help="optimizer steps (default 300)")
args = p.parse_args()

facts = llm.load_corpus(kind="pretrain")  # 115 one-sentence facts, each ending in </s>
tok = llm.WordTokenizer.from_texts(facts)
ids = [tok.encode(text) for text in facts]
T = max(len(x) for x in ids) - 1  # the longest fact, shifted by one word
model = llm.GPT(llm.GPTConfig(vocab_size=tok.vocab_size, d_model=64, n_heads=4, n_layers=2, d_ff=128,
                              max_seq_len=T), backends.get_backend(args.device), seed=0)
step = llm.TrainStep(model, llm.Adam(model, lr=3e-3))  # forward, backward, clipping, Adam: one call
rng = np.random.default_rng(0)

for i in range(1, args.steps + 1):
    batch = rng.choice(len(ids), size=16)  # 16 facts, drawn with replacement
    tokens = np.full((16, T), tok.pad_id)  # tokens[b, t] predicts targets[b, t] = the word after it
    targets = np.full((16, T), tok.pad_id)
    mask = np.zeros((16, T), dtype=bool)  # True where a target is a real word
    for row, k in enumerate(batch):
        n = len(ids[k]) - 1
        tokens[row, :n], targets[row, :n], mask[row, :n] = ids[k][:-1], ids[k][1:], True
    loss = step(tokens, targets, mask)  # a device scalar: nothing is read back yet
    if i % 50 == 0 or i == args.steps:
        print(f"step {i}: loss {float(loss):.3f}")  # reading the loss waits for the device

print("Mountains ->", llm.generate(model, tok, "Mountains", max_new_tokens=20))
