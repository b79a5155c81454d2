"""``python -m sealtrail``: the same as the ``sealtrail`` command."""

from sealtrail.cli import main

main()
