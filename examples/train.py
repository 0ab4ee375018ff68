"""Train ArrayGPT on the built-in corpus (facts, then dialogues), score it, then chat with it.

    python examples/train.py --device cpu                  # a few seconds on a CPU; then type questions
    python examples/train.py --device cuda --out runs/demo # save the model; chat later with examples/chat.py

The whole recipe is `llm.train` (its default: 120 steps on the facts, 160 on the dialogues). The full-featured
command line (recipes, --resume, JSON lines, plots, data-parallel runs) is ``arraygpt train`` (``python -m llm train``).
"""

import _program  # this checkout's llm and backends, without installing them

with _program.ctrl_c_exits():  # Ctrl-C while the libraries load: "interrupted", exit 130, no traceback
    import argparse

    import backends
    import llm
    from chat import chat_loop  # examples/chat.py's prompt loop


def main() -> None:
    p = argparse.ArgumentParser(description="Train on the built-in corpus, then chat.")
    p.add_argument("--device", default="cpu", help="cpu, cuda, torch, torch:cuda, strict or auto (default cpu)")
    p.add_argument("--seed", type=int, default=0, help="seeds the weights and the batch order (default 0)")
    p.add_argument("--steps", type=int, help="optimizer steps per phase (default: the recipe's 120 and 160)")
    p.add_argument("--out", help="save the trained model into this directory")
    args = p.parse_args()

    backend = backends.get_backend(args.device)
    facts, dialogues = llm.load_corpus(kind="pretrain"), llm.load_corpus(kind="chat")
    tok = llm.WordTokenizer.from_texts(facts + dialogues)
    model = llm.GPT(llm.GPTConfig(vocab_size=tok.vocab_size), backend, seed=args.seed)
    print(f"{model!r}; {len(facts)} facts, {len(dialogues)} dialogues")

    budget = {} if args.steps is None else {"pretrain_steps": args.steps, "chat_steps": args.steps}
    trainer = llm.train(model, tok, facts, dialogues, seed=args.seed, **budget)
    for s in trainer.summaries:
        print(f"{s.phase}: {s.steps} steps, final loss {s.final_loss:.4f}" if s.steps else f"{s.phase}: no steps")
    score = llm.exact_match(model, tok, dialogues)  # greedy answers compared with the corpus's
    print(f"built-in questions answered exactly: {score.correct}/{score.total}")
    if args.out:
        from llm.checkpoint import save_checkpoint

        print(f"saved {save_checkpoint(args.out, model, tok, trainer)}")

    chat_loop(model, tok)  # greedy answers, until exit or Ctrl-D


if __name__ == "__main__":
    _program.run(main)  # an LLMError (no backend, a full disk, ...): one line, exit 1; Ctrl-C: exit 130
