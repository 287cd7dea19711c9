"""``python -m attrbench.cli``: the same as the ``attrbench`` console script."""

from attrbench.cli import main

main()
