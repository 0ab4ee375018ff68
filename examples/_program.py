"""What every example starts and ends with: this checkout on the import path, and a clean exit.

    import _program  # this checkout's llm and backends, without installing them

    with _program.ctrl_c_exits():  # Ctrl-C while the libraries load: "interrupted", exit 130, no traceback
        import llm

    if __name__ == "__main__":
        _program.run(main)  # Ctrl-C: exit 130; a library error: one line "error: ...", exit 1
"""

import contextlib
import os
import sys
from typing import Callable, Iterator

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _interrupted() -> None:
    print("\ninterrupted", file=sys.stderr, flush=True)
    sys.exit(130)


@contextlib.contextmanager
def ctrl_c_exits() -> Iterator[None]:
    """Ctrl-C inside the block ends the program with "interrupted" on stderr and exit status 130."""
    try:
        yield
    except KeyboardInterrupt:
        _interrupted()


def run(main: Callable[[], None]) -> None:
    """Run `main`: Ctrl-C ends it with exit status 130, a library error with one line "error: ..." and status 1."""
    import llm

    try:
        main()
    except KeyboardInterrupt:  # training stops at the next step, the chat loop at once
        _interrupted()
    except llm.LLMError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)
