"""Drop-in replacements for the Python loggers tally replaces:

- ``tally.compat.callbacks``: ``TelemetryLogger`` and ``MemoryLogger``
  (training callbacks that write tagged JSON lines);
- ``tally.compat.openjarvis``: OpenJarvis's ``TelemetryStore``,
  ``TelemetryAggregator`` and ``instrumented_generate``.
"""
