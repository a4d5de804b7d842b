"""Show what an order of the example left behind: its receipt and the inventory.

    python -m examples.show_order 42

Reads the same variables as the workflow: ``FLOWQ_FILE_ROOT`` (default ``./flowq-files``) for
``receipts/<order_id>.json`` and ``FLOWQ_CONN_SHOP`` for the ``inventory`` table.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import sqlalchemy

from examples.orders import INITIAL_STOCK, SHOP_CONNECTION


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m examples.show_order ORDER_ID", file=sys.stderr)
        return 2
    root = Path(os.environ.get("FLOWQ_FILE_ROOT") or "./flowq-files")
    receipt_path = root / "receipts" / f"{argv[0]}.json"
    if not receipt_path.exists():
        print(f"no receipt at {receipt_path}", file=sys.stderr)
        return 1
    receipt = json.loads(receipt_path.read_text())
    print(f"receipt {receipt_path}:")
    print(receipt_path.read_text())
    url = os.environ.get(SHOP_CONNECTION)
    if not url:
        print(f"set {SHOP_CONNECTION} to see the inventory", file=sys.stderr)
        return 1
    engine = sqlalchemy.create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(sqlalchemy.text("SELECT sku, qty FROM inventory ORDER BY sku")).all()
    engine.dispose()
    print(f"inventory ({engine.url.render_as_string()}), initial stock in parentheses:")
    for sku, qty in rows:
        mark = "   <- this order" if sku == receipt.get("sku") else ""
        print(f"  {sku:<10} {qty:>5}  ({INITIAL_STOCK.get(sku, '?')}){mark}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
