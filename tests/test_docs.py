"""What the repository tells users points at things they have: README sections that exist, no files outside
the repository, an install that says how long it takes."""
import ast
import re
import subprocess
from pathlib import Path
from typing import Dict, List

import pytest

REPO = Path(__file__).resolve().parents[1]
OUTSIDE = 'shared' + '/'  # spelt in two parts so that this file does not name it
# README, "Configs" / README's "Configs" / README section "Configs" / (README: "Configs")
README_SECTION = re.compile(r'README(?:\'s)?(?: section)?[,:]?\s+\(?"([^"]+)"')


def project_files() -> List[Path]:
    """Tracked files and new files not ignored (what the next commit can hold), text only."""
    try:
        listed = subprocess.run(['git', 'ls-files', '--cached', '--others', '--exclude-standard'], cwd=REPO,
                                capture_output=True, text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip('not a git checkout')
    files = []
    for name in listed:
        path = REPO / name
        if path.is_file() and b'\0' not in path.read_bytes()[:8192]:
            files.append(path)
    return files


def user_facing_text(path: Path) -> str:
    """A Python file's string literals (implicitly concatenated ones, f-strings included, joined as Python joins
    them), or any other file's text, with line breaks as spaces."""
    source = path.read_text(errors='replace')
    if path.suffix != '.py':
        return ' '.join(source.split())
    pieces = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            pieces.append(node.value)
        elif isinstance(node, ast.JoinedStr):
            pieces.append(''.join(part.value if isinstance(part, ast.Constant) else '{}' for part in node.values))
    return '\n'.join(' '.join(piece.split()) for piece in pieces)


def readme_headings() -> List[str]:
    headings, in_code = [], False
    for line in (REPO / 'README.md').read_text().splitlines():
        if line.startswith('```'):
            in_code = not in_code
        elif not in_code and line.startswith('#'):
            headings.append(line.lstrip('#').strip())
    return headings


def readme_references() -> Dict[str, List[str]]:
    """Quoted README section names, by file (relative path)."""
    references = {}
    for path in project_files():
        if path.suffix in ('.py', '.md', '.sh', '.yml', '.txt') or path.name == 'Makefile':
            found = README_SECTION.findall(user_facing_text(path))
            if found:
                references[str(path.relative_to(REPO))] = found
    return references


def test_quoted_readme_sections_exist():
    references = readme_references()
    # The pattern finds the hints we know of (they were the reason for this test).
    assert 'Reproducing COCO and ADE20K' in references.get('mmdavit/engine/runner.py', []), references
    headings = set(readme_headings())
    missing = {name: sorted(set(sections) - headings) for name, sections in references.items()
               if set(sections) - headings}
    assert not missing, f'README sections named in these files do not exist (headings: {sorted(headings)})'


def test_no_project_file_sends_users_outside_the_repository():
    offenders = [str(path.relative_to(REPO)) for path in project_files() if OUTSIDE in path.read_text(errors='replace')]
    assert not offenders, f'these files name {OUTSIDE}, which users do not have (put it into docs/): {offenders}'


def test_readme_links_to_docs_that_exist():
    links = re.findall(r'\]\((docs/[^)#]+)', (REPO / 'README.md').read_text())
    assert 'docs/recipes.md' in links
    assert [link for link in links if not (REPO / link).is_file()] == []


def test_make_install_announces_the_mmcv_compile_before_it_starts():
    # `make -n` prints the recipe without running it; -B as if nothing were installed yet.
    recipe = subprocess.run(['make', '-n', '-B', 'install'], cwd=REPO, capture_output=True, text=True,
                            check=True).stdout
    announcement = re.search(r'echo ".*mmcv.*(\d+)-(\d+) min on 2 cores.*"', recipe)
    assert announcement is not None, recipe
    assert recipe.index(announcement.group(0)) < recipe.index('wheel --no-cache-dir --no-build-isolation --no-deps mmcv')
