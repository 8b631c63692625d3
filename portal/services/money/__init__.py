"""Money, in integer micro-USD: the double-entry ledger, escrow, metering of verified uptime, billing and
invoices, deposits and provider payouts on Solana (the chain and the treasury key)."""
