"""How these checkpoints were written: by the code of commit 97b7c0c (before the one training engine), kept for the
legacy-resume tests. It runs only against that commit (its TextRun.save and Trainer(workers=...) are gone)."""
import json, sys
import numpy as np
from backends import get_backend
from llm import GPT, GPTConfig, CharTokenizer, WordTokenizer
from llm.training.text_run import TextRun, TextSettings, split_ids
from llm.training.trainer import Recipe, Trainer, TrainingInterrupted
from llm.checkpoint import save_checkpoint

out = sys.argv[1]
TEXT = "the quick brown fox jumps over the lazy dog. " * 40
be = get_backend("numpy", "float64")
# 1. the book trainer: 3 of 6 steps saved; the reference is the uninterrupted 6-step run
def tiny_run():
    tok = CharTokenizer.from_texts([TEXT])
    ids = np.asarray(tok.encode(TEXT), np.int64)
    cfg = GPTConfig(vocab_size=tok.vocab_size, d_model=16, n_heads=2, n_layers=1, d_ff=32, max_seq_len=16)
    train, val = split_ids(ids, 0.1, cfg.max_seq_len)
    s = TextSettings(steps=6, batch_size=4, seed=0, warmup_steps=2, eval_batches=2)
    return TextRun(GPT(cfg, be, seed=0), tok, train, val, s)
whole = tiny_run()
for _ in range(6): whole.train_step()
whole.read()
half = tiny_run()
for _ in range(3): half.train_step()
half.text_info = {"sha256": __import__("hashlib").sha256(TEXT.encode()).hexdigest(), "chars": len(TEXT)}
half.save(f"{out}/text_run_v1", run_id="0123456789abcdef")
np.save(f"{out}/text_run_v1.after6.npy", np.asarray(whole.model.flat.param_buffer))
# 2. the facts/dialogues Trainer: stopped after its first pretrain epoch
FACTS = ["the sun is hot </s>", "ice is cold </s>", "water is wet </s>", "fire is hot </s>", "snow is white </s>"]
CHATS = ["User: is the sun hot? Assistant: yes , the sun is hot </s>", "User: is ice cold? Assistant: yes , ice is cold </s>",
         "User: what is wet? Assistant: water is wet </s>"]
tok = WordTokenizer.from_texts(FACTS + CHATS)
cfg = GPTConfig(vocab_size=tok.vocab_size, d_model=16, n_heads=2, n_layers=1, d_ff=32, max_seq_len=24)
recipe = Recipe(batch_size=2, pretrain_epochs=2, chat_epochs=2, warmup_steps=2, lr_pretrain=1e-2, lr_chat=1e-2)
full = Trainer(GPT(cfg, be, seed=1), tok, FACTS, CHATS, recipe, seed=4, progress=False, workers=1)
full.train()
np.save(f"{out}/trainer_v1.after.npy", np.asarray(full.model.flat.param_buffer))
def stop(tr):
    tr.stop.request()
stopped = Trainer(GPT(cfg, be, seed=1), tok, FACTS, CHATS, recipe, seed=4, progress=False, workers=1, on_epoch=stop)
try:
    stopped.train()
except TrainingInterrupted:
    pass
save_checkpoint(f"{out}/trainer_v1", stopped.model, tok, stopped, run_id="fedcba9876543210")
json.dump({"facts": FACTS, "chats": CHATS, "text": TEXT}, open(f"{out}/corpora.json", "w"), indent=1)
print(stopped.state.step, full.state.step)
