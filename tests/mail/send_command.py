#!/usr/bin/env python3
"""Sends one command mail with Python's smtplib, a real SMTP client, for the mail command tests.

Builds a message (From, To, Subject, Message-ID), or with --raw sends the bytes of a file as they
are (a replayed mail). With --save, writes the bytes sent to that file. --source binds the client
to that address (e.g. 127.0.0.2), --starttls-ca upgrades with STARTTLS and checks the server's
certificate against that CA. Prints one line: `SENT`, or `REFUSED <code> <text>` when the server
refused the connection, the sender or the data.
"""
import argparse
import smtplib
import ssl
import sys
from email.message import EmailMessage
from email.utils import make_msgid


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--source")
    p.add_argument("--sender", required=True)
    p.add_argument("--to", default="outpost@connector.test")
    p.add_argument("--subject")
    p.add_argument("--raw")
    p.add_argument("--save")
    p.add_argument("--starttls-ca")
    args = p.parse_args()

    if args.raw:
        with open(args.raw, "rb") as f:
            data = f.read()
    else:
        msg = EmailMessage()
        msg["From"] = args.sender
        msg["To"] = args.to
        msg["Subject"] = args.subject
        msg["Message-ID"] = make_msgid(domain="test.example")
        msg.set_content("Sent by the Outpost mail command test.\n")
        data = msg.as_bytes()
    if args.save:
        with open(args.save, "wb") as f:
            f.write(data)

    try:
        source = (args.source, 0) if args.source else None
        with smtplib.SMTP(args.host, args.port, timeout=30, source_address=source) as s:
            if args.starttls_ca:
                s.starttls(context=ssl.create_default_context(cafile=args.starttls_ca))
            s.sendmail(args.sender, [args.to], data)
        print("SENT")
    except smtplib.SMTPConnectError as e:
        print(f"REFUSED {e.smtp_code} {e.smtp_error.decode(errors='replace')}")
    except smtplib.SMTPSenderRefused as e:
        print(f"REFUSED {e.smtp_code} {e.smtp_error.decode(errors='replace')}")
    except smtplib.SMTPResponseException as e:
        print(f"REFUSED {e.smtp_code} {e.smtp_error.decode(errors='replace')}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
