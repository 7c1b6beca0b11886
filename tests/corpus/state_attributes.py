"""Flow attributes set by flow code and by steps' results, read by later steps."""
from _support import effect

EXPECT = "identical"
ARGS = ("acme",)


class Flow:
    __flow__ = "run"

    def __init__(self):
        self.log = []

    def run(self, customer):
        self.customer = customer
        self.account = self.open(customer)
        self.log.append(self.account)
        self.balance = self.deposit(self.account, 50)
        return [self.customer, self.account, self.balance, self.log]

    def open(self, customer):
        effect("open", customer)
        return f"acct-{customer}"

    def deposit(self, account, amount):
        effect("deposit", account, amount)
        return amount
