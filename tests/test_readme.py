"""The README's library example runs as written and does what it says."""

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_library_example_trains_and_answers():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    example = blocks[0]
    assert "llm.train(" in example and "llm.chat(" in example
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        exec(compile(example, str(README), "exec"), {})
    answer, score = out.getvalue().strip().splitlines()[-2:]
    assert answer.startswith("Mountains form when")
    assert int(score) >= 111  # the floor: >= 95% of the 116 built-in prompts
