"""Chat with a saved model: `llm.load` brings it back, `llm.chat` answers.

    python examples/train.py --out runs/demo          # train once and save
    python examples/chat.py runs/demo                 # then chat with it (exit or Ctrl-D to quit)
    python examples/chat.py runs/demo --temperature 0.8 --seed 1

The full-featured command line (top-k / top-p, --prompt, streaming) is ``arraygpt chat`` (``python -m llm chat``).
"""

import _program  # this checkout's llm and backends, without installing them

with _program.ctrl_c_exits():  # Ctrl-C while the libraries load: "interrupted", exit 130, no traceback
    import argparse

    import llm


def main() -> None:
    p = argparse.ArgumentParser(description="Chat with a saved ArrayGPT model.")
    p.add_argument("checkpoint", help="a directory written by examples/train.py --out (or arraygpt train --out)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, torch, torch:cuda or strict (default cpu)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 answers greedily (default); higher varies more")
    p.add_argument("--seed", type=int, help="seeds the sampling, for answers that repeat")
    args = p.parse_args()

    model, tok = llm.load(args.checkpoint, args.device)  # the checkpoint's dtype, on this device
    print(repr(model))
    chat_loop(model, tok, temperature=args.temperature, seed=args.seed)


def chat_loop(model: llm.GPT, tok: llm.WordTokenizer | llm.CharTokenizer, **sampling) -> None:
    """Answer the questions typed at a prompt with `llm.chat` until `exit` or Ctrl-D (examples/train.py uses it too)."""
    print("Type a question (exit or Ctrl-D to quit).")
    while True:
        try:
            question = input("> ")
        except EOFError:  # Ctrl-D: end the line the prompt is on
            print()
            break
        if question.strip().lower() in ("exit", "quit"):
            break
        try:
            print(llm.chat(model, tok, question, **sampling))
        except llm.PromptError as exc:  # empty, or longer than the context: say so and ask again
            print(f"error: {exc}")

if __name__ == "__main__":
    _program.run(main)  # an LLMError (no checkpoint there, a damaged file, ...): one line, exit 1; Ctrl-C: exit 130
