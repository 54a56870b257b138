#!/usr/bin/env python3
"""A real SMTP server for the mail tests, on 127.0.0.1 only.

Modes: `starttls` (offers STARTTLS and refuses mail before it), `smtps` (TLS from the first byte),
`nostarttls` (plain, offers AUTH but not STARTTLS: a client that must not send its password in
clear has to stop before AUTH), `plain` (plain, AUTH allowed in clear).

Every accepted message is written to OUT/msg-N.eml (the envelope recipients on the first line),
every AUTH attempt appends a line to OUT/auth.log. When listening, prints `PORT <n>` on stdout.
"""
import argparse
import asyncio
import os
import ssl
import sys

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--mode", choices=["starttls", "smtps", "nostarttls", "plain"], required=True)
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--out", required=True)
    p.add_argument("--user")
    p.add_argument("--password")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)

    ctx = None
    if args.mode in ("starttls", "smtps"):
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(args.cert, args.key)

    counter = {"n": 0}

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            counter["n"] += 1
            path = os.path.join(args.out, f"msg-{counter['n']}.eml")
            tmp = path + ".tmp"
            with open(tmp, "wb") as f:
                f.write(("RCPT " + ",".join(envelope.rcpt_tos) + "\n").encode())
                f.write(envelope.original_content or envelope.content)
            os.rename(tmp, path)
            return "250 OK stored"

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and args.user is not None
            and auth_data.login.decode() == args.user
            and auth_data.password.decode() == args.password
        )
        with open(os.path.join(args.out, "auth.log"), "a") as f:
            f.write(f"{mechanism} {'ok' if ok else 'bad'}\n")
        return AuthResult(success=ok)

    def factory():
        return SMTP(
            Handler(),
            hostname="test-smtp",
            tls_context=ctx if args.mode == "starttls" else None,
            require_starttls=args.mode == "starttls",
            authenticator=authenticator,
            auth_required=args.user is not None,
            # Implicit TLS is TLS even though aiosmtpd did not negotiate it itself; the two plain
            # modes offer AUTH in clear on purpose (the client must be the one to refuse).
            auth_require_tls=args.mode == "starttls",
        )

    async def serve():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            factory, "127.0.0.1", args.port, ssl=ctx if args.mode == "smtps" else None
        )
        port = server.sockets[0].getsockname()[1]
        print(f"PORT {port}", flush=True)
        async with server:
            await server.serve_forever()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
