"""Commands run by tests: a command that fails fails the test, showing the end of its output."""
import subprocess
from pathlib import Path
from typing import Dict, Optional, Sequence


def run(args: Sequence[object], cwd: Path, env: Optional[Dict[str, str]] = None,
        timeout: int = 900) -> subprocess.CompletedProcess:
    """Run ``args`` (converted to strings) in ``cwd``, capturing text output; assert it exits 0."""
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f'{" ".join(map(str, args))} exited {result.returncode}:\n{output[-4000:]}'
    return result
