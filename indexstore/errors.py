"""Errors of grove. Every error a user can cause is a `GroveError`; the CLI prints its message on
one line and exits with status 2. Messages name the problem: file, line, column, value."""


class GroveError(Exception):
    """Base of every error caused by input, misuse or a store in the wrong state."""


class InputError(GroveError):
    """Bad input data: a missing file or column, a malformed line, a non-numeric id."""


class NotFoundError(GroveError):
    """An unknown dataset, split, index, version or alias."""


class StructureError(GroveError):
    """An index structure that breaks its invariants (cycle, orphan, code out of range)."""


class SchemaError(GroveError):
    """The store's schema is missing or behind the code: run `grove init`."""


class IntegrityError(GroveError):
    """Stored data that does not match its hash, or a version that is not complete."""


class StateError(GroveError):
    """A lifecycle verb used out of order: retrieving before training, writing twice."""


class StoreBusyError(GroveError):
    """Another process holds the DuckDB file's write lock."""


class TooLargeError(GroveError):
    """A configuration or request that would need more memory than the device has."""
