"""``python -m cada.cli`` (what ``accelerate launch ... -m cada.cli train`` runs)."""

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from cada.cli import main  # noqa: E402  (after the environment it reads)

main()
