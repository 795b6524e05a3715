"""Installs what Safe Denoiser needs and the WebUI lacks (normally nothing: the WebUI ships all of it).

The WebUI runs this file as a subprocess at every start with its own folder on PYTHONPATH, so ``launch``
gives its helpers (modules/launch_utils.py): ``is_installed`` and ``run_pip`` (which honours
``--skip-install``). Requirements come from this extension's requirements.txt.
"""

import importlib.metadata
from pathlib import Path

import launch

REQUIREMENTS = Path(__file__).resolve().parent / "requirements.txt"


def requirement_lines(path: Path = REQUIREMENTS) -> list[str]:
    return [line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines()
            if line.split("#", 1)[0].strip()]


def missing(requirement: str) -> bool:
    """Whether a requirement is absent, or present in a version outside its range."""
    from packaging.requirements import Requirement

    parsed = Requirement(requirement)
    if not launch.is_installed(parsed.name):
        return True
    if not parsed.specifier:
        return False
    try:
        version = importlib.metadata.version(parsed.name)
    except importlib.metadata.PackageNotFoundError:  # importable but without metadata: keep what is there
        return False
    return not parsed.specifier.contains(version, prereleases=True)


def main() -> None:
    if launch.args.skip_install:
        return
    for requirement in requirement_lines():
        if missing(requirement):
            launch.run_pip(f'install "{requirement}"', f"Safe Denoiser requirement: {requirement}")


if __name__ == "__main__":
    main()
