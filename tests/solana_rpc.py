"""A Solana JSON-RPC endpoint for tests, answering from a LiteSVM chain: the handful of methods the
portal's ``RpcChain`` calls, in the shapes a validator answers with, so the RPC back end runs for real."""

from __future__ import annotations

import base64
from typing import Any

from solders.hash import Hash
from solders.pubkey import Pubkey
from solders.signature import Signature
from solders.transaction import VersionedTransaction
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from portal.services.money.chain import ChainError, LiteSvmChain, Outcome

CONTEXT = {"slot": 1, "apiVersion": "2.2.0"}


def rpc_app(chain: LiteSvmChain) -> Starlette:
    def answer(method: str, params: list[Any]) -> Any:
        if method == "getLatestBlockhash":
            return {
                "context": CONTEXT,
                "value": {"blockhash": str(chain.latest_blockhash()), "lastValidBlockHeight": 150},
            }
        if method == "isBlockhashValid":
            return {"context": CONTEXT, "value": chain.blockhash_valid(Hash.from_string(params[0]))}
        if method == "sendTransaction":
            transaction = VersionedTransaction.from_bytes(base64.b64decode(params[0]))
            chain.send(transaction)
            return str(transaction.signatures[0])
        if method == "getSignatureStatuses":
            found = []
            for signature in params[0]:
                status = chain.status(Signature.from_string(signature))
                if status.outcome is Outcome.UNKNOWN:
                    found.append(None)
                    continue
                err = None if status.outcome is Outcome.LANDED else {"InstructionError": [1, {"Custom": 1}]}
                found.append(
                    {
                        "slot": 1,
                        "confirmations": None,
                        "err": err,
                        "status": {"Ok": None} if err is None else {"Err": err},
                        "confirmationStatus": "finalized",
                    }
                )
            return {"context": CONTEXT, "value": found}
        if method == "getAccountInfo":
            account = chain.get_account(Pubkey.from_string(params[0]))
            if account is None:
                return {"context": CONTEXT, "value": None}
            return {
                "context": CONTEXT,
                "value": {
                    "lamports": account.lamports,
                    "data": [base64.b64encode(bytes(account.data)).decode(), "base64"],
                    "owner": str(account.owner),
                    "executable": account.executable,
                    "rentEpoch": account.rent_epoch,
                    "space": len(account.data),
                },
            }
        if method == "requestAirdrop":
            chain.airdrop(Pubkey.from_string(params[0]), params[1])
            return str(Signature.default())
        raise LookupError(method)

    async def endpoint(request: Request) -> JSONResponse:
        body = await request.json()
        try:
            result = answer(body["method"], body.get("params", []))
        except ChainError as error:
            return JSONResponse(
                {"jsonrpc": "2.0", "id": body["id"], "error": {"code": -32602, "message": str(error)}}
            )
        except LookupError:
            return JSONResponse(
                {"jsonrpc": "2.0", "id": body["id"], "error": {"code": -32601, "message": "Method not found"}}
            )
        return JSONResponse({"jsonrpc": "2.0", "id": body["id"], "result": result})

    return Starlette(routes=[Route("/", endpoint, methods=["POST"])])
