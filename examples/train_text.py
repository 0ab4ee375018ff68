"""Train a character-level model on a book (any UTF-8 text file), nanoGPT's way, then continue its opening.

    python examples/train_text.py --text shakespeare.txt --device cpu --steps 300
    python examples/train_text.py --text notes.txt --device torch:cuda --steps 2000 --out runs/book

`TextRun` is the book trainer (`arraygpt text` runs it too): random windows of the token stream, Adam with a warmup
and a cosine, a fixed validation split. The full-featured command line (model sizes, --resume, plots, data-parallel
runs) is ``arraygpt text`` (``python -m llm text``).
"""

import _program  # this checkout's llm and backends, without installing them

with _program.ctrl_c_exits():  # Ctrl-C while the libraries load: "interrupted", exit 130, no traceback
    import argparse

    import backends
    import llm
    from llm.infer.generation import generate_long
    from llm.training.text_run import TextRun, TextSettings, read_text, split_ids


def main() -> None:
    p = argparse.ArgumentParser(description="Train a character-level model on a text file, then sample from it.")
    p.add_argument("--text", required=True, help="a UTF-8 plain-text file")
    p.add_argument("--device", default="cpu", help="cpu, cuda, torch, torch:cuda or strict (default cpu)")
    p.add_argument("--steps", type=int, default=300, help="optimizer steps (default 300)")
    p.add_argument("--out", help="save the run into this directory at the end")
    args = p.parse_args()

    text = read_text(args.text, None)
    tok = llm.CharTokenizer.from_texts([text])  # one token per character
    config = llm.GPTConfig(vocab_size=tok.vocab_size, max_seq_len=64, d_model=128, n_heads=4, n_layers=4, d_ff=512)
    train_ids, val_ids = split_ids(tok.encode(text), 0.1, config.max_seq_len, args.text)  # the last 10% validates
    model = llm.GPT(config, backends.get_backend(args.device), seed=0)
    run = TextRun(model, tok, train_ids, val_ids, TextSettings(steps=args.steps))
    print(f"{len(text):,} characters, {tok.vocab_size} symbols; {model!r}")

    every = max(1, args.steps // 4)
    while run.step < args.steps:
        run.train_step()  # the loss stays on the device
        if run.step % every == 0 or run.step == args.steps:
            val = run.evaluate()
            print(f"step {run.step}: train loss {run.read():.4f}"
                  + (f", val loss {val:.4f}" if val is not None else ""))
    if args.out:
        print(f"saved {run.save(args.out)}")
    print(text[:16] + generate_long(model, tok, text[:16], 200, temperature=0.8, seed=0, stop_at_eos=False))


if __name__ == "__main__":
    _program.run(main)  # an LLMError (a missing file, a text too short, ...): one line, exit 1; Ctrl-C: exit 130
