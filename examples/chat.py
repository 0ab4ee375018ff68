"""Chat with a saved model: `llm.load` brings it back, `llm.chat` answers.

    python examples/train.py --out runs/demo          # train once and save
    python examples/chat.py runs/demo                 # then chat with it (exit or Ctrl-D to quit)
    python examples/chat.py runs/demo --temperature 0.8 --seed 1

The full-featured command line (top-k / top-p, --prompt, streaming) is ``arraygpt chat`` (``python -m llm chat``).
"""

import sys

try:  # Ctrl-C while the libraries load: "interrupted", exit 130, no traceback
    if __package__ in (None, ""):  # run from a checkout without installing
        import os

        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import argparse

    import llm
except KeyboardInterrupt:
    print("\ninterrupted", file=sys.stderr, flush=True)
    sys.exit(130)


def main() -> None:
    p = argparse.ArgumentParser(description="Chat with a saved ArrayGPT model.")
    p.add_argument("checkpoint", help="a directory written by examples/train.py --out (or arraygpt train --out)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, torch, torch:cuda or strict (default cpu)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 answers greedily (default); higher varies more")
    p.add_argument("--seed", type=int, help="seeds the sampling, for answers that repeat")
    args = p.parse_args()

    model, tok = llm.load(args.checkpoint, args.device)  # the checkpoint's dtype, on this device
    print(f"{model!r}\nType a question (exit or Ctrl-D to quit).")
    while True:
        try:
            question = input("> ")
        except EOFError:  # Ctrl-D: end the line the prompt is on
            print()
            break
        if question.strip().lower() in ("exit", "quit"):
            break
        try:
            print(llm.chat(model, tok, question, temperature=args.temperature, seed=args.seed))
        except llm.PromptError as exc:  # empty, or longer than the context: say so and ask again
            print(f"error: {exc}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr, flush=True)
        sys.exit(130)
    except llm.LLMError as exc:  # no checkpoint there, a damaged file, a backend that is not installed, ...
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)
