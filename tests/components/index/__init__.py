"""Tests of components/index.

pytest (importlib mode, `tests` on pythonpath) names this directory's modules
`components.index.*`, which shadows the real package. Putting the real
package's directory first on this package's path makes `components.index.X`
import the real module X; a `tests/__init__.py` would remove the clash at the root.
"""

from pathlib import Path

_REAL_PACKAGE = Path(__file__).resolve().parents[3] / "components" / "index"
__path__.insert(0, str(_REAL_PACKAGE))  # noqa: F821 - __path__ is set by the import system
