"""Dataclass, enum, datetime and Decimal arguments and results."""
import dataclasses
import datetime
import decimal
import enum

from _support import effect

EXPECT = "identical"
ARGS = ()


class Tier(enum.Enum):
    GOLD = "gold"


@dataclasses.dataclass(frozen=True)
class Item:
    sku: str
    price: decimal.Decimal


class Flow:
    __flow__ = "run"

    def run(self):
        when = datetime.datetime(2026, 12, 2, 9, 30, tzinfo=datetime.timezone.utc)
        item = self.load("sku-1")
        return self.quote(item, Tier.GOLD, when)

    def load(self, sku):
        effect("load", sku)
        return Item(sku, decimal.Decimal("9.95"))

    def quote(self, item, tier, when):
        effect("quote", item.sku)
        return [item.price * 2, tier.value, when.isoformat()]
