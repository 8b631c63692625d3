"""Talking to a Solana browser wallet (Phantom, Solflare, Backpack) from page event handlers."""

from __future__ import annotations

import json

from solders.signature import Signature

# Phantom, Solflare and Backpack all expose this interface (the Solana wallet standard's legacy injection).
_WALLET = "(window.phantom && window.phantom.solana) || window.solflare || window.backpack || window.solana"
CONNECT_WALLET_JS = f"""(async () => {{
  const wallet = {_WALLET};
  if (!wallet) return {{error: "no-wallet"}};
  try {{
    const connected = await wallet.connect();
    return {{address: ((connected && connected.publicKey) || wallet.publicKey).toString()}};
  }} catch (e) {{ return {{error: "refused"}}; }}
}})()"""


def sign_message_js(message: str) -> str:
    return f"""(async () => {{
  const wallet = {_WALLET};
  try {{
    const signed = await wallet.signMessage(new TextEncoder().encode({json.dumps(message)}), "utf8");
    return {{signature: Array.from(signed.signature || signed)}};
  }} catch (e) {{ return {{error: "refused"}}; }}
}})()"""


def signature_from_bytes(raw: list) -> str:
    """The base58 signature from the 64 bytes a wallet returned; ValueError when they are not that."""
    if not isinstance(raw, list) or len(raw) != 64:
        raise ValueError("not a 64-byte signature")
    return str(Signature(bytes(int(b) & 0xFF for b in raw)))
