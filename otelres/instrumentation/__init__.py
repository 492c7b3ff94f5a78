"""The client-library integrations: one module per patched library.

Each module holds an OpenTelemetry ``BaseInstrumentor`` (registered under the
``opentelemetry_instrumentor`` entry point group), imports its library lazily,
and patches with wrapt through one :class:`~otelres._patches.Patches`,
so that ``uninstrument()`` takes out its own wrappers and nobody else's.
"""
