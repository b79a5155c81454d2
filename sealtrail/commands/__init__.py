"""Sub-commands of the ``sealtrail`` CLI; each module has ``register(app)``."""
