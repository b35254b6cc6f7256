"""Lightning's messages of a run, held back until it starts training.

Lightning prints as it sets up: the devices it found, the evaluation interval, the model
summary. A run that train.py refuses once its data is read (a split too small for the
devices, a Trainer flag that does not fit the data) would print its one ``error:`` line
after all of that. So train.py holds Lightning's log records from its start
(:func:`held_until_training`) and lets them through, in order, when training starts
(:class:`ReleaseMessages`), or when the process ends in any way but a refusal. A run
whose strategy starts processes (DDP) lets them through when its checks have passed,
just before fitting: its processes print their own.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import lightning as L

LOGGERS = ("lightning.pytorch", "lightning.fabric")  # the two that have handlers of their own


class HeldMessages(logging.Handler):
    """Stands in for the handlers of :data:`LOGGERS`, keeping what they would have printed."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.handlers: dict[str, list[logging.Handler]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def hold(self) -> None:
        for name in LOGGERS:
            logger = logging.getLogger(name)
            self.handlers[name] = list(logger.handlers)
            for handler in self.handlers[name]:
                logger.removeHandler(handler)
            logger.addHandler(self)

    def let_through(self, *, drop: bool = False) -> None:
        """Put the handlers back and give them what was held (nothing with ``drop``)."""
        handlers, self.handlers = self.handlers, {}
        records, self.records = ([] if drop else self.records), []
        for name, kept in handlers.items():
            logger = logging.getLogger(name)
            logger.removeHandler(self)
            for handler in kept:
                logger.addHandler(handler)
        for record in records:
            owner = next(n for n in LOGGERS if record.name == n or record.name.startswith(n + "."))
            for handler in handlers[owner]:
                if record.levelno >= handler.level:
                    handler.handle(record)


_held: HeldMessages | None = None


def let_through() -> None:
    """Let the held messages through, if any are held in this process."""
    if _held is not None:
        _held.let_through()


@contextlib.contextmanager
def held_until_training() -> Iterator[None]:
    """Hold Lightning's messages; a refusal (``SystemExit`` with a non-zero code) drops
    them, anything else lets them through."""
    global _held
    _held = HeldMessages()
    _held.hold()
    try:
        yield
    except SystemExit as stop:
        _held.let_through(drop=stop.code not in (0, None))
        raise
    finally:
        _held.let_through()
        _held = None


class ReleaseMessages(L.Callback):
    """Lets the held messages through when training starts."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        let_through()
