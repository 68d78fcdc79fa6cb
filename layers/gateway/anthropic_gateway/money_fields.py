"""Money in the admin API's answers: a pydantic field that is a number in the OpenAPI document, and a JSON answer that
writes every Decimal exactly (money.dumps). Apart from money.py because pydantic and FastAPI are the admin app's:
the pass-through never imports them (app.py)."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any

from pydantic import WithJsonSchema
from starlette.responses import JSONResponse

from . import money

# A money field of a response model: a number in the OpenAPI document (pydantic's default says string), written
# exactly by MoneyJSONResponse from the model's `model_dump()`.
Amount = Annotated[Decimal, WithJsonSchema({"type": "number"})]


class MoneyJSONResponse(JSONResponse):
    """A JSON answer whose Decimals (from `model_dump()`, not `model_dump(mode="json")`) are written as exact
    numbers; otherwise the bytes Starlette's JSONResponse writes."""

    def render(self, content: Any) -> bytes:
        return money.dumps(content).encode("utf-8")
