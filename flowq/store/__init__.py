"""The durable state store: tables, migrations and compare-and-set transitions."""

from flowq.store.store import Store, Tx, iso, utcnow

__all__ = ["Store", "Tx", "iso", "utcnow"]
