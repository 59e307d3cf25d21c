"""Which optional extras are installed, and the one-line error when a feature needs a missing one.

The archived sparse stack (sparseml, sparsezoo, deepsparse) is the extra ``sparse``: ``pip install 'lit-kd[sparse]'``
(Python 3.11, numpy < 2). OpenVINO and NNCF are the extra ``openvino``: ``pip install 'lit-kd[openvino]'`` (OpenVINO
IR export, the OpenVINO engine in bench and classify, NNCF PTQ in ``lit-kd ptq --engine nncf``). Everything else in
lit-kd runs without them.
"""

from __future__ import annotations

from importlib.util import find_spec

EXTRA_OF = {"sparseml": "sparse", "sparsezoo": "sparse", "deepsparse": "sparse", "openvino": "openvino", "nncf": "openvino"}
EXTRA_NOTE = {"sparse": " (Python 3.11, numpy < 2)", "openvino": ""}


class MissingExtra(ImportError):
    """A feature needs a package of an optional extra that is not installed."""


def installed(package: str) -> bool:
    """Whether ``package`` can be imported (without importing it)."""
    return find_spec(package) is not None


def missing_extras(names: list[str], packages: dict[str, tuple[str, ...]]) -> dict[str, str]:
    """``{name: extra to install}`` for each of ``names`` (e.g. engines) whose ``packages[name]`` are not all installed."""
    return {n: EXTRA_OF.get(packages[n][0], packages[n][0]) for n in names if not all(installed(p) for p in packages.get(n, ()))}


def require(package: str, feature: str) -> None:
    """Raise :class:`MissingExtra` naming the extra to install when ``package`` is missing.

    Example::

        require("deepsparse", "the DeepSparse engine")
        # MissingExtra: the DeepSparse engine needs deepsparse: pip install 'lit-kd[sparse]' (Python 3.11, numpy < 2)
    """
    if not installed(package):
        extra = EXTRA_OF.get(package, package)
        raise MissingExtra(f"{feature} needs {package}: pip install 'lit-kd[{extra}]'{EXTRA_NOTE.get(extra, '')}")
