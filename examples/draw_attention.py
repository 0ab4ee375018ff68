"""Draw what a saved model attends to: `model.attention_maps` gives one (heads, T, T) map per layer, and
`llm.plotting.plot_attention` draws them as a grid (a row per layer, a column per head). Needs matplotlib.

    python examples/train.py --out runs/demo
    python examples/draw_attention.py runs/demo "How do mountains form?" --out attention.png

In each map, row t is how token t spreads its attention over tokens 0..t. The full-featured command line (a raw
prompt, long prompts, another device) is ``arraygpt attention`` (``python -m llm attention``).
"""

import _program  # this checkout's llm and backends, without installing them

with _program.ctrl_c_exits():  # Ctrl-C while the libraries load: "interrupted", exit 130, no traceback
    import argparse

    import llm
    from llm.infer.generation import format_chat_prompt
    from llm.plotting import plot_attention


def main() -> None:
    p = argparse.ArgumentParser(description="Draw a saved model's attention maps for a question.")
    p.add_argument("checkpoint", help="a directory written by examples/train.py --out (or arraygpt train --out)")
    p.add_argument("question", help="the question whose attention is drawn (asked as the model was tuned)")
    p.add_argument("--out", default="attention.png", help="the PNG to write (default attention.png)")
    args = p.parse_args()

    model, tok = llm.load(args.checkpoint, "cpu")
    ids = tok.encode(format_chat_prompt(args.question))  # "User: <question> Assistant:"
    maps = model.attention_maps(ids)  # [(heads, T, T) per layer], host arrays
    labels = [tok.id_to_token(i) for i in ids]
    print(f"wrote {plot_attention(maps, labels, args.out, title=args.question)}")


if __name__ == "__main__":
    _program.run(main)  # an LLMError (no checkpoint there, no matplotlib, ...): one line, exit 1; Ctrl-C: exit 130
