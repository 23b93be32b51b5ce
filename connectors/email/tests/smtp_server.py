"""A real SMTP server for the e-mail connector's tests (aiosmtpd).

Requires STARTTLS and AUTH (PLAIN/LOGIN) with the given user and password,
stores every accepted message as <dir>/messages/<n>.eml and answers DATA as
<dir>/condition says: accepting (250), unavailable (451), refusing (550) or
unresponsive (no answer). Prints the port it listens on, then serves.

usage: smtp_server.py DIR CERT KEY USER PASSWORD_FILE
"""

import asyncio
import os
import ssl
import logging
import sys

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

# aiosmtpd 1.4 logs a warning about its own use of a deprecated attribute
# on every login.
logging.getLogger("mail.log").setLevel(logging.ERROR)


class Handler:
    def __init__(self, directory):
        self.directory = directory
        self.count = 0
        os.makedirs(os.path.join(directory, "messages"), exist_ok=True)

    def condition(self):
        try:
            with open(os.path.join(self.directory, "condition")) as f:
                return f.read().strip()
        except FileNotFoundError:
            return "accepting"

    async def handle_DATA(self, server, session, envelope):
        condition = self.condition()
        if condition == "unavailable":
            return "451 4.3.0 Mailbox temporarily unavailable"
        if condition == "refusing":
            return "550 5.7.1 Delivery not authorized, message refused"
        if condition == "unresponsive":
            await asyncio.sleep(3600)
        self.count += 1
        path = os.path.join(self.directory, "messages", f"{self.count}.eml")
        with open(path + ".part", "wb") as f:
            f.write(envelope.original_content)
        os.rename(path + ".part", path)
        return f"250 2.0.0 OK queued as {self.count}"


async def main():
    directory, cert, key, user, password_file = sys.argv[1:6]
    with open(password_file) as f:
        password = f.read().strip().encode()

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and auth_data.login == user.encode() and auth_data.password == password
        return AuthResult(success=ok)

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    handler = Handler(directory)

    def factory():
        return SMTP(
            handler,
            hostname="localhost",
            tls_context=context,
            require_starttls=True,
            authenticator=authenticator,
            auth_require_tls=True,
            data_size_limit=64 * 1024 * 1024,
        )

    server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


asyncio.run(main())
