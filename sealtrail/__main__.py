"""``python -m sealtrail``: the same as the ``sealtrail`` command."""

from sealtrail.cli import main

# Guarded: a spawned worker (verify --jobs) imports the parent's main module as __mp_main__,
# and must not run the CLI again.
if __name__ == "__main__":
    main()
