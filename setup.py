"""Package discovery only (everything else is in pyproject.toml): the folders compress/, export/ and devices/
install under the one import root ``compress``, so a new target folder export/<name>/ is found without
listing it anywhere."""

from setuptools import find_packages, setup


def under(root: str, folder: str) -> list[str]:
    """``root`` and every package below ``folder``, named as installed under ``root``."""
    return [root] + [f"{root}.{name}" for name in find_packages(folder)]


setup(packages=under("compress", "compress") + under("compress.export", "export") + under("compress.devices", "devices"))
