"""``python -m ddrnet.cli``: the ``ddrnet`` command (``torchrun -m ddrnet.cli`` for DDP)."""

import sys

from ddrnet.cli import main

sys.exit(main())
