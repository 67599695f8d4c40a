"""What a call's tokens cost: a price table per model, in US dollars per million tokens, in and out.

DEFAULT_PRICES were taken on 2025-09-15 from Google's Gemini Developer API price list for the Live API's
native-audio model (gemini-2.5-flash-native-audio): input text $0.50, input audio/image/video $3.00,
output text $2.00, output audio $12.00 per million tokens. They are an estimate: set PARLEY_PRICES to
your own table (same shape, JSON) for your model, tier and date. A model not in the table is priced by
its "*" entry.
"""

from __future__ import annotations

import json
from typing import Any

Prices = dict[str, dict[str, dict[str, float]]]

DEFAULT_PRICES: Prices = {
    "*": {
        "input": {"TEXT": 0.50, "AUDIO": 3.00, "IMAGE": 3.00, "VIDEO": 3.00},
        "output": {"TEXT": 2.00, "AUDIO": 12.00},
    },
}
PRICES_TAKEN = "2025-09-15"


def parse_prices(raw: str) -> Prices:
    """PARLEY_PRICES: {"model": {"input": {"AUDIO": 3.0, ...}, "output": {...}}, "*": ...}."""
    try:
        table = json.loads(raw)
        ok = isinstance(table, dict) and all(
            isinstance(entry, dict)
            and all(
                isinstance(entry.get(side, {}), dict)
                and all(isinstance(v, int | float) for v in entry.get(side, {}).values())
                for side in ("input", "output")
            )
            for entry in table.values()
        )
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(
            'PARLEY_PRICES must be JSON like {"*": {"input": {"AUDIO": 3.0}, "output": {"AUDIO": 12.0}}}'
        )
    return {
        model: {
            side: {k.upper(): float(v) for k, v in entry.get(side, {}).items()}
            for side in ("input", "output")
        }
        for model, entry in table.items()
    }


def estimate_cost(prices: Prices, model: str | None, tokens: dict[str, Any]) -> float | None:
    """US dollars for `tokens` ({"input": {"AUDIO": n, ...}, "output": {...}}), or None without a price.

    Tokens of a modality the table has no price for are priced as AUDIO (the Live API's main one)."""
    entry = prices.get(model or "") or prices.get("*")
    if entry is None:
        return None
    total = 0.0
    for side in ("input", "output"):
        table = entry.get(side, {})
        for modality, count in (tokens.get(side) or {}).items():
            price = table.get(modality.upper(), table.get("AUDIO", 0.0))
            total += float(count) * price / 1e6
    return round(total, 6)
