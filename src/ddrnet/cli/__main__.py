"""``python -m ddrnet.cli``: the ``ddrnet`` command (``torchrun -m ddrnet.cli`` for DDP)."""

from ddrnet.cli import run

run()
