"""The errors a user can fix, in one place.

Each is raised with a message that names the bad value, the config key to change and the valid
choices, before anything expensive runs where that is possible. ``python -m distillkit.run`` and
``python -m distillkit.evaluate`` print such an error as one line (``<Class>: <message>``) and exit
non-zero, without a Python traceback; ``HYDRA_FULL_ERROR=1`` shows the full traceback. Any other
exception is a bug and keeps its traceback.

* :class:`ConfigError`: a config value that cannot work (``ValueError``).
* :class:`ModelLoadError`: a model or tokenizer that cannot be found or built (``RuntimeError``).
* :class:`MethodSetupError`: a method that cannot run on this pair or config (``ValueError``).
* :class:`DataError`: data that cannot be read or is unusable (``ValueError``).
"""

from __future__ import annotations

from hydra.errors import CompactHydraException


class UserError(Exception):
    """Base of the errors a user can fix: printed as one line by the command-line entry points."""


class ConfigError(UserError, ValueError):
    """A config value that cannot work; raised before anything expensive."""


class ModelLoadError(UserError, RuntimeError):
    """A model or tokenizer could not be found or built; the message says which config key to set."""


class MethodSetupError(UserError, ValueError):
    """The method cannot run on this model pair or config; raised before training starts."""


class DataError(UserError, ValueError):
    """Data that cannot be read (a missing file, a malformed line) or leaves nothing to train on."""


class ReportedUserError(CompactHydraException):
    """A :class:`UserError` on its way out of a Hydra entry point: Hydra prints ``str()`` of a
    compact exception as one line (no traceback) and exits 1; ``HYDRA_FULL_ERROR=1`` re-raises it
    with the original error chained as its cause."""


def user_error_types() -> tuple[type[BaseException], ...]:
    """The exception classes reported as one line: :class:`UserError` and the method seam's
    ``MethodSetupError`` (``distillkit.methods.base`` may define its own until it imports this one)."""
    types: list[type[BaseException]] = [UserError]
    try:
        from distillkit.methods.base import MethodSetupError as seam_error
    except ImportError:  # pragma: no cover - the method package is always there
        seam_error = MethodSetupError
    if not issubclass(seam_error, UserError):
        types.append(seam_error)
    return tuple(types)


def is_user_error(err: BaseException) -> bool:
    return isinstance(err, user_error_types())


def one_line(err: BaseException) -> str:
    """``<Class>: <message>`` on a single line (newlines of a long message become spaces)."""
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def reported(err: BaseException) -> BaseException:
    """``err`` as Hydra should see it: a user error becomes a :class:`ReportedUserError`."""
    if is_user_error(err):
        return ReportedUserError(one_line(err))
    return err
